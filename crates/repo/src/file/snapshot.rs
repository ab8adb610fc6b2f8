//! Snapshot files (`snapshots/<id>`): the root of one backup.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::Id;

/// A decrypted snapshot file. Unknown fields written by newer restic versions are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// When the backup started.
    pub time: DateTime<FixedOffset>,
    /// The snapshot this one was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Id>,
    /// Root tree.
    pub tree: Id,
    /// Backed-up paths (absolute), or the stdin file name.
    pub paths: Vec<String>,
    /// Host name (stable per Pod in Kubernetes, so the next backup finds its parent).
    #[serde(default)]
    pub hostname: String,
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Unix user id.
    #[serde(default)]
    pub uid: u32,
    /// Unix group id.
    #[serde(default)]
    pub gid: u32,
    /// Exclude patterns used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Snapshot this one was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Id>,
    /// Program that wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<String>,
}
