//! The scheduler loop: waits for the schedule or a request, runs one backup at a time through
//! the gate, records metrics, and on shutdown gives a running backup the grace period before
//! cancelling it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Local;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::schedule::{jitter, Schedule};
use crate::{Drill, DrillOutcome, Gate, Job, Metrics, Outcome, RunKind};

/// How long a cancelled backup may take to wind down (remove its lock) before the daemon stops
/// waiting for it. Cancellation is cooperative and normally takes well under a second.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The answer to a backup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A backup will start now.
    Accepted,
    /// A backup is running or about to start.
    Busy,
    /// The repository is not open yet.
    NotReady,
    /// The daemon is shutting down.
    ShuttingDown,
}

#[derive(Debug, Default)]
struct RunState {
    running: bool,
    /// A request not yet served by a run.
    pending: bool,
}

/// State shared by the scheduler and the HTTP server.
#[derive(Debug, Default)]
pub struct Shared {
    /// The metrics.
    pub metrics: Metrics,
    ready: AtomicBool,
    stopping: AtomicBool,
    state: Mutex<RunState>,
    wake: Notify,
}

impl Shared {
    /// Fresh state: not ready, idle.
    pub fn new() -> Arc<Shared> {
        let shared = Shared::default();
        shared.metrics.set_start(unix_millis(SystemTime::now()));
        Arc::new(shared)
    }

    /// Marks the repository as open and the key as loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.metrics.set_ready(self.is_ready());
    }

    /// Whether backups can be served (ready, and not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// Marks the daemon as shutting down: no more requests are accepted.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.metrics.set_ready(false);
    }

    /// Asks for a backup now.
    pub fn trigger(&self) -> Trigger {
        if self.stopping.load(Ordering::Acquire) {
            return Trigger::ShuttingDown;
        }
        if !self.ready.load(Ordering::Acquire) {
            return Trigger::NotReady;
        }
        let Ok(mut st) = self.state.lock() else {
            return Trigger::Busy;
        };
        if st.running || st.pending {
            return Trigger::Busy;
        }
        st.pending = true;
        drop(st);
        self.wake.notify_one();
        Trigger::Accepted
    }

    /// Starts a run: a pending request, if any, is served by it. With `only_if_pending`, a
    /// wake-up whose request a scheduled run already served is ignored (returns false).
    fn claim(&self, only_if_pending: bool) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        if only_if_pending && !st.pending {
            return false;
        }
        st.pending = false;
        st.running = true;
        true
    }

    fn release(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.running = false;
        }
    }
}

/// How the daemon runs backups.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// When backups run by themselves.
    pub schedule: Schedule,
    /// Up to this much random delay before each scheduled run.
    pub jitter: Duration,
    /// After the shutdown signal, how long a running (or final) backup may still take.
    pub grace: Duration,
    /// Run one last backup after the shutdown signal, within the grace period.
    pub backup_on_shutdown: bool,
    /// Checks before and command after each backup.
    pub gate: Gate,
    /// When verification drills run by themselves (with [`Daemon::with_drill`]).
    pub verify_schedule: Schedule,
    /// Run a drill after each successful backup (with [`Daemon::with_drill`]).
    pub verify_after_backup: bool,
}

/// The scheduler.
pub struct Daemon {
    opts: DaemonOptions,
    shared: Arc<Shared>,
    job: Arc<dyn Job>,
    drill: Option<Arc<dyn Drill>>,
}

/// What the scheduler does next.
enum Next {
    Backup(RunKind),
    Drill,
}

impl Daemon {
    /// A daemon running `job` with `opts`, sharing `shared` with the HTTP server.
    pub fn new(opts: DaemonOptions, shared: Arc<Shared>, job: Arc<dyn Job>) -> Daemon {
        Daemon {
            opts,
            shared,
            job,
            drill: None,
        }
    }

    /// Runs `drill` on the options' verify schedule and, if asked, after each successful backup.
    pub fn with_drill(mut self, drill: Arc<dyn Drill>) -> Daemon {
        self.drill = Some(drill);
        self
    }

