//! The repository library on a real S3 server (moto on 127.0.0.1), judged by the real restic:
//! what snapback initialises restic accepts, what restic writes snapback reads and verifies blob
//! by blob, and a flipped byte in an S3 object is an authentication error naming the file.

mod common;

use common::{diff_trees, http_request, make_tree, Restic, S3Server, Snapback};
use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
use snapback_repo::file::{NodeType, Tree};
use snapback_repo::{Backend, BlobIndex, Error, Repository};

const PW: &str = "s3-password";

fn backend(s3: &S3Server, prefix: &str) -> Backend {
    let creds = S3Credentials {
        access_key_id: Some(common::TEST_ACCESS_KEY.into()),
        secret_access_key: Some(common::TEST_SECRET_KEY.into()),
        region: Some("us-east-1".into()),
        ..Default::default()
    };
    Backend::new(
        Location::parse(&s3.repo_url(prefix)).unwrap(),
        &creds,
        RetryPolicy::default(),
    )
    .unwrap()
}

/// XORs `mask` into the byte at `at(object length)` of S3 object `key`, behind the clients' backs.
fn flip_byte_in_object(s3: &S3Server, key: &str, at: impl Fn(usize) -> usize, mask: u8) {
    let mut data = s3.get_object(key).unwrap();
    let i = at(data.len());
    data[i] ^= mask;
    let resp = http_request(
        s3.port(),
        "PUT",
        &format!("/{}/{}", s3.bucket(), key),
        &data,
    )
    .unwrap();
    assert_eq!(resp.status, 200);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn restic_accepts_a_repository_snapback_initialised_on_s3() {
    require_restic!();
    let s3 = S3Server::start();
    let out = Snapback::s3(&s3, "init", PW).run_ok(&["init"]);
    assert!(out.contains("created restic repository"), "{out}");
    assert!(s3.get_object("init/config").is_some());
    let restic = Restic::s3(&s3, "init", PW);
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots", "--json"]);
    assert!(snaps.is_empty());
    restic.run_ok(&["check", "--read-data"]);
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    restic.run_ok(&["backup", tmp.path().to_str().unwrap()]);
    restic.run_ok(&["check", "--read-data"]);
    // Initialising again refuses instead of overwriting.
    let again = Snapback::s3(&s3, "init", PW).run(&["init"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// Walks the latest snapshot, loading (authenticating, decompressing, hashing) every blob.
async fn verify_every_blob(repo: &Repository) -> usize {
    let index = BlobIndex::load(repo).await.unwrap();
    let (_, snap) = repo.find_snapshot("latest", None, &[]).await.unwrap();
    let mut todo = vec![snap.tree];
    let mut blobs = 0;
    while let Some(id) = todo.pop() {
        let tree: Tree =
            serde_json::from_slice(&repo.load_blob(&id, &index.get(&id).unwrap()).await.unwrap())
                .unwrap();
        blobs += 1;
        for node in tree.nodes {
            todo.extend(node.subtree);
            let mut size = 0;
            for id in node.content.clone().unwrap_or_default() {
                size += repo
                    .load_blob(&id, &index.get(&id).unwrap())
                    .await
                    .unwrap()
                    .len() as u64;
                blobs += 1;
            }
            if node.node_type == NodeType::File {
                assert_eq!(size, node.size, "{}", node.name_lossy());
            }
        }
    }
    blobs
}

#[test]
fn snapback_reads_and_verifies_what_restic_wrote_on_s3() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    for compression in ["off", "auto"] {
        let restic = Restic::s3(&s3, compression, PW);
        restic.run_ok(&["init"]);
        restic.run_ok(&[
            "backup",
            "--compression",
            compression,
            tmp.path().to_str().unwrap(),
        ]);
        let blobs = rt().block_on(async {
            let repo = Repository::open(backend(&s3, compression), PW.as_bytes())
                .await
                .unwrap();
            verify_every_blob(&repo).await
        });
        assert!(blobs > 10, "{compression}: only {blobs} blobs");
    }
}

#[test]
fn a_flipped_byte_in_an_s3_snapshot_object_is_an_authentication_error_naming_it() {
    require_restic!();
    let s3 = S3Server::start();
    let restic = Restic::s3(&s3, "tamper", PW);
    restic.run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path());
    restic.run_ok(&["backup", tmp.path().to_str().unwrap()]);
    let key = s3.object_keys("tamper/snapshots/").pop().unwrap();
    flip_byte_in_object(&s3, &key, |n| n / 2, 0x40);
    let err = rt().block_on(async {
        let repo = Repository::open(backend(&s3, "tamper"), PW.as_bytes())
            .await
            .unwrap();
        repo.snapshots().await.unwrap_err()
    });
    assert!(matches!(err, Error::Auth { .. }), "{err:?}");
    let name = key.rsplit('/').next().unwrap();
    assert!(err.to_string().contains(name), "{err}");
    // The CLI says the same in one line.
    let out = Snapback::s3(&s3, "tamper", PW).run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(name) && stderr.contains("authentication failed"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_s3_server_fails_with_a_clear_error_after_bounded_retries() {
    // Nothing listens on this port: every attempt is refused.
    let port = common::free_port();
    let mut sb = Snapback::new(format!("s3:http://127.0.0.1:{port}/bucket/x"), PW);
    sb.set_env("AWS_ACCESS_KEY_ID", "k")
        .set_env("AWS_SECRET_ACCESS_KEY", "s");
    let out = sb.run(&["snapshots"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot connect to http://127.0.0.1:{port}: connection refused"
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn snapback_restores_and_checks_what_restic_wrote_on_s3_reading_each_pack_once() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let restic = Restic::s3(&s3, "read", PW);
    restic.run_ok(&["init"]);
    restic.run_ok(&["backup", src.to_str().unwrap()]);
    let sb = Snapback::s3(&s3, "read", PW);

    // Restores stream pack ranges from S3: the same tree as the source, whatever the batches.
    for (name, batch) in [("all", "16384"), ("parts", "1")] {
        let target = tmp.path().join(name);
        sb.run_ok(&[
            "restore",
            &format!("latest:{}", src.display()),
            "--target",
            target.to_str().unwrap(),
            "--batch-blobs",
            batch,
        ]);
        let diffs = diff_trees(&src, &target);
        assert!(diffs.is_empty(), "{name}: {diffs:?}");
    }
    let out = sb.run_ok(&["check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");

    // A flipped byte in a pack object: check names the pack and fails.
    let key = s3.object_keys("read/data/").pop().unwrap();
    flip_byte_in_object(&s3, &key, |_| 0, 0x01);
    let out = sb.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(1));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let name = key.rsplit('/').next().unwrap();
    assert!(report.contains(name), "{report}");
}
