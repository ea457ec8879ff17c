//! The async jobs' background service: `jobs.workers` workers that claim jobs from the store
//! and run them, a cleaner that removes expired jobs and their objects, and the queue gauge.
//!
//! A worker claims a job with a lease of `jobs.lease_ms` and renews it every third of that
//! while the job runs. When the renewal fails (the owner cancelled the job, or the lease had
//! passed and another worker took it over), the run is dropped at once: its upstream
//! exchange is abandoned and its result never recorded. A worker that dies (crash, `kill -9`,
//! a lost replica) stops renewing; once its lease passes, any worker of any replica sharing the
//! store claims the job again, at most `jobs.max_attempts` times in all (then it fails with
//! `job_abandoned`). On shutdown, a job in progress is handed back ([`JobStore::release`]),
//! not lost, and not counted as an attempt.
//!
//! Upstream calls are not idempotent: a job taken over after its worker died may call the
//! provider a second time.
//!
//! [`JobStore::release`]: crate::state::JobStore::release

use super::gateway::jobs;
use super::AppState;
use crate::metrics::JobEvent;
use crate::state::{now_ms, Claim, JobRecord, Outcome};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Removed per call of the cleaner's loop (it loops until fewer come back).
const CLEANUP_BATCH: usize = 100;

/// How often the queue gauge is refreshed (at most).
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// The service: its workers, its cleaner and its gauge, over the gateway's swappable state
/// (each job runs on the state current when it was claimed).
pub struct JobWorkers {
    current: Arc<ArcSwap<AppState>>,
    /// Workers started (`jobs.workers` at startup).
    workers: usize,
    /// This process's prefix of worker names (random: two replicas never share one).
    process: String,
}

impl JobWorkers {
    /// The service for `workers` workers over `current`, when the server is built.
    pub fn new(current: Arc<ArcSwap<AppState>>, workers: usize) -> JobWorkers {
        let process = crate::state::new_id()
            .map(|id| id.chars().take(8).collect::<String>())
            .unwrap_or_else(|_| std::process::id().to_string());
        JobWorkers {
            current,
            workers,
            process,
        }
    }
}

#[async_trait]
impl BackgroundService for JobWorkers {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..self.workers {
            let worker = Worker {
                current: self.current.clone(),
                name: format!("{}-{n}", self.process),
            };
            tasks.spawn(worker.run(shutdown.clone()));
        }
        tasks.spawn(clean(self.current.clone(), shutdown.clone()));
        while tasks.join_next().await.is_some() {}
    }
}

