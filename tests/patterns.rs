//! Include/exclude patterns judged by restic itself: for a table of patterns, `restic backup`
//! and `snapback backup` of the same tree must store the same paths (both snapshots read
//! with `restic ls`), and `restic restore` and `snapback restore` of one snapshot with the
//! same `--include`/`--exclude` must write the same paths. No expected result is written by
//! hand: restic 0.14 (the installed oracle) decides every case.

mod common;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use common::{Restic, Scratch, Snapback};

const PASSWORD: &str = "patterns-test-password";

/// The variable the exclude file refers to (set for both tools).
const ENV_VAR: &str = "SNAPBACK_PATTERN_TEST_DIR";

/// Builds the tree: nested directories, names with spaces, glob characters, upper case and
/// bytes that are not UTF-8.
fn make_tree(tree: &Path) {
    let files: &[&[u8]] = &[
        b"a.log",
        b"b.txt",
        b"UPPER.TXT",
        b"with space.txt",
        b"star*name",
        b"q?mark",
        b"br[ack]et",
        b"raw\xff.bin",
        b"raw\xfe/inner",
        b"src/main.rs",
        b"src/lib.log",
        b"src/build/x.o",
        b"build/y.o",
        b"build/sub/z.o",
        b"cache/c1",
        b"data/cache/c2",
        b"data/keep.txt",
        b"node_modules/m/index.js",
        b"a/b/c/d.txt",
        b"a/x/b/e.txt",
        b"keep/k1",
        b"keep/k2",
        b"Docs/Readme.MD",
        b"sp ace/f g",
        b"empty-dir/",
    ];
    for f in files {
        let path = tree.join(OsStr::from_bytes(f));
        if f.ends_with(b"/") {
            fs::create_dir_all(&path).unwrap();
            continue;
        }
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, f).unwrap();
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    tree: PathBuf,
    restic: Restic,
    snapback: Snapback,
}

impl Fixture {
    fn new() -> Fixture {
        let Scratch {
            dir,
            root,
            mut restic,
            mut snapback,
        } = Scratch::init(PASSWORD);
        let tree = root.join("tree");
        make_tree(&tree);
        restic.set_env(ENV_VAR, "data");
        snapback.set_env(ENV_VAR, "data");
        Fixture {
            _dir: dir,
            root,
            tree,
            restic,
            snapback,
        }
    }

    /// The tree's absolute path as a pattern prefix.
    fn abs(&self, rest: &str) -> OsString {
        let mut p = self.tree.as_os_str().to_os_string();
        p.push(rest);
        p
    }

    /// Paths (relative to the tree) in the newest snapshot, as restic lists them.
    fn latest_paths(&self) -> BTreeSet<Vec<u8>> {
        let out = self.restic.run(&["ls", "latest"]);
        assert!(out.status.success(), "restic ls failed: {out:?}");
        let prefix = self.tree.as_os_str().as_bytes();
        out.stdout
            .split(|&b| b == b'\n')
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|rest| rest.first() == Some(&b'/'))
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Backs the tree up with `tool` and `args` before the path.
    fn backup_paths(&self, with_restic: bool, args: &[OsString]) -> BTreeSet<Vec<u8>> {
        let mut all: Vec<OsString> = vec!["backup".into()];
        all.extend(args.iter().cloned());
        all.push(self.tree.clone().into_os_string());
        if with_restic {
            self.restic.run_ok(&all);
        } else {
            self.snapback.run_ok(&all);
        }
        self.latest_paths()
    }
}

