//! Error classification: turning what a storage server (or the network under it) answered
//! into one line a person can act on ([`StorageProblem`]).

/// A credential source failed: no request could be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot get S3 credentials from {source_name}: {detail}")]
pub struct CredentialError {
    pub(crate) source_name: String,
    pub(crate) detail: String,
}

/// Whether opendal's error is S3's `NoSuchBucket`.
pub(crate) fn is_no_such_bucket(e: &opendal::Error) -> bool {
    s3_code(&e.to_string()).as_deref() == Some("NoSuchBucket")
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
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
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
pub(crate) fn s3_code(message: &str) -> Option<String> {
    s3_field(message, "code").or_else(|| xml_value(message, "Code"))
}

fn s3_field(message: &str, field: &str) -> Option<String> {
    let at = message.find(&format!("{field}: \""))? + field.len() + 3;
    let rest = &message[at..];
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

pub(crate) fn xml_value(text: &str, tag: &str) -> Option<String> {
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

pub(crate) fn first_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
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
}
