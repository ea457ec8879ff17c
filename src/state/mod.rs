//! The gateway's state: job records ([`JobStore`]), governance's usage counters
//! ([`Counters`]: rate-limit windows, budget spend, concurrency slots) and stored objects
//! ([`Objects`]): uploads of pending jobs and result images.
//!
//! Opened once at startup from the `store` and `objects` sections ([`State::open`]); a store
//! that cannot be opened or reached is a startup error. Two implementations of the job store:
//! [`embedded::EmbeddedJobs`] (a single SQLite file, no server) and [`redis::RedisJobs`]
//! (shared by several replicas); the same store keeps the counters. Objects go through the
//! `object_store` crate (a local directory or S3).
//!
//! Every call takes the current time (`now`, Unix milliseconds) from the caller: leases and
//! TTLs are decided on the caller's clock, and tests move it without sleeping.

pub mod counters;
pub mod embedded;
mod embedded_counters;
mod objects;
pub mod redis;
mod redis_counters;
pub mod urls;

pub use counters::{Counters, MemoryCounters};
pub use objects::{content_type, ObjectKey, Objects};
pub use urls::UrlSigner;

use crate::config::{ObjectUrls, ObjectsSettings, StoreSettings};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What can go wrong with the state layer.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store could not be opened or reached (startup).
    #[error("store: {0}")]
    Open(String),
    /// The objects store could not be set up (startup).
    #[error("objects: {0}")]
    Objects(String),
    /// A call to the embedded database failed.
    #[error("embedded store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A call to Redis failed.
    #[error("redis store: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A call to the objects store failed.
    #[error("objects store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A record in the store could not be read back (written by another version?).
    #[error("store: bad record {0}")]
    BadRecord(String),
    /// A key that is not one the gateway makes.
    #[error("objects: bad key {0:?}")]
    BadKey(String),
    /// The blocking pool was gone (shutdown).
    #[error("store: {0}")]
    Blocking(String),
}

/// The state layer's result.
pub type StateResult<T> = Result<T, StateError>;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Pending,
    /// Claimed by a worker whose lease runs until `lease_until`.
    Processing,
    /// Done; `result` holds the answer.
    Completed,
    /// Done; `status_code` and `error` say why.
    Failed,
    /// Cancelled by its owner before it finished.
    Cancelled,
}

impl JobStatus {
    /// The name in records and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `name`, if any.
    pub fn from_name(name: &str) -> Option<JobStatus> {
        [
            JobStatus::Pending,
            JobStatus::Processing,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    /// Completed, failed or cancelled: the record only waits for its TTL.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// A job to create: who owns it and what to run.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The virtual key id (or identity) that submitted it; only it reads the job.
    pub owner: String,
    /// The validated request (JSON, without secrets).
    pub request: String,
    /// The objects holding its uploads (deleted with the job).
    pub objects: Vec<String>,
    /// How long the record stays readable once the job is done.
    pub result_ttl: Duration,
}

/// How a job ended ([`JobStore::finish`]).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The answer (JSON), and the objects it refers to (deleted with the job).
    Completed {
        /// The answer, as the client will read it.
        result: String,
        /// Objects the answer refers to.
        objects: Vec<String>,
    },
    /// The error (JSON, Bifrost's shape) and its status.
    Failed {
        /// The HTTP status of the error.
        status_code: u16,
        /// The error body.
        error: String,
    },
}

/// One job as stored. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Random, unguessable (128 bits, URL-safe).
    pub id: String,
    /// Who submitted it.
    pub owner: String,
    /// Where it is.
    pub status: JobStatus,
    /// When it was accepted.
    pub created_at: u64,
    /// When a worker last claimed it.
    pub started_at: Option<u64>,
    /// When it finished (or was cancelled).
    pub completed_at: Option<u64>,
    /// When the record goes away (`completed_at` + TTL).
    pub expires_at: Option<u64>,
    /// How many times a worker claimed it.
    pub attempts: u32,
    /// The worker holding it (while processing).
    pub lease_owner: Option<String>,
    /// Until when that worker holds it.
    pub lease_until: Option<u64>,
    /// The request (JSON).
    pub request: String,
    /// Every object of the job (uploads, then results).
    pub objects: Vec<String>,
    /// The answer, once completed.
    pub result: Option<String>,
    /// The error's status, once failed.
    pub status_code: Option<u16>,
    /// The error (JSON), once failed.
    pub error: Option<String>,
    /// The TTL once done, in milliseconds.
    pub result_ttl_ms: u64,
}

