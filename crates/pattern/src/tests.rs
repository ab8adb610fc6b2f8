//! Corner cases of restic 0.14's `internal/filter`; the end-to-end comparison with restic
//! itself is `tests/patterns.rs`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::*;

fn list(p: &[&str]) -> PatternList {
    PatternList::new(p).unwrap()
}

fn m(p: &[&str], path: &str) -> bool {
    list(p).matches(Path::new(path))
}

#[test]
fn cleaning_follows_go_filepath_clean() {
    assert_eq!(clean(b"a//b/"), b"a/b");
    assert_eq!(clean(b"./a/./b"), b"a/b");
    assert_eq!(clean(b"x/../a"), b"a");
    assert_eq!(clean(b"/../a"), b"/a");
    assert_eq!(clean(b"../../a"), b"../../a");
    assert_eq!(clean(b"a/.."), b".");
    assert_eq!(clean(b"/"), b"/");
    assert_eq!(clean(b""), b".");
}

#[test]
fn rooted_patterns_match_a_node_and_everything_below() {
    let l = list(&["/data/x"]);
    assert!(l.matches(Path::new("/data/x")));
    assert!(l.matches(Path::new("/data/x/y/z")));
    assert!(!l.matches(Path::new("/data")));
    assert!(!l.matches(Path::new("/other/data/x")));
    assert_eq!(l.matches_with_child(Path::new("/data")), (false, true));
    assert_eq!(l.matches_with_child(Path::new("/other")), (false, false));
    assert_eq!(l.matches_with_child(Path::new("/data/x/y")), (true, true));
    assert!(m(&["/data/x/"], "/data/x"), "a trailing / is cleaned away");
}

#[test]
fn relative_patterns_match_a_run_of_components_at_any_depth() {
    assert!(m(&["*.log"], "/var/app.log"));
    assert!(m(&["*.log"], "/a.log/inner"));
    assert!(!m(&["*.log"], "/var/app.txt"));
    assert!(m(&["b/c"], "/a/b/c/d"));
    assert!(!m(&["b/d"], "/a/b/c/d"));
    assert_eq!(
        list(&["*.log"]).matches_with_child(Path::new("/var")),
        (false, true)
    );
    // The root marker is not a component a relative pattern can match.
    assert!(!m(&["*/tmp"], "/tmp/x"));
    assert!(m(&["*/tmp"], "/a/tmp/x"));
}

#[test]
fn double_star_spans_components() {
    let l = list(&["/home/**/secret"]);
    assert!(l.matches(Path::new("/home/secret")));
    assert!(l.matches(Path::new("/home/u/a/b/secret")));
    assert!(l.matches(Path::new("/home/u/secret/file")));
    assert!(!l.matches(Path::new("/etc/secret")));
    assert!(l.matches_with_child(Path::new("/home/u/deep")).1);
    assert!(!l.matches_with_child(Path::new("/etc")).1);
    assert!(m(&["a/**/b/**/c"], "/x/a/1/b/2/3/c"));
    assert!(m(&["**"], "/x"));
    // `/` alone is `/**` to restic: everything.
    assert!(m(&["/"], "/x/y"));
}

#[test]
fn negation_cuts_into_earlier_patterns_only() {
    let l = list(&["/d/*", "!/d/keep"]);
    assert!(l.matches(Path::new("/d/a")));
    assert!(!l.matches(Path::new("/d/keep")));
    assert!(!l.matches(Path::new("/d/keep/sub")));
    // A negation before the pattern it would cut into does nothing.
    assert!(list(&["!/d/keep", "/d/*"]).matches(Path::new("/d/keep")));
    // A negation alone matches nothing.
    assert!(!m(&["!x"], "/x"));
    // With include semantics a negated match also stops the descent.
    let l = list(&["/d", "!/d/skip"]);
    assert_eq!(l.matches_with_child(Path::new("/d/skip")), (false, false));
    assert_eq!(l.matches_with_child(Path::new("/d/other")), (true, true));
}

#[test]
fn case_insensitive_lists_lower_both_sides() {
    let l = PatternList::new_case_insensitive(&["*.TXT", "/Data/ÄB"]).unwrap();
    assert!(l.matches(Path::new("/x/File.txt")));
    assert!(l.matches(Path::new("/DATA/äb/c")));
    assert!(!list(&["*.TXT"]).matches(Path::new("/x/File.txt")));
    assert_eq!(go_to_lower("İ".as_bytes()), b"i");
    // Not all ASCII: each invalid byte becomes U+FFFD, as Go's ToLower does.
    assert_eq!(go_to_lower(b"\xffA\xc3\x84"), "\u{fffd}aä".as_bytes());
    assert_eq!(go_to_lower(b"AB"), b"ab");
    let f = Filter::new(&["/a"], &["/B"]).unwrap();
    assert!(f.matches(Path::new("/a/x")) && f.matches(Path::new("/b/x")));
    assert!(!f.matches(Path::new("/A/x")));
}

#[test]
fn byte_names_match_exactly() {
    let raw = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
    let l = PatternList::new(&[raw(b"/d/a\xff")]).unwrap();
    assert!(l.matches(Path::new(OsStr::from_bytes(b"/d/a\xff"))));
    assert!(!l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe"))));
    assert!(!l.matches(Path::new("/d/a\u{fffd}")));
    let l = list(&["/d/a?"]);
    assert!(l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe"))));
    assert!(l.matches(Path::new("/d/a\u{e9}")));
    assert!(!l.matches(Path::new(OsStr::from_bytes(b"/d/a\xfe\xfe"))));
}

#[test]
fn bad_patterns_are_refused_and_empty_ones_ignored() {
    let err = PatternList::new(&["ok", "/a/[b"]).unwrap_err();
    assert!(
        matches!(&err, Error::Invalid { pattern, .. } if pattern == "/a/[b"),
        "{err}"
    );
    assert!(PatternList::new(&["!a\\"]).is_err());
    assert!(PatternList::new(&[""]).unwrap().is_empty());
    assert!(!m(&[], "/x"));
}
