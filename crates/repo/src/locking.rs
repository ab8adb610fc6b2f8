//! Repository locks (`locks/`), following restic's rules: any number of non-exclusive locks, or
//! one exclusive lock; a lock not refreshed for 30 minutes is stale.
//!
//! # When a lock counts as stale
//!
//! restic also treats a lock as stale when its host name is ours and its PID does not exist.
//! That is wrong wherever one host name covers several PID namespaces: the containers of one
//! Pod, hostNetwork Pods, `unshare -p`. A sidecar starting next to a running backup would then
//! remove the backup's lock and let a prune delete its packs. snapback is deliberately stricter:
//! a lock is stale only
//!
//! - by age: its `time` was not refreshed for [`STALE_AFTER`] (restic's rule), or
//! - when its process is provably dead: the lock records (in extra JSON fields, which restic
//!   ignores) the kernel boot id, the PID namespace and the process's start time, and all of
//!   host name, boot id and PID namespace match ours while the PID is gone or now belongs to a
//!   process that started at another time.
//!
//! Anything in doubt (a lock written by restic, by another PID namespace, fields we cannot read
//! here) is alive until it ages out. A lock file that cannot be read, decrypted or parsed is a
//! held lock of unknown kind: it conflicts with every lock until someone removes it
//! (`snapback unlock --remove-all`).
//!
//! # Waiting for a lock
//!
//! With [`Repository::with_lock_retry`] (restic's `--retry-lock`) a conflicting lock does not
//! fail at once: the attempt is repeated after [`RETRY_FIRST_PAUSE`], doubling up to
//! [`RETRY_MAX_PAUSE`], until the time is up; the last attempt's "locked" error is returned.
//! Only [`Error::Locked`] is retried: storage errors have their own retries in the backend.
//!
//! # Holding a lock
//!
//! A held lock is refreshed every [`REFRESH_EVERY`] by writing a new lock file and removing the
//! old one. A refresh that fails, or that finds our lock file gone (someone judged it stale or
//! removed it by hand), loses the lock, and so does a lock whose last successful refresh is
//! older than [`VALID_FOR`] (kept well below [`STALE_AFTER`], so that we stop before anyone else
//! may take our lock for stale). Whoever writes a snapshot or deletes data asks
//! [`RepoLock::check`] right before it, and can stop early by awaiting [`RepoLock::lost`].

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Local, TimeDelta};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{BackendError, FileType};
use crate::file::LockFile;
use crate::repository::Repository;
use crate::{Error, Id, Result};

/// A lock older than this (not refreshed) is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
/// A held lock whose last successful refresh is older than this is lost: the 10 minutes left
/// before [`STALE_AFTER`] cover writing the snapshot (or finishing a deletion) after the check.
pub const VALID_FOR: Duration = Duration::from_secs(20 * 60);

/// How a held lock is refreshed and when it counts as lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockTiming {
    /// Interval between refreshes.
    pub refresh_every: Duration,
    /// The lock is lost when its last successful refresh is older than this.
    pub valid_for: Duration,
}

impl Default for LockTiming {
    fn default() -> Self {
        LockTiming {
            refresh_every: REFRESH_EVERY,
            valid_for: VALID_FOR,
        }
    }
}

static PROCESS_TIMING: OnceLock<LockTiming> = OnceLock::new();

/// Sets the timing used by [`Repository::lock`] in this process (tests shorten it); the first
/// call wins, later ones return false.
pub fn set_default_timing(timing: LockTiming) -> bool {
    PROCESS_TIMING.set(timing).is_ok()
}

/// The timing [`Repository::lock`] uses: [`set_default_timing`]'s, else the default.
pub fn default_timing() -> LockTiming {
    PROCESS_TIMING.get().copied().unwrap_or_default()
}

/// A held lock; refreshed in the background until [`RepoLock::release`].
#[derive(Debug)]
pub struct RepoLock {
    repo: Repository,
    shared: Arc<Shared>,
    timing: LockTiming,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// State shared by the lock and its refresh task.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Becomes true when the refresh task loses the lock.
    lost: watch::Sender<bool>,
}

