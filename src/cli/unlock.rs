//! `snapback unlock`: removes stale locks, or with `--remove-all` every lock (as restic).

use std::process::ExitCode;

use super::GlobalArgs;

/// Arguments of `snapback unlock`.
#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// Remove every lock, also live ones and unreadable lock files. Only when you are sure no
    /// other process uses the repository: a backup or prune running without its lock may lose
    /// data.
    #[arg(long)]
    pub remove_all: bool,
}

/// Removes the locks and says how many.
pub async fn run(global: &GlobalArgs, args: &UnlockArgs) -> anyhow::Result<ExitCode> {
    let repo = super::repo::open(global).await?;
    let removed = if args.remove_all {
        repo.remove_all_locks().await?
    } else {
        repo.remove_stale_locks().await?
    };
    println!("successfully removed {removed} locks");
    Ok(ExitCode::SUCCESS)
}

/// Applies the hidden test-only `SNAPBACK_TEST_LOCK_REFRESH_MS` (refresh interval in
/// milliseconds; a lock is then lost after 4 intervals without a successful refresh), so that
/// the end-to-end tests can exercise lock refresh and loss in seconds.
pub fn apply_test_lock_timing() {
    let Some(ms) = std::env::var("SNAPBACK_TEST_LOCK_REFRESH_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
    else {
        return;
    };
    let every = std::time::Duration::from_millis(ms);
    snapback_repo::locking::set_default_timing(snapback_repo::locking::LockTiming {
        refresh_every: every,
        valid_for: every * 4,
    });
}