    /// Runs until `shutdown` fires and the shutdown work is done. Returns how the last backup
    /// that ran after the shutdown signal ended (`None` when none did): the process should
    /// exit non-zero unless it is `None` or a success.
    pub async fn run(&self, shutdown: CancellationToken) -> Option<Outcome> {
        tracing::info!(
            schedule = %self.opts.schedule.describe(),
            jitter_s = self.opts.jitter.as_secs_f64(),
            grace_s = self.opts.grace.as_secs_f64(),
            "scheduler started"
        );
        self.shared
            .metrics
            .set_schedule_interval(self.opts.schedule.max_gap(Local::now()));
        if self.drill.is_some() {
            tracing::info!(
                schedule = %self.opts.verify_schedule.describe(),
                after_backup = self.opts.verify_after_backup,
                "verification drills enabled"
            );
        }
        let mut last = None;
        let mut deadline = None;
        // Each due time is kept until its run: a drill or a request in between must not push
        // an interval schedule back.
        let mut backup_due: Option<Option<tokio::time::Instant>> = None;
        let mut drill_due: Option<Option<tokio::time::Instant>> = None;
        loop {
            let due = *backup_due
                .get_or_insert_with(|| due_at(&self.opts.schedule, self.opts.jitter, "backup"));
            let drill_at = match self.drill {
                Some(_) => *drill_due.get_or_insert_with(|| {
                    due_at(&self.opts.verify_schedule, Duration::ZERO, "drill")
                }),
                None => None,
            };
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = self.shared.wake.notified() => {
                    if !self.shared.claim(true) {
                        continue;
                    }
                    Next::Backup(RunKind::Requested)
                }
                _ = sleep_until(due) => {
                    self.shared.claim(false);
                    Next::Backup(RunKind::Scheduled)
                }
                _ = sleep_until(drill_at) => Next::Drill,
            };
            let kind = match next {
                Next::Drill => {
                    drill_due = None;
                    self.run_drill(&shutdown).await;
                    continue;
                }
                Next::Backup(kind) => kind,
            };
            backup_due = None;
            let cancel = CancellationToken::new();
            let mut handle = self.spawn_run(kind, cancel.clone());
            tokio::select! {
                r = &mut handle => {
                    let ok = matches!(r, Ok(Outcome::Success(_)));
                    if ok && self.opts.verify_after_backup {
                        self.run_drill(&shutdown).await;
                    }
                }
                _ = shutdown.cancelled() => {
                    let until = Instant::now() + self.opts.grace;
                    deadline = Some(until);
                    self.shared.set_stopping();
                    tracing::info!(
                        grace_s = self.opts.grace.as_secs_f64(),
                        "shutdown: waiting for the running backup"
                    );
                    last = Some(wait_or_cancel(handle, cancel, until).await);
                    break;
                }
            }
        }
        self.shared.set_stopping();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.opts.grace);
        if self.opts.backup_on_shutdown {
            if Instant::now() < deadline {
                self.shared.claim(false);
                let cancel = CancellationToken::new();
                let handle = self.spawn_run(RunKind::Shutdown, cancel.clone());
                last = Some(wait_or_cancel(handle, cancel, deadline).await);
            } else {
                tracing::warn!("no time left in the grace period for the shutdown backup");
                last = Some(Outcome::Failure(
                    "no time left for the shutdown backup".into(),
                ));
            }
        }
        tracing::info!("scheduler stopped");
        last
    }

    /// Runs one drill, if there is one, to its end or until shutdown, and records it.
    async fn run_drill(&self, shutdown: &CancellationToken) {
        let Some(drill) = &self.drill else {
            return;
        };
        let started = Instant::now();
        self.shared.metrics.drill_started();
        tracing::info!("verification drill started");
        let cancel = CancellationToken::new();
        // In a task of its own, so that a panic is an outcome.
        let mut handle = tokio::spawn(drill.run(cancel.clone()));
        let joined = |r: Result<DrillOutcome, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| DrillOutcome::Failed(format!("drill task failed: {e}")))
        };
        let outcome = tokio::select! {
            r = &mut handle => joined(r),
            _ = shutdown.cancelled() => {
                // A drill only reads: it is cancelled at once, not given the grace period.
                cancel.cancel();
                match tokio::time::timeout(CANCEL_WAIT, handle).await {
                    Ok(r) => joined(r),
                    Err(_) => DrillOutcome::Cancelled,
                }
            }
        };
        self.shared
            .metrics
            .drill_finished(&outcome, unix_millis(SystemTime::now()));
        log_drill(&outcome, started.elapsed());
    }

    /// Starts one backup run in its own task, which records metrics and logs its end.
    fn spawn_run(&self, kind: RunKind, cancel: CancellationToken) -> JoinHandle<Outcome> {
        let job = self.job.clone();
        let gate = self.opts.gate.clone();
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            shared.metrics.started();
            tracing::info!(reason = kind.as_str(), "backup started");
            // The job runs in a task of its own so that a panic is an outcome, not a lost run.
            let outcome = match tokio::spawn(run_gated(job, gate, kind, cancel)).await {
                Ok(o) => o,
                Err(e) => Outcome::Failure(format!("backup task failed: {e}")),
            };
            let duration = started.elapsed();
            shared
                .metrics
                .finished(&outcome, duration, unix_millis(SystemTime::now()));
            shared.release();
            log_outcome(&outcome, duration);
            outcome
        })
    }
}