#[derive(Debug)]
struct State {
    /// The lock file we hold now.
    held: Id,
    /// When its `time` was taken, on the monotonic clock and on the wall clock that others
    /// compare the recorded time with.
    refreshed_at: Instant,
    refreshed_wall: DateTime<FixedOffset>,
    /// Why the lock was lost, once it is.
    lost: Option<String>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err` once the lock is lost or overdue.
    fn check(&self, timing: LockTiming) -> Result<()> {
        let st = self.state();
        if let Some(why) = &st.lost {
            return Err(Error::LockLost(why.clone()));
        }
        let wall = (Local::now().fixed_offset() - st.refreshed_wall)
            .to_std()
            .unwrap_or(Duration::ZERO);
        // Either clock may stand still (suspend, clock set back): take the larger age.
        let age = st.refreshed_at.elapsed().max(wall);
        if age > timing.valid_for {
            return Err(Error::LockLost(format!(
                "lock {} was not refreshed for {} s (limit {} s); others may soon take it for \
                 stale",
                st.held.short(),
                age.as_secs(),
                timing.valid_for.as_secs()
            )));
        }
        Ok(())
    }

    /// Time left until the lock is overdue (on the monotonic clock).
    fn remaining(&self, timing: LockTiming) -> Duration {
        timing
            .valid_for
            .saturating_sub(self.state().refreshed_at.elapsed())
    }

    fn mark_lost(&self, why: String) {
        tracing::error!(reason = %why, "the repository lock is lost");
        self.state().lost = Some(why);
        self.lost.send_replace(true);
    }
}

/// The lock file: restic's fields plus the identity of the process that wrote it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LockWithStart {
    #[serde(flatten)]
    lock: LockFile,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapback_start_ticks: Option<u64>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapback_boot_id: Option<String>,
    /// Inode of the writer's PID namespace (`/proc/self/ns/pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapback_pid_ns: Option<u64>,
}

/// What a lock file turned out to be.
enum Judged {
    /// A lock that must be respected.
    Live(LockWithStart),
    /// Stale: may be removed.
    Stale,
    /// Removed while we looked: no lock.
    Gone,
    /// Cannot be read, decrypted or parsed: respected as a lock of unknown kind.
    Unreadable(Error),
}

impl Repository {
    /// Takes a lock with [`default_timing`], failing with [`Error::Locked`] when a conflicting
    /// live (or unreadable) lock exists (still, after [`Repository::lock_retry`]).
    pub async fn lock(&self, exclusive: bool) -> Result<RepoLock> {
        self.lock_with(exclusive, default_timing()).await
    }

