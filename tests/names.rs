//! File names and link targets that are not plain text: bytes that are not UTF-8, quotes,
//! backslashes, newlines, control and non-printable characters. restic 0.14 is the oracle:
//! what snapback writes must pass `restic check` and restore byte-exact with restic, what
//! restic writes must restore byte-exact with snapback, and both must encode names alike.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{diff_trees, Restic, Scratch, Snapback};

const PASSWORD: &str = "names-test-password";

/// The awkward names, as raw bytes.
fn names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        &b"a\xff"[..],
        b"a\xfe",
        b"back\\slash",
        b"quo\"te",
        b"new\nline",
        b"tab\there",
        b"\x01ctl",
        b"del\x7f",
        // The text `\xff` next to the byte 0xff.
        b"\\xff",
        b"\xff",
        b"<a&b>",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    for s in [
        "é",
        "日本",
        "😀",
        "nb\u{a0}sp",
        "zw\u{200b}",
        "bom\u{feff}",
        // A valid U+FFFD next to an invalid byte.
        "x\u{fffd}",
    ] {
        v.push(s.as_bytes().to_vec());
    }
    v.push(b"x\xff".to_vec());
    v
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// `root/d/<each name>` (files with their name as content), a directory with a byte name
/// holding a file, and symlinks with a byte target.
fn make_names_tree(root: &Path) {
    let d = root.join("d");
    fs::create_dir_all(&d).unwrap();
    for n in names() {
        let mut content = b"content of ".to_vec();
        content.extend_from_slice(&n);
        fs::write(d.join(os(&n)), content).unwrap();
    }
    let sub = d.join(os(b"dir\xff"));
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join(os(b"in\xfe")), b"inner").unwrap();
    std::os::unix::fs::symlink(os(b"target\xff\xfe"), d.join(os(b"link\xff"))).unwrap();
    std::os::unix::fs::symlink("quo\"te\ndé", d.join("link-valid")).unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    restic: Restic,
    snapback: Snapback,
}

impl Fixture {
    fn new() -> Fixture {
        let Scratch {
            dir,
            root,
            restic,
            snapback,
        } = Scratch::init(PASSWORD);
        let src = root.join("src");
        make_names_tree(&src);
        Fixture {
            _dir: dir,
            root,
            src,
            restic,
            snapback,
        }
    }
}

/// Every path below `root`, relative, as raw bytes.
fn listing(root: &Path) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(child.clone());
            }
            out.insert(child.into_os_string().into_vec());
        }
    }
    out
}

/// Asserts that `restored` holds `src` exactly: names, contents, link targets (byte-exact).
fn assert_same_tree(src: &Path, restored: &Path, what: &str) {
    assert_eq!(listing(src), listing(restored), "{what}: names");
    let diffs = diff_trees(src, restored);
    assert!(diffs.is_empty(), "{what}: {diffs:#?}");
    for rel in listing(src) {
        let (a, b) = (src.join(os(&rel)), restored.join(os(&rel)));
        let m = fs::symlink_metadata(&a).unwrap();
        if m.is_symlink() {
            assert_eq!(
                fs::read_link(&a).unwrap(),
                fs::read_link(&b).unwrap(),
                "{what}: link {:?}",
                String::from_utf8_lossy(&rel)
            );
        } else if m.is_file() {
            assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap(), "{what}");
        }
    }
}

/// The `name` strings of the tree blob at snapshot path `dir`, as stored (raw JSON text).
fn stored_names(restic: &Restic, snapshot: &str, dir: &[&[u8]]) -> Vec<String> {
    let snap: serde_json::Value =
        serde_json::from_str(&restic.run_ok(&["cat", "snapshot", snapshot])).unwrap();
    let mut tree = snap["tree"].as_str().unwrap().to_string();
    let raw_tree = |id: &str| restic.run(&["cat", "blob", id]).stdout;
    for comp in dir {
        let t: serde_json::Value = serde_json::from_slice(&raw_tree(&tree)).unwrap();
        let want = String::from_utf8_lossy(comp);
        tree = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == *want)
            .unwrap_or_else(|| panic!("no {want} in {t}"))["subtree"]
            .as_str()
            .unwrap()
            .to_string();
    }
    let raw = String::from_utf8(raw_tree(&tree)).unwrap();
    // The encoded names exactly as written (JSON escapes included).
    raw.split("{\"name\":\"")
        .skip(1)
        .map(|s| {
            let mut end = 0;
            let b = s.as_bytes();
            while b[end] != b'"' {
                end += if b[end] == b'\\' { 2 } else { 1 };
            }
            s[..end].to_string()
        })
        .collect()
}

fn latest_id(tool: &Restic) -> String {
    let snaps: Vec<serde_json::Value> = tool.json(&["snapshots"]);
    snaps.last().unwrap()["id"].as_str().unwrap().to_string()
}

fn snapshot_path_components(root: &Path) -> Vec<Vec<u8>> {
    root.components()
        .skip(1)
        .map(|c| c.as_os_str().as_bytes().to_vec())
        .collect()
}

