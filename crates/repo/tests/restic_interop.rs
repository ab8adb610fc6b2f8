//! The repository library against the real `restic` binary: what we write restic reads and
//! checks, what restic writes we read and verify blob by blob, and tampering is detected.

use std::path::Path;
use std::process::Command;

use snapback_repo::file::key::KdfParams;
use snapback_repo::file::{SnapshotFile, Tree};
use snapback_repo::{Backend, BlobIndex, Error, FileType, Id, InitOptions, Repository};

const PASSWORD: &str = "correct horse battery staple";

fn restic(repo: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("restic")
        .args(["--no-cache", "--quiet"])
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", PASSWORD)
        .output()
        .expect("restic must be installed (.ci/setup installs it)");
    assert!(
        out.status.success(),
        "restic {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fast_init() -> InitOptions {
    InitOptions {
        kdf: KdfParams {
            n: 1 << 12,
            r: 8,
            p: 1,
        },
        ..InitOptions::default()
    }
}

fn write_sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join("small.txt"), b"hello restic\n".repeat(100)).unwrap();
    // 10 MiB of incompressible-ish bytes: more than the largest chunk (8 MiB), so several
    // chunks whatever the repository's random polynomial (3 MiB was one chunk now and then).
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let big: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(dir.join("sub/big.bin"), &big).unwrap();
    std::fs::write(
        dir.join("sub/deeper/text"),
        b"a line of text\n".repeat(50_000),
    )
    .unwrap();
    std::os::unix::fs::symlink("small.txt", dir.join("link")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn restic_accepts_a_repository_initialised_by_snapback() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let url = repo_dir.to_str().unwrap().to_string();
    let repo = Repository::init(
        Backend::from_url(&url).unwrap(),
        PASSWORD.as_bytes(),
        fast_init(),
    )
    .await
    .unwrap();
    assert_eq!(repo.config().version, 2);
    // A second init must refuse, not overwrite.
    let again = Repository::init(
        Backend::from_url(&url).unwrap(),
        PASSWORD.as_bytes(),
        fast_init(),
    )
    .await;
    assert!(matches!(again, Err(Error::AlreadyExists(_))), "{again:?}");

    let out = restic(&url, &["cat", "config"]);
    let cfg: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cfg["id"], repo.config().id.to_hex());
    assert_eq!(cfg["version"], 2);
    restic(&url, &["snapshots"]);
    restic(&url, &["check", "--read-data"]);
    // And restic can use it for a backup.
    let data = tmp.path().join("data");
    write_sample_tree(&data);
    restic(&url, &["backup", data.to_str().unwrap()]);
    restic(&url, &["check", "--read-data"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("repo").to_str().unwrap().to_string();
    Repository::init(
        Backend::from_url(&url).unwrap(),
        PASSWORD.as_bytes(),
        fast_init(),
    )
    .await
    .unwrap();
    let res = Repository::open(Backend::from_url(&url).unwrap(), b"not it").await;
    assert!(matches!(res, Err(Error::WrongPassword)), "{res:?}");
    let missing = tmp.path().join("nothing").to_str().unwrap().to_string();
    let res = Repository::open(Backend::from_url(&missing).unwrap(), b"x").await;
    assert!(matches!(res, Err(Error::RepositoryMissing(_))), "{res:?}");
    assert!(
        !std::path::Path::new(&missing).exists(),
        "opening created the directory"
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let res = Repository::open(Backend::from_url(empty.to_str().unwrap()).unwrap(), b"x").await;
    assert!(matches!(res, Err(Error::NotARepository(_))), "{res:?}");
}

/// Walks the latest snapshot and loads every blob (tree and data), which authenticates,
/// decompresses and checks the SHA-256 of each against its id. Returns (trees, data blobs).
async fn verify_latest_snapshot(repo: &Repository) -> (usize, usize) {
    let index = BlobIndex::load(repo).await.unwrap();
    let (_, snap): (Id, SnapshotFile) = repo.find_snapshot("latest", None, &[]).await.unwrap();
    let mut todo = vec![snap.tree];
    let (mut trees, mut blobs) = (0, 0);
    while let Some(tid) = todo.pop() {
        let loc = index.get(&tid).expect("tree in index");
        let tree: Tree =
            serde_json::from_slice(&repo.load_blob(&tid, &loc).await.unwrap()).unwrap();
        trees += 1;
        for node in tree.nodes {
            if let Some(sub) = node.subtree {
                todo.push(sub);
            }
            let mut total = 0u64;
            for id in node.content.unwrap_or_default() {
                let loc = index.get(&id).expect("data blob in index");
                total += repo.load_blob(&id, &loc).await.unwrap().len() as u64;
                blobs += 1;
            }
            if node.node_type == snapback_repo::file::NodeType::File {
                assert_eq!(total, node.size, "{}", String::from_utf8_lossy(&node.name));
            }
        }
    }
    (trees, blobs)
}

async fn open_restic_made(compression: &str) -> (tempfile::TempDir, String, Repository) {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().join("repo").to_str().unwrap().to_string();
    let data = tmp.path().join("data");
    write_sample_tree(&data);
    restic(&url, &["init"]);
    restic(
        &url,
        &[
            "backup",
            "--compression",
            compression,
            data.to_str().unwrap(),
        ],
    );
    let repo = Repository::open(Backend::from_url(&url).unwrap(), PASSWORD.as_bytes())
        .await
        .unwrap();
    (tmp, url, repo)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_blob_of_a_restic_backup_without_compression_verifies() {
    let (_tmp, _url, repo) = open_restic_made("off").await;
    let (trees, blobs) = verify_latest_snapshot(&repo).await;
    assert!(trees >= 4 && blobs >= 4, "trees {trees} blobs {blobs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_blob_of_a_restic_backup_with_auto_compression_verifies() {
    let (_tmp, _url, repo) = open_restic_made("auto").await;
    let index = BlobIndex::load(&repo).await.unwrap();
    let compressed = index
        .locations(snapback_repo::BlobType::Data)
        .filter(|l| l.uncompressed_length.is_some())
        .count();
    assert!(
        compressed > 0,
        "restic auto compression should have compressed the text files"
    );
    let (trees, blobs) = verify_latest_snapshot(&repo).await;
    assert!(trees >= 4 && blobs >= 4, "trees {trees} blobs {blobs}");
}

fn flip_byte(path: &Path, at_end: usize) {
    let mut data = std::fs::read(path).unwrap();
    let n = data.len();
    data[n - at_end] ^= 0x01;
    std::fs::write(path, data).unwrap();
}

fn first_file(dir: &Path) -> std::path::PathBuf {
    walk(dir)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no file under {}", dir.display()))
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_pack_index_or_snapshot_is_an_authentication_error_naming_the_file() {
    let (tmp, url, _) = open_restic_made("auto").await;
    let root = tmp.path().join("repo");
    let reopen = || async {
        Repository::open(Backend::from_url(&url).unwrap(), PASSWORD.as_bytes())
            .await
            .unwrap()
    };

    // Snapshot file.
    let snap = first_file(&root.join("snapshots"));
    flip_byte(&snap, 20);
    let repo = reopen().await;
    let err = repo.snapshots().await.unwrap_err();
    let name = snap.file_name().unwrap().to_str().unwrap();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains(name), "{err}");
    flip_byte(&snap, 20);

    // A pack: flip a byte inside the first blob; loading it must fail naming the pack.
    let repo = reopen().await;
    let index = BlobIndex::load(&repo).await.unwrap();
    let (_, s) = repo.find_snapshot("latest", None, &[]).await.unwrap();
    let loc = index.get(&s.tree).unwrap();
    let pack_path = root.join(FileType::Pack.path(&loc.pack));
    let mut data = std::fs::read(&pack_path).unwrap();
    data[loc.offset as usize + 20] ^= 0x01;
    std::fs::write(&pack_path, &data).unwrap();
    let err = repo.load_blob(&s.tree, &loc).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains(&loc.pack.to_hex()), "{err}");
    // The pack header too.
    flip_byte(&pack_path, 10);
    let err = repo
        .pack_header(&loc.pack, data.len() as u64)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&loc.pack.to_hex()), "{err}");

    // Index file.
    let idx = first_file(&root.join("index"));
    flip_byte(&idx, 30);
    let err = BlobIndex::load(&repo).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(idx.file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
}