    /// Takes a lock refreshed and judged lost according to `timing`, waiting up to
    /// [`Repository::lock_retry`] for conflicting locks to go away.
    pub async fn lock_with(&self, exclusive: bool, timing: LockTiming) -> Result<RepoLock> {
        survive_restics_liveness_probe();
        let deadline = Instant::now() + self.lock_retry();
        let mut pause = RETRY_FIRST_PAUSE;
        let mut waiting = false;
        loop {
            match self.try_lock(exclusive, timing).await {
                Err(Error::Locked(why)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Error::Locked(why));
                    }
                    if !waiting {
                        // Shown without -v: the command seems to hang otherwise.
                        tracing::warn!(
                            reason = %why,
                            wait = ?self.lock_retry(),
                            "the repository is locked, waiting for the lock"
                        );
                        waiting = true;
                    }
                    // The last attempt falls on the deadline, so the full time is used.
                    tokio::time::sleep(pause.min(left)).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                }
                other => return other,
            }
        }
    }

    /// One attempt at taking the lock.
    async fn try_lock(&self, exclusive: bool, timing: LockTiming) -> Result<RepoLock> {
        self.check_conflicts(exclusive, None).await?;
        let (id, wall, at) = self.write_lock(exclusive).await?;
        // Someone may have locked between our check and write: check again, ignoring ourselves.
        if let Err(e) = self.check_conflicts(exclusive, Some(id)).await {
            let _ = self.backend().remove(FileType::Lock, &id).await;
            return Err(e);
        }
        let (lost, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                held: id,
                refreshed_at: at,
                refreshed_wall: wall,
                lost: None,
            }),
            lost,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(refresh_loop(
            self.clone(),
            shared.clone(),
            exclusive,
            timing,
            stopped,
        ));
        Ok(RepoLock {
            repo: self.clone(),
            shared,
            timing,
            stop,
            task,
        })
    }

    /// Writes a new lock file; returns its id and the time recorded in it.
    async fn write_lock(&self, exclusive: bool) -> Result<(Id, DateTime<FixedOffset>, Instant)> {
        let (uid, gid) = crate::host::ids();
        let here = Identity::current();
        let at = Instant::now();
        let time = Local::now().fixed_offset();
        let lock = LockWithStart {
            lock: LockFile {
                time,
                exclusive,
                hostname: here.hostname,
                username: crate::host::username(),
                pid: i64::from(std::process::id()),
                uid,
                gid,
            },
            snapback_start_ticks: here.start_ticks,
            snapback_boot_id: here.boot_id,
            snapback_pid_ns: here.pid_ns,
        };
        let id = self.save_json(FileType::Lock, &lock).await?;
        Ok((id, time, at))
    }

    async fn judge(&self, id: &Id, here: &Identity) -> Judged {
        let mut loaded = self.load_json::<LockWithStart>(FileType::Lock, id).await;
        if matches!(loaded, Err(ref e) if !is_not_found(e)) {
            // A store that is not atomic may show a lock file while it is being written
            // (restic retries too): look once more before calling it unreadable.
            tokio::time::sleep(UNREADABLE_RETRY).await;
            loaded = self.load_json::<LockWithStart>(FileType::Lock, id).await;
        }
        match loaded {
            Ok(lock) if is_stale(&lock, here) => Judged::Stale,
            Ok(lock) => Judged::Live(lock),
            Err(e) if is_not_found(&e) => Judged::Gone,
            Err(e) => Judged::Unreadable(e),
        }
    }

    async fn check_conflicts(&self, exclusive: bool, ours: Option<Id>) -> Result<()> {
        let here = Identity::current();
        for listed in self.backend().list(FileType::Lock).await? {
            if Some(listed.id) == ours {
                continue;
            }
            let lock = match self.judge(&listed.id, &here).await {
                Judged::Live(lock) => lock,
                Judged::Stale | Judged::Gone => continue,
                Judged::Unreadable(e) => {
                    // The error names the file (`locks/<id>`).
                    return Err(Error::Locked(format!(
                        "{e}; a lock file that cannot be read may be held by anyone: if you are \
                         sure no other process uses the repository, remove it with `snapback \
                         unlock --remove-all`"
                    )));
                }
            };
            if exclusive || lock.lock.exclusive {
                return Err(Error::Locked(format!(
                    "{} lock {} held by {}@{} (pid {}) since {}",
                    if lock.lock.exclusive {
                        "exclusive"
                    } else {
                        "shared"
                    },
                    listed.id.short(),
                    lock.lock.username,
                    lock.lock.hostname,
                    lock.lock.pid,
                    lock.lock.time.to_rfc3339()
                )));
            }
        }
        Ok(())
    }

    /// Removes stale locks (restic's `unlock`); returns how many. Unreadable lock files stay
    /// (each is logged); [`Repository::remove_all_locks`] removes them.
    pub async fn remove_stale_locks(&self) -> Result<usize> {
        let here = Identity::current();
        let mut removed = 0;
        for listed in self.backend().list(FileType::Lock).await? {
            match self.judge(&listed.id, &here).await {
                Judged::Stale => {
                    self.backend().remove(FileType::Lock, &listed.id).await?;
                    tracing::info!(lock = %listed.id.short(), "removed stale lock");
                    removed += 1;
                }
                Judged::Unreadable(e) => {
                    tracing::warn!(lock = %listed.id, error = %e, "kept a lock that cannot be read")
                }
                Judged::Live(_) | Judged::Gone => {}
            }
        }
        Ok(removed)
    }

    /// Removes every lock file, live or not (restic's `unlock --remove-all`); returns how many.
    pub async fn remove_all_locks(&self) -> Result<usize> {
        let listed = self.backend().list(FileType::Lock).await?;
        for l in &listed {
            self.backend().remove(FileType::Lock, &l.id).await?;
        }
        Ok(listed.len())
    }
}

/// First pause before taking a conflicting lock again (with a lock retry time).
pub const RETRY_FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The pause between attempts doubles up to this.
pub const RETRY_MAX_PAUSE: Duration = Duration::from_secs(30);

/// Wait before reading an unreadable lock file a second time.
const UNREADABLE_RETRY: Duration = Duration::from_millis(500);

fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Backend(BackendError::NotFound { .. }))
}

