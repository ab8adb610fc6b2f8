//! Repository locks (`locks/`), following restic's rules: any number of non-exclusive locks, or
//! one exclusive lock; a lock not refreshed for 30 minutes, or whose process is gone, is stale.
//!
//! Unlike restic, a lock also records its process's start time, so a new Pod that reuses the
//! host name and PID of a dead one recognises the dead one's lock as stale at once.

use std::time::Duration;

use chrono::{Local, TimeDelta};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::FileType;
use crate::file::LockFile;
use crate::repository::Repository;
use crate::{Error, Id, Result};

/// A lock older than this (not refreshed) is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How often a held lock is refreshed.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);

/// A held lock; refreshed in the background until [`RepoLock::release`].
#[derive(Debug)]
pub struct RepoLock {
    repo: Repository,
    current: watch::Receiver<Id>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct LockWithStart {
    #[serde(flatten)]
    lock: LockFile,
    /// Process start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapback_start_ticks: Option<u64>,
}

impl Repository {
    /// Takes a lock, failing with [`Error::Locked`] when a conflicting live lock exists.
    pub async fn lock(&self, exclusive: bool) -> Result<RepoLock> {
        self.check_conflicts(exclusive, None).await?;
        let id = self.write_lock(exclusive).await?;
        // Someone may have locked between our check and write: check again, ignoring ourselves.
        if let Err(e) = self.check_conflicts(exclusive, Some(id)).await {
            let _ = self.backend().remove(FileType::Lock, &id).await;
            return Err(e);
        }
        let (tx_id, current) = watch::channel(id);
        let (stop, mut stopped) = watch::channel(false);
        let repo = self.clone();
        let task = tokio::spawn(async move {
            let mut held = id;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(REFRESH_EVERY) => {}
                    _ = stopped.changed() => return,
                }
                match repo.write_lock(exclusive).await {
                    Ok(new) => {
                        let _ = repo.backend().remove(FileType::Lock, &held).await;
                        held = new;
                        let _ = tx_id.send(new);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not refresh the repository lock"),
                }
            }
        });
        Ok(RepoLock {
            repo: self.clone(),
            current,
            stop,
            task,
        })
    }

    async fn write_lock(&self, exclusive: bool) -> Result<Id> {
        // SAFETY: these libc calls have no failure modes.
        let (pid, uid, gid) = unsafe { (libc::getpid(), libc::getuid(), libc::getgid()) };
        let lock = LockWithStart {
            lock: LockFile {
                time: Local::now().fixed_offset(),
                exclusive,
                hostname: crate::host::hostname(),
                username: crate::host::username(),
                pid: i64::from(pid),
                uid,
                gid,
            },
            snapback_start_ticks: process_start_ticks(i64::from(pid)),
        };
        self.save_json(FileType::Lock, &lock).await
    }

    async fn check_conflicts(&self, exclusive: bool, ours: Option<Id>) -> Result<()> {
        for listed in self.backend().list(FileType::Lock).await? {
            if Some(listed.id) == ours {
                continue;
            }
            let lock: LockWithStart = match self.load_json(FileType::Lock, &listed.id).await {
                Ok(l) => l,
                // Removed meanwhile, or unreadable: not a lock we must respect.
                Err(_) => continue,
            };
            if is_stale(&lock) {
                continue;
            }
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

    /// Removes stale locks (restic's `unlock`); returns how many.
    pub async fn remove_stale_locks(&self) -> Result<usize> {
        let mut removed = 0;
        for listed in self.backend().list(FileType::Lock).await? {
            if let Ok(lock) = self
                .load_json::<LockWithStart>(FileType::Lock, &listed.id)
                .await
            {
                if is_stale(&lock) {
                    self.backend().remove(FileType::Lock, &listed.id).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl RepoLock {
    /// Stops refreshing and deletes the lock file.
    pub async fn release(self) -> Result<()> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let id = *self.current.borrow();
        self.repo.backend().remove(FileType::Lock, &id).await?;
        Ok(())
    }
}

fn is_stale(lock: &LockWithStart) -> bool {
    let age = Local::now().fixed_offset() - lock.lock.time;
    if age > TimeDelta::from_std(STALE_AFTER).unwrap_or(TimeDelta::MAX) {
        return true;
    }
    if lock.lock.hostname != crate::host::hostname() {
        return false;
    }
    match process_start_ticks(lock.lock.pid) {
        None => true, // no such process on this host
        Some(now) => lock.snapback_start_ticks.is_some_and(|then| then != now),
    }
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
}
