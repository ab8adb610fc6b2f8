//! A bound on the bytes of blobs in memory, shared by the stages that hold them.
//!
//! Counting blobs is not enough: a stream without content-defined cut points makes every chunk
//! 8 MiB, so "three blobs in flight" can mean 24 MiB. Backup takes a share when a chunk is cut
//! and gives it back when the chunk is dropped as a duplicate or its pack is uploaded; restore
//! takes it when a blob is fetched and gives it back once the blob is written.

use std::sync::Arc;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Bytes of blobs in memory at once; cheap to clone (all clones share one budget).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

/// A share of a [`ByteBudget`], given back when dropped.
pub type Share = OwnedSemaphorePermit;

impl ByteBudget {
    /// A budget of `bytes` (at least 1, at most 4 GiB).
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `bytes` fit. Something larger than the whole budget waits for all of it,
    /// so it still gets through, alone.
    pub async fn take(&self, bytes: u64) -> Result<Share, AcquireError> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.bytes.clone().acquire_many_owned(n).await
    }

    /// Takes `bytes` if they fit right now (as [`ByteBudget::take`] otherwise).
    pub fn try_take(&self, bytes: u64) -> Option<Share> {
        let n = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.bytes.clone().try_acquire_many_owned(n).ok()
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }
}

/// Gives back what `share` holds beyond `bytes` (e.g. once a blob is compressed).
pub fn shrink(share: &mut Share, bytes: u64) {
    let keep = usize::try_from(bytes).unwrap_or(usize::MAX).max(1);
    if let Some(excess) = share.num_permits().checked_sub(keep).filter(|&n| n > 0) {
        drop(share.split(excess));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_come_back_when_dropped_and_oversized_takes_wait_for_everything() {
        let budget = ByteBudget::new(1 << 20);
        assert_eq!(budget.available(), 1 << 20);
        let mut a = budget.take(300 * 1024).await.unwrap();
        assert_eq!(budget.available(), (1 << 20) - 300 * 1024);
        // Shrinking gives the excess back at once; growing is not a thing.
        shrink(&mut a, 200 * 1024);
        assert_eq!(budget.available(), (1 << 20) - 200 * 1024);
        shrink(&mut a, 250 * 1024);
        assert_eq!(budget.available(), (1 << 20) - 200 * 1024);
        // More than is left must wait...
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            budget.take(900 * 1024),
        )
        .await;
        assert!(waiting.is_err());
        drop(a);
        // ...and a take larger than the whole budget gets all of it once free.
        let all = budget.take(10 << 20).await.unwrap();
        assert_eq!(budget.available(), 0);
        drop(all);
        assert_eq!(budget.available(), 1 << 20);
    }
}
