//! Amazon S3 and S3-compatible stores (`s3:`): the opendal service with snapback's own
//! credential chain ([`credentials`]), bucket creation, and the S3 error codes a person can act
//! on.

pub mod credentials;

use std::sync::{Arc, Mutex};

use opendal::layers::HttpClientLayer;
use opendal::Operator;
use reqsign::AwsCredentialLoad;

use self::credentials::{ChainLoader, SharedLoader};
use super::Built;
use crate::backend::problem::{self, describe_reqwest, first_line, xml_value, StorageProblem};
use crate::backend::tls::{self, TlsOptions};
use crate::backend::{BackendError, RetryPolicy, S3Credentials};

/// What an S3 backend keeps besides its operator.
#[derive(Debug)]
pub(crate) struct S3State {
    /// The access key id the requests are signed with (for error messages).
    key_id: Arc<Mutex<Option<String>>>,
    /// What creating the bucket needs.
    pub(crate) bucket_maker: BucketMaker,
}

/// Builds the S3 operator for `bucket` at `endpoint` under `prefix`.
pub(crate) fn build(
    endpoint: &str,
    bucket: &str,
    prefix: &str,
    creds: &S3Credentials,
    policy: &RetryPolicy,
    tls: &TlsOptions,
) -> Result<Built, BackendError> {
    // opendal's own loading is off (it would read ~/.aws unasked and ask the EC2
    // metadata service): our loader reads the sources the environment names, and
    // no address but the endpoint and those is ever contacted.
    let region = creds.region.as_deref().unwrap_or("us-east-1");
    let mut b = opendal::services::S3::default()
        .endpoint(endpoint)
        .bucket(bucket)
        .root(&format!("/{prefix}"))
        .region(region)
        .disable_config_load()
        .disable_ec2_metadata();
    // opendal's default client has no connect timeout: an address that drops
    // SYNs would hang for the kernel's minutes-long default.
    let client = tls::http_client(policy.connect_timeout, tls)?;
    let loader = Arc::new(ChainLoader::new(
        credentials::source_from(creds),
        client.clone(),
    ));
    if !loader.has_source() {
        b = b.allow_anonymous();
    }
    let state = S3State {
        key_id: loader.key_id(),
        bucket_maker: BucketMaker {
            client: client.clone(),
            loader: loader.clone(),
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            region: region.to_string(),
        },
    };
    b = b.customized_credential_load(Box::new(SharedLoader(loader)));
    let client = opendal::raw::HttpClient::with(client);
    let op = Operator::new(b)
        .map_err(|e| crate::backend::error::storage("", e))?
        .layer(HttpClientLayer::new(client))
        .finish();
    Ok(Built {
        op,
        local_root: None,
        op_prefix: String::new(),
        s3: Some(Arc::new(state)),
    })
}

/// The problem behind an error from `bucket` at `endpoint`, naming the key in use.
pub(crate) fn problem(
    state: Option<&S3State>,
    source: &opendal::Error,
    endpoint: &str,
    bucket: &str,
) -> Option<StorageProblem> {
    let key = state.and_then(|s| s.key_id.lock().ok().and_then(|k| k.clone()));
    problem::classify(source, endpoint, bucket, key)
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
    pub(crate) async fn create(&self) -> Result<(), BackendError> {
        let fail = |reason: String| BackendError::CreateBucket {
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
