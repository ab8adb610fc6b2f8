//! The daemon's Prometheus metrics, rendered in the text exposition format (version 0.0.4).
//!
//! A handful of counters and gauges does not need a metrics library: atomics, and one
//! function that writes `# HELP`, `# TYPE` and sample lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Outcome;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters and gauges of the backups this process ran.
#[derive(Debug, Default)]
pub struct Metrics {
    last_success_ms: AtomicU64,
    last_duration_ms: AtomicU64,
    bytes_read: AtomicU64,
    bytes_added: AtomicU64,
    files_new: AtomicU64,
    files_changed: AtomicU64,
    files_unchanged: AtomicU64,
    success: AtomicU64,
    failure: AtomicU64,
    cancelled: AtomicU64,
    in_progress: AtomicU64,
}

impl Metrics {
    /// Marks a backup as started.
    pub fn started(&self) {
        self.in_progress.store(1, Ordering::Relaxed);
    }

    /// Records how a backup ended, `duration` after it started, at `now_unix_ms`.
    pub fn finished(&self, outcome: &Outcome, duration: Duration, now_unix_ms: u64) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.last_duration_ms.store(ms, Ordering::Relaxed);
        match outcome {
            Outcome::Success(r) => {
                self.bytes_read.fetch_add(r.bytes_read, Ordering::Relaxed);
                self.bytes_added.fetch_add(r.bytes_added, Ordering::Relaxed);
                self.files_new.fetch_add(r.files_new, Ordering::Relaxed);
                self.files_changed
                    .fetch_add(r.files_changed, Ordering::Relaxed);
                self.files_unchanged
                    .fetch_add(r.files_unchanged, Ordering::Relaxed);
                self.success.fetch_add(1, Ordering::Relaxed);
                self.last_success_ms.store(now_unix_ms, Ordering::Relaxed);
            }
            Outcome::Failure(_) => {
                self.failure.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Cancelled => {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.in_progress.store(0, Ordering::Relaxed);
    }

    /// Whether a backup is running.
    pub fn in_progress(&self) -> bool {
        self.in_progress.load(Ordering::Relaxed) != 0
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |ms: u64| format!("{}.{:03}", ms / 1000, ms % 1000);
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "snapback_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last successful backup finished (0: none yet).",
            &[("", secs(get(&self.last_success_ms)))],
        );
        family(
            "snapback_last_backup_duration_seconds",
            "gauge",
            "Wall time of the last backup run, whatever its result.",
            &[("", secs(get(&self.last_duration_ms)))],
        );
        family(
            "snapback_backup_bytes_read_total",
            "counter",
            "Content bytes read from the source by successful backups.",
            &[("", get(&self.bytes_read).to_string())],
        );
        family(
            "snapback_backup_bytes_added_total",
            "counter",
            "Plaintext bytes of new data added to the repository by successful backups.",
            &[("", get(&self.bytes_added).to_string())],
        );
        family(
            "snapback_backup_files_total",
            "counter",
            "Files seen by successful backups, by state relative to the parent snapshot.",
            &[
                ("{state=\"new\"}", get(&self.files_new).to_string()),
                ("{state=\"changed\"}", get(&self.files_changed).to_string()),
                (
                    "{state=\"unchanged\"}",
                    get(&self.files_unchanged).to_string(),
                ),
            ],
        );
        family(
            "snapback_backups_total",
            "counter",
            "Backup runs by result (a failed consistency gate counts as failure).",
            &[
                ("{result=\"success\"}", get(&self.success).to_string()),
                ("{result=\"failure\"}", get(&self.failure).to_string()),
                ("{result=\"cancelled\"}", get(&self.cancelled).to_string()),
            ],
        );
        family(
            "snapback_backup_in_progress",
            "gauge",
            "1 while a backup runs, else 0.",
            &[("", get(&self.in_progress).to_string())],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Report;

    #[test]
    fn renders_every_family_and_counts() {
        let m = Metrics::default();
        let text = m.render();
        assert!(text.contains("snapback_last_success_timestamp_seconds 0.000\n"));
        assert!(text.contains("snapback_backup_in_progress 0\n"));
        m.started();
        assert!(m.render().contains("snapback_backup_in_progress 1\n"));
        let report = Report {
            files_new: 3,
            files_unchanged: 2,
            bytes_read: 100,
            bytes_added: 40,
            ..Report::default()
        };
        m.finished(
            &Outcome::Success(report),
            Duration::from_millis(1500),
            1_700_000_000_123,
        );
        m.finished(
            &Outcome::Cancelled,
            Duration::from_secs(2),
            1_700_000_001_000,
        );
        let text = m.render();
        for line in [
            "snapback_last_success_timestamp_seconds 1700000000.123",
            "snapback_last_backup_duration_seconds 2.000",
            "snapback_backup_bytes_read_total 100",
            "snapback_backup_bytes_added_total 40",
            "snapback_backup_files_total{state=\"new\"} 3",
            "snapback_backup_files_total{state=\"changed\"} 0",
            "snapback_backup_files_total{state=\"unchanged\"} 2",
            "snapback_backups_total{result=\"success\"} 1",
            "snapback_backups_total{result=\"failure\"} 0",
            "snapback_backups_total{result=\"cancelled\"} 1",
            "snapback_backup_in_progress 0",
            "# TYPE snapback_backups_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line belongs to a family announced by TYPE just before.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{l}");
        }
    }
}