impl JobRecord {
    /// The record of `job` accepted at `now` under `id`: pending, never claimed.
    pub fn pending(id: String, job: NewJob, now: u64) -> JobRecord {
        JobRecord {
            id,
            owner: job.owner,
            status: JobStatus::Pending,
            created_at: now,
            started_at: None,
            completed_at: None,
            expires_at: None,
            attempts: 0,
            lease_owner: None,
            lease_until: None,
            request: job.request,
            objects: job.objects,
            result: None,
            status_code: None,
            error: None,
            result_ttl_ms: millis(job.result_ttl),
        }
    }
}

/// The claim of a worker: its id, how long the lease lasts, how many attempts a job gets.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The worker (unique per process and worker slot).
    pub worker: &'a str,
    /// How long the lease lasts from `now`.
    pub lease: Duration,
    /// A job claimed this many times already (each lease lost) is failed instead.
    pub max_attempts: u32,
}

/// The jobs not finished, by where they are ([`JobStore::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Claimable now: pending, or processing with a lease that passed (its worker died).
    pub runnable: u64,
    /// Processing under a lease that has not passed.
    pub running: u64,
}

/// The error of a job given up after `attempts` lost leases (JSON, Bifrost's shape).
pub fn abandoned_error(attempts: u32) -> String {
    serde_json::json!({
        "is_bifrost_error": true,
        "status_code": 500,
        "error": {
            "type": "job_abandoned",
            "message": format!("the job's worker stopped {attempts} time(s) before finishing it; it is not retried again"),
        },
    })
    .to_string()
}

/// Where job records live: created at submit time, claimed by workers with a lease, finished,
/// read by their owner, and removed once their TTL has passed. Implementations are atomic
/// across processes (two workers never hold the same job's lease).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new pending job and returns its record (with a fresh id).
    async fn create(&self, job: NewJob, now: u64) -> StateResult<JobRecord>;

    /// The job `id` if `owner` submitted it and it has not expired; any other owner gets the
    /// same `None` as an unknown id.
    async fn get(&self, id: &str, owner: &str, now: u64) -> StateResult<Option<JobRecord>>;

    /// The job `id`, whoever submitted it, if it has not expired: for admin callers.
    async fn get_any_owner(&self, id: &str, now: u64) -> StateResult<Option<JobRecord>>;

    /// Claims the oldest runnable job (pending, or processing with a lease passed before
    /// `now`) for `claim.worker` until `now + claim.lease`, counting an attempt. A job whose
    /// attempts are used up is failed ([`abandoned_error`]) instead, and the next one tried.
    async fn claim(&self, claim: &Claim<'_>, now: u64) -> StateResult<Option<JobRecord>>;

    /// Extends the lease of `worker` on job `id` to `now + lease`; `false` when the worker no
    /// longer holds it (taken over, cancelled, finished).
    async fn renew(&self, id: &str, worker: &str, lease: Duration, now: u64) -> StateResult<bool>;

    /// Records how the job ended, if `worker` still holds it (`false` otherwise: the result is
    /// dropped); the record then expires after its TTL.
    async fn finish(&self, id: &str, worker: &str, outcome: Outcome, now: u64) -> StateResult<bool>;

    /// Hands job `id` back to the queue if `worker` still holds it (its process is shutting
    /// down): pending again, the attempt not counted; `false` otherwise.
    async fn release(&self, id: &str, worker: &str, now: u64) -> StateResult<bool>;

    /// How many jobs wait for a worker and how many run, at `now` (for the metrics).
    async fn counts(&self, now: u64) -> StateResult<JobCounts>;

    /// Cancels a pending or processing job of `owner`; `false` when there is none such.
    async fn cancel(&self, id: &str, owner: &str, now: u64) -> StateResult<bool>;

    /// Removes up to `limit` records whose TTL has passed and returns them (their objects are
    /// the caller's to delete).
    async fn remove_expired(&self, now: u64, limit: usize) -> StateResult<Vec<JobRecord>>;
}

