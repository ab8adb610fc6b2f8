//! The read side (`ls`, `restore`, `dump`) against snapshots written by the real restic (and
//! one written by snapback), judged by restic's own output and by the source tree.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{diff_trees, make_tree, set_mtime, Restic, Scratch, Snapback};

const PASSWORD: &str = "read-side-test-password";

/// A source tree backed up by restic into a fresh local repository.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// The varied tree (no special files, so `diff -r` can read everything).
    src: PathBuf,
    /// A directory holding a fifo.
    special: PathBuf,
    restic: Restic,
    snapback: Snapback,
}

impl Fixture {
    /// Builds the trees and runs `restic init` + `restic backup src special`.
    fn new() -> Fixture {
        let Scratch {
            dir,
            root,
            restic,
            snapback,
        } = Scratch::init(PASSWORD);
        let src = root.join("src");
        make_tree(&src);
        // Extras: a hard-link pair across directories, a setuid file, a symlink with its own
        // mtime, a fifo.
        fs::write(src.join("hl-a"), b"hard linked content\n").unwrap();
        fs::hard_link(src.join("hl-a"), src.join("nested/hl-b")).unwrap();
        // A third link: the restore forgets a group only after its last link.
        fs::hard_link(src.join("hl-a"), src.join("nested/a/hl-c")).unwrap();
        set_mtime(&src.join("hl-a"), 1_610_000_000, 5);
        fs::write(src.join("suid.bin"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("suid.bin"), fs::Permissions::from_mode(0o4755)).unwrap();
        set_mtime(&src.join("suid.bin"), 1_620_000_000, 0);
        let status = Command::new("touch")
            .args(["-h", "-d", "@1630000000"])
            .arg(src.join("link-to-hello"))
            .status()
            .unwrap();
        assert!(status.success());
        set_mtime(&src.join("nested"), 1_640_000_000, 0);
        set_mtime(&src, 1_650_000_000, 0);
        let special = root.join("special");
        fs::create_dir(&special).unwrap();
        let status = Command::new("mkfifo")
            .arg(special.join("pipe"))
            .status()
            .unwrap();
        assert!(status.success());

        restic.run_ok(&["backup", src.to_str().unwrap(), special.to_str().unwrap()]);
        Fixture {
            _dir: dir,
            root,
            src,
            special,
            restic,
            snapback,
        }
    }

    fn abs(&self, p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    /// Where restoring the whole snapshot into `target` puts `p`.
    fn restored(&self, target: &Path, p: &Path) -> PathBuf {
        target.join(p.strip_prefix("/").unwrap())
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The node lines (absolute paths) of `ls` output, without the header.
fn node_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("snapshot "))
        .map(str::to_string)
        .collect()
}

/// Runs a program with `input` on stdin and returns stdout (panics on failure).
fn pipe_through(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output().unwrap()
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn tar_members(tar: &[u8]) -> Vec<String> {
    let listing = pipe_through("tar", &["-tf", "-"], tar);
    let mut v: Vec<String> = String::from_utf8_lossy(&listing)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Every path below `root` (relative), directories included.
fn all_paths(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

#[test]
fn snapshots_lists_the_restic_snapshot() {
    require_restic!();
    let f = Fixture::new();
    let snaps: Vec<serde_json::Value> = f.restic.json(&["snapshots"]);
    assert_eq!(snaps.len(), 1);
    let short = snaps[0]["short_id"].as_str().unwrap();
    let out = f.snapback.run_ok(&["snapshots"]);
    assert!(out.contains(short), "{out}");
    assert!(out.contains(&f.abs(&f.src)), "{out}");
}

#[test]
fn ls_matches_restic() {
    require_restic!();
    let f = Fixture::new();
    // Plain: the same paths in the same order.
    let ours = node_lines(&f.snapback.run_ok(&["ls", "latest"]));
    let theirs = node_lines(&f.restic.run_ok(&["ls", "latest"]));
    assert_eq!(ours, theirs);
    assert!(
        ours.contains(&format!("{}/nested/a/b/deep.txt", f.abs(&f.src))),
        "{ours:?}"
    );
    assert!(
        ours.contains(&format!("{}/pipe", f.abs(&f.special))),
        "{ours:?}"
    );

    // Long: byte for byte (mode strings, ids, sizes, local times, symlink targets).
    let ours = node_lines(&f.snapback.run_ok(&["ls", "--long", "latest"]));
    let theirs = node_lines(&f.restic.run_ok(&["ls", "--long", "latest"]));
    assert_eq!(ours, theirs);
    assert!(
        ours.iter()
            .any(|l| l.starts_with("urwxr-xr-x") && l.ends_with("/suid.bin")),
        "{ours:?}"
    );

    // With a directory argument: the directory and its direct children only.
    let nested = format!("{}/nested", f.abs(&f.src));
    let ours = node_lines(&f.snapback.run_ok(&["ls", "latest", &nested]));
    let theirs = node_lines(&f.restic.run_ok(&["ls", "latest", &nested]));
    assert_eq!(ours, theirs);
    assert!(!ours.iter().any(|l| l.ends_with("deep.txt")), "{ours:?}");

    // JSON: the node lines equal restic's field for field.
    // (`--json` is an option of our `ls`, not a global one as in restic.)
    let ours: Vec<serde_json::Value> = f
        .snapback
        .run_ok(&["ls", "--json", "latest"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let theirs = f.restic.json_lines(&["ls", "latest"]);
    assert_eq!(ours[0]["struct_type"], "snapshot");
    assert_eq!(ours[0]["id"], theirs[0]["id"]);
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(&theirs).skip(1) {
        assert_eq!(o, t);
    }
}

/// The restored tree equals the source: contents, modes (setuid included), mtimes, symlink
/// targets and times, hard links, fifos.
fn check_restored(f: &Fixture, target: &Path) {
    let restored_src = f.restored(target, &f.src);
    let diffs = diff_trees(&f.src, &restored_src);
    assert!(
        diffs.is_empty(),
        "restored tree differs:\n{}",
        diffs.join("\n")
    );
    let a = fs::metadata(restored_src.join("hl-a")).unwrap();
    let b = fs::metadata(restored_src.join("nested/hl-b")).unwrap();
    let c = fs::metadata(restored_src.join("nested/a/hl-c")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link pair restored as two files");
    assert_eq!(a.ino(), c.ino(), "third link restored as a file of its own");
    assert_eq!(a.nlink(), 3);
    assert_eq!(
        fs::metadata(restored_src.join("suid.bin")).unwrap().mode() & 0o7777,
        0o4755
    );
    let link = fs::symlink_metadata(restored_src.join("link-to-hello")).unwrap();
    assert_eq!(link.mtime(), 1_630_000_000, "symlink time not restored");
    assert_eq!(
        fs::read_link(restored_src.join("link-to-hello")).unwrap(),
        Path::new("hello.txt")
    );
    let pipe = fs::symlink_metadata(f.restored(target, &f.special).join("pipe")).unwrap();
    assert!(pipe.file_type().is_fifo(), "{pipe:?}");
    // Directory times are set after their contents.
    assert_eq!(fs::metadata(&restored_src).unwrap().mtime(), 1_650_000_000);
}

#[test]
fn restore_reproduces_the_tree() {
    require_restic!();
    let f = Fixture::new();
    let target = f.root.join("restored");
    let out = f
        .snapback
        .run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    f.snapback.expect_success(&["restore"], &out);
    check_restored(&f, &target);
    assert!(stdout(&out).contains("bytes"), "{}", stdout(&out));

    // Restoring again over the existing tree works and changes nothing.
    f.snapback
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    check_restored(&f, &target);

    // With a memory budget smaller than one blob, blobs are read one at a time: same tree.
    let small = f.root.join("restored-small-budget");
    f.snapback.run_ok(&[
        "restore",
        "latest",
        "--target",
        small.to_str().unwrap(),
        "--blob-memory",
        "1",
        "--pack-reads",
        "2",
    ]);
    check_restored(&f, &small);

    // Batches of two files and one blob: every file in its own batch, random.bin in parts,
    // a hard link whose first file is still queued, directories waiting for their files.
    let tiny = f.root.join("restored-tiny-batches");
    f.snapback.run_ok(&[
        "restore",
        "latest",
        "--target",
        tiny.to_str().unwrap(),
        "--batch-files",
        "2",
        "--batch-blobs",
        "1",
    ]);
    check_restored(&f, &tiny);
}

#[test]
fn restore_include_exclude_and_subpath() {
    require_restic!();
    let f = Fixture::new();
    let wanted = f.src.join("nested/lines.txt");

    // --include of one file: only that file (and its parent directories).
    let t1 = f.root.join("t-include");
    f.snapback.run_ok(&[
        "restore",
        "latest",
        "--target",
        t1.to_str().unwrap(),
        "--include",
        wanted.to_str().unwrap(),
    ]);
    let got = f.restored(&t1, &wanted);
    assert_eq!(fs::read(&got).unwrap(), fs::read(&wanted).unwrap());
    let files: Vec<PathBuf> = all_paths(&t1)
        .into_iter()
        .filter(|p| !t1.join(p).is_dir())
        .collect();
    assert_eq!(files, vec![got.strip_prefix(&t1).unwrap().to_path_buf()]);

    // --include of a directory by a relative pattern: the directory with its contents.
    let t2 = f.root.join("t-include-dir");
    f.snapback.run_ok(&[
        "restore",
        "latest",
        "--target",
        t2.to_str().unwrap(),
        "--include",
        "a",
    ]);
    assert!(f
        .restored(&t2, &f.src)
        .join("nested/a/b/deep.txt")
        .is_file());
    assert!(!f.restored(&t2, &f.src).join("hello.txt").exists());

    // --exclude: everything but the matches.
    let t3 = f.root.join("t-exclude");
    f.snapback.run_ok(&[
        "restore",
        "latest",
        "--target",
        t3.to_str().unwrap(),
        "--exclude",
        "*.txt",
    ]);
    let r = f.restored(&t3, &f.src);
    assert!(r.join("random.bin").is_file());
    assert!(!r.join("hello.txt").exists());
    assert!(!r.join("nested/lines.txt").exists());
    assert!(r.join("nested/a/b").is_dir());

    // SNAPSHOT:subpath restores that directory's contents straight into the target.
    let t4 = f.root.join("t-sub");
    let spec = format!("latest:{}", f.abs(&f.src));
    f.snapback
        .run_ok(&["restore", &spec, "--target", t4.to_str().unwrap()]);
    let diffs = diff_trees(&f.src, &t4);
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn dump_matches_restic() {
    require_restic!();
    let f = Fixture::new();
    // A file: its bytes.
    for name in ["random.bin", "empty", "nested/lines.txt"] {
        let p = f.src.join(name);
        let out = f.snapback.run(&["dump", "latest", p.to_str().unwrap()]);
        f.snapback.expect_success(&["dump"], &out);
        assert_eq!(out.stdout, fs::read(&p).unwrap(), "{name}");
    }
    // A reader that goes away early (`| head -c 10`) ends the dump quietly.
    let mut child = f
        .snapback
        .command(&["dump", "latest", f.src.join("random.bin").to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 10];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        &head[..],
        &fs::read(f.src.join("random.bin")).unwrap()[..10]
    );

    // A symlink is refused, as restic does.
    let out = f.snapback.run(&[
        "dump",
        "latest",
        f.src.join("link-to-hello").to_str().unwrap(),
    ]);
    assert!(!out.status.success());

    // Directories: the same tar member names as restic's dump.
    for dir in [
        f.abs(&f.src),
        f.abs(&f.src.join("nested")),
        f.abs(&f.special),
    ] {
        let ours = f.snapback.run(&["dump", "latest", &dir]);
        f.snapback.expect_success(&["dump", &dir], &ours);
        let theirs = f.restic.run(&["dump", "latest", &dir]);
        f.restic.expect_success(&["dump", &dir], &theirs);
        let (o, t) = (tar_members(&ours.stdout), tar_members(&theirs.stdout));
        assert_eq!(o, t, "members of {dir}");
        assert!(!o.is_empty());
    }
    // The whole snapshot: restic 0.14 drops fifos below the top level, we keep them.
    let ours = tar_members(&f.snapback.run(&["dump", "latest", "/"]).stdout);
    let mut theirs = tar_members(&f.restic.run(&["dump", "latest", "/"]).stdout);
    theirs.push(format!(
        "{}/pipe",
        f.abs(&f.special).trim_start_matches('/')
    ));
    theirs.sort();
    assert_eq!(ours, theirs);

    // Extracted, our tar reproduces the tree (modes, mtimes, links).
    let tar = f.snapback.run(&["dump", "latest", &f.abs(&f.src)]).stdout;
    let x = f.root.join("extracted");
    fs::create_dir(&x).unwrap();
    pipe_through("tar", &["-xpf", "-", "-C", x.to_str().unwrap()], &tar);
    let diffs = diff_trees(&f.src, &x.join(f.src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let xs = x.join(f.src.strip_prefix("/").unwrap());
    assert_eq!(
        fs::metadata(xs.join("hl-a")).unwrap().ino(),
        fs::metadata(xs.join("nested/hl-b")).unwrap().ino()
    );
}

/// Finds blob `(pack, offset, length)` of the first content blob of the file at snapshot path
/// `file` with restic's own commands.
fn locate_first_blob(restic: &Restic, file: &Path) -> (String, u64, u64) {
    // restic 0.14's `cat snapshot` wants an id, not `latest`.
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots", "latest"]);
    let snap = &snaps[0];
    let mut tree = snap["tree"].as_str().unwrap().to_string();
    let comps: Vec<String> = file
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_str().unwrap().to_string())
        .collect();
    let mut blob = String::new();
    for (i, name) in comps.iter().enumerate() {
        let t: serde_json::Value =
            serde_json::from_str(&restic.run_ok(&["cat", "blob", &tree])).unwrap();
        let node = t["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not in tree"))
            .clone();
        if i + 1 == comps.len() {
            blob = node["content"][0].as_str().unwrap().to_string();
        } else {
            tree = node["subtree"].as_str().unwrap().to_string();
        }
    }
    for index in restic.run_ok(&["list", "index"]).lines() {
        let idx: serde_json::Value =
            serde_json::from_str(&restic.run_ok(&["cat", "index", index.trim()])).unwrap();
        for pack in idx["packs"].as_array().unwrap() {
            for b in pack["blobs"].as_array().unwrap() {
                if b["id"] == blob.as_str() {
                    return (
                        pack["id"].as_str().unwrap().to_string(),
                        b["offset"].as_u64().unwrap(),
                        b["length"].as_u64().unwrap(),
                    );
                }
            }
        }
    }
    panic!("blob {blob} not in any index");
}

#[test]
fn damaged_blob_fails_only_its_file() {
    require_restic!();
    let f = Fixture::new();
    let victim = f.src.join("random.bin");
    let (pack, offset, length) = locate_first_blob(&f.restic, &victim);
    let pack_path = f.root.join("repo/data").join(&pack[..2]).join(&pack);
    fs::set_permissions(&pack_path, fs::Permissions::from_mode(0o600)).unwrap();
    let mut data = fs::read(&pack_path).unwrap();
    data[(offset + length / 2) as usize] ^= 0x55;
    fs::write(&pack_path, &data).unwrap();

    // In one batch, and one blob per batch (random.bin in parts: the rest of the file is
    // skipped once its first part fails).
    for (name, batch) in [("restored", "16384"), ("restored-in-parts", "1")] {
        let target = f.root.join(name);
        let out = f.snapback.run(&[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "--batch-blobs",
            batch,
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "stdout: {}\nstderr: {err}",
            stdout(&out)
        );
        assert!(err.contains("random.bin"), "{err}");
        assert!(!err.contains("hello.txt"), "{err}");
        let r = f.restored(&target, &f.src);
        assert!(!r.join("random.bin").exists(), "partial file left behind");
        for name in [
            "hello.txt",
            "nested/lines.txt",
            "nested/a/b/deep.txt",
            "hl-a",
            "nested/hl-b",
        ] {
            assert_eq!(
                fs::read(r.join(name)).unwrap(),
                fs::read(f.src.join(name)).unwrap(),
                "{name}"
            );
        }
    }
    // Dumping the damaged file fails too, instead of writing wrong bytes.
    let out = f
        .snapback
        .run(&["dump", "latest", victim.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn snapback_made_snapshot_reads_back() {
    require_restic!();
    let f = Fixture::new();
    // A second repository written by snapback itself.
    let repo = f.root.join("repo2");
    let restic = Restic::new(repo.to_str().unwrap(), PASSWORD);
    restic.run_ok(&["init"]);
    let snapback = Snapback::new(repo.to_str().unwrap(), PASSWORD);
    snapback.run_ok(&["backup", f.src.to_str().unwrap()]);

    let ours = node_lines(&snapback.run_ok(&["ls", "latest"]));
    let theirs = node_lines(&restic.run_ok(&["ls", "latest"]));
    assert_eq!(ours, theirs);
    assert!(ours.len() > 10, "{ours:?}");

    let target = f.root.join("restored2");
    snapback.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&f.src, &f.restored(&target, &f.src));
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let r = f.restored(&target, &f.src);
    assert_eq!(
        fs::metadata(r.join("hl-a")).unwrap().ino(),
        fs::metadata(r.join("nested/hl-b")).unwrap().ino()
    );

    let p = f.src.join("random.bin");
    let out = snapback.run(&["dump", "latest", p.to_str().unwrap()]);
    assert_eq!(out.stdout, fs::read(&p).unwrap());
}

/// "verified N files" (snapback) and "finished verifying N files" (restic 0.14).
fn verified_count(text: &str, prefix: &str) -> usize {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{text}"))
}

#[test]
fn restore_verify_reads_back_what_restic_verifies() {
    require_restic!();
    let f = Fixture::new();
    for (name, extra) in [("all", vec![]), ("some", vec!["--include", "/**/nested"])] {
        let ours = f.root.join(format!("verify-ours-{name}"));
        let theirs = f.root.join(format!("verify-restic-{name}"));
        let mut args = vec!["restore", "latest", "--verify", "--target"];
        args.push(ours.to_str().unwrap());
        args.extend(&extra);
        let out = f.snapback.run(&args);
        f.snapback.expect_success(&args, &out);
        let mut args = vec!["restore", "latest", "--verify", "--target"];
        args.push(theirs.to_str().unwrap());
        args.extend(&extra);
        let restic_out = f.restic.run_ok(&args);
        let n = verified_count(&stdout(&out), "verified ");
        assert!(n > 0, "{name}: nothing verified");
        assert_eq!(
            n,
            verified_count(&restic_out, "finished verifying "),
            "{name}: we verified another number of files than restic"
        );
    }
}

/// The verifier that `restore --verify` runs, on a restored tree changed afterwards: a flipped
/// byte, a truncated file, a file grown by a byte (also an empty one), a file replaced by a
/// symlink. Each is named, nothing else is.
#[test]
fn restore_verify_names_every_restored_file_that_differs() {
    require_restic!();
    let f = Fixture::new();
    let target = f.root.join("restored");
    f.snapback
        .run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let repo_url = f.root.join("repo");
    let (repo, index, tree) = rt.block_on(async {
        let repo = snapback_repo::Repository::open(
            snapback_repo::Backend::from_url(repo_url.to_str().unwrap()).unwrap(),
            PASSWORD.as_bytes(),
        )
        .await
        .unwrap();
        let (_, snap) = repo.find_snapshot("latest", None, &[]).await.unwrap();
        let index = std::sync::Arc::new(snapback_repo::BlobIndex::load(&repo).await.unwrap());
        (repo, index, snap.tree)
    });
    let start = snapback_restore::tree_walk::root_node(tree);
    let opts = snapback_restore::restore::RestoreOptions::new(&target);
    let run = || {
        rt.block_on(snapback_restore::verify_restore::verify(
            &repo,
            index.clone(),
            &start,
            &opts,
            &Default::default(),
        ))
        .unwrap()
    };
    let clean = run();
    assert!(clean.mismatches.is_empty(), "{:?}", clean.mismatches);
    assert!(clean.files >= 9, "{clean:?}");

    let local = |name: &str| f.restored(&target, &f.src.join(name));
    let mut random = fs::read(local("random.bin")).unwrap();
    let mid = random.len() / 2;
    random[mid] ^= 0x20;
    fs::write(local("random.bin"), &random).unwrap();
    let lines = fs::read(local("nested/lines.txt")).unwrap();
    fs::write(local("nested/lines.txt"), &lines[..lines.len() - 1]).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(local("hello.txt"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    fs::write(local("empty"), b"x").unwrap();
    fs::remove_file(local("run.sh")).unwrap();
    std::os::unix::fs::symlink("hello.txt", local("run.sh")).unwrap();

    let found = run();
    let named: BTreeSet<PathBuf> = found.mismatches.iter().map(|m| m.path.clone()).collect();
    let want: BTreeSet<PathBuf> = [
        "random.bin",
        "nested/lines.txt",
        "hello.txt",
        "empty",
        "run.sh",
    ]
    .iter()
    .map(|n| f.src.join(n))
    .collect();
    assert_eq!(named, want, "{:#?}", found.mismatches);
    assert_eq!(found.files, clean.files - 5);
    for m in &found.mismatches {
        eprintln!("{}: {}", m.path.display(), m.message);
    }
}
