//! Google Cloud Storage (`gs:bucket:/path`), behind the cargo feature `backend-gcs`.

use opendal::Operator;

use super::var;
use crate::backend::tls::TlsOptions;
use crate::backend::{BackendError, Location, RetryPolicy};

/// The GCS emulator named by `STORAGE_EMULATOR_HOST`, as a URL.
fn emulator() -> Option<String> {
    var("STORAGE_EMULATOR_HOST").map(|h| {
        let h = h.trim_end_matches('/');
        if h.starts_with("http://") || h.starts_with("https://") {
            h.to_string()
        } else {
            format!("http://{h}")
        }
    })
}

/// The server a bucket is on, for error messages.
pub(crate) fn endpoint() -> String {
    emulator().unwrap_or_else(|| "https://storage.googleapis.com".into())
}

/// Google Cloud Storage with restic's variables: a service account key file in
/// `GOOGLE_APPLICATION_CREDENTIALS`, or an OAuth token in `GOOGLE_ACCESS_TOKEN`. An emulator
/// is named by `STORAGE_EMULATOR_HOST` (as Google's client libraries read it); there, with
/// neither variable set, requests go unsigned. `GOOGLE_PROJECT_ID` is only needed to create
/// buckets, which snapback does not do.
///
/// Credentials come from those variables only: never from gcloud's well-known file, and the
/// GCE metadata server is asked only when `SNAPBACK_GCS_METADATA=1` says so (GKE Workload
/// Identity), so no address the user did not name is ever contacted.
#[cfg(feature = "backend-gcs")]
pub(crate) fn build(
    location: &Location,
    bucket: &str,
    prefix: &str,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    let mut b = opendal::services::Gcs::default()
        .bucket(bucket)
        .root(&format!("/{prefix}"))
        .disable_config_load();
    let emulator = emulator();
    if let Some(endpoint) = &emulator {
        b = b.endpoint(endpoint);
    }
    if var("SNAPBACK_GCS_METADATA").as_deref() != Some("1") {
        b = b.disable_vm_metadata();
    }
    if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
        // opendal ignores a credential file it cannot read; say so here instead.
        let text = std::fs::read_to_string(&path).map_err(|e| {
            super::settings(
                location,
                format!("cannot read GOOGLE_APPLICATION_CREDENTIALS file {path}: {e}"),
            )
        })?;
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            return Err(super::settings(
                location,
                format!("GOOGLE_APPLICATION_CREDENTIALS file {path} is not JSON"),
            ));
        }
        b = b.credential_path(&path);
    } else if let Some(token) = var("GOOGLE_ACCESS_TOKEN") {
        b = b.token(token);
    } else if emulator.is_some() {
        b = b.allow_anonymous();
    } else if var("SNAPBACK_GCS_METADATA").as_deref() != Some("1") {
        return Err(super::settings(
            location,
            "set GOOGLE_APPLICATION_CREDENTIALS (a service account key file) or \
             GOOGLE_ACCESS_TOKEN, or SNAPBACK_GCS_METADATA=1 to ask the GCE metadata server",
        ));
    }
    let op = Operator::new(b)
        .map_err(super::build_error)?
        .layer(opendal::layers::HttpClientLayer::new(super::http_client(
            policy, tls,
        )?))
        .finish();
    // opendal uploads large files to GCS through the XML API's multipart uploads, which the
    // emulators lack, so that path could not be tested here: every file goes up in one
    // request instead (GCS takes up to 5 TiB that way; packs are far smaller).
    opendal::raw::Access::info(op.inner()).update_full_capability(|mut c| {
        c.write_can_multi = false;
        c
    });
    Ok(op)
}

#[cfg(not(feature = "backend-gcs"))]
pub(crate) fn build(
    _: &Location,
    _: &str,
    _: &str,
    _: &RetryPolicy,
    _: &TlsOptions,
) -> Result<Operator, BackendError> {
    Err(BackendError::NotBuiltIn {
        scheme: "gs",
        feature: "backend-gcs",
    })
}
