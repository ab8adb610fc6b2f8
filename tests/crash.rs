//! Crash consistency: a backup killed with SIGKILL at many points (by the number of packs it
//! has uploaded, by index or snapshot files appearing, or after seeded fractions of a measured
//! full run) leaves a repository that the real restic checks clean, holds no half snapshot, and
//! whose stale lock does not block the next backup on this host. The next backup succeeds and
//! re-uploads exactly what no index file recorded: every indexed blob is reused.
//!
//! Runs against a local repository and against S3 (moto on 127.0.0.1).

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{diff_trees, pseudo_random_bytes, Restic, S3Server, Snapback};
use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
use snapback_repo::{Backend, BlobIndex, BlobType, Repository};

const PW: &str = "crash-password";
const HOST: &str = "crash-host";
/// `--pack-size` in MiB: the minimum, so that the backup writes many packs.
const PACK_MIB: &str = "1";
/// Source files: 4 × 15 MiB of incompressible data.
const FILES: usize = 4;
const FILE_LEN: usize = 15 * 1024 * 1024;
/// Longest a single backup may run in this test.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Where the repository of one round lives.
enum Store {
    Local(PathBuf),
    S3(S3Server),
}

struct Repo {
    store: Store,
    url: String,
}

impl Repo {
    fn local(dir: &Path) -> Repo {
        Repo {
            url: dir.to_string_lossy().into_owned(),
            store: Store::Local(dir.to_path_buf()),
        }
    }

    fn s3() -> Repo {
        let s3 = S3Server::start();
        Repo {
            url: s3.repo_url("repo"),
            store: Store::S3(s3),
        }
    }

    fn snapback(&self) -> Snapback {
        match &self.store {
            Store::Local(_) => Snapback::new(&self.url, PW),
            Store::S3(s3) => Snapback::s3(s3, "repo", PW),
        }
    }

    fn restic(&self) -> Restic {
        match &self.store {
            Store::Local(_) => Restic::new(&self.url, PW),
            Store::S3(s3) => Restic::s3(s3, "repo", PW),
        }
    }

    /// Names of the complete files in `dir` (ids only: a local write in progress has a
    /// `-tmp-` name).
    fn files(&self, dir: &str) -> Vec<String> {
        let names: Vec<String> = match &self.store {
            Store::Local(root) => {
                let mut out = Vec::new();
                let mut stack = vec![root.join(dir)];
                while let Some(d) = stack.pop() {
                    let Ok(entries) = fs::read_dir(&d) else {
                        continue;
                    };
                    for e in entries.flatten() {
                        match e.file_type() {
                            Ok(t) if t.is_dir() => stack.push(e.path()),
                            Ok(_) => out.push(e.file_name().to_string_lossy().into_owned()),
                            Err(_) => {}
                        }
                    }
                }
                out
            }
            Store::S3(s3) => s3
                .object_keys(&format!("repo/{dir}/"))
                .into_iter()
                .filter_map(|k| k.rsplit('/').next().map(str::to_string))
                .collect(),
        };
        names
            .into_iter()
            .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect()
    }

    fn count(&self, dir: &str) -> usize {
        self.files(dir).len()
    }

    fn backend(&self) -> Backend {
        let creds = S3Credentials {
            access_key_id: Some(common::TEST_ACCESS_KEY.into()),
            secret_access_key: Some(common::TEST_SECRET_KEY.into()),
            region: Some("us-east-1".into()),
            ..Default::default()
        };
        Backend::new(
            Location::parse(&self.url).unwrap(),
            &creds,
            RetryPolicy::default(),
        )
        .unwrap()
    }

    /// Plaintext bytes of every blob the repository's index files record (what a retry can
    /// reuse), read with the library.
    fn indexed_bytes(&self) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let repo = Repository::open(self.backend(), PW.as_bytes())
                .await
                .expect("open the repository after the kill");
            let index = BlobIndex::load(&repo)
                .await
                .expect("every index file the killed backup left must load");
            [BlobType::Data, BlobType::Tree]
                .into_iter()
                .flat_map(|ty| index.locations(ty).collect::<Vec<_>>())
                .map(|loc| loc.plain_length())
                .sum()
        })
    }
}

impl Drop for Repo {
    /// Frees the round's space: the directory, or the objects (moto keeps them in memory).
    fn drop(&mut self) {
        match &self.store {
            Store::Local(dir) => {
                let _ = fs::remove_dir_all(dir);
            }
            Store::S3(s3) => {
                for key in s3.object_keys("") {
                    let _ = common::http_request(
                        s3.port(),
                        "DELETE",
                        &format!("/{}/{key}", s3.bucket()),
                        b"",
                    );
                }
            }
        }
    }
}