/// Resolves once the server shuts down (or at once if it has).
async fn stopped(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// One worker: claims a job, runs it, and again, until shutdown.
struct Worker {
    current: Arc<ArcSwap<AppState>>,
    name: String,
}

impl Worker {
    async fn run(self, mut shutdown: ShutdownWatch) {
        loop {
            let state = self.current.load_full();
            let settings = &state.config.jobs;
            let claim = Claim {
                worker: &self.name,
                lease: settings.lease,
                max_attempts: settings.max_attempts,
            };
            let idle = settings.poll_interval;
            let claimed = tokio::select! {
                claimed = state.store.jobs.claim(&claim, now_ms()) => claimed,
                () = stopped(&mut shutdown) => return,
            };
            match claimed {
                Ok(Some(job)) => {
                    if !self.hold(&state, job, &mut shutdown).await {
                        return;
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        () = state.store.wake.notified() => {}
                        () = tokio::time::sleep(idle) => {}
                        () = stopped(&mut shutdown) => return,
                    }
                }
                Err(e) => {
                    log::warn!("jobs: worker {} cannot claim: {e}", self.name);
                    tokio::select! {
                        () = tokio::time::sleep(idle.max(Duration::from_secs(1))) => {}
                        () = stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    /// Runs claimed `job` under its lease, renewing it, and records how it ended; `false`
    /// when the server shut down meanwhile (the job was handed back).
    async fn hold(&self, state: &AppState, job: JobRecord, shutdown: &mut ShutdownWatch) -> bool {
        let metrics = &state.metrics.jobs;
        metrics.event(JobEvent::Claimed);
        if job.attempts > 1 {
            metrics.takeover();
            log::warn!(
                "job {}: taken over by worker {} (attempt {}; the previous worker's lease passed)",
                job.id,
                self.name,
                job.attempts
            );
        }
        let claimed_at = Instant::now();
        let lease = state.config.jobs.lease;
        let run = jobs::run(state, &job);
        tokio::pin!(run);
        let renewals = self.renew(state, &job.id, lease);
        tokio::pin!(renewals);
        tokio::select! {
            ran = &mut run => {
                let completed = matches!(ran.outcome, Outcome::Completed { .. });
                let status = match &ran.outcome {
                    Outcome::Completed { .. } => 200,
                    Outcome::Failed { status_code, .. } => *status_code,
                };
                let stored = ran_objects(&ran.outcome);
                match state.store.jobs.finish(&job.id, &self.name, ran.outcome, now_ms()).await {
                    Ok(true) => {
                        metrics.event(if completed { JobEvent::Completed } else { JobEvent::Failed });
                        metrics.finished(completed, claimed_at.elapsed());
                        log::info!(
                            "job {} (request {}): {} status={status} attempt={} ms={}",
                            job.id,
                            ran.request_id,
                            if completed { "completed" } else { "failed" },
                            job.attempts,
                            claimed_at.elapsed().as_millis()
                        );
                    }
                    Ok(false) => {
                        metrics.event(JobEvent::Lost);
                        log::warn!("job {}: its result was dropped (cancelled or taken over meanwhile)", job.id);
                        delete_objects(state, &stored).await;
                    }
                    Err(e) => {
                        log::error!("job {}: its result could not be recorded: {e}", job.id);
                        delete_objects(state, &stored).await;
                    }
                }
                true
            }
            () = &mut renewals => {
                metrics.event(JobEvent::Lost);
                log::info!("job {}: stopped (cancelled, or its lease was taken over)", job.id);
                true
            }
            () = stopped(shutdown) => {
                match state.store.jobs.release(&job.id, &self.name, now_ms()).await {
                    Ok(true) => {
                        metrics.event(JobEvent::Released);
                        log::info!("job {}: handed back to the queue (shutting down)", job.id);
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!(
                        "job {}: not handed back ({e}); another worker takes it once its lease passes",
                        job.id
                    ),
                }
                false
            }
        }
    }

    /// Renews the lease on job `id` every third of `lease`; resolves when a renewal says the
    /// worker no longer holds it. A store that fails to answer is tried again at the next
    /// renewal (the lease may pass meanwhile, and the job be taken over).
    async fn renew(&self, state: &AppState, id: &str, lease: Duration) {
        let every = lease / 3;
        loop {
            tokio::time::sleep(every).await;
            match state.store.jobs.renew(id, &self.name, lease, now_ms()).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => log::warn!("job {id}: lease not renewed: {e}"),
            }
        }
    }
}

/// The objects a run stored (its result object), to delete when its result is dropped.
fn ran_objects(outcome: &Outcome) -> Vec<String> {
    match outcome {
        Outcome::Completed { objects, .. } => objects.clone(),
        Outcome::Failed { .. } => Vec::new(),
    }
}

/// Deletes the objects `keys` (a failure is logged: the objects outlive their job).
async fn delete_objects(state: &AppState, keys: &[String]) {
    for key in keys {
        let deleted = match crate::state::ObjectKey::new(key) {
            Ok(key) => state.store.objects.delete(&key).await,
            Err(e) => Err(e),
        };
        if let Err(e) = deleted {
            log::warn!("objects: {key} not deleted: {e}");
        }
    }
}

/// The cleaner and the queue gauge: every `jobs.cleanup_interval_ms`, removes the jobs whose
/// TTL has passed and deletes their objects; every few seconds, counts the unfinished jobs.
async fn clean(current: Arc<ArcSwap<AppState>>, mut shutdown: ShutdownWatch) {
    let mut last_cleanup: Option<Instant> = None;
    loop {
        let state = current.load_full();
        let settings = &state.config.jobs;
        if last_cleanup.is_none_or(|t| t.elapsed() >= settings.cleanup_interval) {
            last_cleanup = Some(Instant::now());
            remove_expired(&state).await;
            // Rehosted images (response_format=url), by their expiry bucket.
            match state.store.objects.remove_expired_images(now_ms()).await {
                Ok(0) => {}
                Ok(n) => log::debug!("objects: {n} expired images removed"),
                Err(e) => log::warn!("objects: expired images not removed: {e}"),
            }
            // Governance counters whose window ended.
            state.governance.remove_ended(now_ms()).await;
        }
        match state.store.jobs.counts(now_ms()).await {
            Ok(counts) => state.metrics.jobs.queue(counts.runnable, counts.running),
            Err(e) => log::debug!("jobs: not counted: {e}"),
        }
        let pause = settings.cleanup_interval.min(GAUGE_INTERVAL);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// Removes every job whose TTL has passed, and its objects.
async fn remove_expired(state: &AppState) {
    loop {
        let expired = match state.store.jobs.remove_expired(now_ms(), CLEANUP_BATCH).await {
            Ok(expired) => expired,
            Err(e) => {
                log::warn!("jobs: expired jobs not removed: {e}");
                return;
            }
        };
        for job in &expired {
            delete_objects(state, &job.objects).await;
            log::debug!("job {}: expired and removed", job.id);
        }
        if expired.len() < CLEANUP_BATCH {
            return;
        }
    }
}
