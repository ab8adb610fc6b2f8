//! `snapback sidecar` played as in a Pod on one machine: the real binary against a real S3
//! server (moto on 127.0.0.1), driven over its HTTP API and with signals, judged by the real
//! restic (snapshots, check, locks).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_request, make_tree, pseudo_random_bytes, Restic, S3Server, Snapback};

const PW: &str = "sidecar-password-7f3a9c";
const POD_UID: &str = "4d9b2f6e-1c3a-4e8b-a7d5-0f2e6c8b1a93";
const HOST: &str = "apps/db-0";

/// A running `snapback sidecar`, its log in a file; killed if the test ends early.
struct Sidecar {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sidecar {
    /// Starts the sidecar with `args` (after `sidecar`), on a free port. `without_password`
    /// removes RESTIC_PASSWORD from its environment (the warm key must do).
    fn start(sb: &Snapback, args: &[&str], without_password: bool, log: PathBuf) -> Sidecar {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut full = vec!["sidecar", "--listen", &listen];
        full.extend_from_slice(args);
        let mut cmd = sb.command(&full);
        if without_password {
            cmd.env_remove("RESTIC_PASSWORD")
                .env_remove("RESTIC_PASSWORD_FILE");
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()));
        let child = cmd.spawn().unwrap();
        let sidecar = Sidecar { child, port, log };
        sidecar.wait_ready();
        sidecar
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let r = http_request(self.port, "GET", path, b"").unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    fn post_backup(&self) -> u16 {
        http_request(self.port, "POST", "/backup", b"")
            .unwrap()
            .status
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http_request(self.port, "GET", "/readyz", b"") {
                if r.status == 200 {
                    return;
                }
                assert_eq!(r.status, 503, "/readyz before ready");
            }
            assert!(
                Instant::now() < deadline,
                "sidecar not ready within 60 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of the sample line starting with `name` (with labels, if any) in /metrics.
    fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }

    /// Polls /metrics until `cond` holds on `name`'s value.
    fn wait_metric(&self, name: &str, what: &str, cond: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond(self.metric(name)) {
            assert!(
                Instant::now() < deadline,
                "{name}: {what} not reached within 120 s; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill -TERM");
    }

    /// Waits (at most 60 s) for the process to exit; its exit code.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "sidecar did not exit within 60 s of SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn snapshot_ids(restic: &Restic) -> Vec<String> {
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots"]);
    snaps
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn locks(restic: &Restic) -> Vec<String> {
    restic
        .run_ok(&["list", "locks"])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Every log line is a JSON object, and the password is in none.
fn assert_json_log_without_password(log: &str) {
    assert!(!log.contains(PW), "the password appears in the log:\n{log}");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v.is_object(), "{line}");
    }
}

fn write_big_tree(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    // 200 MB of incompressible data in 4 files, so the backup takes seconds, not milliseconds.
    for i in 0..4u64 {
        fs::write(
            dir.join(format!("big-{i}.bin")),
            pseudo_random_bytes(1000 + i, 50 * 1000 * 1000),
        )
        .unwrap();
    }
}

/// The Pod's life: the init container writes the warm key, the sidecar (no password) backs up
/// on request, reports in /metrics, and on SIGTERM with `--grace 0s` cancels a running backup:
/// no snapshot, no lock left, a repository restic checks clean.
#[test]
fn pod_lifecycle_with_warm_key_request_metrics_and_sigterm_cancel() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_tree(&data);
    let key = tmp.path().join("run/key");
    fs::create_dir_all(key.parent().unwrap()).unwrap();

    let mut sb = Snapback::s3(&s3, "pod", PW);
    sb.set_env("POD_UID", POD_UID);
    sb.set_env("SNAPBACK_HOST", HOST);
    let restic = Restic::s3(&s3, "pod", PW);
    // The init container: creates the repository and the warm key (data dir is not empty).
    sb.run_ok(&[
        "init",
        "--key-file",
        key.to_str().unwrap(),
        "--restore-if-empty",
        data.to_str().unwrap(),
    ]);

    let log = tmp.path().join("sidecar.log");
    let mut sc = Sidecar::start(
        &sb,
        &[
            "--key-file",
            key.to_str().unwrap(),
            "--grace",
            "0s",
            data.to_str().unwrap(),
        ],
        true,
        log,
    );
    assert_eq!(sc.get("/healthz").0, 200);
    assert_eq!(sc.metric("snapback_last_success_timestamp_seconds"), 0.0);
    assert_eq!(sc.metric("snapback_backup_in_progress"), 0.0);

    assert_eq!(sc.post_backup(), 202);
    sc.wait_metric(
        "snapback_last_success_timestamp_seconds",
        "a success",
        |v| v > 0.0,
    );
    assert_eq!(sc.metric("snapback_backups_total{result=\"success\"}"), 1.0);
    assert!(sc.metric("snapback_backup_files_total{state=\"new\"}") >= 8.0);
    assert!(sc.metric("snapback_backup_bytes_read_total") >= common::MAKE_TREE_RANDOM_LEN as f64);
    assert!(sc.metric("snapback_backup_bytes_added_total") > 0.0);
    assert!(sc.metric("snapback_last_backup_duration_seconds") > 0.0);
    let ids = snapshot_ids(&restic);
    assert_eq!(ids.len(), 1);
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots"]);
    assert_eq!(snaps[0]["hostname"], HOST);
    restic.run_ok(&["check", "--read-data"]);

    // A big backup, interrupted by SIGTERM with no grace.
    write_big_tree(&data.join("big"));
    assert_eq!(sc.post_backup(), 202);
    assert_eq!(sc.post_backup(), 409, "a second request while one runs");
    sc.wait_metric("snapback_backup_in_progress", "a running backup", |v| {
        v == 1.0
    });
    std::thread::sleep(Duration::from_millis(500));
    sc.sigterm();
    let code = sc.wait_exit();
    let text = sc.log_text();
    assert!(
        text.contains("backup cancelled"),
        "the backup finished before SIGTERM (machine too fast for 200 MB?) or was not cancelled; log:\n{text}"
    );
    assert_eq!(
        code,
        Some(1),
        "a cancelled final backup exits 1; log:\n{text}"
    );
    assert_eq!(snapshot_ids(&restic), ids, "no new snapshot after cancel");
    assert!(
        locks(&restic).is_empty(),
        "locks left: {:?}",
        locks(&restic)
    );
    restic.run_ok(&["check"]);
    assert_json_log_without_password(&text);
}

/// The consistency gate, retention, the shutdown backup, and a clean exit 0.
#[test]
fn gate_retention_and_backup_on_shutdown() {
    require_restic!();
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_tree(&data);
    let gate_file = tmp.path().join("app-is-consistent");
    let post_mark = tmp.path().join("post-ran");

    let mut sb = Snapback::s3(&s3, "gate", PW);
    sb.set_env("SNAPBACK_HOST", HOST);
    let restic = Restic::s3(&s3, "gate", PW);
    sb.run_ok(&["init"]);

    let pre = format!("test -e '{}'", gate_file.display());
    let post = format!("touch '{}'", post_mark.display());
    let log = tmp.path().join("sidecar.log");
    let mut sc = Sidecar::start(
        &sb,
        &[
            "--pre-command",
            &pre,
            "--post-command",
            &post,
            "--keep-last",
            "1",
            "--backup-on-shutdown",
            "--grace",
            "60s",
            data.to_str().unwrap(),
        ],
        false,
        log,
    );

    // Gate closed: counted as a failure, no snapshot, no post-command.
    assert_eq!(sc.post_backup(), 202);
    sc.wait_metric(
        "snapback_backups_total{result=\"failure\"}",
        "a failure",
        |v| v == 1.0,
    );
    assert!(snapshot_ids(&restic).is_empty());
    assert!(
        !post_mark.exists(),
        "post-command ran after a failed pre-command"
    );

    // Gate open: two successes; retention keeps the newest only.
    fs::write(&gate_file, b"").unwrap();
    for n in 1..=2 {
        sc.wait_metric("snapback_backup_in_progress", "idle", |v| v == 0.0);
        assert_eq!(sc.post_backup(), 202);
        sc.wait_metric(
            "snapback_backups_total{result=\"success\"}",
            "a success",
            |v| v == f64::from(n),
        );
    }
    assert!(post_mark.exists(), "post-command did not run");
    let after_two = snapshot_ids(&restic);
    assert_eq!(after_two.len(), 1, "--keep-last 1 after two backups");

    // SIGTERM while idle: one last backup, then exit 0.
    fs::write(data.join("late.txt"), b"written just before shutdown\n").unwrap();
    sc.sigterm();
    let code = sc.wait_exit();
    let text = sc.log_text();
    assert_eq!(code, Some(0), "log:\n{text}");
    let last = snapshot_ids(&restic);
    assert_eq!(last.len(), 1, "--keep-last 1 after the shutdown backup");
    assert_ne!(last, after_two, "the shutdown backup saved a new snapshot");
    let out = restic.run_ok(&["ls", "latest"]);
    assert!(out.contains("late.txt"), "{out}");
    assert!(locks(&restic).is_empty());
    restic.run_ok(&["check"]);
    assert!(!text.contains(PW), "the password appears in the log");
}

/// Bad command lines fail at once with one clear line.
#[test]
fn bad_schedule_and_url_are_refused_at_start() {
    let sb = Snapback::new("/nonexistent-repo", PW);
    for (args, needle) in [
        (vec!["sidecar", "--schedule", "61 * * * *", "/data"], "cron"),
        (vec!["sidecar", "--every", "soon", "/data"], "duration"),
        (
            vec!["sidecar", "--ready-url", "https://localhost/", "/data"],
            "http://",
        ),
        (vec!["sidecar"], "nothing to back up"),
    ] {
        let out = sb.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
}
