//! The storage services, one module each: the local filesystem (`local`), S3 ([`s3`]), and
//! behind cargo features Azure Blob Storage ([`azure`], `backend-azure`), Google Cloud Storage
//! ([`gcs`], `backend-gcs`) and restic's REST server ([`rest`], `backend-rest`).
//!
//! Repository strings and environment variables follow restic's; where restic has no way to
//! name an emulator's address, a snapback variable is documented in the service's module. URLs
//! of every form are parsed whatever the build, so a build without a service says so instead
//! of taking `azure:x:/y` for a local directory.
//!
//! A service module has four functions: `parse` (its repository string into a [`Location`],
//! `None` for other forms), `build` (the opendal operator from the location and the service's
//! environment variables: no retry or timeout layer, [`crate::backend::layers`] adds those to
//! every service alike), and what error messages need (the server's address; the service's
//! error classification when it has its own).
//!
//! # Adding a service
//!
//! Write `services/<name>.rs` with those functions (take `azure.rs` as the model: its
//! `build` has a twin returning [`BackendError::NotBuiltIn`] when the feature is off), give
//! [`Location`] its variant and its `Display` form (`location.rs`), and add one arm to each
//! `match` below (`parse`, `build`, `server`, `problem`): the compiler's exhaustiveness check
//! points at every one. Then add the cargo feature to `crates/repo/Cargo.toml` and the root
//! `Cargo.toml`. Nothing else in the backend changes: every operation of
//! [`crate::Backend`] works on any opendal operator, and the storage behaviour suite
//! (`tests/storage_behaviour.rs`) takes a new service with one more `backend!` line.

use std::sync::Arc;

use opendal::Operator;

pub mod azure;
pub mod gcs;
mod local;
pub mod rest;
pub mod s3;

use crate::backend::problem::{classify_service, StorageProblem};
use crate::backend::tls::TlsOptions;
use crate::backend::{BackendError, Location, RetryPolicy, S3Credentials};

/// A service's operator (without the retry and timeout layers) and what the backend keeps
/// beside it.
pub(crate) struct Built {
    /// The service.
    pub(crate) op: Operator,
    /// The repository's directory when it is local (the fast path reads and writes it directly).
    pub(crate) local_root: Option<std::path::PathBuf>,
    /// What to put in front of a repository-relative path for `op`.
    pub(crate) op_prefix: String,
    /// S3 only: the key in use and how to create the bucket.
    pub(crate) s3: Option<Arc<s3::S3State>>,
}

impl Built {
    /// A service whose operator is rooted at the repository.
    fn remote(op: Operator) -> Built {
        Built {
            op,
            local_root: None,
            op_prefix: String::new(),
            s3: None,
        }
    }
}

/// Builds the operator of `location`'s service.
pub(crate) fn build(
    location: &Location,
    creds: &S3Credentials,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Built, BackendError> {
    match location {
        Location::Local { path } => local::build(path),
        Location::S3 {
            endpoint,
            bucket,
            prefix,
        } => s3::build(endpoint, bucket, prefix, creds, policy, tls),
        Location::Azure { container, prefix } => {
            azure::build(location, container, prefix, policy, tls).map(Built::remote)
        }
        Location::Gcs { bucket, prefix } => {
            gcs::build(location, bucket, prefix, policy, tls).map(Built::remote)
        }
        Location::Rest { url } => rest::build(location, url, policy, tls).map(Built::remote),
    }
}

/// Who did not answer, for a timeout message.
pub(crate) fn server(location: &Location) -> String {
    match location {
        Location::Local { path } => format!("local storage at {path}"),
        Location::S3 { endpoint, .. } => format!("S3 server at {endpoint}"),
        Location::Azure { container, .. } => format!("Azure Blob container {container}"),
        Location::Gcs { bucket, .. } => format!("Google Cloud Storage bucket {bucket}"),
        Location::Rest { url } => format!("REST server at {}", url.base()),
    }
}

/// What a remote storage error means, when it is one of the problems a person can act on.
pub(crate) fn problem(
    location: &Location,
    s3: Option<&s3::S3State>,
    described: &str,
    source: &opendal::Error,
) -> Option<StorageProblem> {
    match location {
        Location::Local { .. } => None,
        Location::S3 {
            endpoint, bucket, ..
        } => s3::problem(s3, source, endpoint, bucket),
        Location::Azure { .. } => classify_service(source, "Azure", described.to_string()),
        Location::Gcs { .. } => classify_service(source, "GCS", described.to_string()),
        Location::Rest { .. } => classify_service(source, "REST", described.to_string()),
    }
}

/// The location with the server it talks to, for error messages: read when the backend is
/// built, from the same settings as the operator (`problem`'s `described`).
pub(crate) fn describe(location: &Location) -> String {
    let with_server = |server: String| format!("{location} ({server})");
    match location {
        Location::Azure { .. } => with_server(azure::endpoint()),
        Location::Gcs { .. } => with_server(gcs::endpoint()),
        other => other.to_string(),
    }
}

/// A non-empty environment variable.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The HTTP client for a service: opendal's default has no connect timeout, and an address
/// that drops SYNs would hang for the kernel's minutes-long default.
#[cfg(any(
    feature = "backend-azure",
    feature = "backend-gcs",
    feature = "backend-rest"
))]
fn http_client(
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<opendal::raw::HttpClient, BackendError> {
    // The same client as S3's: `--cacert` and `--insecure-tls` apply to every service.
    let client = crate::backend::tls::http_client(policy.connect_timeout, tls)?;
    Ok(opendal::raw::HttpClient::with(client))
}

#[cfg(any(
    feature = "backend-azure",
    feature = "backend-gcs",
    feature = "backend-rest"
))]
fn settings(location: &Location, reason: impl Into<String>) -> BackendError {
    BackendError::Settings {
        location: location.to_string(),
        reason: reason.into(),
    }
}

#[cfg(any(feature = "backend-azure", feature = "backend-gcs"))]
fn build_error(e: opendal::Error) -> BackendError {
    BackendError::Storage {
        path: String::new(),
        source: e,
        problem: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_service_forms() {
        assert_eq!(
            Location::parse("azure:backups:/hosts/a").unwrap(),
            Location::Azure {
                container: "backups".into(),
                prefix: "hosts/a".into()
            }
        );
        assert_eq!(
            Location::parse("azure:backups:/").unwrap(),
            Location::Azure {
                container: "backups".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Location::parse("gs:bkt:/r").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: "r".into()
            }
        );
        assert!(Location::parse("gs::/r").is_err());
        assert!(Location::parse("azure:").is_err());
        let Location::Rest { url } =
            Location::parse("rest:https://me:s%40cret@host:8000/repo/").unwrap()
        else {
            panic!("not rest")
        };
        assert_eq!(url.base(), "https://host:8000/repo/");
        assert_eq!(url.user.as_deref(), Some("me"));
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("cret"), "{shown}");
        assert!(Location::parse("rest:ftp://host/x").is_err());
        assert!(Location::parse("rest:http:///x").is_err());
    }
}
