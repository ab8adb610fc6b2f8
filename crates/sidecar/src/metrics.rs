//! The daemon's Prometheus metrics, rendered in the text exposition format (version 0.0.4).
//!
//! A handful of counters and gauges does not need a metrics library: atomics, and one
//! function that writes `# HELP`, `# TYPE` and sample lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::drill::{DrillOutcome, FAILURE_KINDS};
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
    // State read from the repository, so that it survives restarts of the sidecar.
    latest_snapshot_ms: AtomicU64,
    repository_up: AtomicU64,
    // This process.
    start_ms: AtomicU64,
    ready: AtomicU64,
    schedule_interval_ms: AtomicU64,
    // Verification drills.
    verify_last_success_ms: AtomicU64,
    verify_bytes: AtomicU64,
    verify_failures: [AtomicU64; FAILURE_KINDS.len()],
    verify_success: AtomicU64,
    verify_failure: AtomicU64,
    verify_in_progress: AtomicU64,
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

    /// The newest snapshot of this sidecar's host and paths was taken at `unix_ms` (0: none);
    /// read from the repository at start and after each backup.
    pub fn set_latest_snapshot(&self, unix_ms: u64) {
        self.latest_snapshot_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Whether the repository answered the last time it was asked.
    pub fn set_repository_up(&self, up: bool) {
        self.repository_up.store(u64::from(up), Ordering::Relaxed);
    }

    /// When this process started.
    pub fn set_start(&self, unix_ms: u64) {
        self.start_ms.store(unix_ms, Ordering::Relaxed);
    }

    /// Whether the sidecar serves backups (`/readyz` answers 200).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(u64::from(ready), Ordering::Relaxed);
    }

    /// The longest gap between two scheduled backups (zero: no schedule).
    pub fn set_schedule_interval(&self, interval: Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.schedule_interval_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks a drill as started.
    pub fn drill_started(&self) {
        self.verify_in_progress.store(1, Ordering::Relaxed);
    }

    /// Records how a drill ended at `now_unix_ms`: every problem counts once under its kind, a
    /// drill that could not run once under `error`.
    pub fn drill_finished(&self, outcome: &DrillOutcome, now_unix_ms: u64) {
        let count = |kind: &str| {
            let i = FAILURE_KINDS
                .iter()
                .position(|k| *k == kind)
                .unwrap_or(FAILURE_KINDS.len() - 1);
            self.verify_failures[i].fetch_add(1, Ordering::Relaxed);
        };
        match outcome {
            DrillOutcome::Done(r) => {
                self.verify_bytes
                    .fetch_add(r.bytes_verified, Ordering::Relaxed);
                r.problems.iter().for_each(|(kind, _)| count(kind));
                if outcome.is_success() {
                    self.verify_success.fetch_add(1, Ordering::Relaxed);
                    self.verify_last_success_ms
                        .store(now_unix_ms, Ordering::Relaxed);
                } else if !r.problems.is_empty() {
                    self.verify_failure.fetch_add(1, Ordering::Relaxed);
                }
            }
            DrillOutcome::Failed(_) => {
                count("error");
                self.verify_failure.fetch_add(1, Ordering::Relaxed);
            }
            DrillOutcome::Cancelled => {}
        }
        self.verify_in_progress.store(0, Ordering::Relaxed);
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
        family(
            "snapback_latest_snapshot_timestamp_seconds",
            "gauge",
            "Time of the newest snapshot of this sidecar's host and paths in the repository \
             (read at start and after each backup; 0: none).",
            &[("", secs(get(&self.latest_snapshot_ms)))],
        );
        family(
            "snapback_repository_up",
            "gauge",
            "1 if the repository answered the last time it was asked, else 0.",
            &[("", get(&self.repository_up).to_string())],
        );
        family(
            "snapback_start_time_seconds",
            "gauge",
            "Unix time this sidecar started.",
            &[("", secs(get(&self.start_ms)))],
        );
        family(
            "snapback_ready",
            "gauge",
            "1 while the sidecar serves backups (/readyz answers 200), else 0.",
            &[("", get(&self.ready).to_string())],
        );
        family(
            "snapback_schedule_interval_seconds",
            "gauge",
            "Longest gap between two scheduled backups (0: backups only on request).",
            &[("", secs(get(&self.schedule_interval_ms)))],
        );
        family(
            "snapback_verify_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last verification drill that found no problem finished (0: none yet).",
            &[("", secs(get(&self.verify_last_success_ms)))],
        );
        family(
            "snapback_verify_bytes_total",
            "counter",
            "Bytes read back from the repository or compared with the live volume by drills.",
            &[("", get(&self.verify_bytes).to_string())],
        );
        let failures: Vec<(String, String)> = FAILURE_KINDS
            .iter()
            .zip(&self.verify_failures)
            .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), get(v).to_string()))
            .collect();
        let failures: Vec<(&str, String)> = failures
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        family(
            "snapback_verify_failures_total",
            "counter",
            "Problems found by verification drills, by kind (pack, tree, stream, live; error: \
             the drill could not run).",
            &failures,
        );
        family(
            "snapback_verify_runs_total",
            "counter",
            "Verification drills by result (cancelled ones and those with no snapshot yet are \
             not counted).",
            &[
                (
                    "{result=\"success\"}",
                    get(&self.verify_success).to_string(),
                ),
                (
                    "{result=\"failure\"}",
                    get(&self.verify_failure).to_string(),
                ),
            ],
        );
        family(
            "snapback_verify_in_progress",
            "gauge",
            "1 while a verification drill runs, else 0.",
            &[("", get(&self.verify_in_progress).to_string())],
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
