//! The daemon behind `snapback sidecar`: runs a backup job on a schedule or on request, behind
//! an optional consistency gate, serves health, readiness, a trigger and Prometheus metrics
//! over HTTP, and shuts down within a grace period.
//!
//! Verification drills ([`Drill`]) run on a schedule of their own, never at the same time as a
//! backup, so that they stay within a backup's memory bounds.
//!
//! The job itself (opening the repository, building the entry source, the backup and the
//! retention policy) is supplied by the caller through [`Job`], so this crate knows nothing
//! about repositories: it only decides *when* a backup runs and *what happened*.

pub mod daemon;
pub mod drill;
pub mod gate;
pub mod http;
pub mod metrics;
pub mod schedule;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use daemon::{Daemon, DaemonOptions, Shared, Trigger};
pub use drill::{Drill, DrillFuture, DrillOutcome, DrillReport, FAILURE_KINDS};
pub use gate::Gate;
pub use http::{ApiToken, HttpOptions};
pub use metrics::Metrics;
pub use schedule::Schedule;

/// What can go wrong configuring or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cron expression does not parse.
    #[error("invalid cron expression {expr:?}: {reason}")]
    Cron {
        /// The expression as given.
        expr: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A cron expression never fires after now.
    #[error("cron expression {0:?} has no next occurrence")]
    NoOccurrence(String),
    /// A duration does not parse.
    #[error("invalid duration {text:?}: {reason} (examples: 30s, 5m, 1h30m)")]
    Duration {
        /// The text as given.
        text: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The readiness URL is not a plain `http://host[:port]/path` URL.
    #[error("invalid --ready-url {url:?}: {reason}")]
    ReadyUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The API token (`--api-token-file`) is not usable.
    #[error("unusable API token: {0}")]
    ApiToken(String),
    /// The HTTP listener could not be set up.
    #[error("HTTP listener on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Parses a human duration such as `30s`, `5m`, `1h30m` or `0s`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| Error::Duration {
        text: text.to_string(),
        reason: e.to_string(),
    })
}

/// What one successful backup did, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The new snapshot's id.
    pub snapshot: String,
    /// Files not in the parent.
    pub files_new: u64,
    /// Files changed since the parent.
    pub files_changed: u64,
    /// Files unchanged since the parent.
    pub files_unchanged: u64,
    /// Content bytes read from the source.
    pub bytes_read: u64,
    /// Plaintext bytes of new data added to the repository.
    pub bytes_added: u64,
    /// Entries that could not be read completely (the snapshot was saved anyway).
    pub warnings: u64,
}

/// How one backup run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A snapshot was saved.
    Success(Report),
    /// No snapshot: the gate, the source, the repository or the job failed; the message says why.
    Failure(String),
    /// No snapshot: the run was cancelled (shutdown grace period over).
    Cancelled,
}

impl Outcome {
    /// The `result` label of `snapback_backups_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success(_) => "success",
            Outcome::Failure(_) => "failure",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// A boxed job future.
pub type JobFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// What started a backup run. The job uses it to decide whether retention may follow: a run
/// anyone with access to the API can start must not be able to rotate snapshots out faster
/// than the schedule would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// The schedule (`--schedule`, `--every`); a pending request it absorbed counts as this.
    Scheduled,
    /// `POST /backup`.
    Requested,
    /// The last backup after SIGTERM (`--backup-on-shutdown`).
    Shutdown,
}

impl RunKind {
    /// The `reason` field of the logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Scheduled => "scheduled",
            RunKind::Requested => "requested",
            RunKind::Shutdown => "shutdown",
        }
    }
}

/// One backup (plus whatever follows a success, such as retention). Called once per run; the
/// run must stop promptly, without saving a snapshot, once `cancel` fires.
pub trait Job: Send + Sync + 'static {
    /// Starts one backup, started for `kind`.
    fn run(&self, kind: RunKind, cancel: CancellationToken) -> JobFuture;
}

impl<F> Job for F
where
    F: Fn(RunKind, CancellationToken) -> JobFuture + Send + Sync + 'static,
{
    fn run(&self, kind: RunKind, cancel: CancellationToken) -> JobFuture {
        self(kind, cancel)
    }
}
