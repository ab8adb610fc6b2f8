//! The encoding restic uses for node names in tree blobs: Go's `strconv.Quote` of the raw
//! name bytes without the surrounding quotes, read back with `strconv.Unquote`.
//!
//! File names on unix are bytes, not text. JSON strings must be valid UTF-8, so restic escapes
//! every byte that is not part of valid UTF-8 as `\xNN` (and quotes, backslashes and
//! non-printable characters as Go string escapes). [`quote`] produces exactly Go's form (up to
//! the Unicode version of the printable table, see [`is_print`]); [`unquote`] accepts
//! everything Go's `Unquote` accepts and returns the raw bytes. `unquote(quote(b)) == b` for
//! every byte string, so two different names never share an encoding.

use std::fmt::Write as _;

use unicode_general_category::{get_general_category, GeneralCategory};

/// Why an encoded name could not be decoded (Go's `strconv.ErrSyntax`, with the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quoted name {text:?}: {reason}")]
pub struct UnquoteError {
    /// The encoded name.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Go's `strconv.Quote(name)` without the surrounding `"`: the encoding restic stores.
pub fn quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_rune(&mut out, c);
        }
        // Go decodes an invalid sequence one byte at a time, each `\xNN`.
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn push_rune(out: &mut String, c: char) {
    match c {
        '"' | '\\' => {
            out.push('\\');
            out.push(c);
        }
        c if is_print(c) => out.push(c),
        '\u{7}' => out.push_str("\\a"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\u{b}' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c == '\u{7f}' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// Go's `unicode.IsPrint` (which `strconv.Quote` follows): letters, marks, numbers,
/// punctuation, symbols and the ASCII space. The general categories come from the
/// `unicode-general-category` crate, whose Unicode version may be newer than the Go that built
/// a given restic: a character assigned in between is literal here and `\u`-escaped there
/// (both decode to the same bytes).
pub fn is_print(c: char) -> bool {
    let u = c as u32;
    if u < 0x100 {
        // Latin-1 as Go's table: ASCII graphic plus space, and 0xA1..=0xFF but the soft hyphen.
        return (0x20..=0x7e).contains(&u) || ((0xa1..=0xff).contains(&u) && u != 0xad);
    }
    !matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::Surrogate
            | GeneralCategory::PrivateUse
            | GeneralCategory::Unassigned
            | GeneralCategory::SpaceSeparator
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Go's `strconv.Unquote("\"" + text + "\"")` as raw bytes: accepts every escape Go accepts
/// (`\xNN`, octal `\NNN`, `\uXXXX`, `\UXXXXXXXX`, `\a \b \f \n \r \t \v \\ \"`) and literal
/// characters other than an unescaped `"` or newline.
pub fn unquote(text: &str) -> Result<Vec<u8>, UnquoteError> {
    let err = |reason| UnquoteError {
        text: text.to_string(),
        reason,
    };
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'"' => return Err(err("unescaped quote")),
            b'\n' => return Err(err("unescaped newline")),
            b'\\' => {}
            _ => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        let Some(&e) = bytes.get(i + 1) else {
            return Err(err("trailing backslash"));
        };
        i += 2;
        let simple = match e {
            b'a' => Some(7),
            b'b' => Some(8),
            b'f' => Some(0xc),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0xb),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        match e {
            b'x' | b'u' | b'U' => {
                let n = match e {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let digits = bytes.get(i..i + n).ok_or_else(|| err("short escape"))?;
                let mut v: u32 = 0;
                for &d in digits {
                    let h = (d as char)
                        .to_digit(16)
                        .ok_or_else(|| err("bad hex digit"))?;
                    v = v << 4 | h;
                }
                i += n;
                if e == b'x' {
                    // A raw byte, not a character.
                    out.push(v as u8);
                } else {
                    let ch = char::from_u32(v).ok_or_else(|| err("invalid code point"))?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
            b'0'..=b'7' => {
                let digits = bytes.get(i - 1..i + 2).ok_or_else(|| err("short escape"))?;
                let mut v: u32 = 0;
                for &d in digits {
                    if !(b'0'..=b'7').contains(&d) {
                        return Err(err("bad octal digit"));
                    }
                    v = v << 3 | u32::from(d - b'0');
                }
                if v > 255 {
                    return Err(err("octal escape above 255"));
                }
                i += 2;
                out.push(v as u8);
            }
            _ => return Err(err("unknown escape")),
        }
    }
    Ok(out)
}

/// Bytes as Go's JSON encoder writes a string holding them: each byte that is not part of
/// valid UTF-8 becomes U+FFFD (where the format forces text, e.g. `ls --json`).
pub fn go_lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for _ in chunk.invalid() {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Serde helpers: a byte-string field encoded with [`quote`] / [`unquote`].
pub mod serde_quoted {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `name` quoted.
    pub fn serialize<S: Serializer>(name: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::quote(name))
    }

    /// Reads a quoted name as raw bytes; an undecodable one is an error.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        super::unquote(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs checked against Go 1.19's `strconv.Quote` (without the quotes).
    const GO: &[(&[u8], &str)] = &[
        (b"plain.txt", "plain.txt"),
        (b"a\xff", "a\\xff"),
        (b"a\xfe", "a\\xfe"),
        (b"back\\slash", "back\\\\slash"),
        (b"quo\"te", "quo\\\"te"),
        (b"new\nline", "new\\nline"),
        (b"tab\there", "tab\\there"),
        (b"\x01ctl", "\\x01ctl"),
        (b"del\x7f", "del\\x7f"),
        (b"\x07\x08\x0c\r\x0b", "\\a\\b\\f\\r\\v"),
        ("é日本😀".as_bytes(), "é日本😀"),
        ("nb\u{a0}sp".as_bytes(), "nb\\u00a0sp"),
        ("soft\u{ad}".as_bytes(), "soft\\u00ad"),
        ("zw\u{200b}".as_bytes(), "zw\\u200b"),
        ("bom\u{feff}".as_bytes(), "bom\\ufeff"),
        ("c1\u{85}".as_bytes(), "c1\\u0085"),
        ("pua\u{f0000}".as_bytes(), "pua\\U000f0000"),
        ("repl\u{fffd}".as_bytes(), "repl\u{fffd}"),
        (b"\\xff", "\\\\xff"),
        // An invalid 3-byte prefix: one escape per byte, as Go decodes it.
        (b"\xe6\x97A", "\\xe6\\x97A"),
        // An encoded surrogate is invalid UTF-8 in Go as in Rust.
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
        (b" ", " "),
        ("\u{3000}".as_bytes(), "\\u3000"),
    ];

    #[test]
    fn quote_matches_go() {
        for (raw, want) in GO {
            assert_eq!(quote(raw), *want, "{raw:?}");
            assert_eq!(unquote(want).unwrap(), *raw, "{want:?}");
        }
    }

    #[test]
    fn go_lossy_replaces_each_invalid_byte() {
        assert_eq!(go_lossy(b"ok"), "ok");
        assert_eq!(go_lossy(b"a\xe6\x97A\xff"), "a\u{fffd}\u{fffd}A\u{fffd}");
    }

    #[test]
    fn unquote_accepts_every_go_escape() {
        assert_eq!(unquote("\\101\\x41\\u0041\\U00000041").unwrap(), b"AAAA");
        assert_eq!(unquote("\\377").unwrap(), b"\xff");
        assert_eq!(unquote("\\u00ff").unwrap(), "ÿ".as_bytes());
        assert_eq!(unquote("\\xFF").unwrap(), b"\xff");
        // Literal non-printables are fine, as in Go.
        assert_eq!(
            unquote("a\tb\u{7f}\u{200b}").unwrap(),
            "a\tb\u{7f}\u{200b}".as_bytes()
        );
        assert_eq!(unquote("").unwrap(), b"");
    }

    #[test]
    fn unquote_refuses_what_go_refuses() {
        for bad in [
            "a\"b",
            "a\nb",
            "tail\\",
            "\\q",
            "\\'",
            "\\x4",
            "\\xg0",
            "\\u12",
            "\\ud800",
            "\\U00110000",
            "\\400",
            "\\18",
            "\\1",
        ] {
            assert!(unquote(bad).is_err(), "{bad:?}");
        }
        let e = unquote("x\\q").unwrap_err();
        assert!(e.to_string().contains("unknown escape"), "{e}");
    }

    /// A small deterministic generator (xorshift), biased towards the interesting bytes.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self) -> Vec<u8> {
            let len = (self.next() % 24) as usize;
            let mut v = Vec::with_capacity(len);
            while v.len() < len {
                match self.next() % 6 {
                    0 => v.push((self.next() % 256) as u8),
                    1 => {
                        let special = b"\\\"\n\t\x7f\x00x0u";
                        v.push(special[(self.next() % special.len() as u64) as usize]);
                    }
                    2 => {
                        if let Some(c) = char::from_u32((self.next() % 0x11_0000) as u32) {
                            let mut b = [0; 4];
                            v.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                        }
                    }
                    3 => v.extend_from_slice("é\u{a0}\u{fffd}\u{200b}".as_bytes()),
                    _ => v.push(b'a' + (self.next() % 26) as u8),
                }
            }
            v
        }
    }

    #[test]
    fn random_byte_strings_round_trip_and_stay_distinct() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..50_000 {
            let raw = rng.bytes();
            let q = quote(&raw);
            assert!(!q.contains('"') || q.contains("\\\""));
            assert!(!q.contains('\n'), "{q:?}");
            assert_eq!(unquote(&q).unwrap(), raw, "{q:?}");
            // Injective: one encoding per name.
            if let Some(other) = seen.insert(q.clone(), raw.clone()) {
                assert_eq!(other, raw, "{q:?}");
            }
            // Quoting is a fixed point on its own decoding.
            assert_eq!(quote(&unquote(&q).unwrap()), q);
        }
    }
}
