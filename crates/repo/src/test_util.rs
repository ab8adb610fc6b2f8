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

/// Writes `root/dNN/eN/file` (40 directories of 3, one small file each, every content
/// different): a tree with many directories, for tests of tree reads. Returns the file count.
pub fn write_dirs_of_dirs(root: &Path) -> std::io::Result<usize> {
    let mut files = 0;
    for d in 0..40 {
        for e in 0..3 {
            let dir = root.join(format!("d{d:02}")).join(format!("e{e}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("file"), format!("{d} {e}"))?;
            files += 1;
        }
    }
    Ok(files)
}
