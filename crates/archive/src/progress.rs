//! Live counters of a backup, shared by the stages that advance them (the archiver counts
//! entries and bytes read, the dedup stage the bytes of new blobs) and read from another
//! thread for a progress display.

use std::sync::atomic::{AtomicBool, AtomicU64};

/// Live counters, readable from another thread for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Content bytes read from the source (or reused from the parent).
    pub bytes_done: AtomicU64,
    /// Entries processed.
    pub entries_done: AtomicU64,
    /// Plaintext bytes of new blobs handed to the sink.
    pub bytes_new: AtomicU64,
    /// Content bytes to process, as far as a scan has counted them (0: unknown, a stream).
    pub bytes_total: AtomicU64,
    /// Set once the scan has counted everything, so `bytes_total` is final.
    pub total_final: AtomicBool,
}
