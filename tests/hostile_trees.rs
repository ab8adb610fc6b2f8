//! `snapback restore` treats trees as hostile input: every Pod sharing a repository holds its
//! key, so a valid MAC says nothing about a tree's intent. These tests write crafted tree
//! blobs and snapshots with the repository library (repeated names, names that escape,
//! hard-link groups whose first member is replaced by a symlink) and restore them next to a
//! "victim" outside the target, which must stay untouched.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::Snapback;
use serde_json::{json, Value};
use snapback_repo::backend::Backend;
use snapback_repo::file::key::KdfParams;
use snapback_repo::file::tree::go_mode;
use snapback_repo::file::NodeType;
use snapback_repo::pack::PackBuilder;
use snapback_repo::{BlobType, FileType, Id, IndexWriter, InitOptions, Repository};

const PASSWORD: &str = "hostile-trees";
const TIME: &str = "2021-03-04T05:06:07.000000008Z";

/// A repository written through the library, with a victim file and directory beside it.
struct Crafted {
    _dir: tempfile::TempDir,
    root: PathBuf,
    rt: tokio::runtime::Runtime,
    repo: Repository,
    snapback: Snapback,
    /// Snapshots written so far (each one later than the last, so `latest` is the newest).
    snapshots: std::cell::Cell<i64>,
}

impl Crafted {
    fn new() -> Crafted {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let url = root.join("repo").to_str().unwrap().to_string();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let repo = rt
            .block_on(Repository::init(
                Backend::from_url(&url).unwrap(),
                PASSWORD.as_bytes(),
                InitOptions {
                    // Cheap: the key's strength is not under test.
                    kdf: KdfParams {
                        n: 1 << 10,
                        r: 8,
                        p: 1,
                    },
                    ..InitOptions::default()
                },
            ))
            .unwrap();
        // Victims outside the target: a private file and a directory.
        fs::create_dir(root.join("outside")).unwrap();
        fs::write(root.join("outside/victim"), b"victim content\n").unwrap();
        fs::set_permissions(
            root.join("outside/victim"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let snapback = Snapback::new(&url, PASSWORD);
        Crafted {
            _dir: dir,
            root,
            rt,
            repo,
            snapback,
            snapshots: std::cell::Cell::new(0),
        }
    }

    fn victim(&self) -> PathBuf {
        self.root.join("outside/victim")
    }

    fn outside(&self) -> PathBuf {
        self.root.join("outside")
    }

    /// Stores one blob in a pack of its own, indexed.
    fn blob(&self, ty: BlobType, plain: &[u8]) -> Id {
        let id = Id::hash(plain);
        let mut pack = PackBuilder::new();
        pack.add(id, ty, &self.repo.key().encrypt(plain), None)
            .unwrap();
        let pack = pack.finish(self.repo.key()).unwrap();
        self.rt.block_on(async {
            self.repo
                .backend()
                .write(FileType::Pack, &pack.id, pack.bytes.into())
                .await
                .unwrap();
            let mut index = IndexWriter::default();
            index.add(pack.id, &pack.blobs);
            index.flush(&self.repo).await.unwrap();
        });
        id
    }

    /// A tree blob with exactly these nodes, in this order (restic's JSON, written by hand so
    /// that nothing on the way sorts, deduplicates or validates).
    fn tree(&self, nodes: Vec<Value>) -> String {
        let mut bytes = serde_json::to_vec(&json!({ "nodes": nodes })).unwrap();
        bytes.push(b'\n');
        self.blob(BlobType::Tree, &bytes).to_hex()
    }

    /// A data blob.
    fn data(&self, content: &[u8]) -> String {
        self.blob(BlobType::Data, content).to_hex()
    }

    /// A snapshot of `tree`.
    fn snapshot(&self, tree: &str) {
        let n = self.snapshots.get() + 1;
        self.snapshots.set(n);
        let time = chrono::DateTime::from_timestamp(1_600_000_000 + n, 0).unwrap();
        let snap = json!({
            "time": time.to_rfc3339(),
            "tree": tree,
            "paths": ["/crafted"],
            "hostname": "crafted",
            "username": "root",
        });
        self.rt
            .block_on(self.repo.save_json(FileType::Snapshot, &snap))
            .unwrap();
    }

    /// `snapback restore latest` into `target` (plus `extra` arguments).
    fn restore(&self, target: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.snapback.run(&args)
    }
}

fn node(name: &str, ty: NodeType, perm: u32) -> Value {
    json!({
        "name": name,
        "type": match ty {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Fifo => "fifo",
            _ => unreachable!(),
        },
        "mode": go_mode::from_unix(ty, perm),
        "mtime": TIME,
        "atime": TIME,
        "ctime": TIME,
        // Someone else: giving files away is what root's restore does.
        "uid": 4321,
        "gid": 4321,
    })
}

/// A file node; its content blobs hold `size` bytes.
fn file(name: &str, perm: u32, content: &[String], size: u64) -> Value {
    let mut n = node(name, NodeType::File, perm);
    n["content"] = json!(content);
    n["size"] = json!(size);
    n
}

fn symlink(name: &str, target: &Path) -> Value {
    let mut n = node(name, NodeType::Symlink, 0o777);
    n["linktarget"] = json!(target.to_str().unwrap());
    n
}

fn dir(name: &str, subtree: &str) -> Value {
    let mut n = node(name, NodeType::Dir, 0o755);
    n["subtree"] = json!(subtree);
    n
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The victim's (mode, owner, content).
fn state(p: &Path) -> (u32, u32, u32, Vec<u8>) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mode(), m.uid(), m.gid(), fs::read(p).unwrap())
}

/// Every path below `dir` (not following links).
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn a_symlink_repeating_a_file_name_never_gets_the_files_metadata() {
    let c = Crafted::new();
    let before = state(&c.victim());
    // Unsorted on purpose (restic writes sorted trees; we tolerate but still catch the
    // repeated name): the empty setuid file `x`, then a symlink `x` to the victim.
    let hello = c.data(b"hello\n");
    let root = c.tree(vec![
        file("z", 0o644, std::slice::from_ref(&hello), 6),
        file("x", 0o4777, &[], 0),
        symlink("x", &c.victim()),
    ]);
    c.snapshot(&root);
    let target = c.root.join("target");
    let out = c.restore(&target, &[]);

    assert_eq!(state(&c.victim()), before, "{}", stderr(&out));
    // The first node of the name wins; the repeat is reported, and the restore says so.
    let x = fs::symlink_metadata(target.join("x")).unwrap();
    assert!(x.is_file(), "{x:?}");
    assert_eq!(x.mode() & 0o7777, 0o4777);
    assert_eq!((x.uid(), x.gid()), (4321, 4321));
    assert_eq!(fs::read(target.join("z")).unwrap(), b"hello\n");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("/x"), "{}", stderr(&out));
    assert!(stderr(&out).contains("repeat"), "{}", stderr(&out));
}

