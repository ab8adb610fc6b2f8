//! Limits and clear errors (issue 14): what the repository or the input says is bounded before
//! it is obeyed, and each failure names its cause.
//!
//! - scrypt parameters of an unauthenticated key file are bounded;
//! - a damaged `config` is reported as such, not as a wrong password;
//! - data after a tar stream's end-of-archive marker is read on (another archive) or reported
//!   (exit 3), never dropped silently;
//! - an S3 endpoint that accepts connections and never answers ends a command quickly with one
//!   clear error;
//! - read-only commands never create a missing repository's directory.

mod common;

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Restic, Snapback};

const PASSWORD: &str = "limits-test-password";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh local repository with one small snapshot.
fn repo_with_snapshot(dir: &Path) -> (String, Snapback) {
    let repo = dir.join("repo").to_string_lossy().into_owned();
    let sb = Snapback::new(&repo, PASSWORD);
    sb.run_ok(&["init"]);
    let src = dir.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("hello.txt"), b"hello\n").unwrap();
    sb.run_ok(&["backup", src.to_str().unwrap()]);
    (repo, sb)
}

/// The only file in `dir`.
fn only_file(dir: &Path) -> std::path::PathBuf {
    let files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn key_files_with_absurd_scrypt_parameters_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, sb) = repo_with_snapshot(dir.path());
    let key_path = only_file(&Path::new(&repo).join("keys"));
    let original = fs::read(&key_path).unwrap();
    for (field, value) in [("N", 1u64 << 40), ("r", 1 << 24), ("p", 1 << 30)] {
        let mut key: serde_json::Value = serde_json::from_slice(&original).unwrap();
        key[field] = value.into();
        fs::write(&key_path, serde_json::to_vec(&key).unwrap()).unwrap();
        let started = Instant::now();
        // Bounded by a time limit: before the fix this allocates what N says or runs scrypt
        // for hours.
        let out = sb
            .run_with_stdin_within(&["snapshots"], b"", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{field}={value}: snapshots still running after 20 s"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{field}={value}: {err}");
        assert!(
            err.contains("refusing scrypt parameters") && err.contains("keys/"),
            "{field}={value}: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{field}={value}: took {:?}",
            started.elapsed()
        );
    }
    // A second, good key next to the planted one: the repository opens.
    let mut key: serde_json::Value = serde_json::from_slice(&original).unwrap();
    key["N"] = (1u64 << 40).into();
    fs::write(&key_path, serde_json::to_vec(&key).unwrap()).unwrap();
    let good = Path::new(&repo).join("keys").join("0".repeat(64));
    fs::write(&good, &original).unwrap();
    sb.run_ok(&["snapshots"]);
    // Oversized key files are not read at all.
    fs::remove_file(&good).unwrap();
    fs::write(&key_path, vec![b' '; 1 << 20]).unwrap();
    let out = sb.run(&["snapshots"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("larger than a key file can be"), "{err}");
}