fn show(set: &BTreeSet<Vec<u8>>) -> Vec<String> {
    set.iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn os(s: &str) -> OsString {
    s.into()
}

/// Every file and directory below `dir`, relative, with a trailing `/` for directories.
fn on_disk(dir: &Path) -> BTreeSet<Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let e = e.unwrap();
            let path = e.path();
            let mut rel = path
                .strip_prefix(base)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            if e.file_type().unwrap().is_dir() {
                rel.push(b'/');
                out.insert(rel);
                walk(base, &path, out);
            } else {
                out.insert(rel);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn backup_excludes_store_what_restic_stores() {
    require_restic!();
    let f = Fixture::new();
    let exclude_file = f.root.join("excludes");
    fs::write(
        &exclude_file,
        format!(
            "# a comment\n\n   *.o   \n  # indented comment\n${ENV_VAR}/cache\nkeep/k$UNSET_PATTERN_VAR2\n"
        ),
    )
    .unwrap();
    let iexclude_file = f.root.join("iexcludes");
    fs::write(&iexclude_file, "readme.md\n*.TXT\n").unwrap();
    let e = |p: OsString| vec![os("--exclude"), p];
    let cases: Vec<(&str, Vec<OsString>)> = vec![
        ("unanchored glob", e(os("*.log"))),
        ("anchored dir", e(f.abs("/build"))),
        ("anchored dir, trailing slash", e(f.abs("/src/"))),
        ("unanchored dir at any depth", e(os("cache"))),
        ("unanchored two components", e(os("build/*.o"))),
        ("double star", e(os("a/**/d.txt"))),
        ("double star anchored", e(f.abs("/**/b"))),
        ("leading double star", e(os("**/sub"))),
        ("character class", e(os("[a-c].*"))),
        ("negated class", e(os("[^ab]*.txt"))),
        ("escaped star", e(os("star\\*name"))),
        ("escaped question mark", e(os("q\\?mark"))),
        ("escaped bracket", e(os("br\\[ack\\]et"))),
        ("name with a space", e(os("with space.txt"))),
        ("dir with a space", e(os("sp ace"))),
        ("? on a byte that is not UTF-8", e(os("raw?.bin"))),
        ("* on names that are not UTF-8", e(os("raw*"))),
        ("path cleaned", e(os("x/../node_modules"))),
        ("pattern matching the backup root", e(os("tree"))),
        (
            "negation inside an excluded pattern",
            [e(os("keep/*")), e(os("!keep/k1"))].concat(),
        ),
        (
            "negation cannot reach into an excluded dir",
            [e(os("src")), e(os("!src/main.rs"))].concat(),
        ),
        ("negation alone", e(os("!b.txt"))),
        (
            "exclude file",
            vec![os("--exclude-file"), exclude_file.clone().into_os_string()],
        ),
        ("case-insensitive", vec![os("--iexclude"), os("upper.txt")]),
        (
            "case-insensitive file",
            vec![
                os("--iexclude-file"),
                iexclude_file.clone().into_os_string(),
            ],
        ),
        (
            "exact and case-insensitive together",
            [e(os("*.log")), vec![os("--iexclude"), os("DOCS")]].concat(),
        ),
    ];
    let full = f.backup_paths(true, &[]);
    let mut failures = Vec::new();
    for (name, args) in &cases {
        let theirs = f.backup_paths(true, args);
        let ours = f.backup_paths(false, args);
        // A case that excludes nothing would prove nothing (except the negation-alone case).
        if *name != "negation alone" {
            assert!(theirs.len() < full.len(), "{name}: no effect");
        }
        if ours != theirs {
            let only_ours: BTreeSet<_> = ours.difference(&theirs).cloned().collect();
            let only_theirs: BTreeSet<_> = theirs.difference(&ours).cloned().collect();
            failures.push(format!(
                "{name} {args:?}: only snapback stored {:?}, only restic stored {:?}",
                show(&only_ours),
                show(&only_theirs)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn restore_includes_and_excludes_write_what_restic_writes() {
    require_restic!();
    let f = Fixture::new();
    f.restic
        .run_ok(&[os("backup"), f.tree.clone().into_os_string()]);
    let i = |p: OsString| vec![os("--include"), p];
    let x = |p: OsString| vec![os("--exclude"), p];
    let cases: Vec<(&str, Vec<OsString>)> = vec![
        ("include unanchored glob", i(os("*.log"))),
        ("include anchored dir", i(f.abs("/src"))),
        ("include nested anchored file", i(f.abs("/a/b/c/d.txt"))),
        ("include unanchored two components", i(os("a/b"))),
        ("include double star", i(f.abs("/**/c"))),
        ("include class", i(os("[kq]*"))),
        ("include dir with space", i(os("sp ace"))),
        (
            "include bytes that are not UTF-8",
            i(OsString::from_vec(b"raw\xfe".to_vec())),
        ),
        ("include empty dir", i(os("empty-dir"))),
        (
            "include with negation",
            [i(f.abs("/keep")), i(os("!k2"))].concat(),
        ),
        ("exclude unanchored dir", x(os("build"))),
        ("exclude anchored dir", x(f.abs("/data"))),
        ("exclude double star", x(os("**/*.o"))),
        (
            "exclude with negation",
            [x(os("*.txt")), x(os("!b.txt"))].concat(),
        ),
        ("iinclude", vec![os("--iinclude"), os("*.md")]),
        ("iexclude", vec![os("--iexclude"), os("*.txt")]),
    ];
    let mut failures = Vec::new();
    for (n, (name, args)) in cases.iter().enumerate() {
        let restore = |with_restic: bool| {
            let target = f.root.join(format!("restore-{n}-{with_restic}"));
            let mut all: Vec<OsString> = vec![os("restore"), os("latest"), os("--target")];
            all.push(target.clone().into_os_string());
            all.extend(args.iter().cloned());
            if with_restic {
                f.restic.run_ok(&all);
            } else {
                f.snapback.run_ok(&all);
            }
            let got = on_disk(&target);
            fs::remove_dir_all(&target).ok();
            got
        };
        let theirs = restore(true);
        let ours = restore(false);
        assert!(!theirs.is_empty() || name.starts_with("include"), "{name}");
        if ours != theirs {
            let only_ours: BTreeSet<_> = ours.difference(&theirs).cloned().collect();
            let only_theirs: BTreeSet<_> = theirs.difference(&ours).cloned().collect();
            failures.push(format!(
                "{name} {args:?}: only snapback wrote {:?}, only restic wrote {:?}",
                show(&only_ours),
                show(&only_theirs)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_malformed_pattern_is_refused_by_both_tools_before_any_snapshot() {
    require_restic!();
    let f = Fixture::new();
    for bad in ["a[", "[]a]", "x\\", "/tree/[^"] {
        let args = [
            os("backup"),
            os("--exclude"),
            os(bad),
            f.tree.clone().into_os_string(),
        ];
        let theirs = f.restic.run(&args);
        let ours = f.snapback.run(&args);
        assert!(!theirs.status.success(), "restic accepted {bad}");
        assert!(!ours.status.success(), "snapback accepted {bad}");
        let err = String::from_utf8_lossy(&ours.stderr);
        assert!(err.contains("invalid pattern"), "{bad}: {err}");
    }
    let snapshots = f.restic.run_ok(&["snapshots", "--json"]);
    assert_eq!(snapshots.trim(), "[]", "no snapshot may be saved");
}