#[test]
fn a_repeated_directory_cannot_plant_a_symlink_under_an_earlier_file() {
    let c = Crafted::new();
    let before = state(&c.victim());
    // `d` twice: the first holds an empty setuid file `f`, the second a symlink `f` to the
    // victim. Merging the two would chmod the victim through the link.
    let first = c.tree(vec![file("f", 0o4777, &[], 0)]);
    let second = c.tree(vec![symlink("f", &c.victim())]);
    let root = c.tree(vec![dir("d", &first), dir("d", &second)]);
    c.snapshot(&root);
    let target = c.root.join("target");
    let out = c.restore(&target, &[]);

    assert_eq!(state(&c.victim()), before, "{}", stderr(&out));
    assert!(fs::symlink_metadata(target.join("d/f")).unwrap().is_file());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_directory_and_a_symlink_of_one_name_keep_children_inside() {
    let c = Crafted::new();
    let before = listing(&c.outside());
    let hello = c.data(b"hello\n");
    let sub = c.tree(vec![file(
        "planted",
        0o644,
        std::slice::from_ref(&hello),
        6,
    )]);
    for (case, nodes) in [
        (
            "link-first",
            vec![symlink("d", &c.outside()), dir("d", &sub)],
        ),
        (
            "dir-first",
            vec![dir("d", &sub), symlink("d", &c.outside())],
        ),
    ] {
        let root = c.tree(nodes);
        c.snapshot(&root);
        let target = c.root.join(case);
        let out = c.restore(&target, &[]);
        assert_eq!(listing(&c.outside()), before, "{case}: {}", stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{case}: {}", stderr(&out));
        // Nothing of the snapshot landed anywhere but in the target.
        for p in listing(&target) {
            let canonical = p.parent().unwrap().canonicalize().unwrap();
            assert!(canonical.starts_with(&target), "{case}: {}", p.display());
        }
    }
}

#[test]
fn names_that_escape_are_refused_and_nothing_leaves_the_target() {
    let c = Crafted::new();
    let before = listing(&c.root.join("outside"));
    let hello = c.data(b"hello\n");
    let target = c.root.join("outside/target");
    for bad in ["..", ".", "a/b", "", "x\0y", "../victim", "/abs"] {
        // In a subdirectory (the rest of the snapshot is restored) and at the root.
        let sub = c.tree(vec![file(bad, 0o644, std::slice::from_ref(&hello), 6)]);
        let root = c.tree(vec![
            dir("sub", &sub),
            file("ok", 0o644, std::slice::from_ref(&hello), 6),
        ]);
        c.snapshot(&root);
        let out = c.restore(&target, &[]);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid"),
            "{bad:?}: {}",
            stderr(&out)
        );
        assert_eq!(fs::read(target.join("ok")).unwrap(), b"hello\n", "{bad:?}");
        let mut after = listing(&c.root.join("outside"));
        after.retain(|p| !p.starts_with(&target));
        assert_eq!(after, before, "{bad:?}");
        assert!(listing(&target.join("sub")).is_empty(), "{bad:?}");
        fs::remove_dir_all(&target).unwrap();

        let root = c.tree(vec![file(bad, 0o644, std::slice::from_ref(&hello), 6)]);
        c.snapshot(&root);
        let out = c.restore(&target, &[]);
        assert_ne!(out.status.code(), Some(0), "{bad:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid"),
            "{bad:?}: {}",
            stderr(&out)
        );
        let mut after = listing(&c.root.join("outside"));
        after.retain(|p| !p.starts_with(&target));
        assert_eq!(after, before, "{bad:?}");
        let _ = fs::remove_dir_all(&target);
    }
}

