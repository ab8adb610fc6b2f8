//! Proves the test harness (tests/common) works against the real components:
//! moto on 127.0.0.1, the real restic, and a tree checker that can fail.

mod common;

use common::{diff_trees, make_tree, set_mtime, Restic, S3Server, MAKE_TREE_RANDOM_LEN};
use serde::Deserialize;
use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const PASSWORD: &str = "harness-selftest-password";

#[derive(Deserialize)]
struct Snapshot {
    id: String,
    paths: Vec<String>,
}

/// restic init + backup + check --read-data + restore through moto, and the
/// restored tree equals the original.
#[test]
fn restic_round_trip_through_s3() {
    require_restic!();
    let server = S3Server::start();
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    make_tree(&src);

    let restic = Restic::s3(&server, "selftest", PASSWORD);
    restic.run_ok(&["init"]);
    // restic wrote into our bucket, under our prefix.
    let keys = server.object_keys("selftest/");
    assert!(
        keys.contains(&"selftest/config".to_string()),
        "no config object after init: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("selftest/keys/")),
        "no key object after init: {keys:?}"
    );
    assert!(server
        .get_object("selftest/config")
        .is_some_and(|c| !c.is_empty()));
    assert!(server.get_object("selftest/no-such-object").is_none());

    let messages = restic.json_lines(&["backup", src.to_str().unwrap()]);
    let summary = messages
        .iter()
        .find(|m| m["message_type"] == "summary")
        .unwrap_or_else(|| panic!("no summary in backup --json output: {messages:?}"));
    assert_eq!(summary["total_files_processed"], 8, "{summary}");
    assert!(
        summary["total_bytes_processed"].as_u64().unwrap() >= MAKE_TREE_RANDOM_LEN as u64,
        "{summary}"
    );
    assert!(
        server
            .object_keys("selftest/data/")
            .iter()
            .any(|k| k.len() > "selftest/data/xx/".len()),
        "no pack in the bucket after backup"
    );

    let snapshots: Vec<Snapshot> = restic.json(&["snapshots"]);
    assert_eq!(snapshots.len(), 1);
    assert_eq!(snapshots[0].paths, vec![src.to_str().unwrap().to_string()]);
    assert_eq!(snapshots[0].id.len(), 64);

    let check = restic.run_ok(&["check", "--read-data"]);
    assert!(
        check.contains("no errors were found"),
        "check said:\n{check}"
    );

    let target = tempfile::tempdir().unwrap();
    restic.run_ok(&[
        "restore",
        "latest",
        "--target",
        target.path().to_str().unwrap(),
    ]);
    let restored = target.path().join(src.strip_prefix("/").unwrap());
    assert!(
        restored.join("random.bin").is_file(),
        "restore layout changed"
    );
    let diffs = diff_trees(&src, &restored);
    assert!(diffs.is_empty(), "restored tree differs: {diffs:#?}");

    // The same checker notices when the restored copy is changed.
    fs::write(restored.join("nested/a/b/deep.txt"), b"DEEP\n").unwrap();
    set_mtime(&restored.join("nested/a/b/deep.txt"), 1_600_007_000, 0);
    let diffs = diff_trees(&src, &restored);
    assert!(
        diffs.iter().any(|d| d.contains("deep.txt")),
        "changed file not reported: {diffs:#?}"
    );

    // A wrong password is refused: the password really travels via RESTIC_PASSWORD.
    let wrong = Restic::s3(&server, "selftest", "wrong-password");
    assert!(!wrong.run(&["snapshots"]).status.success());
}

fn assert_reported(a: &Path, b: &Path, what: &str, needle: &str) {
    let diffs = diff_trees(a, b);
    assert!(
        diffs.iter().any(|d| d.contains(needle)),
        "{what}: expected a difference mentioning {needle:?}, got {diffs:#?}"
    );
}

/// make_tree is deterministic, and diff_trees reports every kind of change
/// it claims to check (so tests using it can fail).
#[test]
fn diff_trees_reports_each_kind_of_change() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_tree(&a);
    make_tree(&b);
    assert_eq!(diff_trees(&a, &b), Vec::<String>::new());
    assert_eq!(
        fs::metadata(a.join("random.bin")).unwrap().len(),
        MAKE_TREE_RANDOM_LEN as u64
    );
    assert_eq!(
        fs::metadata(a.join("private.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        fs::read_link(a.join("link-to-hello")).unwrap(),
        Path::new("hello.txt")
    );
    // make_tree is idempotent on an existing tree.
    make_tree(&b);
    assert_eq!(diff_trees(&a, &b), Vec::<String>::new());

    // Content only: same size, same mtime.
    let mut data = fs::read(b.join("random.bin")).unwrap();
    data[1_000_000] ^= 1;
    let mtime = fs::metadata(b.join("random.bin"))
        .unwrap()
        .modified()
        .unwrap();
    fs::write(b.join("random.bin"), &data).unwrap();
    fs::File::open(b.join("random.bin"))
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_reported(&a, &b, "content", "random.bin");
    let diffs = diff_trees(&a, &b);
    assert!(
        diffs
            .iter()
            .all(|d| !d.contains("mtime") && !d.contains("size")),
        "only content changed: {diffs:#?}"
    );
    make_tree(&b);

    // Mode only.
    fs::set_permissions(b.join("hello.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_reported(&a, &b, "mode", "hello.txt: mode 644 vs 600");
    make_tree(&b);

    // Mtime only, on a file and on a directory.
    set_mtime(&b.join("empty"), 1_700_000_000, 0);
    assert_reported(&a, &b, "file mtime", "empty: mtime");
    make_tree(&b);
    set_mtime(&b.join("nested/a"), 1_700_000_000, 0);
    assert_reported(&a, &b, "dir mtime", "nested/a: mtime");
    make_tree(&b);

    // Symlink target.
    fs::remove_file(b.join("link-to-hello")).unwrap();
    std::os::unix::fs::symlink("empty", b.join("link-to-hello")).unwrap();
    assert_reported(&a, &b, "symlink", "link-to-hello");
    make_tree(&b);
    assert_eq!(diff_trees(&a, &b), Vec::<String>::new());

    // Missing and extra entries.
    fs::remove_file(b.join("nested/a/b/deep.txt")).unwrap();
    fs::write(b.join("empty-dir/new"), b"").unwrap();
    let diffs = diff_trees(&a, &b);
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("only in") && d.contains("deep.txt")),
        "{diffs:#?}"
    );
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("only in") && d.contains("new")),
        "{diffs:#?}"
    );
}

/// Each S3Server::start() gets its own bucket on a reachable 127.0.0.1 server.
#[test]
fn s3_buckets_are_fresh_and_distinct() {
    let one = S3Server::start();
    let two = S3Server::start();
    assert_ne!(one.bucket(), two.bucket());
    assert!(one.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(
        one.repo_url("p/q"),
        format!("s3:{}/{}/p/q", one.endpoint(), one.bucket())
    );
    assert!(one.object_keys("").is_empty());
    assert!(two.object_keys("").is_empty());
    let env = one.env();
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ] {
        assert!(
            env.iter().any(|(k, v)| k == key && !v.is_empty()),
            "{key} missing"
        );
    }
}

/// A dedicated server answers while alive and is gone once dropped.
#[test]
fn dedicated_server_stops_on_drop() {
    let server = S3Server::start_dedicated();
    let port = server.port();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    assert!(server.object_keys("").is_empty());
    drop(server);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "moto still listening on {port} after drop"
    );
}