#[test]
fn snapback_path_backup_of_awkward_names_is_read_by_restic_byte_exact() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    f.snapback
        .run_ok(&[OsStr::new("backup"), f.src.as_os_str()]);
    f.restic.run_ok(&["check", "--read-data"]);

    // restic ls lists every name, byte-exact (it prints raw bytes).
    let ls = f.restic.run(&["ls", "latest"]).stdout;
    let lines: BTreeSet<&[u8]> = ls.split(|&b| b == b'\n').collect();
    for n in names() {
        let mut p = f.src.join("d").into_os_string().into_vec();
        p.push(b'/');
        p.extend_from_slice(&n);
        // A name with a newline spans two lines of ls output; check its halves.
        for part in p.split(|&b| b == b'\n') {
            assert!(
                lines
                    .iter()
                    .any(|l| l.ends_with(part) || l.starts_with(part)),
                "restic ls misses {:?}",
                String::from_utf8_lossy(&n)
            );
        }
    }

    let target = f.root.join("restic-restore");
    f.restic
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    // Link targets aside (restic 0.14 reads only the lossy `linktarget`), byte-exact.
    let restored = target.join(f.src.strip_prefix("/").unwrap());
    assert_eq!(listing(&f.src), listing(&restored));
    for n in names() {
        let rel = Path::new("d").join(os(&n));
        assert_eq!(
            fs::read(f.src.join(&rel)).unwrap(),
            fs::read(restored.join(&rel)).unwrap(),
            "{:?}",
            String::from_utf8_lossy(&n)
        );
    }

    // restic dump of a byte-named file.
    let file = f.src.join("d").join(os(b"a\xff"));
    let out = f
        .restic
        .run(&[OsStr::new("dump"), OsStr::new("latest"), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"content of a\xff");

    // snapback's own read side: restore (link targets too), ls, dump.
    let ours = f.root.join("snapback-restore");
    f.snapback
        .run_ok(&["restore", "latest", "--target", ours.to_str().unwrap()]);
    assert_same_tree(
        &f.src,
        &ours.join(f.src.strip_prefix("/").unwrap()),
        "snapback",
    );
    let sb_ls = f.snapback.run(&["ls", "latest"]).stdout;
    assert_eq!(
        sb_ls.split(|&b| b == b'\n').skip(1).collect::<Vec<_>>(),
        ls.split(|&b| b == b'\n').skip(1).collect::<Vec<_>>(),
        "snapback ls prints what restic ls prints"
    );
    let out = f
        .snapback
        .run(&[OsStr::new("dump"), OsStr::new("latest"), file.as_os_str()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"content of a\xff");
    let inner = f.src.join(os(b"d/dir\xff/in\xfe"));
    let out = f
        .snapback
        .run(&[OsStr::new("dump"), OsStr::new("latest"), inner.as_os_str()]);
    assert_eq!(out.stdout, b"inner");
    // JSON must be text: names there are lossy, as in restic's --json.
    let json = f.snapback.run(&["ls", "--json", "latest"]).stdout;
    let text = String::from_utf8(json).expect("ls --json is UTF-8");
    assert!(text.contains("\"name\":\"a\u{fffd}\""), "{text}");
}

#[test]
fn tar_stream_of_awkward_names_keeps_every_name() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    let tar = Command::new("tar")
        .args(["-c", "-C"])
        .arg(&f.src)
        .arg(".")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(tar.status.success());
    let out = f
        .snapback
        .run_with_stdin(&["backup", "--stdin"], &tar.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.restic.run_ok(&["check", "--read-data"]);
    let target = f.root.join("restic-restore");
    f.restic
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    // Every name (today's bug: a\xff and a\xfe became one a\u{fffd}).
    assert_eq!(listing(&f.src), listing(&target));
    let ours = f.root.join("snapback-restore");
    f.snapback
        .run_ok(&["restore", "latest", "--target", ours.to_str().unwrap()]);
    assert_same_tree(&f.src, &ours, "snapback from tar");
}

#[test]
fn restic_backup_of_awkward_names_is_restored_by_snapback_byte_exact_and_encoded_alike() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    f.restic.run_ok(&["backup", f.src.to_str().unwrap()]);
    let theirs = latest_id(&f.restic);
    let target = f.root.join("snapback-restore");
    f.snapback
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(f.src.strip_prefix("/").unwrap());
    // restic 0.14 stored the byte link target lossily; everything else is exact.
    assert_eq!(listing(&f.src), listing(&restored));
    for n in names() {
        let rel = Path::new("d").join(os(&n));
        assert_eq!(
            fs::read(f.src.join(&rel)).unwrap(),
            fs::read(restored.join(&rel)).unwrap()
        );
    }
    assert_eq!(
        fs::read_link(restored.join("d/link-valid")).unwrap(),
        Path::new("quo\"te\ndé")
    );
    let ls = f.snapback.run(&["ls", "latest"]).stdout;
    assert_eq!(
        ls.split(|&b| b == b'\n').skip(1).collect::<Vec<_>>(),
        f.restic
            .run(&["ls", "latest"])
            .stdout
            .split(|&b| b == b'\n')
            .skip(1)
            .collect::<Vec<_>>()
    );
    let file = f.src.join(os(b"d/new\nline"));
    let out = f
        .snapback
        .run(&[OsStr::new("dump"), OsStr::new("latest"), file.as_os_str()]);
    assert_eq!(out.stdout, b"content of new\nline");

    // The same tree backed up by snapback: the names are encoded exactly as restic's.
    f.snapback
        .run_ok(&["backup", "--force", f.src.to_str().unwrap()]);
    let ours = latest_id(&f.restic);
    assert_ne!(ours, theirs);
    let mut dir = snapshot_path_components(&f.src);
    dir.push(b"d".to_vec());
    let dir: Vec<&[u8]> = dir.iter().map(Vec::as_slice).collect();
    let (a, b) = (
        stored_names(&f.restic, &theirs, &dir),
        stored_names(&f.restic, &ours, &dir),
    );
    assert_eq!(a.len(), names().len() + 3);
    assert_eq!(a, b, "name encodings differ from restic's");
    assert!(a.contains(&r"a\\xff".to_string()), "{a:?}");
    // Go's JSON escapes `<`, `>` and `&`; so does snapback now.
    assert!(a.contains(&r"\u003ca\u0026b\u003e".to_string()), "{a:?}");
}

