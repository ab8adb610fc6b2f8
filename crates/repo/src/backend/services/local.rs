//! The local filesystem (`/path`, `local:/path` or a relative path): opendal's fs service for
//! listing, stats and deletes; reads and writes of whole files and ranges take the fast path
//! of [`crate::backend::local`].

use opendal::Operator;

use super::Built;
use crate::backend::error::storage;
use crate::backend::BackendError;

/// Builds the fs operator for the repository directory `path`.
pub(crate) fn build(path: &str) -> Result<Built, BackendError> {
    let abs = std::path::absolute(path).map_err(|_| BackendError::Location(path.to_string()))?;
    // opendal's fs service creates its root when it is built; a read-only command on a
    // mistyped path must not leave directories behind. So the service is rooted at `/` and
    // every path carries the repository's directory: reads of a missing repository find
    // nothing, and only writes create directories.
    let rel = abs.to_string_lossy().trim_matches('/').to_string();
    let op_prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    };
    let op = Operator::new(opendal::services::Fs::default().root("/"))
        .map_err(|e| storage("", e))?
        .finish();
    Ok(Built {
        op,
        local_root: Some(abs),
        op_prefix,
        s3: None,
    })
}
