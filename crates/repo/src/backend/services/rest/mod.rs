//! restic's REST server (`rest:http(s)://[user:password@]host[:port]/path`), behind the cargo
//! feature `backend-rest`: the URL form (parsed whatever the build) and the operator over
//! `accessor`, the protocol as an opendal service.

#[cfg(feature = "backend-rest")]
mod accessor;

use opendal::Operator;

#[cfg(feature = "backend-rest")]
use super::{settings, var};
use crate::backend::location::RestUrl;
use crate::backend::tls::TlsOptions;
use crate::backend::{BackendError, Location, RetryPolicy};

#[cfg(not(feature = "backend-rest"))]
pub(crate) fn build(
    _: &Location,
    _: &RestUrl,
    _: &RetryPolicy,
    _: &TlsOptions,
) -> Result<Operator, BackendError> {
    Err(BackendError::NotBuiltIn {
        scheme: "rest",
        feature: "backend-rest",
    })
}

/// restic's REST server ([`accessor`]); credentials from the URL or from `RESTIC_REST_USERNAME`
/// and `RESTIC_REST_PASSWORD`.
#[cfg(feature = "backend-rest")]
pub(crate) fn build(
    location: &Location,
    url: &RestUrl,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    let acc = accessor::RestBackend::new(
        url,
        var("RESTIC_REST_USERNAME"),
        var("RESTIC_REST_PASSWORD"),
    )
    .map_err(|e| settings(location, format!("bad REST credentials: {e}")))?;
    Ok(opendal::OperatorBuilder::new(acc)
        .finish()
        .layer(opendal::layers::HttpClientLayer::new(super::http_client(
            policy, tls,
        )?)))
}