#[test]
fn a_damaged_config_is_reported_as_damaged_not_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, sb) = repo_with_snapshot(dir.path());
    let config = Path::new(&repo).join("config");
    let mut data = fs::read(&config).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&config, &data).unwrap();
    let out = sb.run(&["snapshots"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("config") && err.contains("damaged"),
        "message does not name the damaged config: {err}"
    );
    assert!(!err.contains("wrong password"), "{err}");
    // A wrong password is still a wrong password.
    let out = Snapback::new(&repo, "not the password").run(&["snapshots"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("wrong password"), "{err}");
}

/// A tar archive of `files` made by GNU tar (default blocking factor: padded to 10 KiB).
fn gnu_tar(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let src = dir.join(format!("{name}-src"));
    fs::create_dir_all(&src).unwrap();
    for (path, content) in files {
        fs::write(src.join(path), content).unwrap();
    }
    let mut names: Vec<&str> = files.iter().map(|(p, _)| *p).collect();
    names.sort();
    let out = Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(&src)
        .args(&names)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// `snapback ls latest` as a set of paths.
fn listed(sb: &Snapback) -> Vec<String> {
    let out = sb.run_ok(&["ls", "latest"]);
    let mut paths: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(str::to_string)
        .collect();
    paths.sort();
    paths
}

#[test]
fn data_after_the_tar_end_marker_is_read_on_or_reported_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_string_lossy().into_owned();
    let sb = Snapback::new(&repo, PASSWORD);
    sb.run_ok(&["init"]);
    let a = gnu_tar(dir.path(), "a", &[("one.txt", b"first archive\n")]);
    let b = gnu_tar(dir.path(), "b", &[("two.txt", b"second archive\n")]);
    let backup = ["backup", "--stdin", "--stdin-tar"];

    // Zero padding after the marker (a larger blocking factor): fine, exit 0.
    let mut padded = a.clone();
    padded.extend_from_slice(&[0u8; 20 * 512]);
    let out = sb.run_with_stdin(&backup, &padded);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(listed(&sb), ["/one.txt"]);

    // Two archives back to back (`cat a.tar b.tar`): both are stored, as tar -i reads them.
    let mut both = a.clone();
    both.extend_from_slice(&b);
    let out = sb.run_with_stdin(&backup, &both);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("another tar archive follows"), "{err}");
    assert_eq!(listed(&sb), ["/one.txt", "/two.txt"]);

    // Anything else after the marker: snapshot of what was read, a warning, exit 3.
    let mut garbage = a.clone();
    garbage.extend_from_slice(b"this is not a tar header, just trailing text\n");
    let out = sb.run_with_stdin(&backup, &garbage);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("bytes of data that is not a tar archive follow the end-of-archive marker"),
        "{err}"
    );
    assert_eq!(listed(&sb), ["/one.txt"]);

    if !common::skip_without_restic("data_after_the_tar_end_marker") {
        Restic::new(&repo, PASSWORD).run_ok(&["check"]);
    }
}

#[test]
fn an_s3_endpoint_that_never_answers_ends_the_command_with_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts every connection and holds it open without a byte of answer.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    let url = format!("s3:http://127.0.0.1:{port}/bucket/repo");
    let mut sb = Snapback::new(&url, PASSWORD);
    sb.set_env("AWS_ACCESS_KEY_ID", "test");
    sb.set_env("AWS_SECRET_ACCESS_KEY", "test");
    sb.set_env("SNAPBACK_IO_TIMEOUT_SECS", "2");
    for args in [&["snapshots"][..], &["init"], &["--timeout", "1", "check"]] {
        let started = Instant::now();
        let out = sb
            .run_with_stdin_within(args, b"", Duration::from_secs(60))
            .unwrap_or_else(|| panic!("{args:?} still running after 60 s"));
        let took = started.elapsed();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "S3 server at http://127.0.0.1:{port} did not answer within"
            )),
            "{args:?}: {err}"
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{args:?}: not one clear line: {err}"
        );
        // Within the operation's deadline (three attempts' timeouts plus the longest the
        // jittered backoff can last: 31.2 s here, 28.2 s with `--timeout 1`) and some start-up
        // time, not hanging on the held connection.
        assert!(took < Duration::from_secs(45), "{args:?} took {took:?}");
    }
}

#[test]
fn read_only_commands_do_not_create_a_missing_repository() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("no-such-dir");
    let repo = parent.join("repo");
    let sb = Snapback::new(repo.to_string_lossy(), PASSWORD);
    let target = dir.path().join("restore-target");
    for args in [
        vec!["snapshots"],
        vec!["check"],
        vec!["ls", "latest"],
        vec!["dump", "latest", "/x"],
        vec!["restore", "latest", "--target", target.to_str().unwrap()],
    ] {
        let out = sb.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "repository does not exist at local:{}",
                repo.display()
            )),
            "{args:?}: {err}"
        );
        assert!(!parent.exists(), "{args:?} created {}", parent.display());
    }
    // init still creates it.
    sb.run_ok(&["init"]);
    assert!(repo.join("config").is_file());
}