/// xorshift64*, seeded: the kill delays are the same on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
enum Trigger {
    /// Once this many complete packs are in the repository.
    Packs(usize),
    /// Once the first index file is in the repository.
    FirstIndex,
    /// Once the snapshot file is in the repository (racing with the process's exit).
    Snapshot,
    /// After this long.
    Delay(Duration),
}

fn make_source(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..FILES {
        fs::write(
            dir.join(format!("file-{i}.bin")),
            pseudo_random_bytes(1000 + i as u64, FILE_LEN),
        )
        .unwrap();
    }
}

fn backup_args(src: &Path) -> Vec<String> {
    vec![
        "backup".into(),
        "--host".into(),
        HOST.into(),
        "--pack-size".into(),
        PACK_MIB.into(),
        src.to_string_lossy().into_owned(),
    ]
}

fn spawn_backup(repo: &Repo, src: &Path) -> Child {
    repo.snapback()
        .command(&backup_args(src))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapback backup")
}

fn output_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// The "N added" figure of snapback's summary line, in bytes (to the printed precision).
fn added_bytes(out: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.contains(" added ("))
        .unwrap_or_else(|| panic!("no summary line in:\n{out}"));
    let before = &line[..line.find(" added (").unwrap()];
    let mut words = before.rsplit(' ');
    let unit = words.next().unwrap();
    let value: f64 = words.next().unwrap().parse().unwrap();
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        u => panic!("unit {u:?} in {line}"),
    };
    (value * scale) as u64
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A full, uninterrupted run: its duration, pack count and added bytes.
struct Baseline {
    duration: Duration,
    packs: usize,
    added: u64,
}

fn baseline(repo: &Repo, src: &Path) -> Baseline {
    repo.snapback().run_ok(&["init"]);
    let start = Instant::now();
    let out = repo.snapback().run_ok(&backup_args(src));
    let duration = start.elapsed();
    let b = Baseline {
        duration,
        packs: repo.count("data"),
        added: added_bytes(&out),
    };
    assert!(b.packs >= 20, "expected many packs, got {}", b.packs);
    b
}

#[derive(Debug, Default)]
struct Tally {
    rounds: usize,
    killed: usize,
    completed_before_kill: usize,
    snapshot_survived_kill: usize,
    stale_locks: usize,
}

/// One kill point: fresh repository, backup killed at `trigger`, then judged.
fn round(
    label: &str,
    make_repo: &dyn Fn() -> Repo,
    src: &Path,
    trigger: Trigger,
    base: &Baseline,
    restore_into: Option<&Path>,
    tally: &mut Tally,
) {
    let repo = make_repo();
    repo.snapback().run_ok(&["init"]);
    let poll = match repo.store {
        Store::Local(_) => Duration::from_millis(2),
        Store::S3(_) => Duration::from_millis(20),
    };

    let start = Instant::now();
    let mut child = spawn_backup(&repo, src);
    let mut exited = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        let fire = match trigger {
            Trigger::Packs(n) => repo.count("data") >= n,
            Trigger::FirstIndex => repo.count("index") >= 1,
            Trigger::Snapshot => repo.count("snapshots") >= 1,
            Trigger::Delay(d) => start.elapsed() >= d,
        };
        if fire {
            break;
        }
        assert!(
            start.elapsed() < RUN_LIMIT,
            "{label}: backup neither finished nor reached {trigger:?}"
        );
        std::thread::sleep(poll);
    }
    let killed = exited.is_none();
    if killed {
        child.kill().expect("SIGKILL the backup");
        let status = child.wait().unwrap();
        // It may have exited on its own between the last poll and the kill.
        if status.code() == Some(0) {
            exited = Some(status);
        }
    }
    let out = output_of(&mut child);
    let completed = match exited {
        Some(status) => {
            assert!(status.success(), "{label}: backup failed:\n{out}");
            true
        }
        None => false,
    };
    let at_kill = Instant::now() - start;

    let packs = repo.count("data");
    let indexes = repo.count("index");
    let snapshots = repo.count("snapshots");
    let locks = repo.count("locks");
    tally.rounds += 1;
    if completed {
        tally.completed_before_kill += 1;
        assert_eq!(
            snapshots, 1,
            "{label}: completed backup must leave its snapshot"
        );
    } else {
        tally.killed += 1;
        tally.stale_locks += locks;
        assert!(snapshots <= 1, "{label}: more snapshots than backups");
        if snapshots == 1 {
            // Killed after writing the snapshot: it must be whole (restic check below
            // verifies every tree and blob it references).
            tally.snapshot_survived_kill += 1;
        }
    }

    // The repository as the kill left it (stale lock and all) is consistent for restic.
    let restic = repo.restic();
    restic.run_ok(&["check", "--no-lock"]);
    let indexed = repo.indexed_bytes();

    // The next backup on the same host is not blocked by the dead process's lock and reuses
    // every blob an index file recorded.
    let retry = repo.snapback().run_ok(&backup_args(src));
    let added = added_bytes(&retry);
    let expected = base.added.saturating_sub(indexed);
    let slack = 128 * 1024;
    assert!(
        added.abs_diff(expected) <= slack,
        "{label}: retry added {added} bytes; the full run added {} and {indexed} were indexed \
         at the kill, so {expected} were expected\n{retry}",
        base.added
    );
    if !completed && packs * 4 >= base.packs * 3 {
        // Late kill: index files are flushed every few packs, so most data is reused.
        assert!(
            added * 10 <= base.added * 6,
            "{label}: killed after {packs} of {} packs, yet the retry re-uploaded {:.1} of {:.1} MiB",
            base.packs,
            mib(added),
            mib(base.added)
        );
    }
    let snaps_after = repo.count("snapshots");
    assert_eq!(
        snaps_after,
        snapshots + 1,
        "{label}: the retry writes one snapshot"
    );

    // restic agrees the dead process's lock is stale (unlock removes only stale locks), and
    // the repository's data reads back intact.
    restic.run_ok(&["unlock"]);
    assert_eq!(
        repo.count("locks"),
        0,
        "{label}: restic left a lock it considers live"
    );
    restic.run_ok(&["check", "--read-data"]);
    if let Some(target) = restore_into {
        restic.run_ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        let restored = target.join(src.strip_prefix("/").unwrap());
        let diffs = diff_trees(src, &restored);
        assert!(diffs.is_empty(), "{label}: restore differs: {diffs:#?}");
        fs::remove_dir_all(target).unwrap();
    }

    println!(
        "{label}: trigger {trigger:?}, {} at {:.2}s: packs {packs}/{}, index files {indexes}, \
         snapshots {snapshots}, locks {locks}; retry added {:.2} MiB of {:.2} (indexed {:.2}); \
         restic check ok",
        if completed {
            "finished before the kill"
        } else {
            "SIGKILL"
        },
        at_kill.as_secs_f64(),
        base.packs,
        mib(added),
        mib(base.added),
        mib(indexed),
    );
}

