//! The optional storage services beside the local filesystem and S3: Azure Blob Storage
//! (`azure:`), Google Cloud Storage (`gs:`) and restic's REST server (`rest:`), each behind a
//! cargo feature (`backend-azure`, `backend-gcs`, `backend-rest`).
//!
//! Repository strings and environment variables follow restic's; where restic has no way to
//! name an emulator's address, a snapback variable is documented below. URLs of these forms
//! are parsed whatever the build, so a build without a service says so instead of taking
//! `azure:x:/y` for a local directory.

use opendal::Operator;

#[cfg(feature = "backend-rest")]
mod rest;

use crate::backend::{BackendError, Location, RetryPolicy};
use crate::s3::TlsOptions;

/// Parses the repository strings of this module's services; `None` for any other form.
pub(crate) fn parse(repo: &str) -> Option<Result<Location, BackendError>> {
    let bad = || BackendError::Location(repo.to_string());
    if let Some(rest) = repo.strip_prefix("azure:") {
        return Some(
            split_bucket(rest)
                .map(|(container, prefix)| Location::Azure { container, prefix })
                .ok_or_else(bad),
        );
    }
    if let Some(rest) = repo.strip_prefix("gs:") {
        return Some(
            split_bucket(rest)
                .map(|(bucket, prefix)| Location::Gcs { bucket, prefix })
                .ok_or_else(bad),
        );
    }
    if let Some(rest) = repo.strip_prefix("rest:") {
        return Some(
            RestUrl::parse(rest)
                .map(|url| Location::Rest { url })
                .ok_or_else(bad),
        );
    }
    None
}

/// `container:/path` or `container:path` (restic's form for `azure:` and `gs:`) into the
/// container and the prefix without surrounding slashes.
fn split_bucket(rest: &str) -> Option<(String, String)> {
    let (bucket, path) = rest.split_once(':').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains('/') {
        return None;
    }
    Some((bucket.to_string(), path.trim_matches('/').to_string()))
}

/// The URL of a REST server repository. Its password never shows in `Display` or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RestUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// Path of the repository on the server, without surrounding slashes (may be empty).
    pub path: String,
    /// User name from the URL, if any.
    pub user: Option<String>,
    /// Password from the URL, if any.
    pub password: Option<String>,
}

impl RestUrl {
    /// Parses `http(s)://[user[:password]@]host[:port][/path]`.
    pub fn parse(s: &str) -> Option<RestUrl> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
            ("http", r)
        } else if let Some(r) = s.strip_prefix("https://") {
            ("https", r)
        } else {
            return None;
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return None;
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?)),
                None => (Some(percent_decode(u)?), None),
            },
        };
        Some(RestUrl {
            scheme: scheme.to_string(),
            host: host.to_string(),
            path: path.trim_matches('/').to_string(),
            user,
            password,
        })
    }

    /// `scheme://host/path/` (no credentials): the base every request URL extends.
    pub fn base(&self) -> String {
        if self.path.is_empty() {
            format!("{}://{}/", self.scheme, self.host)
        } else {
            format!("{}://{}/{}/", self.scheme, self.host, self.path)
        }
    }
}

impl std::fmt::Display for RestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => {
                write!(f, "{}://{u}:***@{}/{}", self.scheme, self.host, self.path)
            }
            (Some(u), None) => write!(f, "{}://{u}@{}/{}", self.scheme, self.host, self.path),
            _ => write!(f, "{}://{}/{}", self.scheme, self.host, self.path),
        }
    }
}

impl std::fmt::Debug for RestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestUrl({self})")
    }
}

