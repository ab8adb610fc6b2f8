//! Lock files (`locks/<id>`): who is using the repository, refreshed while they do.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// A decrypted lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockFile {
    /// When the lock was created or last refreshed.
    pub time: DateTime<FixedOffset>,
    /// Exclusive locks (prune, forget) exclude every other lock.
    #[serde(default)]
    pub exclusive: bool,
    /// Host holding the lock.
    #[serde(default)]
    pub hostname: String,
    /// User holding the lock.
    #[serde(default)]
    pub username: String,
    /// Process id on that host.
    #[serde(default)]
    pub pid: i64,
    /// Unix user id.
    #[serde(default)]
    pub uid: u32,
    /// Unix group id.
    #[serde(default)]
    pub gid: u32,
}