/// restic checks whether the process of a lock on its own host lives by sending it SIGHUP
/// (`restic unlock`, stale checks), and ignores SIGHUP itself. Without the same, `restic unlock`
/// on this host would kill a snapback that holds a lock. A handler (not `SIG_IGN`, which
/// programs we start would inherit) stays installed for the rest of the process.
fn survive_restics_liveness_probe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(
        || match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            // Dropping the stream keeps tokio's handler: later SIGHUPs are swallowed.
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot ignore SIGHUP; `restic unlock` on this host would stop us"),
        },
    );
}

/// Refreshes the lock every `timing.refresh_every` until stopped or lost.
async fn refresh_loop(
    repo: Repository,
    shared: Arc<Shared>,
    exclusive: bool,
    timing: LockTiming,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(timing.refresh_every) => {}
            _ = stopped.changed() => return,
        }
        let held = shared.state().held;
        // restic 0.16 checks this too: a lock file that is gone was removed by someone who
        // took it for stale (or by `unlock --remove-all`); they may be deleting our data now.
        match repo.backend().exists(&FileType::Lock.path(&held)).await {
            Ok(true) => {}
            Ok(false) => {
                return shared.mark_lost(format!(
                    "lock file {} was removed by another process",
                    held.short()
                ))
            }
            Err(e) => return shared.mark_lost(format!("could not refresh the lock: {e}")),
        }
        match repo.write_lock(exclusive).await {
            Ok((new, wall, at)) => {
                {
                    let mut st = shared.state();
                    st.held = new;
                    st.refreshed_at = at;
                    st.refreshed_wall = wall;
                }
                if let Err(e) = repo.backend().remove(FileType::Lock, &held).await {
                    // Harmless: the old file ages out and is then stale.
                    tracing::warn!(error = %e, lock = %held.short(), "could not remove the old lock file");
                }
            }
            Err(e) => return shared.mark_lost(format!("could not refresh the lock: {e}")),
        }
    }
}

impl RepoLock {
    /// `Ok` while the lock is held; [`Error::LockLost`] once a refresh failed, our lock file
    /// was removed by someone else, or the last refresh is too old. Ask right before writing a
    /// snapshot or deleting anything.
    pub fn check(&self) -> Result<()> {
        self.shared.check(self.timing)
    }

    /// Resolves (with the [`Error::LockLost`] that [`RepoLock::check`] would return) once the
    /// lock is lost; pending while it is held. Independent of `self`, so it can be spawned.
    pub fn lost(&self) -> impl Future<Output = Error> + Send + 'static {
        let shared = self.shared.clone();
        let timing = self.timing;
        let mut changed = shared.lost.subscribe();
        async move {
            loop {
                if let Err(e) = shared.check(timing) {
                    return e;
                }
                // Wake when the refresh task reports, when the lock would be overdue, and at
                // least every refresh interval (the wall clock may jump).
                let wait = shared
                    .remaining(timing)
                    .min(timing.refresh_every)
                    .max(Duration::from_millis(10));
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }

    /// Stops refreshing and deletes the lock file.
    pub async fn release(self) -> Result<()> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let id = self.shared.state().held;
        self.repo.backend().remove(FileType::Lock, &id).await?;
        Ok(())
    }
}

/// Who we are, as far as judging a lock's process goes.
struct Identity {
    hostname: String,
    boot_id: Option<String>,
    pid_ns: Option<u64>,
    /// Our start time; `None` also when `/proc` is not our PID namespace's.
    start_ticks: Option<u64>,
    /// Whether `/proc` shows our PID namespace (`/proc/self` is our PID); without this the
    /// PID namespace fields are not recorded, as a PID would be looked up in the wrong place.
    proc_is_ours: bool,
}

impl Identity {
    fn current() -> Identity {
        let proc_is_ours = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
            == Some(std::process::id());
        Identity {
            hostname: crate::host::hostname(),
            boot_id: boot_id(),
            pid_ns: if proc_is_ours { pid_namespace() } else { None },
            start_ticks: if proc_is_ours {
                process_start_ticks(i64::from(std::process::id()))
            } else {
                None
            },
            proc_is_ours,
        }
    }
}

/// Stale by age, or its process provably dead (see the module docs).
fn is_stale(lock: &LockWithStart, here: &Identity) -> bool {
    let age = Local::now().fixed_offset() - lock.lock.time;
    if age > TimeDelta::from_std(STALE_AFTER).unwrap_or(TimeDelta::MAX) {
        return true;
    }
    provably_dead(lock, here)
}

