//! One path component against one glob, as Go's `path/filepath.Match` decides it (restic
//! hands every non-literal pattern component to that function).
//!
//! Go works on bytes: literals compare byte for byte, `*` skips bytes, while `?` and a class
//! (`[a-z]`, `[^x]`) consume one UTF-8 character, an invalid byte counting as one U+FFFD.
//! Matching is done chunk by chunk (a chunk is the text after a run of `*`), each placed at
//! its leftmost position; that is Go's algorithm, kept so that odd patterns decide alike.

/// The separator: never inside a component, but Go's rules about it are kept.
const SEP: u8 = b'/';

/// The pattern is malformed (unclosed `[`, bad range, trailing `\`, invalid UTF-8 in a class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// Whether `name` matches `pattern`; `Err` when the pattern is malformed (checked in full,
/// whether or not it matches).
pub(crate) fn glob_match(mut pattern: &[u8], mut name: &[u8]) -> Result<bool, BadPattern> {
    'chunks: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            // A trailing `*` takes the rest of the name (never a separator).
            return Ok(!name.contains(&SEP));
        }
        let first = match_chunk(chunk, name);
        if let Ok(Some(t)) = first {
            // The last chunk must use up the name.
            if t.is_empty() || !pattern.is_empty() {
                name = t;
                continue;
            }
        }
        first?;
        if star {
            // Try the chunk after skipping 1, 2, ... bytes (not past a separator).
            let mut i = 0;
            while i < name.len() && name[i] != SEP {
                if let Some(t) = match_chunk(chunk, &name[i + 1..])? {
                    if t.is_empty() || !pattern.is_empty() {
                        name = t;
                        continue 'chunks;
                    }
                }
                i += 1;
            }
        }
        // No match: still report a malformed remainder.
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            match_chunk(chunk, b"")?;
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Whether the pattern is well formed.
pub(crate) fn validate(pattern: &[u8]) -> Result<(), BadPattern> {
    // Matching against itself walks every chunk in full.
    glob_match(pattern, pattern).map(|_| ())
}

/// Splits off the leading run of `*` (whether there was one), the chunk up to the next `*`
/// outside a class, and the rest.
fn scan_chunk(pattern: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut p = pattern;
    let mut star = false;
    while let Some((b'*', rest)) = p.split_first() {
        p = rest;
        star = true;
    }
    let mut in_class = false;
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            // The escaped byte is skipped; a trailing `\` is reported by `match_chunk`.
            b'\\' if i + 1 < p.len() => i += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'*' if !in_class => break,
            _ => {}
        }
        i += 1;
    }
    (star, &p[..i], &p[i..])
}

/// One UTF-8 character at the start of `s` and its width; an invalid byte is `None`, width 1.
fn decode(s: &[u8]) -> (Option<char>, usize) {
    let head = &s[..s.len().min(4)];
    let valid = match std::str::from_utf8(head) {
        Ok(v) => v,
        // Safe: `valid_up_to` bytes are valid UTF-8.
        Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default(),
    };
    match valid.chars().next() {
        Some(c) => (Some(c), c.len_utf8()),
        None => (None, 1),
    }
}

/// Matches `chunk` (no `*` outside classes) at the start of `s`: the rest of `s` on a match.
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, BadPattern> {
    // Once failed, the chunk is still parsed to the end so that malformed text is reported.
    let mut failed = false;
    while let Some(&c) = chunk.first() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match c {
            b'[' => {
                let mut r = char::REPLACEMENT_CHARACTER;
                if !failed {
                    let (ch, n) = decode(s);
                    r = ch.unwrap_or(char::REPLACEMENT_CHARACTER);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let negated = chunk.first() == Some(&b'^');
                if negated {
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = class_char(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = class_char(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == SEP {
                        failed = true;
                    }
                    let (_, n) = decode(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            _ => {
                let lit = if c == b'\\' {
                    chunk = &chunk[1..];
                    *chunk.first().ok_or(BadPattern)?
                } else {
                    c
                };
                if !failed {
                    if lit != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    Ok((!failed).then_some(s))
}

/// One character of a class (`\` escapes it), and the class text after it; the class must go on.
fn class_char(chunk: &[u8]) -> Result<(char, &[u8]), BadPattern> {
    let mut c = chunk;
    match c.first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            c = &c[1..];
            if c.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (ch, n) = decode(c);
    let ch = ch.ok_or(BadPattern)?;
    let rest = &c[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((ch, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        glob_match(p.as_bytes(), s.as_bytes()).unwrap()
    }

    #[test]
    fn go_filepath_match_cases() {
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "aüc"), "? is one character, not one byte");
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("[\\]]", "]"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("*a*b", "xxaxxb"));
        assert!(!m("*a*b", "xxaxxc"));
        assert!(m("a*b*c*d*e*", "axbxcxdxexxx"));
        assert!(m("*", ""));
        assert!(!m("*", "/"), "a star never takes a separator");
        assert!(!m("?", "/"));
        assert!(m("[ü]", "ü"));
        assert!(m("]", "]"), "] outside a class is a literal");
    }

    #[test]
    fn malformed_patterns_are_reported_even_without_a_match() {
        for bad in [
            "[", "a[", "[]a]", "[a-]", "[-a]", "a\\", "[a", "[^]", "x*[", "[\\",
        ] {
            assert_eq!(validate(bad.as_bytes()), Err(BadPattern), "{bad}");
        }
        assert_eq!(glob_match(b"*x[", b"ab"), Err(BadPattern));
        // Invalid UTF-8 is fine as a literal, not inside a class.
        assert_eq!(validate(b"a\xff"), Ok(()));
        assert_eq!(validate(b"[\xff]"), Err(BadPattern));
        for good in ["[]]", "[\\]]", "a]", "[a-c]", "\\[", "[^a]", "[a\\-z]"] {
            let r = validate(good.as_bytes());
            // `[]]` has no range before `]`: Go refuses it (no POSIX "] first" rule).
            if good == "[]]" {
                assert_eq!(r, Err(BadPattern));
            } else {
                assert_eq!(r, Ok(()), "{good}");
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf8() {
        assert!(glob_match(b"a\xff", b"a\xff").unwrap());
        assert!(!glob_match(b"a\xff", b"a\xfe").unwrap());
        assert!(
            glob_match(b"a?", b"a\xfe").unwrap(),
            "an invalid byte is one character"
        );
        assert!(!glob_match(b"a?", b"a\xfe\xfe").unwrap());
        assert!(glob_match("[\u{fffd}]".as_bytes(), b"\xff").unwrap());
        assert!(
            glob_match(b"*\xbc", "ü".as_bytes()).unwrap(),
            "a star skips bytes"
        );
    }
}