/// The job store, the counters and the objects, opened at startup; lives as long as the
/// process.
pub struct State {
    /// Job records.
    pub jobs: Arc<dyn JobStore>,
    /// Governance's usage counters, in the same store as the jobs (the same SQLite file, or
    /// the same Redis).
    pub counters: Arc<dyn Counters>,
    /// Uploads and result images.
    pub objects: Objects,
    /// Signs and checks the gateway's own URLs of stored images.
    pub urls: UrlSigner,
    /// Wakes an idle worker of this process when a job was submitted here (workers of other
    /// replicas find it at their next poll).
    pub wake: tokio::sync::Notify,
}

impl State {
    /// Opens the store of `store` and the objects of `objects`: creates the directories and
    /// the database file, or checks that Redis answers (within `timeout`); reads or makes the
    /// URL secret ([`UrlSigner::open`]). Runs once, at startup, outside any async runtime.
    pub fn open(
        store: &StoreSettings,
        objects: &ObjectsSettings,
        urls: &ObjectUrls,
        timeout: Duration,
    ) -> StateResult<State> {
        let (jobs, counters): (Arc<dyn JobStore>, Arc<dyn Counters>) = match store {
            StoreSettings::Embedded { path } => {
                let embedded = Arc::new(embedded::EmbeddedJobs::open(path)?);
                (embedded.clone(), embedded)
            }
            StoreSettings::Redis(settings) => {
                let redis = Arc::new(redis::RedisJobs::open(settings, timeout)?);
                (redis.clone(), redis)
            }
        };
        Ok(State {
            jobs,
            counters,
            objects: Objects::open(objects)?,
            urls: UrlSigner::open(objects, urls)?,
            wake: tokio::sync::Notify::new(),
        })
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A new job id: 128 random bits from the system's secure generator, base64url (22 chars).
pub fn new_id() -> StateResult<String> {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StateError::Blocking("no system randomness".to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_distinct() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn the_counters_live_in_the_job_store() {
        use counters::{Check, Take, Window};
        let dir = tempfile::tempdir().unwrap();
        let store = StoreSettings::Embedded {
            path: dir.path().join("store"),
        };
        let objects = ObjectsSettings::Fs {
            path: dir.path().join("objects"),
        };
        let state = State::open(&store, &objects, &ObjectUrls::default(), Duration::from_secs(3)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let window = Window::Fixed {
            start: 0,
            end: u64::MAX,
        };
        let take = Take {
            key: "vk:a:requests",
            window,
            amount: 2,
            limit: 9,
            check: Check::Fits,
            lease: None,
        };
        assert_eq!(rt.block_on(state.counters.take(&[take], "h", 1)).unwrap().refused, None);
        drop(state);
        let file = embedded::EmbeddedJobs::open(&dir.path().join("store")).unwrap();
        let read = rt.block_on(file.read(&[("vk:a:requests", window)], 2)).unwrap();
        assert_eq!(read[0].used, 2, "written to the store's file");
    }

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "processing", "completed", "failed", "cancelled"] {
            assert_eq!(JobStatus::from_name(s).unwrap().as_str(), s);
        }
        assert!(JobStatus::from_name("done").is_none());
        assert!(JobStatus::Cancelled.is_final() && !JobStatus::Processing.is_final());
    }
}