fn triggers(base: &Baseline, pack_points: usize, delays: usize, seed: u64) -> Vec<Trigger> {
    let mut out: Vec<Trigger> = (1..=pack_points)
        .map(|i| Trigger::Packs((base.packs * i / (pack_points + 1)).max(1)))
        .collect();
    out.push(Trigger::FirstIndex);
    out.push(Trigger::Snapshot);
    let mut rng = Rng(seed);
    for _ in 0..delays {
        // Anywhere from opening the repository to just past the end of a full run.
        let f = 0.02 + 1.1 * rng.next_f64();
        out.push(Trigger::Delay(base.duration.mul_f64(f)));
    }
    out
}

fn crash_test(name: &str, make_repo: &dyn Fn() -> Repo, pack_points: usize, delays: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let base = baseline(&make_repo(), &src);
    println!(
        "{name}: full run {:.2}s, {} packs, {:.2} MiB added",
        base.duration.as_secs_f64(),
        base.packs,
        mib(base.added)
    );
    let mut tally = Tally::default();
    let restore = tmp.path().join("restore");
    for (i, trigger) in triggers(&base, pack_points, delays, 0x5eed_0000 + name.len() as u64)
        .into_iter()
        .enumerate()
    {
        let label = format!("{name} #{i:02}");
        let restore_into = (i % 4 == 0).then_some(restore.as_path());
        round(
            &label,
            make_repo,
            &src,
            trigger,
            &base,
            restore_into,
            &mut tally,
        );
    }
    println!(
        "{name}: {} kill points: {} killed mid-run ({} after the snapshot was written), \
         {} finished first; {} stale locks ignored by the retry; nothing lost",
        tally.rounds,
        tally.killed,
        tally.snapshot_survived_kill,
        tally.completed_before_kill,
        tally.stale_locks
    );
    assert!(
        tally.killed * 2 > tally.rounds,
        "{name}: most kill points must really interrupt the backup: {tally:?}"
    );
}

#[test]
fn sigkilled_local_backups_leave_a_consistent_repository_and_resume() {
    require_restic!();
    let repos = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    let make = || {
        counter.set(counter.get() + 1);
        Repo::local(&repos.path().join(format!("repo-{}", counter.get())))
    };
    crash_test("crash/local", &make, 8, 6);
}

#[test]
fn sigkilled_s3_backups_leave_a_consistent_repository_and_resume() {
    require_restic!();
    crash_test("crash/s3", &Repo::s3, 6, 4);
}
