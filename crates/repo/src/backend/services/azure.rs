//! Azure Blob Storage (`azure:container:/path`), behind the cargo feature `backend-azure`.

use opendal::Operator;

use super::var;
use crate::backend::tls::TlsOptions;
use crate::backend::{BackendError, Location, RetryPolicy};

/// The Azure Blob endpoint of `account`: `AZURE_ENDPOINT` (an emulator), else the public one.
fn endpoint_of(account: &str) -> String {
    match var("AZURE_ENDPOINT") {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => {
            let suffix = var("AZURE_ENDPOINT_SUFFIX").unwrap_or_else(|| "core.windows.net".into());
            format!("https://{account}.blob.{suffix}")
        }
    }
}

/// The server a container is on, for error messages.
pub(crate) fn endpoint() -> String {
    endpoint_of(&var("AZURE_ACCOUNT_NAME").unwrap_or_default())
}

/// Azure Blob Storage, configured as restic does from `AZURE_ACCOUNT_NAME` and either
/// `AZURE_ACCOUNT_KEY` or `AZURE_ACCOUNT_SAS`; the endpoint is
/// `https://<account>.blob.<AZURE_ENDPOINT_SUFFIX or core.windows.net>`, or the whole of
/// `AZURE_ENDPOINT` (snapback's own, for an emulator such as Azurite:
/// `http://127.0.0.1:10000/devstoreaccount1`).
///
/// Only the key or SAS token given is used: opendal would otherwise go on to Azure's
/// instance metadata service, an address the user never named.
#[cfg(feature = "backend-azure")]
pub(crate) fn build(
    location: &Location,
    container: &str,
    prefix: &str,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    let account = var("AZURE_ACCOUNT_NAME")
        .ok_or_else(|| super::settings(location, "AZURE_ACCOUNT_NAME is not set"))?;
    let endpoint = endpoint_of(&account);
    let mut b = opendal::services::Azblob::default()
        .container(container)
        .root(&format!("/{prefix}"))
        .endpoint(&endpoint)
        .account_name(&account);
    if let Some(key) = var("AZURE_ACCOUNT_KEY") {
        use base64::Engine;
        if base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .is_err()
        {
            return Err(super::settings(
                location,
                "AZURE_ACCOUNT_KEY is not valid base64",
            ));
        }
        b = b.account_key(key.trim());
    } else if let Some(sas) = var("AZURE_ACCOUNT_SAS") {
        b = b.sas_token(sas.trim_start_matches('?'));
    } else {
        return Err(super::settings(
            location,
            "set AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS for the storage account",
        ));
    }
    Ok(Operator::new(b)
        .map_err(super::build_error)?
        .layer(opendal::layers::HttpClientLayer::new(super::http_client(
            policy, tls,
        )?))
        .finish())
}

#[cfg(not(feature = "backend-azure"))]
pub(crate) fn build(
    _: &Location,
    _: &str,
    _: &str,
    _: &RetryPolicy,
    _: &TlsOptions,
) -> Result<Operator, BackendError> {
    Err(BackendError::NotBuiltIn {
        scheme: "azure",
        feature: "backend-azure",
    })
}