/// Gate, job, post-command.
async fn run_gated(
    job: Arc<dyn Job>,
    gate: Gate,
    kind: RunKind,
    cancel: CancellationToken,
) -> Outcome {
    if let Err(why) = gate.enter(&cancel).await {
        if cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        return Outcome::Failure(format!("consistency gate closed: {why}"));
    }
    let outcome = job.run(kind, cancel).await;
    if let Err(e) = gate.leave().await {
        tracing::error!(error = %e, "post-command failed");
    }
    outcome
}

/// Waits for `handle` until `deadline`, then cancels the run and waits for it to wind down.
async fn wait_or_cancel(
    mut handle: JoinHandle<Outcome>,
    cancel: CancellationToken,
    deadline: Instant,
) -> Outcome {
    let joined = |r: Result<Outcome, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Outcome::Failure(format!("backup task failed: {e}")))
    };
    match tokio::time::timeout_at(deadline.into(), &mut handle).await {
        Ok(r) => joined(r),
        Err(_) => {
            tracing::warn!("grace period over: cancelling the backup, no snapshot will be saved");
            cancel.cancel();
            match tokio::time::timeout(CANCEL_WAIT, handle).await {
                Ok(r) => joined(r),
                Err(_) => {
                    tracing::error!("the cancelled backup did not stop in time; its lock may remain until it is stale");
                    Outcome::Cancelled
                }
            }
        }
    }
}

