//! S3 faults: snapback talks to moto through a fault-injecting proxy (`common::fault_proxy`)
//! that answers 500/503 with S3 XML errors, drops connections, stalls past snapback's I/O
//! timeout and cuts responses short. Backups and restores ride through transient faults (the
//! real restic then checks every byte and restores the same tree); a server that stays down
//! makes a backup fail with one clear line in bounded time, without a snapshot, and once the
//! server is back the repository is intact and the next backup succeeds.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fault_proxy::{Fault, FaultProxy, Rule, When};
use common::{diff_trees, make_tree, pseudo_random_bytes, Restic, S3Server, Snapback};

const PW: &str = "faults-password";
const PREFIX: &str = "repo";
/// snapback's per-operation timeout in these tests (`SNAPBACK_IO_TIMEOUT_SECS`).
const IO_TIMEOUT_SECS: u64 = 2;
/// Longer than the timeout: a stalled request must be abandoned and retried.
const STALL: Duration = Duration::from_secs(6);
/// A hang detector, not a timing assertion: a failing backup must end well before this.
const FAIL_LIMIT: Duration = Duration::from_secs(150);

/// snapback on the bucket, through the proxy.
fn snapback_via(s3: &S3Server, proxy: &FaultProxy, retries: Option<u32>) -> Snapback {
    let url = format!("s3:{}/{}/{PREFIX}", proxy.endpoint(), s3.bucket());
    let mut sb = Snapback::new(url, PW);
    sb.set_envs(s3.env());
    sb.set_env("SNAPBACK_IO_TIMEOUT_SECS", IO_TIMEOUT_SECS.to_string());
    if let Some(r) = retries {
        sb.set_env("SNAPBACK_RETRIES", r.to_string());
    }
    sb
}

fn source(dir: &Path) {
    make_tree(dir);
    for i in 0..3u64 {
        fs::write(
            dir.join(format!("big-{i}.bin")),
            pseudo_random_bytes(77 + i, 4 * 1024 * 1024 + 1000 * i as usize),
        )
        .unwrap();
    }
}

fn snapshot_files(s3: &S3Server) -> usize {
    s3.object_keys(&format!("{PREFIX}/snapshots/")).len()
}

fn restic_restore_equals(restic: &Restic, src: &Path, target: &Path) {
    restic.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "restic's restore differs: {diffs:#?}");
}

/// Asserts that `what` (run through `proxy`) met every kind of fault.
fn assert_met_every_fault(proxy: &FaultProxy, what: &str) {
    let injected = proxy.injected();
    for kind in [
        Fault::Status(503),
        Fault::Status(500),
        Fault::Drop,
        Fault::Truncate,
        Fault::Stall(STALL),
    ] {
        assert!(
            injected.iter().any(|f| f.fault == kind),
            "the {what} never met {kind:?}: {}",
            proxy.summary()
        );
    }
}

