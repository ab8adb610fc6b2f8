//! restic's include/exclude patterns, for every command that takes them: backup excludes
//! (`--exclude`, `--iexclude`, `--exclude-file`, `--iexclude-file`) and restore includes and
//! excludes (`--include`, `--exclude`, `--iinclude`, `--iexclude`).
//!
//! The rules are those of restic 0.14's `internal/filter` (the restic the test suite runs as
//! its oracle):
//!
//! - A pattern is cleaned like a path (`a//b/` is `a/b`, `x/../a` is `a`) and split at `/`
//!   into components. A component is a Go `filepath.Match` glob (`*`, `?`, `[a-z]`, `[^a]`,
//!   `\` escapes; `*` never crosses a `/`); `**` stands for any number of components.
//! - A pattern starting with `/` is anchored at the root; any other pattern may match at any
//!   depth. A pattern matches a path when it matches a run of the path's components, so a
//!   pattern matching a directory matches everything below it.
//! - A pattern starting with `!` is negated: a path matched by an earlier pattern and by the
//!   negated one is not matched (it must come after the pattern it cuts into). A walk never
//!   enters an excluded directory, so `!` cannot bring back a child of an excluded directory:
//!   exclude `dir/*` and then `!dir/keep`.
//! - For restore `--include`, a directory is entered when a pattern could match something
//!   below it ([`PatternList::matches_with_child`]).
//! - The case-insensitive variants lower-case the patterns and the paths (Go's `ToLower`).
//! - Names are bytes: a pattern can name a file whose name is not UTF-8.
//!
//! Pattern files ([`read_pattern_file`]): one pattern per line, surrounding white space
//! trimmed, blank lines and lines starting with `#` skipped, `$VAR` and `${VAR}` replaced by
//! the environment variable (`$$` is a `$`).

mod file;
mod glob;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use file::{expand_env, parse_pattern_lines, read_pattern_file};

/// What can go wrong with patterns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A pattern is not a valid glob.
    #[error("invalid pattern {pattern:?}: {reason}")]
    Invalid {
        /// The pattern as given (lossy if not UTF-8).
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A pattern file could not be read.
    #[error("cannot read pattern file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One component of a cleaned pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: any number of components.
    AnyDepth,
    /// Compared byte for byte (restic's fast path for text without `\[]*?`); `/` is the root.
    Literal(Vec<u8>),
    /// A Go `filepath.Match` glob.
    Glob(Vec<u8>),
}

/// One parsed pattern.
#[derive(Debug, Clone)]
struct Pattern {
    parts: Vec<Part>,
    negated: bool,
}

/// The root marker a path's and a rooted pattern's first component becomes.
const ROOT: &[u8] = b"/";

/// A list of patterns with restic's semantics (see the crate docs).
#[derive(Debug, Clone, Default)]
pub struct PatternList {
    patterns: Vec<Pattern>,
    negations: bool,
    case_insensitive: bool,
}

impl PatternList {
    /// Parses the patterns; empty ones are ignored. Fails on the first malformed one.
    pub fn new<P: AsRef<OsStr>>(patterns: &[P]) -> Result<Self, Error> {
        Self::build(patterns, false)
    }

    /// Like [`PatternList::new`], but patterns and paths are compared in lower case.
    pub fn new_case_insensitive<P: AsRef<OsStr>>(patterns: &[P]) -> Result<Self, Error> {
        Self::build(patterns, true)
    }

    fn build<P: AsRef<OsStr>>(patterns: &[P], case_insensitive: bool) -> Result<Self, Error> {
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            let raw = p.as_ref().as_bytes();
            if raw.is_empty() {
                continue;
            }
            let lowered;
            let text = if case_insensitive {
                lowered = go_to_lower(raw);
                &lowered[..]
            } else {
                raw
            };
            let pattern = parse(text).map_err(|reason| Error::Invalid {
                pattern: String::from_utf8_lossy(raw).into_owned(),
                reason,
            })?;
            out.push(pattern);
        }
        Ok(PatternList {
            negations: out.iter().any(|p| p.negated),
            patterns: out,
            case_insensitive,
        })
    }

    /// No patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the path (absolute, as the walk or the snapshot names it) is matched: restic's
    /// `filter.List`.
    pub fn matches(&self, path: &Path) -> bool {
        self.list(path, false).0
    }

    /// (the path is matched, something below it may be matched): restic's
    /// `filter.ListWithChild`, which restore `--include` uses to decide whether to enter a
    /// directory that is not itself included.
    pub fn matches_with_child(&self, path: &Path) -> (bool, bool) {
        self.list(path, true)
    }

    fn list(&self, path: &Path, with_child: bool) -> (bool, bool) {
        if self.patterns.is_empty() {
            return (false, false);
        }
        let lowered;
        let bytes = if self.case_insensitive {
            lowered = go_to_lower(path.as_os_str().as_bytes());
            &lowered[..]
        } else {
            path.as_os_str().as_bytes()
        };
        let strs = split(bytes);
        let (mut matched, mut child) = (false, false);
        for p in &self.patterns {
            let m = match_parts(&p.parts, &strs);
            let c = !with_child || child_may_match(&p.parts, &strs);
            if p.negated {
                matched = matched && !m;
                child = child && !m;
            } else {
                matched = matched || m;
                child = child || c;
                if matched && child && !self.negations {
                    // Without negations nothing later can change the answer.
                    break;
                }
            }
        }
        (matched, child)
    }
}

/// Case-sensitive and case-insensitive patterns of one option pair (`--exclude` and
/// `--iexclude`, `--include` and `--iinclude`): a path is matched when either list matches it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    exact: PatternList,
    folded: PatternList,
}

