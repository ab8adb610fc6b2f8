//! Repository maintenance with restic's semantics, so that restic agrees with the result.
//!
//! - [`policy`]: keep policies (`--keep-last`, `--keep-daily`, ...) as a pure function,
//!   [`apply_policy`].
//! - [`group`]: snapshot filters (`--host`, `--tag`, `--path`) and grouping (`--group-by`).
//! - [`forget`]: applies a policy per group and deletes the snapshot files it removes.
//! - [`check`]: verifies index, packs, snapshots and trees, optionally every byte of data.
//! - [`drill`]: reads back a rotating share of a snapshot's packs (the sidecar's drills).
//! - [`prune`]: deletes unused data, repacking partly used packs, and rewrites the index.
//!
//! [`index_set`] and [`walk`] hold what check and prune share: all index files as loaded, and
//! the walk over every snapshot's trees.

pub mod check;
pub mod drill;
pub mod error;
pub mod forget;
pub mod group;
pub mod index_set;
pub mod policy;
pub mod prune;
pub mod walk;

pub use check::{check, CheckError, CheckReport, ReadData};
pub use error::{Error, Result};
pub use forget::{forget, forget_ids, ForgetOptions, ForgetReport};
pub use group::{GroupBy, GroupKey, SnapshotFilter};
pub use policy::{apply_policy, Action, Decision, ExpirePolicy, KeepDuration, TagList};
pub use prune::{prune, PruneOptions, PruneReport};