#[test]
fn backup_and_restore_ride_through_transient_s3_faults() {
    require_restic!();
    let s3 = S3Server::start();
    let restic = Restic::s3(&s3, PREFIX, PW);
    Snapback::s3(&s3, PREFIX, PW).run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);

    // PUT, GET and DELETE (a backup sends no HEAD) meet faults, and every kind of fault is
    // met. The first rule that fires
    // wins; every rule counts the requests it matches. A transient fault is a finite burst:
    // "every nth PUT" would be a coin toss per attempt (over two in five failing) that an
    // upload's bounded retries lose at some point, so each method fails at most five times in
    // the whole backup, fewer than the six retries one request gets even if every one of
    // them hit the same upload.
    let backup_rules = vec![
        Rule::at("PUT", "/", &[5], Fault::Stall(STALL)),
        Rule::at("PUT", "/", &[1, 9], Fault::Status(503)),
        Rule::at("PUT", "/", &[3], Fault::Truncate),
        Rule::at("PUT", "/", &[7], Fault::Drop),
        Rule::at("GET", "/", &[0, 6], Fault::Status(500)),
        Rule::at("GET", "/", &[2], Fault::Drop),
        Rule::at("GET", "/", &[4], Fault::Truncate),
        Rule::at("DELETE", "/", &[0], Fault::Drop),
    ];
    let proxy = FaultProxy::start(s3.port(), backup_rules);
    let sb = snapback_via(&s3, &proxy, None);
    let out = sb.run_ok(&["backup", "--pack-size", "1", src.to_str().unwrap()]);
    println!("faults/backup: {}", proxy.summary());
    assert!(out.contains("saved"), "{out}");
    assert_met_every_fault(&proxy, "backup");
    assert_eq!(snapshot_files(&s3), 1);

    // restic, without the proxy, reads every pack and finds the data intact and complete.
    restic.run_ok(&["check", "--read-data"]);
    restic_restore_equals(&restic, &src, &tmp.path().join("restic-restore"));

    // snapback restores through the proxy while reads fail. It reads several blobs at once,
    // so "every nth GET" would be a coin toss per attempt (two in three failing, as in the
    // backup's schedule) that bounded retries lose at some point; a transient fault is a
    // finite burst instead: each kind hits a few of the pack reads, and a metadata read
    // stalls.
    let proxy = FaultProxy::start(
        s3.port(),
        vec![
            Rule {
                method: Some("GET"),
                path: None,
                when: When::At(vec![3]),
                fault: Fault::Stall(STALL),
            },
            Rule::at("GET", "/data/", &[0, 7], Fault::Status(503)),
            Rule::at("GET", "/data/", &[2, 9], Fault::Truncate),
            Rule::at("GET", "/data/", &[4, 11], Fault::Drop),
            Rule::at("GET", "/data/", &[5, 13], Fault::Status(500)),
            Rule::every(Some("PUT"), 2, Fault::Status(503)),
            Rule::every(Some("DELETE"), 2, Fault::Status(500)),
        ],
    );
    let sb = snapback_via(&s3, &proxy, None);
    let target = tmp.path().join("snapback-restore");
    sb.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    println!("faults/restore: {}", proxy.summary());
    assert_met_every_fault(&proxy, "restore");
    let diffs = diff_trees(&src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "snapback's restore differs: {diffs:#?}");
    restic.run_ok(&["check"]);
}

/// Runs a backup that must fail; returns its stderr's error line and its duration.
fn failing_backup(sb: &Snapback, src: &Path) -> (String, Duration) {
    let start = Instant::now();
    let out = sb.run(&["backup", "--pack-size", "1", src.to_str().unwrap()]);
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "backup succeeded against a server that is down:\n{stderr}"
    );
    assert!(
        took < FAIL_LIMIT,
        "a backup against a dead server took {took:?}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("snapback:"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one error line, stderr:\n{stderr}"
    );
    assert!(
        errors[0].contains("backup failed")
            || errors[0].contains("storage error")
            || errors[0].contains("cannot connect to")
            || errors[0].contains("S3 ")
            || errors[0].contains("did not answer within"),
        "unclear error: {stderr}"
    );
    (errors[0].to_string(), took)
}

