//! Include and exclude patterns with restic's semantics.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::tree_walk::path_components;
use crate::{Error, Result};

/// One unit of a name or pattern as Go's `filepath.Match` sees it: a character, or a byte
/// that is not part of valid UTF-8 (which Go decodes as U+FFFD of width one). Literals compare
/// exactly, so a pattern with the byte 0xff matches the name byte 0xff and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Char(char),
    Byte(u8),
}

impl Unit {
    /// The character a class (`[a-z]`) compares.
    fn as_char(self) -> char {
        match self {
            Unit::Char(c) => c,
            Unit::Byte(_) => char::REPLACEMENT_CHARACTER,
        }
    }
}

fn units(bytes: &[u8]) -> Vec<Unit> {
    let mut out = Vec::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().chars().map(Unit::Char));
        out.extend(chunk.invalid().iter().map(|&b| Unit::Byte(b)));
    }
    out
}

const STAR: Unit = Unit::Char('*');

/// Include/exclude patterns with restic's semantics: a pattern is split at `/` into
/// components matched with Go's `filepath.Match` rules (`*`, `?`, `[...]`, `\` escapes) plus
/// `**` for any number of components. A pattern starting with `/` is anchored at the root;
/// any other matches at any depth. A pattern matching a directory matches everything below it.
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    patterns: Vec<Pattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Root,
    DoubleStar,
    Glob(Vec<Unit>),
}

#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<Part>,
}

impl PatternList {
    /// Parses the patterns (raw bytes: a pattern may name a file whose name is not UTF-8);
    /// empty ones are ignored.
    pub fn parse<P: AsRef<OsStr>>(patterns: &[P]) -> Result<Self> {
        let mut out = Vec::new();
        for p in patterns {
            let p = p.as_ref();
            let mut parts = Vec::new();
            if p.as_bytes().starts_with(b"/") {
                parts.push(Part::Root);
            }
            for c in path_components(p) {
                if c == "**" {
                    parts.push(Part::DoubleStar);
                } else {
                    let chars = units(c.as_bytes());
                    if !glob_valid(&chars) {
                        return Err(Error::InvalidPattern {
                            pattern: p.to_string_lossy().into_owned(),
                            reason: "malformed pattern (unclosed [ or trailing \\)".into(),
                        });
                    }
                    parts.push(Part::Glob(chars));
                }
            }
            if parts.iter().any(|p| *p != Part::Root) {
                out.push(Pattern { parts });
            }
        }
        Ok(PatternList { patterns: out })
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether an absolute snapshot path (or one of its ancestors) matches a pattern.
    pub fn matches(&self, path: &Path) -> bool {
        let strs = split_abs(path);
        self.patterns.iter().any(|p| match_parts(&p.parts, &strs))
    }

    /// (the path matches, something below it may match) for an absolute snapshot path.
    pub fn select(&self, path: &Path) -> (bool, bool) {
        let strs = split_abs(path);
        let mut matched = false;
        let mut child = false;
        for p in &self.patterns {
            matched = matched || match_parts(&p.parts, &strs);
            child = child || child_may_match(&p.parts, &strs);
            if matched && child {
                break;
            }
        }
        (matched, child)
    }
}

/// A path component for matching: the root marker, or a name's units.
#[derive(Debug)]
enum Comp {
    Root,
    Name(Vec<Unit>),
}

/// `/a/b` → `[Root, "a", "b"]`.
fn split_abs(path: &Path) -> Vec<Comp> {
    let mut v = vec![Comp::Root];
    v.extend(
        path_components(path)
            .into_iter()
            .map(|c| Comp::Name(units(c.as_bytes()))),
    );
    v
}

fn part_matches(part: &Part, s: &Comp) -> bool {
    match (part, s) {
        (Part::Root, Comp::Root) => true,
        (Part::Glob(g), Comp::Name(n)) => glob_match(g, n),
        // `**` is expanded before matching.
        _ => false,
    }
}

/// Whether the pattern matches a contiguous run of the path's components (anchored at the
/// root for rooted patterns): so it matches a node or any of its ancestors.
fn match_parts(parts: &[Part], strs: &[Comp]) -> bool {
    if let Some(pos) = parts.iter().position(|p| *p == Part::DoubleStar) {
        // `**` stands for 0..n components: try each number of single-component wildcards.
        let fixed = parts.len() - 1;
        for k in 0..=strs.len().saturating_sub(fixed) {
            let mut expanded = parts[..pos].to_vec();
            expanded.extend(std::iter::repeat_n(Part::Glob(vec![STAR]), k));
            expanded.extend_from_slice(&parts[pos + 1..]);
            if match_parts(&expanded, strs) {
                return true;
            }
        }
        return false;
    }
    if parts.is_empty() || strs.is_empty() || parts.len() > strs.len() {
        return false;
    }
    let max = strs.len() - parts.len();
    let (min, max) = if parts[0] == Part::Root {
        (0, 0)
    } else if matches!(strs[0], Comp::Root) {
        (1, max)
    } else {
        (0, max)
    };
    (min..=max).rev().any(|off| {
        parts
            .iter()
            .enumerate()
            .all(|(i, p)| part_matches(p, &strs[off + i]))
    })
}

/// Whether a node below the path may still match (relative patterns always may).
fn child_may_match(parts: &[Part], strs: &[Comp]) -> bool {
    if parts.first() != Some(&Part::Root) {
        return true;
    }
    let mut strs = strs;
    if let Some(pos) = parts.iter().position(|p| *p == Part::DoubleStar) {
        if strs.len() >= pos {
            strs = &strs[..pos];
        }
    }
    let l = strs.len().min(parts.len());
    match_parts(&parts[..l], strs)
}

fn glob_valid(p: &[Unit]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            Unit::Char('\\') => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            Unit::Char('[') => match class_match(p, i, 'a') {
                Some((_, next)) => i = next,
                None => return false,
            },
            _ => i += 1,
        }
    }
    true
}

