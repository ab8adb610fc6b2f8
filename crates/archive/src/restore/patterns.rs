//! Include and exclude patterns with restic's semantics.

use crate::tree_walk::path_components;
use crate::{Error, Result};

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
    Glob(Vec<char>),
}

#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<Part>,
}

impl PatternList {
    /// Parses the patterns; empty ones are ignored.
    pub fn parse(patterns: &[String]) -> Result<Self> {
        let mut out = Vec::new();
        for p in patterns {
            let mut parts = Vec::new();
            if p.starts_with('/') {
                parts.push(Part::Root);
            }
            for c in path_components(p) {
                if c == "**" {
                    parts.push(Part::DoubleStar);
                } else {
                    let chars: Vec<char> = c.chars().collect();
                    if !glob_valid(&chars) {
                        return Err(Error::InvalidPattern {
                            pattern: p.clone(),
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
    pub fn matches(&self, path: &str) -> bool {
        let strs = split_abs(path);
        self.patterns.iter().any(|p| match_parts(&p.parts, &strs))
    }

    /// (the path matches, something below it may match) for an absolute snapshot path.
    pub fn select(&self, path: &str) -> (bool, bool) {
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

/// `/a/b` → `["/", "a", "b"]`.
fn split_abs(path: &str) -> Vec<&str> {
    let mut v = vec!["/"];
    v.extend(path_components(path));
    v
}

fn part_matches(part: &Part, s: &str) -> bool {
    match part {
        Part::Root => s == "/",
        // Expanded before matching.
        Part::DoubleStar => false,
        Part::Glob(g) => s != "/" && glob_match(g, &s.chars().collect::<Vec<_>>()),
    }
}

/// Whether the pattern matches a contiguous run of the path's components (anchored at the
/// root for rooted patterns): so it matches a node or any of its ancestors.
fn match_parts(parts: &[Part], strs: &[&str]) -> bool {
    if let Some(pos) = parts.iter().position(|p| *p == Part::DoubleStar) {
        // `**` stands for 0..n components: try each number of single-component wildcards.
        let fixed = parts.len() - 1;
        for k in 0..=strs.len().saturating_sub(fixed) {
            let mut expanded = parts[..pos].to_vec();
            expanded.extend(std::iter::repeat_n(Part::Glob(vec!['*']), k));
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
    } else if strs[0] == "/" {
        (1, max)
    } else {
        (0, max)
    };
    (min..=max).rev().any(|off| {
        parts
            .iter()
            .enumerate()
            .all(|(i, p)| part_matches(p, strs[off + i]))
    })
}

/// Whether a node below the path may still match (relative patterns always may).
fn child_may_match(parts: &[Part], strs: &[&str]) -> bool {
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

fn glob_valid(p: &[char]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                if i + 1 >= p.len() {
                    return false;
                }
                i += 2;
            }
            '[' => match class_match(p, i, 'a') {
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
fn class_match(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = read_class_char(p, &mut i)?;
        let hi = if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&n| n != ']') {
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

fn read_class_char(p: &[char], i: &mut usize) -> Option<char> {
    let mut c = *p.get(*i)?;
    if c == '\\' {
        *i += 1;
        c = *p.get(*i)?;
    } else if c == '-' || c == ']' {
        return None;
    }
    *i += 1;
    Some(c)
}

/// Go `filepath.Match` on one path component (no `/` inside).
fn glob_match(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, string index it covers up to).
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, si));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class_match(p, pi, s[si]) {
                Some((true, next)) => Some(next),
                _ => None,
            },
            Some('\\') => (p.get(pi + 1) == Some(&s[si])).then_some(pi + 2),
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
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(p: &[&str]) -> PatternList {
        PatternList::parse(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn glob_follows_go_filepath_match() {
        let m = |p: &str, s: &str| {
            glob_match(
                &p.chars().collect::<Vec<_>>(),
                &s.chars().collect::<Vec<_>>(),
            )
        };
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
        assert!(!glob_valid(&"[ab".chars().collect::<Vec<_>>()));
        assert!(!glob_valid(&"a\\".chars().collect::<Vec<_>>()));
    }

    #[test]
    fn rooted_patterns_match_a_node_and_everything_below() {
        let l = list(&["/data/x"]);
        assert!(l.matches("/data/x"));
        assert!(l.matches("/data/x/y/z"));
        assert!(!l.matches("/data"));
        assert!(!l.matches("/other/data/x"));
        assert_eq!(l.select("/data"), (false, true), "parent: descend");
        assert_eq!(l.select("/other"), (false, false), "elsewhere: skip");
        assert_eq!(l.select("/data/x/y"), (true, true));
    }

    #[test]
    fn relative_patterns_match_at_any_depth() {
        let l = list(&["*.log"]);
        assert!(l.matches("/var/app.log"));
        assert!(l.matches("/a.log/inner"));
        assert!(!l.matches("/var/app.txt"));
        assert_eq!(l.select("/var"), (false, true));
    }

    #[test]
    fn double_star_spans_components() {
        let l = list(&["/home/**/secret"]);
        assert!(l.matches("/home/secret"));
        assert!(l.matches("/home/u/a/b/secret"));
        assert!(l.matches("/home/u/secret/file"));
        assert!(!l.matches("/etc/secret"));
        assert!(l.select("/home/u/deep").1);
        assert!(!l.select("/etc").1);
    }

    #[test]
    fn bad_patterns_are_refused_and_empty_ones_ignored() {
        assert!(PatternList::parse(&["/a/[b".to_string()]).is_err());
        assert!(list(&["", "/"]).is_empty());
    }
}
