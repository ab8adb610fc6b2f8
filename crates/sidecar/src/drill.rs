//! Verification drills: what the daemon runs besides backups to find out whether the latest
//! snapshot can actually be restored. Like [`crate::Job`], the drill itself is supplied by the
//! caller; this crate decides when it runs and records what it found.

use std::future::Future;
use std::pin::Pin;

use tokio_util::sync::CancellationToken;

/// The `kind` labels of `snapback_verify_failures_total`, in rendering order:
/// `pack` (a pack or blob failed its hash or MAC, or is missing), `tree` (a tree could not be
/// loaded), `stream` (a stream member is unreadable or inconsistent), `live` (a live file
/// unchanged since the backup has different content) and `error` (the drill could not run:
/// repository unreachable, locked, no index).
pub const FAILURE_KINDS: [&str; 5] = ["pack", "tree", "stream", "live", "error"];

/// What one drill verified and found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrillReport {
    /// The snapshot verified (`None`: there is none yet, nothing was verified).
    pub snapshot: Option<String>,
    /// Packs downloaded and verified.
    pub packs_read: u64,
    /// Stream members read back or live files compared.
    pub files_verified: u64,
    /// Bytes downloaded or compared.
    pub bytes_verified: u64,
    /// Problems, as (kind, message); `kind` is one of [`FAILURE_KINDS`].
    pub problems: Vec<(&'static str, String)>,
}

/// How one drill ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DrillOutcome {
    /// The drill ran; its report says what it found.
    Done(DrillReport),
    /// The drill could not run; the message says why.
    Failed(String),
    /// Cancelled (shutdown).
    Cancelled,
}

impl DrillOutcome {
    /// Whether the drill ran over a snapshot and found nothing wrong.
    pub fn is_success(&self) -> bool {
        matches!(self, DrillOutcome::Done(r) if r.problems.is_empty() && r.snapshot.is_some())
    }
}

/// A boxed drill future.
pub type DrillFuture = Pin<Box<dyn Future<Output = DrillOutcome> + Send>>;

/// One verification drill; it must stop promptly once `cancel` fires.
pub trait Drill: Send + Sync + 'static {
    /// Starts one drill.
    fn run(&self, cancel: CancellationToken) -> DrillFuture;
}

impl<F> Drill for F
where
    F: Fn(CancellationToken) -> DrillFuture + Send + Sync + 'static,
{
    fn run(&self, cancel: CancellationToken) -> DrillFuture {
        self(cancel)
    }
}
