//! Repository locks between processes, PID namespaces and restic, with the real binaries:
//!
//! - a lock held in another PID namespace (`unshare -p -f --mount-proc`, as the containers of
//!   one Pod sharing a host name) is never taken for stale, in either direction;
//! - a lock left by a SIGKILLed backup in our own namespace is stale;
//! - restic respects our locks, and a restic lock blocks our prune (from any namespace);
//! - a backup whose lock file is removed while it runs stops with "lock lost" and no snapshot;
//! - an unreadable lock file blocks until `unlock --remove-all`;
//! - `unlock` removes aged locks and keeps live ones.
//!
//! Backups are held open with a stdin stream the test controls.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{pseudo_random_bytes, Restic, Snapback};
use sha2::Digest;
use snapback_repo::{Backend, FileType, Repository};

const PW: &str = "locks-password";

/// A backup (or any program) reading a stream from us.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Running {
    /// Spawns `cmd` and sends it the first part of its stream.
    fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take();
        if let Some(s) = stdin.as_mut() {
            s.write_all(&pseudo_random_bytes(1, 64 * 1024)).unwrap();
        }
        Running { child, stdin }
    }

    /// Sends the rest of the stream, closes it and waits for the exit.
    fn finish(mut self) -> Output {
        if let Some(mut s) = self.stdin.take() {
            // A process that already stopped no longer reads: a broken pipe is its answer.
            let _ = s.write_all(&pseudo_random_bytes(2, 256 * 1024));
        }
        self.child.wait_with_output().expect("wait")
    }
}

fn stream_backup(tool: &Snapback, name: &str) -> Command {
    tool.command(&["backup", "--stdin", "--stdin-raw", "--stdin-filename", name])
}

/// The lock files in a local repository (not the temporary files they are written to).
fn lock_files(repo_dir: &Path) -> Vec<PathBuf> {
    let is_id = |name: &str| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    let mut v: Vec<PathBuf> = match fs::read_dir(repo_dir.join("locks")) {
        Ok(d) => d
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_id))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn wait_for_locks(repo_dir: &Path, n: usize) {
    let started = Instant::now();
    while lock_files(repo_dir).len() < n {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {n} lock files appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn snapshot_count(repo_dir: &Path) -> usize {
    fs::read_dir(repo_dir.join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn expect_ok(what: &str, out: &Output) {
    assert!(out.status.success(), "{what} failed: {}", text(out));
}

fn expect_locked(what: &str, out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("repository is locked"),
        "{what}: ran despite the lock: {}",
        text(out)
    );
}

/// Why `unshare -p -f --mount-proc` cannot run here, if it cannot.
fn unshare_unavailable() -> Option<String> {
    match Command::new("unshare")
        .args(["-p", "-f", "--mount-proc", "true"])
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "unshare -p -f --mount-proc is not permitted: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("unshare cannot run: {e}")),
    }
}

/// `cmd` run in a new PID namespace (with its own /proc), as in another container of a Pod.
fn unshared(cmd: Command) -> Command {
    unshared_with(cmd, &[])
}

/// [`unshared`] with more options for `unshare`.
fn unshared_with(cmd: Command, options: &[&str]) -> Command {
    let mut u = Command::new("unshare");
    u.args(["-p", "-f", "--mount-proc"])
        .args(options)
        .arg(cmd.get_program());
    u.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => u.env(k, v),
            None => u.env_remove(k),
        };
    }
    u.stdin(Stdio::null());
    u
}

/// Starts `snapback sidecar` in a new PID namespace, waits until it is ready (it has opened
/// the repository and dealt with stale locks by then) and stops it.
fn sidecar_starts_in_another_namespace(sb: &Snapback, tmp: &Path) {
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let data = tmp.join("data");
    fs::create_dir_all(&data).unwrap();
    let cmd = sb.command(&["sidecar", "--listen", &listen, data.to_str().unwrap()]);
    let log = tmp.join("sidecar.log");
    // --kill-child: the sidecar dies with the unshare process we kill below.
    let mut u = unshared_with(cmd, &["--kill-child"]);
    u.stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()));
    let mut child = u.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        match common::http_request(port, "GET", "/readyz", b"") {
            Ok(r) if r.status == 200 => break true,
            _ if Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(ready, "sidecar not ready within 60 s; log:\n{log}");
    assert!(
        !log.contains("removed stale"),
        "the sidecar removed a live lock:\n{log}"
    );
}