/// Matches the character class starting at `p[start] == '['` against `c`: (matched, index
/// after the class), or `None` when malformed.
fn class_match(p: &[Unit], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&Unit::Char('^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == Unit::Char(']') && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = read_class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&Unit::Char('-'))
            && p.get(i + 1).is_some_and(|&n| n != Unit::Char(']'))
        {
            i += 1;
            read_class_char(p, &mut i)?
        } else {
            lo
        };
        if lo <= c && c <= hi {
            matched = true;
        }
    }
}

fn read_class_char(p: &[Unit], i: &mut usize) -> Option<char> {
    let mut c = *p.get(*i)?;
    if c == Unit::Char('\\') {
        *i += 1;
        c = *p.get(*i)?;
    } else if c == Unit::Char('-') || c == Unit::Char(']') {
        return None;
    }
    *i += 1;
    Some(c.as_char())
}

/// Go `filepath.Match` on one path component (no `/` inside).
fn glob_match(p: &[Unit], s: &[Unit]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, string index it covers up to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(Unit::Char('*')) => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some(Unit::Char('?')) => Some(pi + 1),
            Some(Unit::Char('[')) => match class_match(p, pi, s[si].as_char()) {
                Some((true, next)) => Some(next),
                _ => None,
            },
            Some(Unit::Char('\\')) => (p.get(pi + 1) == Some(&s[si])).then_some(pi + 2),
            Some(c) => (*c == s[si]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                si += 1;
            }
            None => match star {
                Some((sp, ss)) => {
                    star = Some((sp, ss + 1));
                    pi = sp;
                    si = ss + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == STAR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> PatternList {
        PatternList::parse(p).unwrap()
    }

    fn u(s: &str) -> Vec<Unit> {
        units(s.as_bytes())
    }

    #[test]
    fn glob_follows_go_filepath_match() {
        let m = |p: &str, s: &str| glob_match(&u(p), &u(s));
        assert!(m("*.txt", "a.txt"));
        assert!(!m("*.txt", "a.txt.bak"));
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "aüc"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[^a-c]x", "bx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(m("*a*b", "xxaxxb"));
        assert!(!m("*a*b", "xxaxxc"));
        assert!(m("*", ""));
        assert!(!glob_valid(&u("[ab")));
        assert!(!glob_valid(&u("a\\")));
    }

    #[test]
    fn rooted_patterns_match_a_node_and_everything_below() {
        let l = list(&["/data/x"]);
        assert!(l.matches(Path::new("/data/x")));
        assert!(l.matches(Path::new("/data/x/y/z")));
        assert!(!l.matches(Path::new("/data")));
        assert!(!l.matches(Path::new("/other/data/x")));
        assert_eq!(
            l.select(Path::new("/data")),
            (false, true),
            "parent: descend"
        );
        assert_eq!(
            l.select(Path::new("/other")),
            (false, false),
            "elsewhere: skip"
        );
        assert_eq!(l.select(Path::new("/data/x/y")), (true, true));
    }

    #[test]
    fn relative_patterns_match_at_any_depth() {
        let l = list(&["*.log"]);
        assert!(l.matches(Path::new("/var/app.log")));
        assert!(l.matches(Path::new("/a.log/inner")));
        assert!(!l.matches(Path::new("/var/app.txt")));
        assert_eq!(l.select(Path::new("/var")), (false, true));
    }

    #[test]
    fn double_star_spans_components() {
        let l = list(&["/home/**/secret"]);
        assert!(l.matches(Path::new("/home/secret")));
        assert!(l.matches(Path::new("/home/u/a/b/secret")));
        assert!(l.matches(Path::new("/home/u/secret/file")));
        assert!(!l.matches(Path::new("/etc/secret")));
        assert!(l.select(Path::new("/home/u/deep")).1);
        assert!(!l.select(Path::new("/etc")).1);
    }

    #[test]
    fn byte_names_match_exactly() {
        let raw = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let l = PatternList::parse(&[raw(b"/d/a\xff")]).unwrap();
        assert!(l.matches(Path::new(OsStr::from_bytes(b"/d/a\xff"))));
        assert!(!l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe"))));
        assert!(!l.matches(Path::new("/d/a\u{fffd}")));
        // `?` is one invalid byte, as Go decodes it; a class sees U+FFFD.
        let l = list(&["/d/a?"]);
        assert!(l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe"))));
        assert!(l.matches(Path::new("/d/a\u{e9}")));
        assert!(!l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe\xfe"))));
        let l = list(&["*\u{fffd}"]);
        assert!(l.matches(Path::new("/x\u{fffd}")));
        assert!(!l.matches(Path::new(OsStr::from_bytes(b"/x\xff"))));
        let l = list(&["[\u{fffd}]"]);
        assert!(l.matches(Path::new(OsStr::from_bytes(b"/\xff"))));
    }

    #[test]
    fn bad_patterns_are_refused_and_empty_ones_ignored() {
        assert!(PatternList::parse(&["/a/[b"]).is_err());
        assert!(list(&["", "/"]).is_empty());
    }
}
