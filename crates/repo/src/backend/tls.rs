//! Which TLS certificates are trusted, and the HTTP client every service's requests (and the
//! S3 credential endpoints') go through.

use std::path::PathBuf;
use std::time::Duration;

/// Certificates to trust for `https` endpoints besides the built-in roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM files of extra root certificates (`--cacert`, repeatable).
    pub ca_certs: Vec<PathBuf>,
    /// Accept any certificate (`--insecure-tls`): for tests only.
    pub insecure: bool,
}

/// The HTTP client for S3 and credential endpoints: connect timeout and TLS trust.
pub(crate) fn http_client(
    connect_timeout: Duration,
    tls: &TlsOptions,
) -> Result<reqwest::Client, TlsError> {
    let mut b = reqwest::ClientBuilder::new().connect_timeout(connect_timeout);
    for path in &tls.ca_certs {
        let pem = std::fs::read(path).map_err(|e| TlsError::Read {
            path: path.clone(),
            source: e,
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|_| TlsError::Parse { path: path.clone() })?;
        if certs.is_empty() {
            return Err(TlsError::Parse { path: path.clone() });
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    if tls.insecure {
        tracing::warn!("--insecure-tls: the S3 server's TLS certificate is not verified; anyone on the path can read and change the traffic");
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().map_err(|e| TlsError::Client(e.to_string()))
}

/// The TLS settings could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `--cacert` file is unreadable.
    #[error("cannot read the CA certificate file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `--cacert` file holds no PEM certificate.
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}
