//! The initContainer's `snapback init` on a real S3 server (moto on 127.0.0.1), judged by the
//! real restic: racing inits make one repository, the warm key file opens the repository
//! without the password (and refuses another Pod's secret, a tampered file, another
//! repository), and `--restore-if-empty` fills an empty data directory from the latest snapshot.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{diff_trees, make_tree, Restic, S3Server, Snapback};
use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
use snapback_repo::{Backend, Repository};

const PW: &str = "warm-key-password";
const POD_UID: &str = "0b5e7c1a-8d2f-4e6b-9c3a-7f1d2e4b6a80";
const HOST: &str = "apps/db-0";
/// The key secret besides the Pod UID (from a Kubernetes Secret in a Pod).
const KEY_SECRET: &str = "warm-key-secret-3c9e1f7a";

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

/// The master key, from the library opened with the password.
fn master_key(s3: &S3Server, prefix: &str) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let repo = Repository::open(backend(s3, prefix), PW.as_bytes())
            .await
            .unwrap();
        repo.key().as_bytes().to_vec()
    })
}

/// snapback as a Pod sees it: repository and S3 credentials, Pod UID, key secret, host.
fn pod(s3: &S3Server, prefix: &str) -> Snapback {
    let mut sb = Snapback::s3(s3, prefix, PW);
    sb.set_env("POD_UID", POD_UID);
    sb.set_env("SNAPBACK_KEY_SECRET", KEY_SECRET);
    sb.set_env("SNAPBACK_HOST", HOST);
    sb
}

