//! The layers every service's operator gets (opendal's timeout and retry layers, from the
//! [`RetryPolicy`]), the deadline of one whole operation, and the mapping of what fails under
//! them: timeouts to [`BackendError::Timeout`], other remote errors to the
//! [`StorageProblem`](crate::backend::problem::StorageProblem) a person can act on.

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{ErrorKind, Operator};

use crate::backend::{services, Backend, BackendError, RetryPolicy};

/// `op` with the timeout of one request (and of one read/write chunk) and the retries of a
/// temporary failure, with backoff and jitter.
pub(crate) fn wrap(op: Operator, policy: &RetryPolicy) -> Operator {
    op.layer(
        TimeoutLayer::new()
            .with_timeout(policy.timeout)
            .with_io_timeout(policy.io_timeout),
    )
    .layer(
        RetryLayer::new()
            .with_max_times(policy.max_retries)
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_jitter(),
    )
}

impl Backend {
    /// Runs one storage operation on `path` within [`RetryPolicy::deadline`]; a timeout (ours
    /// or one the retry layer gave up on) becomes [`BackendError::Timeout`].
    pub(crate) async fn bounded<T>(
        &self,
        path: &str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let timeout = |secs: u64| BackendError::Timeout {
            server: self.server(),
            path: path.to_string(),
            secs,
        };
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(Err(BackendError::Storage { source, .. })) if is_timeout(&source) => Err(timeout(
                timeout_secs(&source).unwrap_or(self.deadline.as_secs()),
            )),
            Ok(Err(e)) => Err(self.explain(e)),
            Ok(res) => res,
            Err(_) => Err(timeout(self.deadline.as_secs())),
        }
    }

    /// Attaches the [`StorageProblem`](crate::backend::problem::StorageProblem) to a remote
    /// storage error, for a one-line message.
    pub(crate) fn explain(&self, e: BackendError) -> BackendError {
        match e {
            BackendError::Storage {
                path,
                source,
                problem: None,
            } => {
                let problem =
                    services::problem(&self.location, self.s3.as_deref(), &self.described, &source)
                        .map(Box::new);
                tracing::debug!(path = %path, error = ?source, "storage error");
                BackendError::Storage {
                    path,
                    source,
                    problem,
                }
            }
            e => e,
        }
    }
}

/// Whether opendal's timeout layer raised `e` (after the retry layer gave up on it).
fn is_timeout(e: &opendal::Error) -> bool {
    e.kind() == ErrorKind::Unexpected && e.to_string().contains("timeout reached")
}

/// The per-attempt timeout a timeout error carries, in whole seconds.
fn timeout_secs(e: &opendal::Error) -> Option<u64> {
    let text = e.to_string();
    let at = text.find("timeout: ")? + "timeout: ".len();
    let num: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse::<f64>().ok().map(|s| s.ceil() as u64)
}

/// [`BackendError::Timeout`] for a storage error that is a timeout; others explained.
pub(crate) fn map_timeout(backend: &Backend, path: &str, e: BackendError) -> BackendError {
    match e {
        BackendError::Storage { source, .. } if is_timeout(&source) => BackendError::Timeout {
            server: backend.server(),
            path: path.to_string(),
            secs: timeout_secs(&source).unwrap_or(backend.deadline.as_secs()),
        },
        other => backend.explain(other),
    }
}