fn init(tmp: &Path) -> (PathBuf, Snapback, Restic) {
    let repo_dir = tmp.join("repo");
    let url = repo_dir.to_str().unwrap().to_string();
    let sb = Snapback::new(&url, PW);
    let restic = Restic::new(&url, PW);
    sb.run_ok(&["init"]);
    (repo_dir, sb, restic)
}

#[test]
fn a_lock_from_another_pid_namespace_is_never_taken_for_stale() {
    require_restic!();
    if let Some(why) = unshare_unavailable() {
        eprintln!("\n*** SKIPPED: {why} ***\n");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());

    // Our backup holds its lock; a prune and an unlock in another PID namespace (same host
    // name, our PID not visible there) must leave it alone.
    let ours = Running::start(stream_backup(&sb, "ours.bin"));
    wait_for_locks(&repo_dir, 1);
    let held = lock_files(&repo_dir);
    // The reported case: a sidecar starting in another container of the Pod removed the
    // running backup's lock as stale ("removed stale repository locks").
    sidecar_starts_in_another_namespace(&sb, tmp.path());
    assert_eq!(
        lock_files(&repo_dir),
        held,
        "the sidecar removed our live lock"
    );

    expect_locked(
        "prune from another PID namespace",
        &unshared(sb.command(&["prune"])).output().unwrap(),
    );
    let out = unshared(sb.command(&["unlock"])).output().unwrap();
    expect_ok("unlock from another PID namespace", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed 0 locks"));
    assert_eq!(lock_files(&repo_dir), held, "our live lock was removed");
    // And the other way round: a backup in another namespace holds its lock.
    let theirs = Running::start(unshared(stream_backup(&sb, "theirs.bin")));
    wait_for_locks(&repo_dir, 2);
    let held = lock_files(&repo_dir);
    expect_locked(
        "prune beside another namespace's backup",
        &sb.run(&["prune"]),
    );
    expect_ok("unlock", &sb.run(&["unlock"]));
    assert_eq!(lock_files(&repo_dir), held, "their live lock was removed");

    expect_ok("our backup", &ours.finish());
    expect_ok("their backup", &theirs.finish());
    assert_eq!(snapshot_count(&repo_dir), 2);
    assert!(lock_files(&repo_dir).is_empty());
    expect_ok("prune after both", &sb.run(&["prune"]));
    restic.run_ok(&["check", "--read-data"]);
}

#[test]
fn a_lock_left_by_a_killed_backup_in_our_namespace_is_stale() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());
    let mut dead = Running::start(stream_backup(&sb, "killed.bin"));
    wait_for_locks(&repo_dir, 1);
    dead.child.kill().unwrap(); // SIGKILL: no chance to remove its lock
    dead.child.wait().unwrap(); // reaped, so its PID is gone
    assert_eq!(lock_files(&repo_dir).len(), 1);

    expect_ok("prune beside a dead backup's lock", &sb.run(&["prune"]));
    let out = sb.run(&["unlock"]);
    expect_ok("unlock", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("successfully removed 1 locks"),
        "{}",
        text(&out)
    );
    assert!(lock_files(&repo_dir).is_empty());
    restic.run_ok(&["check"]);
}

#[test]
fn restic_respects_our_locks_and_we_respect_restics() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());

    // restic takes our running backup's lock for live: unlock keeps it, prune refuses.
    let ours = Running::start(stream_backup(&sb, "ours.bin"));
    wait_for_locks(&repo_dir, 1);
    let held = lock_files(&repo_dir);
    restic.run_ok(&["unlock"]);
    assert_eq!(lock_files(&repo_dir), held, "restic removed our live lock");
    let out = restic.run(&["prune"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("locked"),
        "restic prune ran beside our backup: {}",
        text(&out)
    );
    expect_ok("our backup", &ours.finish());

    // A restic backup's lock blocks our prune, here and from another PID namespace (where
    // restic's PID does not exist, which restic's own rule would take for a dead process).
    let theirs =
        Running::start(restic.command(&["backup", "--stdin", "--stdin-filename", "r.bin"]));
    wait_for_locks(&repo_dir, 1);
    let held = lock_files(&repo_dir);
    expect_locked("prune beside restic's backup", &sb.run(&["prune"]));
    match unshare_unavailable() {
        None => {
            expect_locked(
                "prune from another PID namespace beside restic's backup",
                &unshared(sb.command(&["prune"])).output().unwrap(),
            );
            expect_ok(
                "unlock from another PID namespace",
                &unshared(sb.command(&["unlock"])).output().unwrap(),
            );
        }
        Some(why) => eprintln!("\n*** SKIPPED in part: {why} ***\n"),
    }
    expect_ok("unlock", &sb.run(&["unlock"]));
    assert_eq!(
        lock_files(&repo_dir),
        held,
        "restic's live lock was removed"
    );
    expect_ok("restic backup", &theirs.finish());

    assert_eq!(snapshot_count(&repo_dir), 2);
    expect_ok("prune after both", &sb.run(&["prune"]));
    restic.run_ok(&["check", "--read-data"]);
}