#[test]
fn backup_against_a_server_that_stays_down_fails_clearly_and_the_repository_survives() {
    require_restic!();
    let s3 = S3Server::start();
    let restic = Restic::s3(&s3, PREFIX, PW);
    Snapback::s3(&s3, PREFIX, PW).run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    source(&src);
    let proxy = FaultProxy::start(s3.port(), Vec::new());
    let sb = snapback_via(&s3, &proxy, Some(2));

    // 1. The server goes down in the middle of a backup (every request from the 13th on gets
    //    503) and stays down.
    proxy.set_rules(vec![Rule {
        method: None,
        path: None,
        when: When::From(12),
        fault: Fault::Status(503),
    }]);
    let (line, took) = failing_backup(&sb, &src);
    let packs_left = s3.object_keys(&format!("{PREFIX}/data/")).len();
    println!(
        "faults/down mid-backup (503): failed after {:.1}s with: {line}; {} packs reached S3; {}",
        took.as_secs_f64(),
        packs_left,
        proxy.summary()
    );
    assert!(
        packs_left > 0,
        "the outage was meant to start mid-backup, after some packs"
    );
    assert_eq!(snapshot_files(&s3), 0, "no snapshot after a failed backup");

    // 2. Down from the start, three ways: errors, dropped connections, stalls past the timeout.
    for fault in [Fault::Status(500), Fault::Drop, Fault::Stall(STALL)] {
        proxy.set_rules(Vec::new());
        proxy.set_down(Some(fault));
        let before = proxy.injected().len();
        let (line, took) = failing_backup(&sb, &src);
        println!(
            "faults/down ({fault:?}): failed after {:.1}s with: {line}; {} faults injected",
            took.as_secs_f64(),
            proxy.injected().len() - before
        );
        assert!(proxy.injected().len() > before);
        assert_eq!(snapshot_files(&s3), 0);
    }

    // 3. The server is back: the repository as the failures left it passes restic's check
    //    (the failed backup's lock may remain: --no-lock), and the next backup succeeds
    //    despite that dead process's lock.
    proxy.set_down(None);
    restic.run_ok(&["check", "--no-lock"]);
    let out = sb.run_ok(&["backup", "--pack-size", "1", src.to_str().unwrap()]);
    assert!(out.contains("saved"), "{out}");
    assert_eq!(snapshot_files(&s3), 1);
    restic.run_ok(&["unlock"]);
    restic.run_ok(&["check", "--read-data"]);
    restic_restore_equals(&restic, &src, &tmp.path().join("restore"));
    println!("faults/recovered: backup, restic check --read-data and restore ok");
}

#[test]
fn a_pack_read_cut_off_part_way_is_retried_and_the_restore_completes() {
    let s3 = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    // Several blobs, all in one data pack: the restore reads them as one range.
    let content = pseudo_random_bytes(5, 6 * 1024 * 1024 + 17);
    fs::write(src.join("big.bin"), &content).unwrap();
    let direct = Snapback::s3(&s3, PREFIX, PW);
    direct.run_ok(&["init"]);
    direct.run_ok(&["backup", src.to_str().unwrap()]);
    let pack = s3
        .object_keys(&format!("{PREFIX}/data/"))
        .into_iter()
        .max_by_key(|k| s3.get_object(k).map_or(0, |o| o.len()))
        .unwrap();
    let pack_name: &'static str = Box::leak(pack.rsplit('/').next().unwrap().into());

    // The first read of the data pack gets half its body, then the connection closes: the
    // restore streams the pack as one range, and opendal reads the rest again.
    let proxy = FaultProxy::start(
        s3.port(),
        vec![Rule::at("GET", pack_name, &[0], Fault::Truncate)],
    );
    let sb = snapback_via(&s3, &proxy, None);
    let target = tmp.path().join("restored");
    let out = sb.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(proxy.injected().len(), 1, "{}", proxy.summary());
    let restored = target.join(src.strip_prefix("/").unwrap()).join("big.bin");
    assert!(
        fs::read(restored).unwrap() == content,
        "restored content differs"
    );
}

/// The retry budget is whole: one request that fails on every attempt but its last (six
/// retries, the default) still succeeds, however long the jittered backoff between them runs
/// (12.6 to 25.2 s), within the operation's deadline.
#[test]
fn a_request_that_fails_on_all_attempts_but_the_last_succeeds() {
    require_restic!();
    let s3 = S3Server::start();
    Snapback::s3(&s3, PREFIX, PW).run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    // The snapshot's upload is the backup's last PUT: nothing else is in flight to take
    // a share of the faults.
    let proxy = FaultProxy::start(
        s3.port(),
        vec![
            Rule::at("PUT", "/snapshots/", &[0, 2, 4], Fault::Status(503)),
            Rule::at("PUT", "/snapshots/", &[1, 3, 5], Fault::Drop),
        ],
    );
    let sb = snapback_via(&s3, &proxy, None);
    let start = Instant::now();
    let out = sb.run_ok(&["backup", src.to_str().unwrap()]);
    println!(
        "faults/budget: saved after {:.1}s; {}",
        start.elapsed().as_secs_f64(),
        proxy.summary()
    );
    assert!(out.contains("saved"), "{out}");
    assert_eq!(proxy.injected().len(), 6, "{}", proxy.summary());
    assert_eq!(snapshot_files(&s3), 1);
    Restic::s3(&s3, PREFIX, PW).run_ok(&["check", "--read-data"]);
}