/// `%XX` escapes of a URL's user information, decoded.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Who did not answer, for a timeout message.
pub(crate) fn server(location: &Location) -> String {
    match location {
        Location::Azure { container, .. } => format!("Azure Blob container {container}"),
        Location::Gcs { bucket, .. } => format!("Google Cloud Storage bucket {bucket}"),
        Location::Rest { url } => format!("REST server at {}", url.base()),
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
    let client = crate::s3::http_client(policy.connect_timeout, tls)?;
    Ok(opendal::raw::HttpClient::with(client))
}

/// The Azure Blob endpoint of `account`: `AZURE_ENDPOINT` (an emulator), else the public one.
fn azure_endpoint(account: &str) -> String {
    match var("AZURE_ENDPOINT") {
        Some(e) => e.trim_end_matches('/').to_string(),
        None => {
            let suffix = var("AZURE_ENDPOINT_SUFFIX").unwrap_or_else(|| "core.windows.net".into());
            format!("https://{account}.blob.{suffix}")
        }
    }
}

/// The GCS emulator named by `STORAGE_EMULATOR_HOST`, as a URL.
fn gcs_emulator() -> Option<String> {
    var("STORAGE_EMULATOR_HOST").map(|h| {
        let h = h.trim_end_matches('/');
        if h.starts_with("http://") || h.starts_with("https://") {
            h.to_string()
        } else {
            format!("http://{h}")
        }
    })
}

/// A location of this module with the server it talks to, for error messages.
pub(crate) fn describe(location: &Location) -> String {
    let server = match location {
        Location::Azure { .. } => Some(azure_endpoint(
            &var("AZURE_ACCOUNT_NAME").unwrap_or_default(),
        )),
        Location::Gcs { .. } => {
            Some(gcs_emulator().unwrap_or_else(|| "https://storage.googleapis.com".into()))
        }
        _ => None,
    };
    match server {
        Some(server) => format!("{location} ({server})"),
        None => location.to_string(),
    }
}

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

/// Builds the opendal operator (without the retry and timeout layers, which the caller adds)
/// for one of this module's locations.
pub(crate) fn operator(
    location: &Location,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    match location {
        Location::Azure { container, prefix } => azure(location, container, prefix, policy, tls),
        Location::Gcs { bucket, prefix } => gcs(location, bucket, prefix, policy, tls),
        Location::Rest { url } => rest(location, url, policy, tls),
        // Backend::new handles local and S3 itself.
        other => Err(settings(other, "not a service of this module")),
    }
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
fn azure(
    location: &Location,
    container: &str,
    prefix: &str,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    let account = var("AZURE_ACCOUNT_NAME")
        .ok_or_else(|| settings(location, "AZURE_ACCOUNT_NAME is not set"))?;
    let endpoint = azure_endpoint(&account);
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
            return Err(settings(location, "AZURE_ACCOUNT_KEY is not valid base64"));
        }
        b = b.account_key(key.trim());
    } else if let Some(sas) = var("AZURE_ACCOUNT_SAS") {
        b = b.sas_token(sas.trim_start_matches('?'));
    } else {
        return Err(settings(
            location,
            "set AZURE_ACCOUNT_KEY or AZURE_ACCOUNT_SAS for the storage account",
        ));
    }
    Ok(Operator::new(b)
        .map_err(build_error)?
        .layer(opendal::layers::HttpClientLayer::new(http_client(
            policy, tls,
        )?))
        .finish())
}

#[cfg(not(feature = "backend-azure"))]
fn azure(
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
fn gcs(
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
    let emulator = gcs_emulator();
    if let Some(endpoint) = &emulator {
        b = b.endpoint(endpoint);
    }
    if var("SNAPBACK_GCS_METADATA").as_deref() != Some("1") {
        b = b.disable_vm_metadata();
    }
    if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
        // opendal ignores a credential file it cannot read; say so here instead.
        let text = std::fs::read_to_string(&path).map_err(|e| {
            settings(
                location,
                format!("cannot read GOOGLE_APPLICATION_CREDENTIALS file {path}: {e}"),
            )
        })?;
        if serde_json::from_str::<serde_json::Value>(&text).is_err() {
            return Err(settings(
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
        return Err(settings(
            location,
            "set GOOGLE_APPLICATION_CREDENTIALS (a service account key file) or \
             GOOGLE_ACCESS_TOKEN, or SNAPBACK_GCS_METADATA=1 to ask the GCE metadata server",
        ));
    }
    let op = Operator::new(b)
        .map_err(build_error)?
        .layer(opendal::layers::HttpClientLayer::new(http_client(
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
fn gcs(
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

#[cfg(not(feature = "backend-rest"))]
fn rest(
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

/// restic's REST server ([`rest`]); credentials from the URL or from `RESTIC_REST_USERNAME`
/// and `RESTIC_REST_PASSWORD`.
#[cfg(feature = "backend-rest")]
fn rest(
    location: &Location,
    url: &RestUrl,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Operator, BackendError> {
    let acc = rest::RestBackend::new(
        url,
        var("RESTIC_REST_USERNAME"),
        var("RESTIC_REST_PASSWORD"),
    )
    .map_err(|e| settings(location, format!("bad REST credentials: {e}")))?;
    Ok(opendal::OperatorBuilder::new(acc)
        .finish()
        .layer(opendal::layers::HttpClientLayer::new(http_client(
            policy, tls,
        )?)))
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
