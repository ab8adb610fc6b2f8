//! S3 specifics: where request-signing credentials come from, which TLS certificates are
//! trusted, and turning what an S3 server answered into one line a person can act on.
//!
//! Credentials are read the way restic and the AWS SDKs read them, from the environment, in
//! this order (the first source that is configured wins):
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. the shared config files (`~/.aws/credentials`, `~/.aws/config`), only when
//!    `AWS_PROFILE` is set;
//! 3. web identity (EKS IAM roles for service accounts): `AWS_ROLE_ARN` +
//!    `AWS_WEB_IDENTITY_TOKEN_FILE`, exchanged at STS (`AWS_ENDPOINT_URL_STS`, else the
//!    regional AWS endpoint) and exchanged again before the temporary keys expire;
//! 4. container credentials (EKS Pod Identity, ECS): `AWS_CONTAINER_CREDENTIALS_FULL_URI`
//!    (or `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`) with `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`
//!    or `AWS_CONTAINER_AUTHORIZATION_TOKEN`, fetched again before they expire;
//! 5. the EC2 instance metadata service, only when `AWS_EC2_METADATA_DISABLED=false` is set.
//!
//! No address is contacted that one of these variables did not name.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqsign::{AwsConfig, AwsCredential, AwsCredentialLoad, AwsDefaultLoader};
use zeroize::Zeroizing;

/// Where the ECS agent serves `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS_CREDENTIALS_HOST: &str = "http://169.254.170.2";
/// Refresh temporary credentials this long before they expire (or at half their lifetime
/// when that is shorter), so that no request is signed with keys about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// After a failed refresh, the current keys are used this long before the next attempt.
const REFRESH_RETRY_SECS: i64 = 10;

/// Web identity (IRSA) settings: a role assumed with a token file at STS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebIdentity {
    /// `AWS_ROLE_ARN`.
    pub role_arn: String,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE`, read again at every refresh (the kubelet rotates it).
    pub token_file: PathBuf,
    /// `AWS_ROLE_SESSION_NAME` (default `snapback`).
    pub session_name: String,
    /// `AWS_ENDPOINT_URL_STS` or `AWS_STS_ENDPOINT`, else `https://sts.<region>.amazonaws.com`.
    pub sts_endpoint: String,
}

