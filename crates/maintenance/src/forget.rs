//! `forget`: applies a keep policy to every group of snapshots and deletes the snapshot files it
//! removes (the data stays until `prune`). Removal runs under an exclusive lock, as restic's.

use snapback_repo::file::SnapshotFile;
use snapback_repo::locking::RepoLock;
use snapback_repo::{FileType, Id, Repository};

use crate::group::{group, GroupBy, GroupKey, SnapshotFilter};
use crate::policy::{apply_policy, Action, Decision, ExpirePolicy};
use crate::Result;

/// What `forget` does.
#[derive(Debug, Clone, Default)]
pub struct ForgetOptions {
    /// Which snapshots to keep.
    pub policy: ExpirePolicy,
    /// How to group snapshots before applying the policy.
    pub group_by: GroupBy,
    /// Which snapshots to look at.
    pub filter: SnapshotFilter,
    /// Decide and report, delete nothing.
    pub dry_run: bool,
}

/// One group's snapshots with their decisions.
#[derive(Debug, Clone)]
pub struct GroupReport {
    /// What the group's snapshots share.
    pub key: GroupKey,
    /// Every snapshot of the group, newest first, with its decision.
    pub snapshots: Vec<(SnapshotFile, Decision)>,
}

/// What `forget` decided and did.
#[derive(Debug, Clone, Default)]
pub struct ForgetReport {
    /// Per group (empty for an empty policy or explicit ids).
    pub groups: Vec<GroupReport>,
    /// Snapshots removed (or, in a dry run, that would be).
    pub removed: Vec<Id>,
    /// Whether the snapshot files were actually deleted.
    pub deleted: bool,
}

/// Applies `opts.policy` per group and, unless a dry run, deletes the removed snapshots.
pub async fn forget(repo: &Repository, opts: &ForgetOptions) -> Result<ForgetReport> {
    let lock = if opts.dry_run {
        None
    } else {
        Some(repo.lock(true).await?)
    };
    let result = decide_and_remove(repo, opts, lock.as_ref()).await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result
}

async fn decide_and_remove(
    repo: &Repository,
    opts: &ForgetOptions,
    lock: Option<&RepoLock>,
) -> Result<ForgetReport> {
    let mut report = ForgetReport::default();
    if opts.policy.is_empty() {
        // restic: "no policy was specified, no snapshots will be removed".
        return Ok(report);
    }
    let snapshots = repo.snapshots().await?;
    for (key, members) in group(snapshots, &opts.filter, opts.group_by) {
        let decisions = apply_policy(&members, &opts.policy);
        let mut rows = Vec::with_capacity(decisions.len());
        for d in decisions {
            if d.action == Action::Remove {
                report.removed.push(d.id);
            }
            if let Some((_, s)) = members.iter().find(|(id, _)| *id == d.id) {
                rows.push((s.clone(), d));
            }
        }
        report.groups.push(GroupReport {
            key,
            snapshots: rows,
        });
    }
    if !opts.dry_run {
        remove_snapshots(repo, &report.removed, lock).await?;
        report.deleted = true;
    }
    Ok(report)
}

/// Removes the snapshots named by `specs` (full ids or unambiguous prefixes), like
/// `restic forget ID...`. All specs are resolved before anything is deleted.
pub async fn forget_ids(repo: &Repository, specs: &[String], dry_run: bool) -> Result<Vec<Id>> {
    let lock = if dry_run {
        None
    } else {
        Some(repo.lock(true).await?)
    };
    let result = async {
        let mut ids = Vec::with_capacity(specs.len());
        for spec in specs {
            let (id, _) = repo.find_snapshot(spec, None, &[]).await?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        if !dry_run {
            remove_snapshots(repo, &ids, lock.as_ref()).await?;
        }
        Ok(ids)
    }
    .await;
    if let Some(lock) = lock {
        lock.release().await?;
    }
    result
}

async fn remove_snapshots(repo: &Repository, ids: &[Id], lock: Option<&RepoLock>) -> Result<()> {
    for id in ids {
        // Deleting without our lock could race a prune that took it for stale.
        if let Some(lock) = lock {
            lock.check()?;
        }
        repo.backend().remove(FileType::Snapshot, id).await?;
        tracing::info!(snapshot = %id.short(), "removed snapshot");
    }
    Ok(())
}
