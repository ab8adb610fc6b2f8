//! For other crates' tests (cargo feature `test-util`): a local repository that opens fast.

use std::path::Path;

use crate::backend::{Backend, Location, RetryPolicy, S3Credentials};
use crate::file::key::KdfParams;
use crate::repository::InitOptions;
use crate::{Repository, Result};

/// Key derivation parameters that take a millisecond instead of a second: for tests only.
pub const CHEAP_KDF: KdfParams = KdfParams {
    n: 1 << 10,
    r: 8,
    p: 1,
};

/// A new repository in the directory `dir`, password `pw`, with [`CHEAP_KDF`].
pub async fn local_repo(dir: &Path) -> Result<Repository> {
    let location = Location::parse(&dir.to_string_lossy())?;
    let backend = Backend::new(location, &S3Credentials::default(), RetryPolicy::default())?;
    let opts = InitOptions {
        kdf: CHEAP_KDF,
        ..InitOptions::default()
    };
    Repository::init(backend, b"pw", opts).await
}
