//! PAX extended header records (`"<len> <key>=<value>\n"`) and PAX decimal timestamps.
//!
//! Hand-written because values (xattrs) may be binary and contain newlines, which a
//! newline-splitting parser would corrupt.

use crate::Timestamp;

/// Appends one record to `out`; the length prefix counts itself.
pub(crate) fn push_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    // The length field's own width can push the total over a power of ten.
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Parses all records of an extended header's data. Returns the reason on malformed input.
pub(crate) fn parse_records(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or("pax record without length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record with a bad length")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err("pax record length does not match its content".into());
        }
        let record = &data[space + 1..len - 1];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pax record without '='")?;
        let key = String::from_utf8(record[..eq].to_vec())
            .map_err(|_| "pax record key is not UTF-8".to_string())?;
        out.push((key, record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

/// Formats a timestamp the way PAX wants it: `secs[.frac]`, trailing zeros trimmed.
pub(crate) fn format_time(t: Timestamp) -> String {
    let (neg, whole, frac) = if t.secs < 0 && t.nanos > 0 {
        // -2 s + 0.5 s is -1.5 s.
        (true, -(t.secs + 1), 1_000_000_000 - t.nanos)
    } else {
        (t.secs < 0, t.secs.unsigned_abs() as i64, t.nanos)
    };
    let sign = if neg { "-" } else { "" };
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let f = format!("{frac:09}");
        format!("{sign}{whole}.{}", f.trim_end_matches('0'))
    }
}

/// Parses a PAX decimal time such as `1700000000.123456789` or `-1.5`.
pub(crate) fn parse_time(s: &str) -> Option<Timestamp> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    // Only nanosecond precision is kept; further digits are dropped.
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    Some(match (neg, nanos) {
        (false, n) => Timestamp {
            secs: whole,
            nanos: n,
        },
        (true, 0) => Timestamp {
            secs: -whole,
            nanos: 0,
        },
        (true, n) => Timestamp {
            secs: -whole - 1,
            nanos: 1_000_000_000 - n,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_length_counts_its_own_digits() {
        let mut out = Vec::new();
        push_record(&mut out, "path", &[b'a'; 93]); // 93 + 4 + 3 = 100 -> length 103
        assert!(out.starts_with(b"103 path="));
        assert_eq!(out.len(), 103);
        let parsed = parse_records(&out).unwrap();
        assert_eq!(parsed, vec![("path".to_string(), vec![b'a'; 93])]);
    }

    #[test]
    fn binary_values_with_newlines_round_trip() {
        let mut out = Vec::new();
        push_record(&mut out, "SCHILY.xattr.user.x", b"a\nb=\0c");
        push_record(&mut out, "mtime", b"1.5");
        let parsed = parse_records(&out).unwrap();
        assert_eq!(parsed[0].1, b"a\nb=\0c");
        assert_eq!(parsed[1], ("mtime".to_string(), b"1.5".to_vec()));
    }

    #[test]
    fn malformed_record_length_is_rejected() {
        assert!(parse_records(b"99 path=x\n").is_err());
        assert!(parse_records(b"path=x\n").is_err());
    }

    #[test]
    fn times_format_and_parse_including_negative_fractions() {
        for (t, s) in [
            (
                Timestamp {
                    secs: 1700000000,
                    nanos: 0,
                },
                "1700000000",
            ),
            (
                Timestamp {
                    secs: 1,
                    nanos: 500_000_000,
                },
                "1.5",
            ),
            (
                Timestamp {
                    secs: 1,
                    nanos: 123_456_789,
                },
                "1.123456789",
            ),
            (
                Timestamp {
                    secs: -2,
                    nanos: 500_000_000,
                },
                "-1.5",
            ),
            (Timestamp { secs: -3, nanos: 0 }, "-3"),
        ] {
            assert_eq!(format_time(t), s);
            assert_eq!(parse_time(s), Some(t), "{s}");
        }
        assert_eq!(
            parse_time("12.0000000019"),
            Some(Timestamp { secs: 12, nanos: 1 })
        );
        assert_eq!(parse_time("x1"), None);
        assert_eq!(parse_time(""), None);
    }
}
