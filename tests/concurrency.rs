//! Concurrency and locks: two snapback backups, or snapback and restic, writing one repository
//! at once both succeed and the real restic checks every byte and restores both snapshots; an
//! exclusive lock (held in-process through the library, or a restic-format lock from another
//! host) makes a backup fail clearly; a lock from our own PID namespace whose process is dead,
//! or whose PID was reused by another process (different start time), does not block.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Output, Stdio};

use common::{diff_trees, make_tree, pseudo_random_bytes, Restic, S3Server, Snapback};
use snapback_repo::{Backend, FileType, Repository};

const PW: &str = "concurrency-password";

fn source(dir: &Path, seed: u64) {
    make_tree(dir);
    for i in 0..2u64 {
        fs::write(
            dir.join(format!("data-{i}.bin")),
            pseudo_random_bytes(seed * 10 + i, 8 * 1024 * 1024 + 333 * i as usize),
        )
        .unwrap();
    }
}

fn spawn(cmd: &mut std::process::Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a backup")
}

fn expect_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Snapshot ids by their single path.
fn snapshots_by_path(restic: &Restic) -> Vec<(String, String)> {
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots"]);
    snaps
        .iter()
        .map(|s| {
            (
                s["paths"][0].as_str().unwrap().to_string(),
                s["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn restore_equals(restic: &Restic, id: &str, src: &Path, target: &Path) {
    restic.run_ok(&["restore", id, "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(src, &target.join(src.strip_prefix("/").unwrap()));
    assert!(
        diffs.is_empty(),
        "snapshot {id} of {src:?} differs: {diffs:#?}"
    );
}

/// Both sources are in their own snapshot, restic reads every pack, both restore equal.
fn judge(restic: &Restic, sources: &[&Path], tmp: &Path) {
    restic.run_ok(&["check", "--read-data"]);
    let snaps = snapshots_by_path(restic);
    assert_eq!(snaps.len(), sources.len(), "{snaps:?}");
    for (i, src) in sources.iter().enumerate() {
        let (_, id) = snaps
            .iter()
            .find(|(p, _)| Path::new(p) == *src)
            .unwrap_or_else(|| panic!("no snapshot of {src:?}: {snaps:?}"));
        restore_equals(restic, id, src, &tmp.join(format!("restore-{i}")));
    }
}

#[test]
fn two_snapback_backups_into_one_s3_repository_at_once_both_succeed() {
    require_restic!();
    let s3 = S3Server::start();
    let sb = Snapback::s3(&s3, "repo", PW);
    let restic = Restic::s3(&s3, "repo", PW);
    sb.run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    source(&a, 1);
    source(&b, 2);
    let first = spawn(&mut sb.command(&["backup", "--pack-size", "1", a.to_str().unwrap()]));
    let second = spawn(&mut sb.command(&["backup", "--pack-size", "1", b.to_str().unwrap()]));
    let (first, second) = (
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    );
    expect_ok("first snapback backup", &first);
    expect_ok("second snapback backup", &second);
    judge(&restic, &[&a, &b], tmp.path());
    assert!(
        s3.object_keys("repo/locks/").is_empty(),
        "both backups release their locks"
    );
}

#[test]
fn snapback_and_restic_backing_up_one_repository_at_once_both_succeed() {
    require_restic!();
    let s3 = S3Server::start();
    let sb = Snapback::s3(&s3, "repo", PW);
    let restic = Restic::s3(&s3, "repo", PW);
    sb.run_ok(&["init"]);
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        tmp.path().join("snapback-src"),
        tmp.path().join("restic-src"),
    );
    source(&a, 3);
    source(&b, 4);
    let ours = spawn(&mut sb.command(&["backup", "--pack-size", "1", a.to_str().unwrap()]));
    let theirs = spawn(&mut restic.command(&["backup", b.to_str().unwrap()]));
    let (ours, theirs) = (
        ours.wait_with_output().unwrap(),
        theirs.wait_with_output().unwrap(),
    );
    expect_ok("snapback backup", &ours);
    expect_ok("restic backup", &theirs);
    judge(&restic, &[&a, &b], tmp.path());
    // And snapback reads restic's snapshot back (index files of both writers together).
    let target = tmp.path().join("snapback-restore");
    let (_, id) = snapshots_by_path(&restic)
        .into_iter()
        .find(|(p, _)| Path::new(p) == b)
        .unwrap();
    sb.run_ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    let diffs = diff_trees(&b, &target.join(b.strip_prefix("/").unwrap()));
    assert!(diffs.is_empty(), "{diffs:#?}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn open(rt: &tokio::runtime::Runtime, url: &str) -> Repository {
    rt.block_on(Repository::open(
        Backend::from_url(url).unwrap(),
        PW.as_bytes(),
    ))
    .unwrap()
}

/// Start time of `pid` in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// How a test lock file describes its process.
#[derive(Clone, Copy)]
enum Writer {
    /// As restic: host and PID only.
    Restic,
    /// As snapback: also boot id, PID namespace (ours) and this start time.
    Snapback(Option<u64>),
}

/// Writes an exclusive lock file as restic or snapback would.
fn write_lock(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    hostname: &str,
    pid: u32,
    writer: Writer,
) {
    let mut lock = serde_json::json!({
        "time": chrono::Local::now().fixed_offset().to_rfc3339(),
        "exclusive": true,
        "hostname": hostname,
        "username": "someone",
        "pid": pid,
        "uid": 0,
        "gid": 0,
    });
    if let Writer::Snapback(ticks) = writer {
        let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let ns = fs::read_link("/proc/self/ns/pid").unwrap();
        let ns = ns.to_str().unwrap();
        let ns: u64 = ns["pid:[".len()..ns.len() - 1].parse().unwrap();
        lock["snapback_boot_id"] = boot.trim().into();
        lock["snapback_pid_ns"] = ns.into();
        if let Some(t) = ticks {
            lock["snapback_start_ticks"] = t.into();
        }
    }
    rt.block_on(repo.save_json(FileType::Lock, &lock)).unwrap();
}

fn clear_locks(repo_dir: &Path) {
    let locks = repo_dir.join("locks");
    for e in fs::read_dir(&locks).unwrap().flatten() {
        fs::remove_file(e.path()).unwrap();
    }
}

fn backup(sb: &Snapback, src: &Path) -> Output {
    sb.run(&["backup", src.to_str().unwrap()])
}

fn assert_locked(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: backup ran despite the lock");
    assert!(
        stderr.contains("repository is locked") && stderr.contains("exclusive"),
        "{what}: unclear error:\n{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("snapback:"))
            .count(),
        1,
        "{what}: one error line:\n{stderr}"
    );
}

#[test]
fn exclusive_locks_block_a_backup_and_stale_ones_do_not() {
    require_restic!();
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let url = repo_dir.to_str().unwrap().to_string();
    let sb = Snapback::new(&url, PW);
    let restic = Restic::new(&url, PW);
    sb.run_ok(&["init"]);
    let src = tmp.path().join("src");
    make_tree(&src);
    let rt = rt();
    let repo = open(&rt, &url);
    let host = snapback_repo::host::hostname();
    let snapshots = || fs::read_dir(repo_dir.join("snapshots")).unwrap().count();
    let mut backups = 0;

    // 1. An exclusive lock held by a live process (this test, through the library).
    let held = rt.block_on(repo.lock(true)).unwrap();
    assert_locked(&backup(&sb, &src), "library lock");
    rt.block_on(held.release()).unwrap();
    expect_ok("backup after release", &backup(&sb, &src));
    backups += 1;

    // 2. A restic-format exclusive lock (no start time) from another host: never stale
    //    while fresh. restic itself refuses to back up too.
    write_lock(&rt, &repo, "some-other-host", 4242, Writer::Restic);
    assert_locked(&backup(&sb, &src), "other host's lock");
    let theirs = restic.run(&["backup", src.to_str().unwrap()]);
    assert!(!theirs.status.success(), "restic ignored the lock");
    clear_locks(&repo_dir);

    // 3. A lock from this host, boot and PID namespace whose process is dead: stale, does
    //    not block; restic agrees (its `unlock` removes only stale locks).
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    write_lock(&rt, &repo, &host, dead_pid, Writer::Snapback(None));
    expect_ok("backup beside a dead process's lock", &backup(&sb, &src));
    backups += 1;
    restic.run_ok(&["unlock"]);
    assert_eq!(fs::read_dir(repo_dir.join("locks")).unwrap().count(), 0);
    //    The same lock as restic writes it cannot tell PID namespaces apart (the PID may
    //    live in another container of the Pod): it blocks until it is 30 minutes old, where
    //    restic would take it for stale.
    write_lock(&rt, &repo, &host, dead_pid, Writer::Restic);
    assert_locked(&backup(&sb, &src), "restic-format lock of a PID not here");
    restic.run_ok(&["unlock"]);
    assert_eq!(fs::read_dir(repo_dir.join("locks")).unwrap().count(), 0);

    // 4. This host, a live PID (this test process), recorded start time matching: a live
    //    lock, it blocks ...
    let me = std::process::id();
    write_lock(
        &rt,
        &repo,
        &host,
        me,
        Writer::Snapback(Some(start_ticks(me))),
    );
    assert_locked(&backup(&sb, &src), "live lock with start time");
    clear_locks(&repo_dir);
    // ... and restic's form of the same lock (no start time) blocks too ...
    write_lock(&rt, &repo, &host, me, Writer::Restic);
    assert_locked(&backup(&sb, &src), "live restic-format lock");
    clear_locks(&repo_dir);
    // ... but with another start time the PID was reused by another process: stale.
    write_lock(
        &rt,
        &repo,
        &host,
        me,
        Writer::Snapback(Some(start_ticks(me) + 12_345)),
    );
    expect_ok("backup beside a reused PID's lock", &backup(&sb, &src));
    backups += 1;
    clear_locks(&repo_dir);

    assert_eq!(snapshots(), backups, "a blocked backup writes no snapshot");
    restic.run_ok(&["check", "--read-data"]);
    println!(
        "concurrency/locks: library exclusive lock, other host's lock, live same-host locks \
         and restic's dead-PID lock block; our namespace's dead-PID and reused-PID locks do \
         not; {backups} snapshots"
    );
}
