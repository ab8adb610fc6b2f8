//! Pattern files (`--exclude-file`, `--iexclude-file`), read as restic reads them.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::Error;

/// Reads a pattern file: one pattern per line, surrounding white space trimmed, blank lines
/// and lines starting with `#` skipped, environment variables expanded ([`expand_env`]). A
/// UTF-8 byte order mark is dropped and UTF-16 text (with its mark) is decoded, as restic
/// does for files written by Windows editors.
pub fn read_pattern_file(path: &Path) -> Result<Vec<OsString>, Error> {
    let data = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_pattern_lines(&decode_text(data), |name| {
        std::env::var_os(name)
    }))
}

/// The patterns in a pattern file's text, variables looked up with `getenv` (unset: empty).
pub fn parse_pattern_lines(
    text: &[u8],
    getenv: impl Fn(&OsStr) -> Option<OsString>,
) -> Vec<OsString> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = trim(line);
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        out.push(OsString::from_vec(expand_env(line, &getenv)));
    }
    out
}

/// Go's `os.Expand` with restic's lookup: `$NAME` (letters, digits, `_`), `${NAME}`, and the
/// one-character shell names (`$1`, `$@`, ...) are replaced by the variable's value (empty when
/// unset); `$$` is a `$`; a `$` followed by nothing that names a variable stays; malformed
/// `${` and `${}` are dropped.
pub fn expand_env(line: &[u8], getenv: impl Fn(&OsStr) -> Option<OsString>) -> Vec<u8> {
    let lookup = |name: &[u8]| -> Vec<u8> {
        if name == b"$" {
            return b"$".to_vec();
        }
        getenv(OsStr::from_bytes(name))
            .map(OsString::into_vec)
            .unwrap_or_default()
    };
    let mut out = Vec::with_capacity(line.len());
    let mut j = 0;
    while j < line.len() {
        if line[j] != b'$' || j + 1 == line.len() {
            out.push(line[j]);
            j += 1;
            continue;
        }
        let (name, width) = shell_name(&line[j + 1..]);
        match name {
            Some(n) => out.extend(lookup(n)),
            // Nothing that names a variable: the `$` stays.
            None if width == 0 => out.push(b'$'),
            // Bad syntax (`${`, `${}`): eaten.
            None => {}
        }
        j += 1 + width;
    }
    out
}

fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || b.is_ascii_digit()
}

/// The variable name after a `$` and how many bytes it takes (`None` with a width: bad syntax).
fn shell_name(s: &[u8]) -> (Option<&[u8]>, usize) {
    if s[0] == b'{' {
        if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
            return (Some(&s[1..2]), 3);
        }
        return match s.iter().skip(1).position(|&b| b == b'}') {
            Some(0) => (None, 2),
            Some(i) => (Some(&s[1..=i]), i + 2),
            None => (None, 1),
        };
    }
    if is_special(s[0]) {
        return (Some(&s[..1]), 1);
    }
    let n = s
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if n == 0 {
        (None, 0)
    } else {
        (Some(&s[..n]), n)
    }
}

/// Trims white space (Unicode's, when the line is UTF-8; ASCII's otherwise).
fn trim(line: &[u8]) -> &[u8] {
    match std::str::from_utf8(line) {
        Ok(s) => s.trim().as_bytes(),
        Err(_) => line.trim_ascii(),
    }
}

/// Drops a UTF-8 byte order mark; decodes UTF-16 marked by its byte order mark.
fn decode_text(data: Vec<u8>) -> Vec<u8> {
    let utf16 = |bytes: &[u8], le: bool| {
        let units = bytes.chunks_exact(2).map(|c| {
            if le {
                u16::from_le_bytes([c[0], c[1]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        });
        char::decode_utf16(units)
            .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect::<String>()
            .into_bytes()
    };
    match data.as_slice() {
        [0xef, 0xbb, 0xbf, rest @ ..] => rest.to_vec(),
        [0xff, 0xfe, rest @ ..] => utf16(rest, true),
        [0xfe, 0xff, rest @ ..] => utf16(rest, false),
        _ => data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &OsStr) -> Option<OsString> {
        match name.as_bytes() {
            b"HOME" => Some("/home/u".into()),
            b"X_1" => Some("x".into()),
            _ => None,
        }
    }

    fn ex(s: &str) -> String {
        String::from_utf8(expand_env(s.as_bytes(), env)).unwrap()
    }

    #[test]
    fn env_expansion_follows_go_os_expand() {
        assert_eq!(ex("$HOME/.cache"), "/home/u/.cache");
        assert_eq!(ex("${HOME}/x"), "/home/u/x");
        assert_eq!(ex("a$X_1.b"), "ax.b");
        assert_eq!(ex("$UNSET/x"), "/x");
        assert_eq!(ex("cost$$"), "cost$");
        assert_eq!(ex("end$"), "end$");
        assert_eq!(ex("a$/b"), "a$/b");
        assert_eq!(ex("a${}b"), "ab");
        assert_eq!(ex("a${b"), "ab");
        assert_eq!(ex("$1x"), "x");
    }

    #[test]
    fn lines_comments_blanks_and_crlf() {
        let text =
            b"# comment\n\n  *.log  \r\n\t/abs/dir/\n  # indented comment\n$HOME/c\nname\xff\n";
        let got = parse_pattern_lines(text, env);
        let want: Vec<OsString> = vec![
            "*.log".into(),
            "/abs/dir/".into(),
            "/home/u/c".into(),
            OsString::from_vec(b"name\xff".to_vec()),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn byte_order_marks() {
        assert_eq!(decode_text(b"\xef\xbb\xbfa\n".to_vec()), b"a\n");
        assert_eq!(decode_text(b"\xff\xfea\x00\n\x00".to_vec()), b"a\n");
        assert_eq!(decode_text(b"\xfe\xff\x00a\x00\n".to_vec()), b"a\n");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = read_pattern_file(Path::new("/nonexistent/patterns")).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err}");
    }
}
