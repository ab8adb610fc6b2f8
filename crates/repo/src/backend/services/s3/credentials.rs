//! Where S3 request-signing credentials come from: the chain of sources, each loaded,
//! cached and refreshed before it expires.
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

use crate::backend::problem::{describe_reqwest, first_line, xml_value, CredentialError};
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

/// S3 credentials and settings, normally from restic's and the AWS SDKs' environment
/// variables; see [this module](self) for the order they are tried in.
#[derive(Clone, Default)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<String>,
    /// `AWS_SESSION_TOKEN` (with the two above: temporary keys).
    pub session_token: Option<String>,
    /// `AWS_DEFAULT_REGION` or `AWS_REGION` (default `us-east-1`).
    pub region: Option<String>,
    /// `AWS_PROFILE`: read the shared config files (only when set).
    pub profile: Option<String>,
    /// `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` (EKS IRSA).
    pub web_identity: Option<WebIdentity>,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI` (EKS Pod Identity, ECS).
    pub container: Option<ContainerCredentials>,
    /// `AWS_EC2_METADATA_DISABLED=false`: ask the EC2 instance metadata service.
    pub imds: bool,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field("region", &self.region)
            .field("profile", &self.profile)
            .field("web_identity", &self.web_identity)
            .field("container", &self.container)
            .field("imds", &self.imds)
            .finish()
    }
}

impl S3Credentials {
    /// Reads the credential settings from the environment (see [this module](self)).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let region = var("AWS_DEFAULT_REGION").or_else(|| var("AWS_REGION"));
        let (web_identity, container, imds) =
            env_sources(&var, region.as_deref().unwrap_or("us-east-1"));
        S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: var("AWS_SESSION_TOKEN"),
            region,
            profile: var("AWS_PROFILE"),
            web_identity,
            container,
            imds,
        }
    }
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

/// The loader as opendal holds it (boxed), shared with [`super::BucketMaker`].
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

/// Builds the credential source from the environment (see the module docs for the order).
pub(crate) fn source_from(creds: &S3Credentials) -> Option<Source> {
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