#[test]
fn symlinks_already_in_the_target_are_replaced_not_followed() {
    let c = Crafted::new();
    let before = state(&c.victim());
    let outside_before = listing(&c.outside());
    let hello = c.data(b"hello\n");
    let sub = c.tree(vec![file("f", 0o4755, std::slice::from_ref(&hello), 6)]);
    let root = c.tree(vec![
        dir("d", &sub),
        file("x", 0o4755, std::slice::from_ref(&hello), 6),
        file("y", 0o4755, &[], 0),
    ]);
    c.snapshot(&root);

    // Whole restore over planted links: `x` and `y` at the victim, `d` at the outside dir.
    let target = c.root.join("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(c.victim(), target.join("x")).unwrap();
    std::os::unix::fs::symlink(c.victim(), target.join("y")).unwrap();
    std::os::unix::fs::symlink(c.outside(), target.join("d")).unwrap();
    let out = c.restore(&target, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(state(&c.victim()), before);
    assert_eq!(listing(&c.outside()), outside_before);
    for p in ["x", "y", "d/f"] {
        let m = fs::symlink_metadata(target.join(p)).unwrap();
        assert!(m.is_file(), "{p}");
        assert_eq!(m.mode() & 0o7777, 0o4755, "{p}");
    }

    // Only `/d/f` selected: its parent `d` is not restored itself, and a planted link there
    // must not be followed either.
    let target = c.root.join("target-include");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(c.outside(), target.join("d")).unwrap();
    let out = c.restore(&target, &["--include", "/d/f"]);
    assert_eq!(listing(&c.outside()), outside_before, "{}", stderr(&out));
    assert_eq!(state(&c.victim()), before);
    let d = fs::symlink_metadata(target.join("d")).unwrap();
    assert!(d.is_dir(), "{}", stderr(&out));
    assert_eq!(fs::read(target.join("d/f")).unwrap(), b"hello\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_hard_link_never_shares_a_symlink_or_anything_outside() {
    let c = Crafted::new();
    let before = state(&c.victim());
    // A hard-link group (inode 7) whose first member `a` is repeated by a symlink to the
    // victim before the second member `b` comes.
    let linked = |name: &str| {
        let mut n = file(name, 0o4777, &[], 0);
        n["inode"] = json!(7);
        n["device_id"] = json!(1);
        n["links"] = json!(2);
        n
    };
    let root = c.tree(vec![linked("a"), symlink("a", &c.victim()), linked("b")]);
    c.snapshot(&root);
    let target = c.root.join("target");
    let out = c.restore(&target, &[]);
    assert_eq!(state(&c.victim()), before, "{}", stderr(&out));
    let a = fs::symlink_metadata(target.join("a")).unwrap();
    let b = fs::symlink_metadata(target.join("b")).unwrap();
    assert!(a.is_file() && b.is_file(), "{a:?} {b:?}");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