impl Filter {
    /// Parses both lists.
    pub fn new<P: AsRef<OsStr>, Q: AsRef<OsStr>>(
        patterns: &[P],
        case_insensitive: &[Q],
    ) -> Result<Self, Error> {
        Ok(Filter {
            exact: PatternList::new(patterns)?,
            folded: PatternList::new_case_insensitive(case_insensitive)?,
        })
    }

    /// No patterns in either list.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.folded.is_empty()
    }

    /// Whether either list matches the path.
    pub fn matches(&self, path: &Path) -> bool {
        self.exact.matches(path) || self.folded.matches(path)
    }

    /// (matched, a child may be matched) over both lists.
    pub fn matches_with_child(&self, path: &Path) -> (bool, bool) {
        let (m1, c1) = self.exact.matches_with_child(path);
        let (m2, c2) = self.folded.matches_with_child(path);
        (m1 || m2, c1 || c2)
    }
}

/// Parses one non-empty pattern.
fn parse(text: &[u8]) -> Result<Pattern, &'static str> {
    let (negated, text) = match text.split_first() {
        Some((b'!', rest)) => (true, rest),
        _ => (false, text),
    };
    let cleaned = clean(text);
    let mut parts = Vec::new();
    for (i, c) in cleaned.split(|&b| b == b'/').enumerate() {
        if i == 0 && c.is_empty() {
            parts.push(Part::Literal(ROOT.to_vec()));
        } else if c == b"**" || c.is_empty() {
            // An empty component is left only by `/` alone, which restic reads as `/**`.
            parts.push(Part::AnyDepth);
        } else if c.iter().any(|b| b"\\[]*?".contains(b)) {
            glob::validate(c).map_err(|_| {
                "malformed glob (unclosed [, bad range, trailing \\ or a byte that is not UTF-8 in [...])"
            })?;
            parts.push(Part::Glob(c.to_vec()));
        } else {
            parts.push(Part::Literal(c.to_vec()));
        }
    }
    Ok(Pattern { parts, negated })
}

/// Go's `filepath.Clean` on bytes: one `/` between components, no `.`, `..` applied
/// lexically, no trailing `/`; `.` when nothing is left.
fn clean(path: &[u8]) -> Vec<u8> {
    let rooted = path.first() == Some(&b'/');
    let mut stack: Vec<&[u8]> = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => match stack.last() {
                Some(last) if *last != b".." => {
                    stack.pop();
                }
                // `..` above the root is the root.
                _ if rooted => {}
                _ => stack.push(c),
            },
            _ => stack.push(c),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    if rooted {
        out.push(b'/');
    }
    out.extend_from_slice(&stack.join(&b'/'));
    if out.is_empty() {
        out.push(b'.');
    }
    out
}

/// `/a/b` → `["/", "a", "b"]`; a relative path has no root marker.
fn split(path: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    if v.first().is_some_and(|c| c.is_empty()) {
        v[0] = ROOT;
    }
    v
}

fn part_matches(part: &Part, s: &[u8]) -> bool {
    match part {
        Part::Literal(l) => l == s,
        // Validated when parsed.
        Part::Glob(g) => glob::glob_match(g, s).unwrap_or(false),
        // Expanded before comparing.
        Part::AnyDepth => false,
    }
}

/// Whether the pattern matches a run of the path's components: starting at the root for a
/// rooted pattern, anywhere below the root for another.
fn match_parts(parts: &[Part], strs: &[&[u8]]) -> bool {
    if let Some(pos) = parts.iter().position(|p| *p == Part::AnyDepth) {
        // `**` becomes 0, 1, 2, ... single-component wildcards, while the pattern still fits.
        let most = strs.len() as isize - parts.len() as isize + 1;
        let mut expanded: Vec<Part> = parts[..pos].to_vec();
        for k in 0..=most {
            if k > 0 {
                expanded.push(Part::Glob(b"*".to_vec()));
            }
            let mut candidate = expanded.clone();
            candidate.extend_from_slice(&parts[pos + 1..]);
            if match_parts(&candidate, strs) {
                return true;
            }
        }
        return false;
    }
    if parts.is_empty() {
        return strs.is_empty();
    }
    if parts.len() > strs.len() {
        return false;
    }
    let rooted = matches!(&parts[0], Part::Literal(l) if l == ROOT);
    let max = if rooted { 0 } else { strs.len() - parts.len() };
    let min = usize::from(!rooted && strs.first() == Some(&ROOT));
    (min..=max).rev().any(|off| {
        parts
            .iter()
            .zip(&strs[off..])
            .all(|(p, s)| part_matches(p, s))
    })
}

/// Whether something below the path may match: always for a relative pattern; for a rooted
/// one, when the path matches the pattern's leading components (up to a `**`).
fn child_may_match(parts: &[Part], strs: &[&[u8]]) -> bool {
    if !matches!(parts.first(), Some(Part::Literal(l)) if l == ROOT) {
        return true;
    }
    let mut strs = strs;
    if let Some(pos) = parts.iter().position(|p| *p == Part::AnyDepth) {
        if strs.len() >= pos {
            strs = &strs[..pos];
        }
    }
    let l = strs.len().min(parts.len());
    match_parts(&parts[..l], strs)
}

/// Go's `strings.ToLower`: ASCII text is lowered byte by byte; other text character by
/// character, each byte that is not UTF-8 becoming U+FFFD.
fn go_to_lower(s: &[u8]) -> Vec<u8> {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut buf = [0u8; 4];
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            // Go maps one character to one (`İ` → `i`); Rust may add a combining mark.
            let l = c.to_lowercase().next().unwrap_or(c);
            out.extend_from_slice(l.encode_utf8(&mut buf).as_bytes());
        }
        for _ in chunk.invalid() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests;