/// Container credentials (EKS Pod Identity, ECS task roles): keys served over HTTP.
#[derive(Clone, PartialEq, Eq)]
pub struct ContainerCredentials {
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`, or the ECS agent's address plus
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
    pub uri: String,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, read again at every fetch.
    pub token_file: Option<PathBuf>,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ContainerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCredentials")
            .field("uri", &self.uri)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Certificates to trust for `https` endpoints besides the built-in roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM files of extra root certificates (`--cacert`, repeatable).
    pub ca_certs: Vec<PathBuf>,
    /// Accept any certificate (`--insecure-tls`): for tests only.
    pub insecure: bool,
}

/// One source of credentials, as configured.
#[derive(Clone)]
pub(crate) enum Source {
    Static {
        access_key_id: String,
        secret_access_key: Zeroizing<String>,
        session_token: Option<Zeroizing<String>>,
    },
    Profile(String),
    WebIdentity(WebIdentity),
    Container(ContainerCredentials),
    Imds,
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Static { .. } => "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
            Source::Profile(p) => format!("AWS_PROFILE={p}"),
            Source::WebIdentity(w) => {
                format!("web identity (role {} at {})", w.role_arn, w.sts_endpoint)
            }
            Source::Container(c) => format!("container credentials at {}", c.uri),
            Source::Imds => "the EC2 instance metadata service".into(),
        }
    }
}

/// A credential source failed: no request could be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot get S3 credentials from {source_name}: {detail}")]
pub struct CredentialError {
    source_name: String,
    detail: String,
}

/// Loads, caches and refreshes the credentials opendal signs requests with.
pub(crate) struct ChainLoader {
    source: Option<Source>,
    client: reqwest::Client,
    cached: tokio::sync::Mutex<Option<Cached>>,
    /// The access key id last handed out, for error messages.
    key_id: Arc<Mutex<Option<String>>>,
}

struct Cached {
    cred: AwsCredential,
    /// When to fetch new keys (`None`: never, they do not expire).
    refresh_at: Option<DateTime<Utc>>,
}

impl ChainLoader {
    pub(crate) fn new(source: Option<Source>, client: reqwest::Client) -> Self {
        let key_id = match &source {
            Some(Source::Static { access_key_id, .. }) => Some(access_key_id.clone()),
            _ => None,
        };
        ChainLoader {
            source,
            client,
            cached: tokio::sync::Mutex::new(None),
            key_id: Arc::new(Mutex::new(key_id)),
        }
    }

    /// Whether any source is configured (else requests go unsigned).
    pub(crate) fn has_source(&self) -> bool {
        self.source.is_some()
    }

    /// Shared view of the access key id in use.
    pub(crate) fn key_id(&self) -> Arc<Mutex<Option<String>>> {
        self.key_id.clone()
    }

    async fn fetch(&self, source: &Source) -> Result<AwsCredential, CredentialError> {
        let fail = |detail: String| CredentialError {
            source_name: source.describe(),
            detail,
        };
        match source {
            Source::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => Ok(AwsCredential {
                access_key_id: access_key_id.clone(),
                secret_access_key: secret_access_key.to_string(),
                session_token: session_token.as_ref().map(|t| t.to_string()),
                expires_in: None,
            }),
            Source::Profile(name) => {
                let cfg = AwsConfig::default().from_profile();
                match (cfg.access_key_id, cfg.secret_access_key) {
                    (Some(id), Some(secret)) => Ok(AwsCredential {
                        access_key_id: id,
                        secret_access_key: secret,
                        session_token: cfg.session_token,
                        expires_in: None,
                    }),
                    _ => Err(fail(format!(
                        "profile {name} has no aws_access_key_id and aws_secret_access_key in {} or {}",
                        cfg.shared_credentials_file, cfg.config_file
                    ))),
                }
            }
            Source::WebIdentity(w) => self.web_identity(w).await.map_err(fail),
            Source::Container(c) => self.container(c).await.map_err(fail),
            Source::Imds => {
                // reqsign's loader with an empty configuration asks only the metadata service.
                let loader = AwsDefaultLoader::new(self.client.clone(), AwsConfig::default());
                match loader.load().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => Err(fail("no credentials served".into())),
                    Err(e) => Err(fail(e.to_string())),
                }
            }
        }
    }

    /// AssumeRoleWithWebIdentity at STS (an unsigned request: the token is the proof).
    async fn web_identity(&self, w: &WebIdentity) -> Result<AwsCredential, String> {
        let token = std::fs::read_to_string(&w.token_file)
            .map_err(|e| format!("cannot read {}: {e}", w.token_file.display()))?;
        let token = Zeroizing::new(token.trim().to_string());
        let form = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", w.role_arn.as_str()),
            ("RoleSessionName", w.session_name.as_str()),
            ("WebIdentityToken", token.as_str()),
        ];
        let body = Zeroizing::new(
            form.iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect::<Vec<_>>()
                .join("&"),
        );
        let resp = self
            .client
            .post(&w.sts_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| describe_reqwest(&e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| describe_reqwest(&e))?;
        if !status.is_success() {
            let why = xml_value(&text, "Message")
                .or_else(|| xml_value(&text, "Code"))
                .unwrap_or_else(|| first_line(&text));
            return Err(format!("STS answered {status}: {why}"));
        }
        let get =
            |tag: &str| xml_value(&text, tag).ok_or_else(|| format!("STS response has no <{tag}>"));
        let expires = get("Expiration")?;
        Ok(AwsCredential {
            access_key_id: get("AccessKeyId")?,
            secret_access_key: get("SecretAccessKey")?,
            session_token: Some(get("SessionToken")?),
            expires_in: Some(parse_time(&expires)?),
        })
    }

    /// GET the container credentials endpoint with its authorization token.
    async fn container(&self, c: &ContainerCredentials) -> Result<AwsCredential, String> {
        let token = match (&c.token_file, &c.token) {
            (Some(file), _) => Some(Zeroizing::new(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                    .trim()
                    .to_string(),
            )),
            (None, Some(t)) => Some(Zeroizing::new(t.clone())),
            (None, None) => None,
        };
        let mut req = self.client.get(&c.uri);
        if let Some(t) = &token {
            req = req.header("authorization", t.as_str());
        }
        let resp = req.send().await.map_err(|e| describe_reqwest(&e))?;
        let status = resp.status();
        let text = Zeroizing::new(resp.text().await.map_err(|e| describe_reqwest(&e))?);
        if !status.is_success() {
            return Err(format!("answered {status}: {}", first_line(&text)));
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Served {
            access_key_id: String,
            secret_access_key: String,
            token: Option<String>,
            expiration: Option<String>,
        }
        let served: Served = serde_json::from_str(&text)
            .map_err(|e| format!("the answer is not credentials JSON: {e}"))?;
        Ok(AwsCredential {
            access_key_id: served.access_key_id,
            secret_access_key: served.secret_access_key,
            session_token: served.token.filter(|t| !t.is_empty()),
            expires_in: served.expiration.as_deref().map(parse_time).transpose()?,
        })
    }
}

#[async_trait::async_trait]
impl AwsCredentialLoad for ChainLoader {
    async fn load_credential(
        &self,
        _client: reqwest::Client,
    ) -> anyhow::Result<Option<AwsCredential>> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        // One refresh at a time; every request waits for it rather than signing with keys
        // that are about to lapse.
        let mut cached = self.cached.lock().await;
        let now = Utc::now();
        if let Some(c) = cached.as_ref() {
            if c.refresh_at.is_none_or(|at| now < at) {
                return Ok(Some(c.cred.clone()));
            }
        }
        let cred = match self.fetch(source).await {
            Ok(c) => c,
            Err(e) => match cached.as_mut() {
                // A refresh failed while the keys still work: keep signing with them and try
                // again a little later (an STS hiccup must not fail a long backup).
                Some(c) if c.cred.expires_in.is_some_and(|exp| exp > now) => {
                    tracing::warn!(error = %e, "refreshing S3 credentials failed; using the current ones until they expire");
                    c.refresh_at = Some(now + chrono::Duration::seconds(REFRESH_RETRY_SECS));
                    return Ok(Some(c.cred.clone()));
                }
                _ => return Err(e.into()),
            },
        };
        let refresh_at = cred.expires_in.map(|expires| {
            let life = (expires - now).to_std().unwrap_or_default();
            let margin = REFRESH_MARGIN.min(life / 2);
            expires - chrono::Duration::from_std(margin).unwrap_or_default()
        });
        if refresh_at.is_some() {
            tracing::debug!(source = %source.describe(), key = %cred.access_key_id, expires = ?cred.expires_in, "fetched S3 credentials");
        }
        if let Ok(mut id) = self.key_id.lock() {
            *id = Some(cred.access_key_id.clone());
        }
        *cached = Some(Cached {
            cred: cred.clone(),
            refresh_at,
        });
        Ok(Some(cred))
    }
}

/// The loader as opendal holds it (boxed), shared with [`BucketMaker`].
pub(crate) struct SharedLoader(pub(crate) Arc<ChainLoader>);

#[async_trait::async_trait]
impl AwsCredentialLoad for SharedLoader {
    async fn load_credential(
        &self,
        client: reqwest::Client,
    ) -> anyhow::Result<Option<AwsCredential>> {
        self.0.load_credential(client).await
    }
}

/// Creates an S3 bucket (opendal has no call for it): one signed `PUT /bucket`.
pub(crate) struct BucketMaker {
    pub(crate) client: reqwest::Client,
    pub(crate) loader: Arc<ChainLoader>,
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) region: String,
}

impl std::fmt::Debug for BucketMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketMaker")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl BucketMaker {
    pub(crate) async fn create(&self) -> Result<(), super::backend::BackendError> {
        let fail = |reason: String| super::backend::BackendError::CreateBucket {
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            reason,
        };
        let url = format!("{}/{}", self.endpoint.trim_end_matches('/'), self.bucket);
        // us-east-1 is the default location and must not be named.
        let body = if self.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.region
            )
        };
        let mut req = self
            .client
            .put(&url)
            .body(body)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let cred = self
            .loader
            .load_credential(self.client.clone())
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(cred) = &cred {
            reqsign::AwsV4Signer::new("s3", &self.region)
                .sign(&mut req, cred)
                .map_err(|e| fail(format!("cannot sign the request: {e}")))?;
        }
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| fail(describe_reqwest(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let code = xml_value(&text, "Code").unwrap_or_default();
        if code == "BucketAlreadyOwnedByYou" {
            // Another process created it just now.
            return Ok(());
        }
        let key = cred.map(|c| c.access_key_id);
        let reason = match code.as_str() {
            "SignatureDoesNotMatch"
            | "InvalidAccessKeyId"
            | "InvalidClientTokenId"
            | "ExpiredToken"
            | "AccessDenied" => {
                let msg = xml_value(&text, "Message").unwrap_or_default();
                match key {
                    Some(k) => format!("access denied for key {k} ({code}: {msg})"),
                    None => format!("access denied to anonymous requests ({code}: {msg})"),
                }
            }
            "" => format!("the server answered {status}: {}", first_line(&text)),
            _ => format!(
                "{code}: {}",
                xml_value(&text, "Message").unwrap_or_else(|| status.to_string())
            ),
        };
        Err(fail(reason))
    }
}

/// Whether opendal's error is S3's `NoSuchBucket`.
pub(crate) fn is_no_such_bucket(e: &opendal::Error) -> bool {
    s3_code(&e.to_string()).as_deref() == Some("NoSuchBucket")
}

/// Builds the credential source from the environment (see the module docs for the order).
pub(crate) fn source_from(creds: &super::backend::S3Credentials) -> Option<Source> {
    if let (Some(id), Some(secret)) = (&creds.access_key_id, &creds.secret_access_key) {
        return Some(Source::Static {
            access_key_id: id.clone(),
            secret_access_key: Zeroizing::new(secret.clone()),
            session_token: creds.session_token.clone().map(Zeroizing::new),
        });
    }
    if let Some(p) = &creds.profile {
        return Some(Source::Profile(p.clone()));
    }
    if let Some(w) = &creds.web_identity {
        return Some(Source::WebIdentity(w.clone()));
    }
    if let Some(c) = &creds.container {
        return Some(Source::Container(c.clone()));
    }
    creds.imds.then_some(Source::Imds)
}

/// Reads the web identity, container and metadata settings from the environment.
pub(crate) fn env_sources(
    var: &dyn Fn(&str) -> Option<String>,
    region: &str,
) -> (Option<WebIdentity>, Option<ContainerCredentials>, bool) {
    let web_identity = match (var("AWS_ROLE_ARN"), var("AWS_WEB_IDENTITY_TOKEN_FILE")) {
        (Some(role_arn), Some(file)) => Some(WebIdentity {
            role_arn,
            token_file: file.into(),
            session_name: var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "snapback".into()),
            sts_endpoint: var("AWS_ENDPOINT_URL_STS")
                .or_else(|| var("AWS_STS_ENDPOINT"))
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com")),
        }),
        _ => None,
    };
    let uri = var("AWS_CONTAINER_CREDENTIALS_FULL_URI").or_else(|| {
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .map(|rel| format!("{ECS_CREDENTIALS_HOST}{rel}"))
    });
    let container = uri.map(|uri| ContainerCredentials {
        uri,
        token_file: var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").map(PathBuf::from),
        token: var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    });
    // Asking the metadata service means contacting 169.254.169.254: only when told to.
    let imds = var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    (web_identity, container, imds)
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

/// What went wrong talking to the storage, in terms a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageProblem {
    /// The bucket does not exist.
    NoSuchBucket {
        /// Bucket name.
        bucket: String,
        /// Server.
        endpoint: String,
    },
    /// The server knows the key id but the signature did not match: wrong secret key.
    WrongSecret {
        /// Access key id.
        key_id: String,
        /// Server.
        endpoint: String,
    },
    /// The server does not know the access key id.
    UnknownKey {
        /// Access key id.
        key_id: String,
        /// Server.
        endpoint: String,
    },
    /// Temporary credentials expired.
    Expired {
        /// Access key id.
        key_id: String,
        /// Server.
        endpoint: String,
    },
    /// Authenticated, but not allowed.
    AccessDenied {
        /// Access key id, if the request was signed.
        key_id: Option<String>,
        /// Bucket name.
        bucket: String,
        /// Server.
        endpoint: String,
        /// The server's message.
        message: String,
    },
    /// No credentials could be loaded.
    Credentials(String),
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    Tls {
        /// Server.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// No connection could be made.
    Connect {
        /// Server.
        endpoint: String,
        /// Why (connection refused, name not resolved).
        detail: String,
    },
    /// Access refused by a service other than S3 (wrong key, SAS, token or password).
    Denied {
        /// `Azure`, `GCS`, `REST`.
        service: &'static str,
        /// Where the repository is.
        endpoint: String,
        /// The server's message (its first line), or opendal's error kind.
        detail: String,
    },
    /// Any other failure the server reported or the request met.
    Other {
        /// `S3`, `Azure`, `GCS`, `REST`.
        service: &'static str,
        /// Server.
        endpoint: String,
        /// The storage operation (`read`, `write`, `list`, ...).
        operation: String,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// The server's message (its first line), or opendal's error kind.
        detail: String,
    },
}

impl std::fmt::Display for StorageProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageProblem::NoSuchBucket { bucket, endpoint } => {
                write!(f, "bucket `{bucket}` does not exist at {endpoint}")
            }
            StorageProblem::WrongSecret { key_id, endpoint } => write!(
                f,
                "S3 access denied: the secret key for {key_id} does not match (the signature was rejected by {endpoint}; check AWS_SECRET_ACCESS_KEY)"
            ),
            StorageProblem::UnknownKey { key_id, endpoint } => write!(
                f,
                "S3 access denied: access key {key_id} is not known to {endpoint} (check AWS_ACCESS_KEY_ID)"
            ),
            StorageProblem::Expired { key_id, endpoint } => write!(
                f,
                "S3 access denied: the temporary credentials of {key_id} have expired ({endpoint})"
            ),
            StorageProblem::AccessDenied {
                key_id,
                bucket,
                endpoint,
                message,
            } => {
                let who = match key_id {
                    Some(k) => format!("key {k}"),
                    None => "anonymous requests (no credentials set)".into(),
                };
                write!(f, "S3 access denied for {who} on bucket `{bucket}` at {endpoint}")?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            StorageProblem::Credentials(detail) => write!(f, "{detail}"),
            StorageProblem::Tls { endpoint, detail } => {
                write!(f, "TLS: {detail} (connecting to {endpoint}; see --cacert)")
            }
            StorageProblem::Connect { endpoint, detail } => {
                write!(f, "cannot connect to {endpoint}: {detail}")
            }
            StorageProblem::Denied {
                service,
                endpoint,
                detail,
            } => write!(
                f,
                "{service} access denied at {endpoint}: {detail} (check the credentials)"
            ),
            StorageProblem::Other {
                service,
                endpoint,
                operation,
                status,
                detail,
            } => {
                write!(f, "{service} {operation} at {endpoint} failed")?;
                if let Some(s) = status {
                    write!(f, " with HTTP {s}")?;
                }
                write!(f, ": {detail}")
            }
        }
    }
}

/// Derives the problem from what opendal reported (its kind, the S3 error code in its
/// message, and the causes underneath), for an S3 `bucket` at `endpoint`.
pub(crate) fn classify(
    e: &opendal::Error,
    endpoint: &str,
    bucket: &str,
    key_id: Option<String>,
) -> Option<StorageProblem> {
    let text = e.to_string();
    let message = text.as_str();
    let code = s3_code(message);
    let key = || key_id.clone().unwrap_or_else(|| "(none)".into());
    let ep = endpoint.to_string();
    match code.as_deref() {
        Some("NoSuchBucket") => {
            return Some(StorageProblem::NoSuchBucket {
                bucket: bucket.into(),
                endpoint: ep,
            })
        }
        Some("SignatureDoesNotMatch") => {
            return Some(StorageProblem::WrongSecret {
                key_id: key(),
                endpoint: ep,
            })
        }
        Some("InvalidAccessKeyId") | Some("InvalidClientTokenId") => {
            return Some(StorageProblem::UnknownKey {
                key_id: key(),
                endpoint: ep,
            })
        }
        Some("ExpiredToken") | Some("TokenRefreshRequired") => {
            return Some(StorageProblem::Expired {
                key_id: key(),
                endpoint: ep,
            })
        }
        _ => {}
    }
    if e.kind() == opendal::ErrorKind::PermissionDenied {
        return Some(StorageProblem::AccessDenied {
            key_id,
            bucket: bucket.into(),
            endpoint: ep,
            message: s3_field(message, "message").unwrap_or_default(),
        });
    }
    classify_transport(e, "S3", ep)
}

/// The problem of a request to a service other than S3 (`service` names it in the message,
/// `endpoint` is where the repository is).
pub(crate) fn classify_service(
    e: &opendal::Error,
    service: &'static str,
    endpoint: String,
) -> Option<StorageProblem> {
    if e.kind() == opendal::ErrorKind::PermissionDenied {
        let text = e.to_string();
        let detail = text
            .split_once(" => ")
            .map(|(_, m)| first_line(m.trim()))
            .filter(|l| !l.is_empty() && !l.starts_with('<'))
            .unwrap_or_else(|| "permission denied".into());
        return Some(StorageProblem::Denied {
            service,
            endpoint,
            detail,
        });
    }
    classify_transport(e, service, endpoint)
}

/// TLS, connection and other failures, common to every service.
fn classify_transport(
    e: &opendal::Error,
    service: &'static str,
    ep: String,
) -> Option<StorageProblem> {
    use std::error::Error as _;
    let text = e.to_string();
    let message = text.as_str();
    // Below opendal: the credential loader, or reqwest/hyper/rustls/io.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    let mut texts = Vec::new();
    while let Some(c) = cause {
        if let Some(ce) = c.downcast_ref::<CredentialError>() {
            return Some(StorageProblem::Credentials(ce.to_string()));
        }
        texts.push(c.to_string());
        cause = c.source();
    }
    let all = texts.join(": ");
    if let Some(detail) = tls_detail(&all) {
        return Some(StorageProblem::Tls {
            endpoint: ep,
            detail,
        });
    }
    if let Some(detail) = connect_detail(&all) {
        return Some(StorageProblem::Connect {
            endpoint: ep,
            detail,
        });
    }
    // opendal's Display: "{kind} ({status}) at {operation}[, context: { .. }][ => {message}]".
    let operation = text
        .split_once(") at ")
        .map(|(_, rest)| {
            rest.split([',', ' '])
                .next()
                .unwrap_or("request")
                .to_string()
        })
        .unwrap_or_else(|| "request".into());
    let status = text
        .split_once("status: ")
        .and_then(|(_, rest)| rest.get(..3))
        .and_then(|n| n.parse().ok());
    let detail = s3_field(message, "message")
        .or_else(|| {
            let (_, m) = text.split_once(" => ")?;
            let line = first_line(m.trim());
            // An HTML error page says nothing in its first line.
            (!line.is_empty() && !line.starts_with('<')).then_some(line)
        })
        .or_else(|| (!all.is_empty()).then(|| last_part(&all)))
        .unwrap_or_else(|| format!("{:?}", e.kind()));
    Some(StorageProblem::Other {
        service,
        endpoint: ep,
        operation,
        status,
        detail,
    })
}

/// A short reason from a reqwest error's causes, for credential endpoints.
fn describe_reqwest(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut texts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        texts.push(c.to_string());
        cause = c.source();
    }
    let all = texts.join(": ");
    tls_detail(&all)
        .map(|d| format!("TLS: {d}"))
        .or_else(|| connect_detail(&all))
        .unwrap_or(all)
}

fn tls_detail(all: &str) -> Option<String> {
    let lower = all.to_ascii_lowercase();
    if lower.contains("unknownissuer") || lower.contains("unknown issuer") {
        Some("unknown certificate authority".into())
    } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
        Some("the certificate is not valid for this host name".into())
    } else if lower.contains("expired") && lower.contains("certificate") {
        Some("the certificate has expired".into())
    } else if lower.contains("invalid peer certificate") || lower.contains("invalidcertificate") {
        Some(format!("invalid certificate ({})", last_part(all)))
    } else if lower.contains("tls") && lower.contains("handshake") {
        Some(format!("handshake failed ({})", last_part(all)))
    } else if lower.contains("invalid http version") || lower.contains("corrupt message") {
        Some("the server does not speak TLS (use http:// for a plain-text endpoint)".into())
    } else {
        None
    }
}

fn connect_detail(all: &str) -> Option<String> {
    let lower = all.to_ascii_lowercase();
    if lower.contains("connection refused") {
        Some("connection refused".into())
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        Some(format!("name not resolved ({})", last_part(all)))
    } else if lower.contains("error trying to connect")
        || lower.contains("client error (connect)")
        || lower.contains("connect timeout")
        || lower.contains("timed out")
    {
        Some(last_part(all))
    } else {
        None
    }
}

fn last_part(all: &str) -> String {
    all.rsplit(": ").next().unwrap_or(all).trim().to_string()
}

/// The S3 error code in opendal's message, which is the server's XML error parsed into
/// `S3Error { code: "...", message: "...", ... }` (or the raw body when that failed).
fn s3_code(message: &str) -> Option<String> {
    s3_field(message, "code").or_else(|| xml_value(message, "Code"))
}

fn s3_field(message: &str, field: &str) -> Option<String> {
    let at = message.find(&format!("{field}: \""))? + field.len() + 3;
    let rest = &message[at..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

fn xml_value(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let at = text.find(&open)? + open.len();
    let end = text[at..].find(&format!("</{tag}>"))?;
    Some(xml_unescape(text[at..at + end].trim()))
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expiration {s:?} is not an RFC 3339 time: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_s3_error_code_from_opendal_messages() {
        let m = r#"S3Error { code: "SignatureDoesNotMatch", message: "The request signature", resource: "", request_id: "" }"#;
        assert_eq!(s3_code(m).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(
            s3_field(m, "message").as_deref(),
            Some("The request signature")
        );
        assert_eq!(
            s3_code("<Error><Code>NoSuchBucket</Code></Error>").as_deref(),
            Some("NoSuchBucket")
        );
    }

    #[test]
    fn environment_selects_sources_without_contacting_anything() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let none = env(&[]);
        assert_eq!(env_sources(&none, "us-east-1"), (None, None, false));
        let irsa = env(&[
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
        ]);
        let (w, _, _) = env_sources(&irsa, "eu-west-1");
        assert_eq!(
            w.map(|w| w.sts_endpoint),
            Some("https://sts.eu-west-1.amazonaws.com".into())
        );
        let ecs = env(&[
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/creds"),
            ("AWS_EC2_METADATA_DISABLED", "false"),
        ]);
        let (_, c, imds) = env_sources(&ecs, "us-east-1");
        assert_eq!(
            c.map(|c| c.uri),
            Some("http://169.254.170.2/v2/creds".into())
        );
        assert!(imds);
        let no_imds = env(&[("AWS_EC2_METADATA_DISABLED", "true")]);
        assert!(!env_sources(&no_imds, "us-east-1").2);
    }

    #[test]
    fn form_encoding_escapes_token_characters() {
        assert_eq!(form_encode("a+b/c=d e"), "a%2Bb%2Fc%3Dd%20e");
    }
}
