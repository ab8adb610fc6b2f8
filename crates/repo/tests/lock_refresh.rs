//! A held lock notices when it is lost: its file removed by someone else, or a refresh that
//! cannot be written. Runs on a real local repository with a shortened refresh interval.

use std::time::Duration;

use snapback_repo::backend::{Location, RetryPolicy, S3Credentials};
use snapback_repo::file::key::KdfParams;
use snapback_repo::locking::LockTiming;
use snapback_repo::{Backend, Error, FileType, InitOptions, Repository};

fn fast_init() -> InitOptions {
    InitOptions {
        kdf: KdfParams {
            n: 1 << 10,
            r: 8,
            p: 1,
        },
        ..InitOptions::default()
    }
}

async fn repo(dir: &std::path::Path) -> Repository {
    // Few retries: a failed storage operation is reported within a second.
    let policy = RetryPolicy {
        max_retries: 1,
        ..RetryPolicy::default()
    };
    let location = Location::parse(dir.to_str().unwrap()).unwrap();
    let backend = Backend::new(location, &S3Credentials::default(), policy).unwrap();
    Repository::init(backend, b"pw", fast_init()).await.unwrap()
}

const FAST: LockTiming = LockTiming {
    refresh_every: Duration::from_millis(100),
    valid_for: Duration::from_secs(60),
};

async fn lock_files(repo: &Repository) -> usize {
    repo.backend().list(FileType::Lock).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refreshed_lock_stays_valid_and_replaces_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path()).await;
    let lock = repo.lock_with(false, FAST).await.unwrap();
    let first = repo.backend().list(FileType::Lock).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    lock.check().unwrap();
    let later = repo.backend().list(FileType::Lock).await.unwrap();
    assert_eq!(later.len(), 1, "the old lock file is removed on refresh");
    assert_ne!(first[0].id, later[0].id, "the lock was refreshed");
    lock.release().await.unwrap();
    assert_eq!(lock_files(&repo).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_file_was_removed_by_someone_else_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path()).await;
    let lock = repo.lock_with(false, FAST).await.unwrap();
    lock.check().unwrap();
    assert_eq!(repo.remove_all_locks().await.unwrap(), 1);
    let lost = tokio::time::timeout(Duration::from_secs(10), lock.lost())
        .await
        .expect("the loss is noticed at the next refresh");
    assert!(matches!(lost, Error::LockLost(_)), "{lost}");
    assert!(
        lost.to_string().contains("removed by another process"),
        "{lost}"
    );
    let err = lock.check().unwrap_err();
    assert!(matches!(err, Error::LockLost(_)), "{err}");
    // No lock file is written after the loss.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lock_files(&repo).await, 0);
    lock.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_cannot_be_written_loses_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path()).await;
    let lock = repo.lock_with(true, FAST).await.unwrap();
    // Replace locks/ by a regular file: every write below it fails, even for root (a
    // read-only directory would not stop root).
    let locks = dir.path().join("locks");
    let held = std::fs::read_dir(&locks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let keep = dir.path().join("held-lock");
    std::fs::rename(&held, &keep).unwrap();
    std::fs::remove_dir(&locks).unwrap();
    std::fs::write(&locks, b"not a directory").unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(10), lock.lost())
        .await
        .expect("the failed refresh is noticed");
    assert!(matches!(lost, Error::LockLost(_)), "{lost}");
    assert!(lock.check().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_not_refreshed_in_time_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path()).await;
    // The refresh never comes before the validity runs out (as when the refresh hangs).
    let timing = LockTiming {
        refresh_every: Duration::from_secs(3600),
        valid_for: Duration::from_millis(300),
    };
    let lock = repo.lock_with(false, timing).await.unwrap();
    lock.check().unwrap();
    let lost = tokio::time::timeout(Duration::from_secs(10), lock.lost())
        .await
        .expect("the overdue lock is noticed");
    assert!(lost.to_string().contains("was not refreshed"), "{lost}");
    assert!(lock.check().is_err());
    lock.release().await.unwrap();
    assert_eq!(lock_files(&repo).await, 0);
}