#[test]
fn a_backup_whose_lock_is_removed_stops_without_a_snapshot() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, mut sb, restic) = init(tmp.path());
    sb.set_env("SNAPBACK_TEST_LOCK_REFRESH_MS", "200");

    // With the short interval, a backup refreshes its lock several times and succeeds.
    let ok = Running::start(stream_backup(&sb, "ok.bin"));
    wait_for_locks(&repo_dir, 1);
    let first = lock_files(&repo_dir);
    std::thread::sleep(Duration::from_millis(1200));
    let later = lock_files(&repo_dir);
    assert_eq!(later.len(), 1);
    assert_ne!(first, later, "the lock was not refreshed");
    expect_ok("backup with refreshes", &ok.finish());
    assert_eq!(snapshot_count(&repo_dir), 1);

    // Someone takes the running backup's lock for stale and removes it: from then on a prune
    // may delete its packs, so it must not write a snapshot.
    let lost = Running::start(stream_backup(&sb, "lost.bin"));
    wait_for_locks(&repo_dir, 1);
    for f in lock_files(&repo_dir) {
        fs::remove_file(f).unwrap();
    }
    std::thread::sleep(Duration::from_millis(1000));
    let out = lost.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "backup succeeded: {}", text(&out));
    assert!(
        stderr.contains("lock lost"),
        "unclear error: {}",
        text(&out)
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("snapback:"))
            .count(),
        1,
        "one error line: {}",
        text(&out)
    );
    assert_eq!(snapshot_count(&repo_dir), 1, "a snapshot was written");
    assert!(lock_files(&repo_dir).is_empty(), "a lock file was left");
    restic.run_ok(&["check", "--read-data"]);
}

#[test]
fn an_unreadable_lock_file_blocks_until_removed_with_remove_all() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());
    let garbage = pseudo_random_bytes(5, 300);
    let id = hex::encode(sha2::Sha256::digest(&garbage));
    fs::create_dir_all(repo_dir.join("locks")).unwrap();
    fs::write(repo_dir.join("locks").join(&id), &garbage).unwrap();

    for (what, out) in [
        ("prune", sb.run(&["prune"])),
        ("forget", sb.run(&["forget", "--keep-last", "1"])),
        ("backup", sb.run_with_stdin(&["backup", "--stdin"], b"data")),
    ] {
        expect_locked(what, &out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&id) && stderr.contains("unlock --remove-all"),
            "{what}: unclear error: {}",
            text(&out)
        );
    }
    assert_eq!(snapshot_count(&repo_dir), 0);
    // Not stale: a plain unlock keeps it ...
    expect_ok("unlock", &sb.run(&["unlock"]));
    assert_eq!(lock_files(&repo_dir).len(), 1);
    // ... --remove-all removes it.
    let out = sb.run(&["unlock", "--remove-all"]);
    expect_ok("unlock --remove-all", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("successfully removed 1 locks"));
    assert!(lock_files(&repo_dir).is_empty());
    expect_ok("prune", &sb.run(&["prune"]));
    restic.run_ok(&["check"]);
}