#[test]
fn snapback_round_trip_keeps_byte_link_targets() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    f.snapback
        .run_ok(&[OsStr::new("backup"), f.src.as_os_str()]);
    let target = f.root.join("restore");
    f.snapback
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let restored = target.join(f.src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::read_link(restored.join(os(b"d/link\xff"))).unwrap(),
        Path::new(os(b"target\xff\xfe"))
    );
    assert_same_tree(&f.src, &restored, "round trip");
    // A path argument that is not UTF-8 is backed up as it is.
    let sub = f.src.join(os(b"d/dir\xff"));
    f.snapback.run_ok(&[OsStr::new("backup"), sub.as_os_str()]);
    let out = f.snapback.run(&[
        OsStr::new("dump"),
        OsStr::new("latest"),
        sub.join(os(b"in\xfe")).as_os_str(),
    ]);
    assert_eq!(out.stdout, b"inner");
}

#[test]
fn restore_include_and_exclude_match_byte_names() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    f.snapback
        .run_ok(&[OsStr::new("backup"), f.src.as_os_str()]);
    let base = f.src.join("d").into_os_string().into_vec();
    let pat = |name: &[u8]| {
        let mut p = base.clone();
        p.push(b'/');
        p.extend_from_slice(name);
        std::ffi::OsString::from_vec(p)
    };

    let only = f.root.join("only");
    f.snapback.run_ok(&[
        OsStr::new("restore"),
        OsStr::new("latest"),
        OsStr::new("--target"),
        only.as_os_str(),
        OsStr::new("--include"),
        &pat(b"a\xff"),
    ]);
    let got = listing(&only.join(f.src.strip_prefix("/").unwrap()).join("d"));
    assert_eq!(
        got,
        BTreeSet::from([b"a\xff".to_vec()]),
        "only a\\xff, not a\\xfe"
    );

    let without = f.root.join("without");
    f.snapback.run_ok(&[
        OsStr::new("restore"),
        OsStr::new("latest"),
        OsStr::new("--target"),
        without.as_os_str(),
        OsStr::new("--exclude"),
        &pat(b"a\xff"),
        OsStr::new("--exclude"),
        os(b"dir\xff"),
    ]);
    let got = listing(&without.join(f.src.strip_prefix("/").unwrap()).join("d"));
    assert!(!got.contains(b"a\xff".as_slice()));
    assert!(got.contains(b"a\xfe".as_slice()));
    assert!(!got.contains(b"dir\xff".as_slice()));
    assert_eq!(got.len(), listing(&f.src.join("d")).len() - 3, "{got:?}");
}

#[test]
fn backup_excludes_match_byte_names() {
    if common::skip_without_restic("names") {
        return;
    }
    let f = Fixture::new();
    // Exclude globs match raw bytes: `?` is one character (an invalid byte counts as one, as
    // in Go), so `dir?` is `dir\xff` (and its contents), while `a\xff` and `a\xfe` stay.
    f.snapback.run_ok(&[
        OsStr::new("backup"),
        OsStr::new("-e"),
        OsStr::new("dir?"),
        OsStr::new("-e"),
        OsStr::new("*/d/x?"),
        f.src.as_os_str(),
    ]);
    f.restic.run_ok(&["check"]);
    let ls = f.restic.run(&["ls", "latest"]).stdout;
    let names: BTreeSet<&[u8]> = ls
        .split(|&b| b == b'\n')
        .filter_map(|l| l.rsplit(|&b| b == b'/').next())
        .collect();
    assert!(!names.contains(&b"dir\xff"[..]));
    assert!(!names.contains(&b"in\xfe"[..]));
    assert!(!names.contains(&b"x\xff"[..]));
    // U+FFFD is one character: `x?` takes it too, as restic's does (tests/patterns.rs
    // compares such cases with restic itself).
    assert!(!names.contains("x\u{fffd}".as_bytes()));
    assert!(names.contains(&b"a\xff"[..]) && names.contains(&b"a\xfe"[..]));
}