/// When the next run of `schedule` is due, up to `jitter` later; `None` when never.
fn due_at(schedule: &Schedule, jitter_max: Duration, what: &str) -> Option<tokio::time::Instant> {
    match schedule.next_delay(Local::now()) {
        Ok(d) => {
            let at = d.map(|d| tokio::time::Instant::now() + d + jitter(jitter_max));
            if let Some(at) = at {
                let wait = at.saturating_duration_since(tokio::time::Instant::now());
                tracing::debug!(in_s = wait.as_secs(), what, "next scheduled run");
            }
            at
        }
        Err(e) => {
            tracing::error!(error = %e, what, "no next scheduled run; only requests are served");
            None
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn unix_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn log_drill(outcome: &DrillOutcome, duration: Duration) {
    let duration_s = duration.as_secs_f64();
    match outcome {
        DrillOutcome::Done(r) => {
            for (kind, message) in &r.problems {
                tracing::error!(kind, problem = %message, "verification drill found a problem");
            }
            let snapshot = r.snapshot.as_deref().unwrap_or("none");
            if r.problems.is_empty() {
                tracing::info!(
                    result = if r.snapshot.is_some() {
                        "success"
                    } else {
                        "no snapshot"
                    },
                    snapshot,
                    packs_read = r.packs_read,
                    files_verified = r.files_verified,
                    bytes_verified = r.bytes_verified,
                    duration_s,
                    "verification drill finished"
                );
            } else {
                tracing::error!(
                    result = "failure",
                    snapshot,
                    problems = r.problems.len(),
                    packs_read = r.packs_read,
                    files_verified = r.files_verified,
                    bytes_verified = r.bytes_verified,
                    duration_s,
                    "verification drill found problems"
                );
            }
        }
        DrillOutcome::Failed(why) => tracing::error!(
            result = "error",
            error = %why,
            duration_s,
            "verification drill could not run"
        ),
        DrillOutcome::Cancelled => tracing::warn!(duration_s, "verification drill cancelled"),
    }
}

fn log_outcome(outcome: &Outcome, duration: Duration) {
    let duration_s = duration.as_secs_f64();
    match outcome {
        Outcome::Success(r) => tracing::info!(
            result = "success",
            snapshot = %r.snapshot,
            files_new = r.files_new,
            files_changed = r.files_changed,
            files_unchanged = r.files_unchanged,
            bytes_read = r.bytes_read,
            bytes_added = r.bytes_added,
            warnings = r.warnings,
            duration_s,
            "backup finished"
        ),
        Outcome::Failure(why) => tracing::error!(
            result = "failure",
            error = %why,
            duration_s,
            "backup failed, no snapshot was saved"
        ),
        Outcome::Cancelled => tracing::warn!(
            result = "cancelled",
            duration_s,
            "backup cancelled, no snapshot was saved"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobFuture, Report};
    use std::sync::atomic::AtomicU32;

    /// A job that takes `secs` (or until cancelled) and counts its runs.
    fn slow_job(secs: u64, runs: Arc<AtomicU32>) -> Arc<dyn Job> {
        Arc::new(
            move |_kind: RunKind, cancel: CancellationToken| -> JobFuture {
                let runs = runs.clone();
                Box::pin(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(secs)) => Outcome::Success(Report::default()),
                        _ = cancel.cancelled() => Outcome::Cancelled,
                    }
                })
            },
        )
    }

    fn opts(grace: Duration) -> DaemonOptions {
        DaemonOptions {
            schedule: Schedule::Manual,
            jitter: Duration::ZERO,
            grace,
            backup_on_shutdown: false,
            gate: Gate::open_always(),
            verify_schedule: Schedule::Manual,
            verify_after_backup: false,
        }
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached");
    }

    #[tokio::test]
    async fn requests_run_once_and_busy_is_refused() {
        let shared = Shared::new();
        let runs = Arc::new(AtomicU32::new(0));
        assert_eq!(shared.trigger(), Trigger::NotReady);
        shared.set_ready();
        let daemon = Daemon::new(
            opts(Duration::ZERO),
            shared.clone(),
            slow_job(1, runs.clone()),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        assert_eq!(shared.trigger(), Trigger::Accepted);
        assert_eq!(shared.trigger(), Trigger::Busy);
        wait_for(|| shared.metrics.render().contains("{result=\"success\"} 1")).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        stop.cancel();
        assert_eq!(task.await.unwrap(), None);
        assert_eq!(shared.trigger(), Trigger::ShuttingDown);
        assert!(!shared.is_ready());
    }

    #[tokio::test]
    async fn shutdown_cancels_after_grace() {
        let shared = Shared::new();
        shared.set_ready();
        let runs = Arc::new(AtomicU32::new(0));
        let daemon = Daemon::new(
            opts(Duration::from_millis(100)),
            shared.clone(),
            slow_job(60, runs.clone()),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        assert_eq!(shared.trigger(), Trigger::Accepted);
        wait_for(|| shared.metrics.in_progress()).await;
        let t = Instant::now();
        stop.cancel();
        assert_eq!(task.await.unwrap(), Some(Outcome::Cancelled));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(shared
            .metrics
            .render()
            .contains("snapback_backups_total{result=\"cancelled\"} 1"));
    }

    #[tokio::test]
    async fn shutdown_backup_and_failed_gate() {
        let shared = Shared::new();
        shared.set_ready();
        let runs = Arc::new(AtomicU32::new(0));
        let mut o = opts(Duration::from_secs(10));
        o.backup_on_shutdown = true;
        let daemon = Daemon::new(o, shared.clone(), slow_job(0, runs.clone()));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(matches!(daemon.run(stop).await, Some(Outcome::Success(_))));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        let mut o = opts(Duration::from_secs(10));
        o.backup_on_shutdown = true;
        o.gate.pre_command = Some("exit 1".into());
        o.gate.post_command = Some("exit 0".into());
        let daemon = Daemon::new(o, shared.clone(), slow_job(0, runs.clone()));
        let stop = CancellationToken::new();
        stop.cancel();
        assert!(matches!(daemon.run(stop).await, Some(Outcome::Failure(_))));
        // The job did not run behind a closed gate.
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(shared
            .metrics
            .render()
            .contains("snapback_backups_total{result=\"failure\"} 1"));
    }

    /// The job is told what started it: retention decisions depend on it.
    #[tokio::test]
    async fn the_job_learns_what_started_it() {
        let kinds = Arc::new(Mutex::new(Vec::new()));
        let job: Arc<dyn Job> = {
            let kinds = kinds.clone();
            Arc::new(
                move |kind: RunKind, _cancel: CancellationToken| -> JobFuture {
                    if let Ok(mut k) = kinds.lock() {
                        k.push(kind);
                    }
                    Box::pin(async { Outcome::Success(Report::default()) })
                },
            )
        };
        let shared = Shared::new();
        shared.set_ready();
        let mut o = opts(Duration::from_secs(10));
        o.schedule = Schedule::every(Duration::from_millis(300)).unwrap();
        o.backup_on_shutdown = true;
        let daemon = Daemon::new(o, shared.clone(), job);
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        assert_eq!(shared.trigger(), Trigger::Accepted);
        wait_for(|| kinds.lock().unwrap().contains(&RunKind::Scheduled)).await;
        stop.cancel();
        assert!(matches!(task.await.unwrap(), Some(Outcome::Success(_))));
        let kinds = kinds.lock().unwrap().clone();
        assert_eq!(kinds.first(), Some(&RunKind::Requested), "{kinds:?}");
        assert_eq!(kinds.last(), Some(&RunKind::Shutdown), "{kinds:?}");
    }

    #[tokio::test]
    async fn interval_schedule_runs_by_itself() {
        let shared = Shared::new();
        shared.set_ready();
        let runs = Arc::new(AtomicU32::new(0));
        let mut o = opts(Duration::ZERO);
        o.schedule = Schedule::every(Duration::from_millis(50)).unwrap();
        let daemon = Daemon::new(o, shared.clone(), slow_job(0, runs.clone()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        wait_for(|| runs.load(Ordering::SeqCst) >= 2).await;
        stop.cancel();
        task.await.unwrap();
    }

    /// A drill that counts its runs and reports `problems`.
    fn counting_drill(
        runs: Arc<AtomicU32>,
        problems: Vec<(&'static str, String)>,
    ) -> Arc<dyn Drill> {
        Arc::new(move |_cancel: CancellationToken| -> crate::DrillFuture {
            runs.fetch_add(1, Ordering::SeqCst);
            let problems = problems.clone();
            Box::pin(async move {
                DrillOutcome::Done(crate::DrillReport {
                    snapshot: Some("abc".into()),
                    bytes_verified: 10,
                    problems,
                    ..crate::DrillReport::default()
                })
            })
        })
    }

    /// Drills on their own schedule do not push the backup schedule back, and their results
    /// reach the metrics.
    #[tokio::test]
    async fn drills_run_on_their_own_schedule() {
        let shared = Shared::new();
        shared.set_ready();
        let backups = Arc::new(AtomicU32::new(0));
        let drills = Arc::new(AtomicU32::new(0));
        let mut o = opts(Duration::ZERO);
        o.schedule = Schedule::every(Duration::from_millis(400)).unwrap();
        o.verify_schedule = Schedule::every(Duration::from_millis(50)).unwrap();
        let daemon = Daemon::new(o, shared.clone(), slow_job(0, backups.clone()))
            .with_drill(counting_drill(drills.clone(), Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        wait_for(|| backups.load(Ordering::SeqCst) >= 1).await;
        assert!(drills.load(Ordering::SeqCst) >= 3);
        stop.cancel();
        task.await.unwrap();
        let text = shared.metrics.render();
        assert!(
            text.contains("snapback_verify_runs_total{result=\"success\"} "),
            "{text}"
        );
        assert!(!text.contains("snapback_verify_last_success_timestamp_seconds 0.000"));
        assert!(
            text.contains("snapback_schedule_interval_seconds 0.400"),
            "{text}"
        );
    }

    /// With verify_after_backup, a drill follows each successful backup; its problems are
    /// counted by kind.
    #[tokio::test]
    async fn drill_after_backup_counts_problems() {
        let shared = Shared::new();
        shared.set_ready();
        let backups = Arc::new(AtomicU32::new(0));
        let drills = Arc::new(AtomicU32::new(0));
        let mut o = opts(Duration::ZERO);
        o.verify_after_backup = true;
        let problems = vec![
            ("live", "/data/x differs".to_string()),
            ("pack", "bad".into()),
        ];
        let daemon = Daemon::new(o, shared.clone(), slow_job(0, backups.clone()))
            .with_drill(counting_drill(drills.clone(), problems));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { daemon.run(stop).await }
        });
        assert_eq!(shared.trigger(), Trigger::Accepted);
        wait_for(|| drills.load(Ordering::SeqCst) == 1).await;
        wait_for(|| {
            let text = shared.metrics.render();
            text.lines().any(|l| l == "snapback_verify_in_progress 0")
        })
        .await;
        stop.cancel();
        task.await.unwrap();
        let text = shared.metrics.render();
        for line in [
            "snapback_verify_failures_total{kind=\"live\"} 1",
            "snapback_verify_failures_total{kind=\"pack\"} 1",
            "snapback_verify_failures_total{kind=\"error\"} 0",
            "snapback_verify_runs_total{result=\"failure\"} 1",
            "snapback_verify_bytes_total 10",
            "snapback_verify_last_success_timestamp_seconds 0.000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