#[test]
fn unlock_removes_an_aged_lock_and_keeps_a_live_one() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = repo_dir.to_str().unwrap();
    let repo = rt
        .block_on(Repository::open(
            Backend::from_url(url).unwrap(),
            PW.as_bytes(),
        ))
        .unwrap();
    let lock = |age_minutes: i64, exclusive: bool| {
        let time = chrono::Local::now().fixed_offset() - chrono::TimeDelta::minutes(age_minutes);
        let json = serde_json::json!({
            "time": time.to_rfc3339(),
            "exclusive": exclusive,
            "hostname": "another-host",
            "username": "someone",
            "pid": 4242,
            "uid": 0,
            "gid": 0,
        });
        rt.block_on(repo.save_json(FileType::Lock, &json)).unwrap()
    };
    let aged = lock(31, true);
    let live = lock(25, false);
    // The aged exclusive lock does not block a backup; the live one blocks a prune.
    expect_ok(
        "backup beside an aged exclusive lock",
        &sb.run_with_stdin(&["backup", "--stdin"], b"data"),
    );
    expect_locked("prune beside a live lock", &sb.run(&["prune"]));

    let out = sb.run(&["unlock"]);
    expect_ok("unlock", &out);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("successfully removed 1 locks"),
        "{}",
        text(&out)
    );
    let left: Vec<PathBuf> = lock_files(&repo_dir);
    assert_eq!(left, vec![repo_dir.join("locks").join(live.to_string())]);
    assert!(!repo_dir.join("locks").join(aged.to_string()).exists());
    // restic agrees the remaining one is live.
    restic.run_ok(&["unlock"]);
    assert_eq!(lock_files(&repo_dir), left);
    expect_ok("unlock --remove-all", &sb.run(&["unlock", "--remove-all"]));
    expect_ok("prune", &sb.run(&["prune"]));
    restic.run_ok(&["check"]);
}

/// `--retry-lock`: a prune started beside restic's running backup waits for it and then runs;
/// a backup started beside an exclusive lock (another host's prune) waits until that lock is
/// removed. With too short a wait both fail with the usual lock error, after the wait.
#[test]
fn retry_lock_waits_for_the_holder_and_gives_up_after_the_duration() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, sb, restic) = init(tmp.path());

    // Too short a wait: fails after it, not before.
    let theirs =
        Running::start(restic.command(&["backup", "--stdin", "--stdin-filename", "r1.bin"]));
    wait_for_locks(&repo_dir, 1);
    let started = Instant::now();
    let out = sb.run(&["--retry-lock", "2s", "prune"]);
    let waited = started.elapsed();
    expect_locked("prune --retry-lock 2s beside restic's backup", &out);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
        "gave up after {waited:?}"
    );
    // Long enough: runs once restic's backup is done.
    let mut prune = sb.command(&["--retry-lock", "30s", "prune"]).output_async();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        prune.still_running(),
        "prune did not wait for restic's lock"
    );
    expect_ok("restic backup", &theirs.finish());
    expect_ok("prune --retry-lock 30s", &prune.wait());

    // An exclusive lock of another host: a backup waits until it is removed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let repo = rt
        .block_on(Repository::open(
            Backend::from_url(repo_dir.to_str().unwrap()).unwrap(),
            PW.as_bytes(),
        ))
        .unwrap();
    let json = serde_json::json!({
        "time": chrono::Local::now().fixed_offset().to_rfc3339(),
        "exclusive": true,
        "hostname": "another-host",
        "username": "someone",
        "pid": 4242,
        "uid": 0,
        "gid": 0,
    });
    let held = rt.block_on(repo.save_json(FileType::Lock, &json)).unwrap();
    let out = sb.run_with_stdin(&["--retry-lock", "1s", "backup", "--stdin"], b"data");
    expect_locked("backup --retry-lock 1s beside an exclusive lock", &out);
    assert_eq!(snapshot_count(&repo_dir), 1, "a snapshot was saved");
    let mut backup = sb.command(&["--retry-lock", "1m", "backup", "--stdin"]);
    backup.stdin(Stdio::piped());
    let backup = Running::start(backup);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        snapshot_count(&repo_dir),
        1,
        "backup ran beside an exclusive lock"
    );
    fs::remove_file(repo_dir.join("locks").join(held.to_string())).unwrap();
    expect_ok("backup --retry-lock 1m", &backup.finish());
    assert_eq!(snapshot_count(&repo_dir), 2);
    assert!(lock_files(&repo_dir).is_empty(), "locks left behind");
    restic.run_ok(&["check", "--read-data"]);
}

/// A child process the test polls and then waits for.
struct Background(Child);

impl Background {
    fn still_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    fn wait(self) -> Output {
        self.0.wait_with_output().expect("wait")
    }
}

trait SpawnBackground {
    fn output_async(self) -> Background;
}

impl SpawnBackground for Command {
    fn output_async(mut self) -> Background {
        Background(
            self.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn"),
        )
    }
}
