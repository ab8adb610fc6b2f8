//! The retry and timeout policy of storage operations ([`RetryPolicy`]), with overrides from
//! the environment. (Credentials are each service's own: S3's chain is in
//! [`crate::backend::services::s3::credentials`], the others read their variables where they
//! are built.)

use std::time::Duration;

/// Retry and timeout policy for storage operations.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first one for a temporary failure.
    pub max_retries: usize,
    /// First backoff delay (doubles each retry, with jitter).
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
    /// Timeout of one non-IO operation (stat, delete, list page).
    pub timeout: Duration,
    /// Timeout of one read/write chunk.
    pub io_timeout: Duration,
    /// Timeout of opening a TCP connection to an S3 endpoint.
    pub connect_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 6,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            io_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The default policy with overrides from the environment: `SNAPBACK_IO_TIMEOUT_SECS`
    /// (timeout of one operation and of one read/write chunk) and `SNAPBACK_RETRIES` (retries
    /// of a temporary failure). Values that do not parse are ignored with a warning.
    pub fn from_env() -> Self {
        let mut policy = RetryPolicy::default();
        if let Some(secs) = env_number("SNAPBACK_IO_TIMEOUT_SECS") {
            policy = policy.with_timeout(Duration::from_secs(secs));
        }
        if let Some(n) = env_number("SNAPBACK_RETRIES") {
            policy.max_retries = usize::try_from(n).unwrap_or(usize::MAX);
        }
        policy
    }
}

impl RetryPolicy {
    /// Sets the timeout of one request (and of one read/write chunk) to `t` (at least one
    /// second); the connect timeout is never longer.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        let t = t.max(Duration::from_secs(1));
        self.timeout = t;
        self.io_timeout = t;
        self.connect_timeout = self.connect_timeout.min(t);
        self
    }

    /// Longest one storage operation may take, retries included: three attempts' timeouts
    /// plus the longest the backoff schedule can last (the retry layer's jitter adds up to
    /// the delay itself, so twice the delays), so that a request that timed out once or twice
    /// still has every retry for the quick transient faults (503, a dropped connection) that
    /// may follow it. Without this bound the retry layer would turn a server that accepts
    /// connections and never answers into `max_retries + 1` timeouts plus backoff (over seven
    /// minutes with the defaults; under three and a half with it).
    pub fn deadline(&self) -> Duration {
        let attempt = self.timeout.max(self.io_timeout);
        let mut backoff = Duration::ZERO;
        let mut delay = self.min_delay;
        for _ in 0..self.max_retries {
            backoff += delay.min(self.max_delay);
            delay = delay.saturating_mul(2);
        }
        attempt * 3 + backoff * 2
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            tracing::warn!(variable = name, value = %value, "ignoring a value that is not a whole number");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_gets_three_timeouts_and_the_jittered_backoff_schedule() {
        let p = RetryPolicy::default();
        // 6 retries: 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 6.4 s of backoff, each up to twice that.
        assert_eq!(p.deadline(), Duration::from_millis(180_000 + 25_200));
        let short = p.with_timeout(Duration::from_secs(2));
        assert_eq!(short.deadline(), Duration::from_millis(6_000 + 25_200));
        let none = RetryPolicy {
            max_retries: 0,
            ..short
        };
        assert_eq!(none.deadline(), Duration::from_secs(6));
    }
}