fn provably_dead(lock: &LockWithStart, here: &Identity) -> bool {
    let same_place = here.proc_is_ours
        && !here.hostname.is_empty()
        && lock.lock.hostname == here.hostname
        && lock.snapback_boot_id.is_some()
        && lock.snapback_boot_id == here.boot_id
        && lock.snapback_pid_ns.is_some()
        && lock.snapback_pid_ns == here.pid_ns;
    if !same_place {
        return false;
    }
    // PIDs ≤ 0 mean process groups to kill(2); such a lock was not written by a process.
    let Ok(pid) = i32::try_from(lock.lock.pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if !process_exists(pid) {
        return true;
    }
    // The PID exists: dead only if it now belongs to a process started at another time.
    match (
        lock.snapback_start_ticks,
        process_start_ticks(i64::from(pid)),
    ) {
        (Some(then), Some(now)) => then != now,
        _ => false,
    }
}

/// Whether `pid` exists in our PID namespace (`kill(pid, 0)`: only ESRCH means no; EPERM is a
/// process of another user). Unlike a look into `/proc`, this is not fooled by `hidepid`.
fn process_exists(pid: i32) -> bool {
    // Callers pass only positive PIDs; anything else is no process.
    let Some(pid) = rustix::process::Pid::from_raw(pid).filter(|_| pid > 0) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// The kernel's boot id: tells a lock written before a reboot from one written after.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// The inode of our PID namespace (`/proc/self/ns/pid` links to `pid:[<inode>]`).
fn pid_namespace() -> Option<u64> {
    let link = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let link = link.to_str()?;
    link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()
}

/// Start time of process `pid` in clock ticks since boot, or `None` when it does not exist.
fn process_start_ticks(pid: i64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing ')' are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_start_time_and_a_dead_pid_has_none() {
        let me = i64::from(std::process::id());
        assert!(process_start_ticks(me).is_some());
        assert_eq!(process_start_ticks(i64::from(i32::MAX)), None);
    }

    fn lock_of(here: &Identity, pid: i64, start_ticks: Option<u64>) -> LockWithStart {
        LockWithStart {
            lock: LockFile {
                time: Local::now().fixed_offset(),
                exclusive: true,
                hostname: here.hostname.clone(),
                username: "u".into(),
                pid,
                uid: 0,
                gid: 0,
            },
            snapback_start_ticks: start_ticks,
            snapback_boot_id: here.boot_id.clone(),
            snapback_pid_ns: here.pid_ns,
        }
    }

    #[test]
    fn only_a_dead_process_of_our_own_namespace_makes_a_fresh_lock_stale() {
        let here = Identity::current();
        assert!(here.proc_is_ours && here.pid_ns.is_some() && here.boot_id.is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = i64::from(child.id());
        child.wait().unwrap();
        let me = i64::from(std::process::id());
        let my_ticks = process_start_ticks(me);

        assert!(is_stale(&lock_of(&here, dead, None), &here));
        assert!(!is_stale(&lock_of(&here, me, my_ticks), &here));
        assert!(is_stale(
            &lock_of(&here, me, my_ticks.map(|t| t + 1)),
            &here
        ));
        for pid in [0, -1, i64::MAX] {
            assert!(!is_stale(&lock_of(&here, pid, None), &here), "pid {pid}");
        }

        // Any field that does not match ours, or is missing (restic's locks): alive.
        let mut other_ns = lock_of(&here, dead, None);
        other_ns.snapback_pid_ns = other_ns.snapback_pid_ns.map(|n| n + 1);
        assert!(!is_stale(&other_ns, &here));
        let mut other_boot = lock_of(&here, dead, None);
        other_boot.snapback_boot_id = Some("another boot".into());
        assert!(!is_stale(&other_boot, &here));
        let mut restic = lock_of(&here, dead, None);
        restic.snapback_boot_id = None;
        restic.snapback_pid_ns = None;
        assert!(!is_stale(&restic, &here));
        let mut other_host = lock_of(&here, dead, None);
        other_host.lock.hostname.push_str("-not");
        assert!(!is_stale(&other_host, &here));

        // ... until it ages out.
        restic.lock.time -= TimeDelta::minutes(31);
        assert!(is_stale(&restic, &here));
        other_ns.lock.time -= TimeDelta::minutes(29);
        assert!(!is_stale(&other_ns, &here));
    }
}
