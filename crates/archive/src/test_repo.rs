//! A local repository for the crate's tests.

use snapback_repo::backend::{Backend, Location, RetryPolicy, S3Credentials};
use snapback_repo::file::key::KdfParams;
use snapback_repo::repository::InitOptions;
use snapback_repo::Repository;

/// A new repository in `dir`, with a cheap key derivation.
pub async fn local_repo(dir: &std::path::Path) -> Repository {
    let location = Location::parse(&dir.to_string_lossy()).unwrap();
    let backend =
        Backend::new(location, &S3Credentials::default(), RetryPolicy::default()).unwrap();
    let opts = InitOptions {
        kdf: KdfParams {
            n: 1 << 10,
            r: 8,
            p: 1,
        },
        ..InitOptions::default()
    };
    Repository::init(backend, b"pw", opts).await.unwrap()
}