/// Runs like the sidecar: no password anywhere in the environment.
fn run_without_password(sb: &Snapback, args: &[&str]) -> Output {
    sb.command(args)
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a failure with exit status 1 and one line on stderr containing `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn racing_inits_make_one_repository_and_all_succeed() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let sb = pod(&s3, "race");
    let children: Vec<_> = (0..4)
        .map(|i| {
            let key = tmp.path().join(format!("key-{i}"));
            sb.command(&["init", "--key-file", key.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outputs {
        assert!(out.status.success(), "init failed: {}", text(&out.stderr));
    }
    let created = outputs
        .iter()
        .filter(|o| text(&o.stdout).contains("created restic repository"))
        .count();
    assert_eq!(created, 1, "exactly one process creates the repository");
    let keys: Vec<String> = s3
        .object_keys("race/")
        .into_iter()
        .filter(|k| k.starts_with("race/keys/") || k == "race/config")
        .collect();
    assert_eq!(keys.len(), 2, "one config and one key file: {keys:?}");

    // Every Pod's warm key holds the same (the only) master key and opens the repository.
    let master = master_key(&s3, "race");
    for i in 0..4 {
        let key = tmp.path().join(format!("key-{i}"));
        let out = run_without_password(&sb, &["snapshots", "--key-file", key.to_str().unwrap()]);
        assert!(out.status.success(), "key-{i}: {}", text(&out.stderr));
        assert!(!contains(&std::fs::read(&key).unwrap(), &master));
    }
    let restic = Restic::s3(&s3, "race", PW);
    restic.run_ok(&["check"]);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sidecar_opens_the_repository_with_the_warm_key_and_no_password() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("warm/key");
    std::fs::create_dir(tmp.path().join("warm")).unwrap();
    let key_arg = key.to_str().unwrap();
    let mut sb = pod(&s3, "sidecar");
    sb.set_env("SNAPBACK_KEY_SECRET", "extra-secret-value");
    // Verbose, to show that no secret reaches the logs.
    let out = sb.run(&["-vv", "init", "--key-file", key_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("created restic repository"), "{all}");
    for secret in [PW, POD_UID, "extra-secret-value"] {
        assert!(!all.contains(secret), "a secret was printed: {all}");
    }

    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o400);
    let sealed = std::fs::read(&key).unwrap();
    let master = master_key(&s3, "sidecar");
    assert_eq!(master.len(), 64);
    assert!(!contains(&sealed, &master), "the master key is in the file");
    for part in master.chunks(16) {
        assert!(
            !contains(&sealed, part),
            "part of the master key is in the file"
        );
    }
    // No temporary files are left beside it.
    assert_eq!(std::fs::read_dir(key.parent().unwrap()).unwrap().count(), 1);

    // Back up and list with the warm key only: the env var SNAPBACK_KEY_FILE works as the flag.
    let src = tmp.path().join("data");
    make_tree(&src);
    let mut sidecar = sb.clone();
    sidecar.set_env("SNAPBACK_KEY_FILE", key_arg);
    let out = run_without_password(&sidecar, &["backup", src.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run_without_password(&sidecar, &["snapshots", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snaps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["hostname"], HOST);

    // Without the key file and without a password nothing opens.
    let out = run_without_password(&sb, &["snapshots"]);
    assert_one_line_error(&out, "no password given");

    Restic::s3(&s3, "sidecar", PW).run_ok(&["check", "--read-data"]);
}

#[test]
fn wrong_secret_tampering_and_another_repository_are_clear_errors() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let key_arg = key.to_str().unwrap();
    let sb = pod(&s3, "errors");
    sb.run_ok(&["init", "--key-file", key_arg]);

    // Another Pod (another UID) cannot use the file.
    let mut other_pod = sb.clone();
    other_pod.set_env("POD_UID", "11111111-2222-3333-4444-555555555555");
    let out = run_without_password(&other_pod, &["snapshots", "--key-file", key_arg]);
    assert_one_line_error(&out, "does not open with this Pod's secret");
    assert!(text(&out.stderr).contains("wrong POD_UID or key secret"));

    // A key secret the file was not sealed with.
    let mut with_secret = sb.clone();
    with_secret.set_env("SNAPBACK_KEY_SECRET", "another-key-secret-0000");
    let out = run_without_password(&with_secret, &["snapshots", "--key-file", key_arg]);
    assert_one_line_error(&out, "does not open with this Pod's secret");

    // No Pod UID at all.
    let out = run_without_password(&sb, &["snapshots", "--key-file", key_arg]);
    assert!(out.status.success());
    let mut no_uid = sb.clone();
    no_uid.set_env("POD_UID", "");
    let out = run_without_password(&no_uid, &["snapshots", "--key-file", key_arg]);
    assert_one_line_error(&out, "POD_UID");

    // A flipped byte anywhere is refused (the file is 0400: write a tampered copy).
    let sealed = std::fs::read(&key).unwrap();
    for i in [0, 9, 20, sealed.len() / 2, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x04;
        let path = tmp.path().join(format!("tampered-{i}"));
        std::fs::write(&path, &bad).unwrap();
        let out = run_without_password(&sb, &["snapshots", "--key-file", path.to_str().unwrap()]);
        assert_one_line_error(&out, "warm key file");
    }
    let mut bad = sealed.clone();
    let last = bad.len() - 5;
    bad[last] ^= 0x01;
    let path = tmp.path().join("tampered-tag");
    std::fs::write(&path, &bad).unwrap();
    let out = run_without_password(&sb, &["snapshots", "--key-file", path.to_str().unwrap()]);
    assert_one_line_error(&out, "or the file was tampered with");
    let path = tmp.path().join("truncated");
    std::fs::write(&path, &sealed[..sealed.len() - 1]).unwrap();
    let out = run_without_password(&sb, &["snapshots", "--key-file", path.to_str().unwrap()]);
    assert_one_line_error(&out, "damaged");

    // The key of this repository used for another one.
    let other = pod(&s3, "errors-other");
    other.run_ok(&["init"]);
    let out = run_without_password(&other, &["snapshots", "--key-file", key_arg]);
    assert_one_line_error(&out, "holds the key of repository");
    assert!(text(&out.stderr).contains("errors-other"));

    Restic::s3(&s3, "errors", PW).run_ok(&["check"]);
}

/// Median wall time of `args`, run `n` times.
fn median_time(n: usize, mut run: impl FnMut() -> Output) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            let out = run();
            let took = start.elapsed();
            assert!(out.status.success(), "{}", text(&out.stderr));
            took
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn startup_with_the_warm_key_skips_the_key_derivation() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let key_arg = key.to_str().unwrap();
    let sb = pod(&s3, "timing");
    sb.run_ok(&["init", "--key-file", key_arg]);
    const RUNS: usize = 7;
    let warm = median_time(RUNS, || {
        run_without_password(&sb, &["snapshots", "--key-file", key_arg])
    });
    let cold = median_time(RUNS, || sb.run(&["snapshots"]));
    eprintln!(
        "startup of `snapback snapshots` (median of {RUNS}, S3 on 127.0.0.1): \
         warm key {:.1} ms, password (scrypt N=2^15) {:.1} ms",
        warm.as_secs_f64() * 1000.0,
        cold.as_secs_f64() * 1000.0
    );
}

#[test]
fn restore_if_empty_fills_an_empty_directory_from_the_latest_snapshot() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let sb = pod(&s3, "restore");
    let key = tmp.path().join("key");
    let key_arg = key.to_str().unwrap();

    // First start of the Pod: nothing to restore yet.
    let data = tmp.path().join("data");
    let out = sb.run_ok(&[
        "init",
        "--key-file",
        key_arg,
        "--restore-if-empty",
        data.to_str().unwrap(),
    ]);
    assert!(out.contains("no snapshot of host apps/db-0"), "{out}");

    make_tree(&data);
    // A database's data directory is private; the restored one must be too.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    sb.run_ok(&["backup", data.to_str().unwrap()]);
    // Another host's newer snapshot is not ours.
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir(&stranger).unwrap();
    std::fs::write(stranger.join("x"), b"not ours").unwrap();
    sb.run_ok(&[
        "backup",
        "--host",
        "apps/other-0",
        stranger.to_str().unwrap(),
    ]);

    // A new Pod with an empty volume (only an empty lost+found, as on a fresh ext4 volume).
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(fresh.join("lost+found")).unwrap();
    let out = sb.run_ok(&[
        "init",
        "--key-file",
        key_arg,
        "--restore-if-empty",
        fresh.to_str().unwrap(),
    ]);
    assert!(out.contains("opened restic repository"), "{out}");
    assert!(out.contains("restored snapshot"), "{out}");
    std::fs::remove_dir(fresh.join("lost+found")).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o7777,
        0o700,
        "the data directory's own mode is restored"
    );
    let diffs = diff_trees(&data, &fresh);
    assert!(diffs.is_empty(), "restored tree differs: {diffs:#?}");

    // A directory with data is left alone.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("mine"), b"keep me").unwrap();
    let out = sb.run_ok(&["init", "--restore-if-empty", busy.to_str().unwrap()]);
    assert!(out.contains("is not empty: nothing restored"), "{out}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    // An interrupted restore (marker left) is started over, not taken for data.
    let broken = tmp.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join(".snapback-restore-incomplete"), b"").unwrap();
    std::fs::write(broken.join("hello.txt"), b"half").unwrap();
    std::fs::create_dir(broken.join("partial")).unwrap();
    sb.run_ok(&["init", "--restore-if-empty", broken.to_str().unwrap()]);
    let diffs = diff_trees(&data, &broken);
    assert!(diffs.is_empty(), "restored tree differs: {diffs:#?}");

    // A tar stream's snapshot: its members, at the snapshot root, land in the directory.
    let vol = tmp.path().join("vol");
    make_tree(&vol);
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&vol)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let mut streamer = sb.clone();
    streamer.set_env("SNAPBACK_HOST", "apps/stream-0");
    streamer.run_ok_with_stdin(
        &["backup", "--stdin", "--stdin-filename", "vol.tar"],
        &tar.stdout,
    );
    let from_tar = tmp.path().join("from-tar");
    streamer.run_ok(&["init", "--restore-if-empty", from_tar.to_str().unwrap()]);
    let diffs = diff_trees(&vol, &from_tar);
    assert!(diffs.is_empty(), "restored tar stream differs: {diffs:#?}");

    Restic::s3(&s3, "restore", PW).run_ok(&["check", "--read-data"]);
}

#[test]
fn plain_init_still_refuses_an_existing_repository() {
    let s3 = S3Server::start();
    let sb = pod(&s3, "plain");
    sb.run_ok(&["init"]);
    let again = sb.run(&["init"]);
    assert_one_line_error(&again, "already exists");
    // The initContainer's form opens it.
    let out = sb.run_ok(&["init", "--if-missing"]);
    assert!(out.contains("opened restic repository"), "{out}");
}

/// The Pod UID alone is no secret (anyone allowed to read the Pod knows it): `--key-file`
/// without a key secret is refused before anything is written, and so is a short one; a file
/// sealed with the secret does not open without it, and opens with it from a file.
#[test]
fn the_warm_key_needs_a_key_secret_besides_the_pod_uid() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("key");
    let key_arg = key.to_str().unwrap();
    let sb = pod(&s3, "needsecret");
    let without_secret = |args: &[&str]| {
        sb.command(args)
            .env_remove("SNAPBACK_KEY_SECRET")
            .output()
            .unwrap()
    };

    let out = without_secret(&["init", "--key-file", key_arg]);
    assert_one_line_error(&out, "needs a key secret");
    assert!(!key.exists(), "a key file was written without a key secret");
    assert!(
        s3.object_keys("needsecret/").is_empty(),
        "the refused init touched the repository"
    );
    let mut short = sb.clone();
    short.set_env("SNAPBACK_KEY_SECRET", "too-short");
    let out = short.run(&["init", "--key-file", key_arg]);
    assert_one_line_error(&out, "at least 16 bytes");
    assert!(!key.exists());

    sb.run_ok(&["init", "--key-file", key_arg]);
    let out = sb
        .command(&["snapshots", "--key-file", key_arg])
        .env_remove("SNAPBACK_KEY_SECRET")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .output()
        .unwrap();
    assert_one_line_error(&out, "needs a key secret");

    // As in the manifest: the secret from a file of a mounted Secret.
    let secret_file = tmp.path().join("key-secret");
    std::fs::write(&secret_file, format!("{KEY_SECRET}\n")).unwrap();
    let out = sb
        .command(&[
            "snapshots",
            "--key-file",
            key_arg,
            "--key-secret-file",
            secret_file.to_str().unwrap(),
        ])
        .env_remove("SNAPBACK_KEY_SECRET")
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_PASSWORD_FILE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
