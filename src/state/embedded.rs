//! The embedded job store: one SQLite file (`<store.path>/refract.db`, WAL mode), no server.
//! Several processes may open it at once (an upgrade's old and new process); a claim is one
//! `BEGIN IMMEDIATE` transaction, so two workers never get the same job. Every call runs on
//! the store's own thread.

use super::{
    abandoned_error, millis, new_id, Claim, JobCounts, JobRecord, JobStatus, JobStore, NewJob, Outcome, StateError,
    StateResult,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::OnceLock;
use std::time::Duration;

/// The database file inside `store.path`.
pub const FILE_NAME: &str = "refract.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    request TEXT NOT NULL,
    objects TEXT NOT NULL,
    result TEXT,
    status_code INTEGER,
    error TEXT,
    result_ttl_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_runnable ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
";

const COLUMNS: &str = "id, owner, status, created_at, started_at, completed_at, expires_at, attempts, \
    lease_owner, lease_until, request, objects, result, status_code, error, result_ttl_ms";

/// Job records in a SQLite file.
pub struct EmbeddedJobs {
    file: PathBuf,
    /// Calls for the store's thread, which owns the connection. Both are started on first
    /// use: neither a thread nor a connection may cross the fork of `--daemon`.
    tasks: OnceLock<Result<Sender<Task>, String>>,
}

/// How long opening the file may wait for another connection (another process on the same
/// file: an upgrade's old process, a replica on one machine) that holds it.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// Opens `file`, creating the tables if missing. Switching to WAL and creating tables may
/// find the file locked by another connection without SQLite's busy handler being asked (a
/// lock upgrade, a WAL recovery): those are retried for up to [`OPEN_WAIT`].
fn connect(file: &Path) -> rusqlite::Result<Connection> {
    let deadline = std::time::Instant::now() + OPEN_WAIT;
    loop {
        match try_connect(file) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn try_connect(file: &Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(file)?;
    db.busy_timeout(OPEN_WAIT)?;
    // WAL: readers never wait for the writer, and a second process may open the file.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.execute_batch(SCHEMA)?;
    db.execute_batch(super::embedded_counters::SCHEMA)?;
    Ok(db)
}

impl EmbeddedJobs {
    /// Creates `dir` if missing and opens (or creates) its database file, to find out now
    /// whether it can be used. Runs at startup.
    pub fn open(dir: &Path) -> StateResult<EmbeddedJobs> {
        let fail = |what: String| StateError::Open(format!("embedded store at {}: {what}", dir.display()));
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        let file = dir.join(FILE_NAME);
        connect(&file).map_err(|e| fail(format!("cannot open {FILE_NAME}: {e}")))?;
        Ok(EmbeddedJobs {
            file,
            tasks: OnceLock::new(),
        })
    }

    /// Runs `f` with the connection on the store's thread and waits for its result.
    pub(super) async fn with<T, F>(&self, f: F) -> StateResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StateResult<T> + Send + 'static,
    {
        let tasks = self
            .tasks
            .get_or_init(|| start(self.file.clone()))
            .as_ref()
            .map_err(|e| StateError::Blocking(e.clone()))?;
        let (done, result) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move |db: &mut Option<Connection>, file: &Path| {
            let outcome = match db {
                Some(con) => f(con),
                None => match connect(file) {
                    Ok(con) => f(db.insert(con)),
                    Err(e) => Err(e.into()),
                },
            };
            let _ = done.send(outcome);
        });
        tasks
            .send(task)
            .map_err(|_| StateError::Blocking("the embedded store's thread is gone".to_string()))?;
        result
            .await
            .map_err(|_| StateError::Blocking("the embedded store's thread stopped".to_string()))?
    }
}

/// Starts the store's thread for `file`.
fn start(file: PathBuf) -> Result<Sender<Task>, String> {
    let (tasks, queue) = std::sync::mpsc::channel::<Task>();
    std::thread::Builder::new()
        .name("refract-sqlite".into())
        .spawn(move || serve(&file, &queue))
        .map_err(|e| format!("cannot start the embedded store's thread: {e}"))?;
    Ok(tasks)
}

/// A call for the store's thread: the connection (made on first use) and the file.
type Task = Box<dyn FnOnce(&mut Option<Connection>, &Path) + Send>;

/// The store's thread: runs the calls one after the other on its connection (SQLite allows
/// one writer at a time anyway), until the store is dropped. One long-lived thread rather than
/// the blocking pool: the workers' polls would otherwise keep starting and ending pool threads.
fn serve(file: &Path, queue: &std::sync::mpsc::Receiver<Task>) {
    let mut db = None;
    while let Ok(task) = queue.recv() {
        task(&mut db, file);
    }
    log::debug!("embedded store {}: closed", file.display());
}

/// `n` as SQLite stores it (saturating).
pub(super) fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn record(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.and_then(|n| u64::try_from(n).ok()))
    };
    let status: String = row.get(2)?;
    let objects: String = row.get(11)?;
    Ok(JobRecord {
        id: row.get(0)?,
        owner: row.get(1)?,
        status: JobStatus::from_name(&status).unwrap_or(JobStatus::Failed),
        created_at: u(3)?.unwrap_or(0),
        started_at: u(4)?,
        completed_at: u(5)?,
        expires_at: u(6)?,
        attempts: row.get(7)?,
        lease_owner: row.get(8)?,
        lease_until: u(9)?,
        request: row.get(10)?,
        objects: serde_json::from_str(&objects).unwrap_or_default(),
        result: row.get(12)?,
        status_code: row.get(13)?,
        error: row.get(14)?,
        result_ttl_ms: u(15)?.unwrap_or(0),
    })
}

fn get_row(db: &Connection, id: &str) -> StateResult<Option<JobRecord>> {
    Ok(db
        .query_row(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"), [id], record)
        .optional()?)
}

/// Sets a job's final state (status, times, expiry) in `db`.
fn finalize(
    db: &Connection,
    job: &JobRecord,
    status: JobStatus,
    outcome: Option<&Outcome>,
    now: u64,
) -> StateResult<()> {
    let (result, code, error, objects) = match outcome {
        Some(Outcome::Completed { result, objects }) => {
            let mut all = job.objects.clone();
            all.extend(objects.iter().cloned());
            (Some(result.as_str()), None, None, all)
        }
        Some(Outcome::Failed { status_code, error }) => {
            (None, Some(*status_code), Some(error.as_str()), job.objects.clone())
        }
        None => (None, None, None, job.objects.clone()),
    };
    let objects = serde_json::to_string(&objects).map_err(|e| StateError::BadRecord(e.to_string()))?;
    db.execute(
        "UPDATE jobs SET status = ?2, completed_at = ?3, expires_at = ?4, lease_owner = NULL, lease_until = NULL, \
         result = ?5, status_code = ?6, error = ?7, objects = ?8 WHERE id = ?1",
        params![
            job.id,
            status.as_str(),
            as_i64(now),
            as_i64(now.saturating_add(job.result_ttl_ms)),
            result,
            code,
            error,
            objects
        ],
    )?;
    Ok(())
}

#[async_trait]
impl JobStore for EmbeddedJobs {
    async fn create(&self, job: NewJob, now: u64) -> StateResult<JobRecord> {
        let record = JobRecord::pending(new_id()?, job, now);
        let r = record.clone();
        self.with(move |db| {
            let objects = serde_json::to_string(&r.objects).map_err(|e| StateError::BadRecord(e.to_string()))?;
            db.execute(
                "INSERT INTO jobs (id, owner, status, created_at, attempts, request, objects, result_ttl_ms) \
                 VALUES (?1, ?2, 'pending', ?3, 0, ?4, ?5, ?6)",
                params![
                    r.id,
                    r.owner,
                    as_i64(r.created_at),
                    r.request,
                    objects,
                    as_i64(r.result_ttl_ms)
                ],
            )?;
            Ok(())
        })
        .await?;
        Ok(record)
    }

    async fn get(&self, id: &str, owner: &str, now: u64) -> StateResult<Option<JobRecord>> {
        let (id, owner) = (id.to_string(), owner.to_string());
        let job = self.with(move |db| get_row(db, &id)).await?;
        Ok(job.filter(|j| j.owner == owner && j.expires_at.is_none_or(|t| t > now)))
    }

    async fn get_any_owner(&self, id: &str, now: u64) -> StateResult<Option<JobRecord>> {
        let id = id.to_string();
        let job = self.with(move |db| get_row(db, &id)).await?;
        Ok(job.filter(|j| j.expires_at.is_none_or(|t| t > now)))
    }

    async fn claim(&self, claim: &Claim<'_>, now: u64) -> StateResult<Option<JobRecord>> {
        let (worker, lease, max) = (claim.worker.to_string(), millis(claim.lease), claim.max_attempts);
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed = loop {
                let next = tx
                    .query_row(
                        &format!(
                            "SELECT {COLUMNS} FROM jobs WHERE status = 'pending' \
                             OR (status = 'processing' AND lease_until <= ?1) ORDER BY created_at LIMIT 1"
                        ),
                        [as_i64(now)],
                        record,
                    )
                    .optional()?;
                let Some(mut job) = next else { break None };
                if job.attempts >= max {
                    let failed = Outcome::Failed {
                        status_code: 500,
                        error: abandoned_error(job.attempts),
                    };
                    finalize(&tx, &job, JobStatus::Failed, Some(&failed), now)?;
                    continue;
                }
                job.status = JobStatus::Processing;
                job.attempts += 1;
                job.started_at = Some(now);
                job.lease_owner = Some(worker.clone());
                job.lease_until = Some(now.saturating_add(lease));
                tx.execute(
                    "UPDATE jobs SET status = 'processing', attempts = ?2, started_at = ?3, lease_owner = ?4, \
                     lease_until = ?5 WHERE id = ?1",
                    params![
                        job.id,
                        job.attempts,
                        as_i64(now),
                        worker,
                        as_i64(now.saturating_add(lease))
                    ],
                )?;
                break Some(job);
            };
            tx.commit()?;
            Ok(claimed)
        })
        .await
    }

    async fn renew(&self, id: &str, worker: &str, lease: Duration, now: u64) -> StateResult<bool> {
        let (id, worker, until) = (id.to_string(), worker.to_string(), now.saturating_add(millis(lease)));
        self.with(move |db| {
            let n = db.execute(
                "UPDATE jobs SET lease_until = ?3 WHERE id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![id, worker, as_i64(until)],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish(&self, id: &str, worker: &str, outcome: Outcome, now: u64) -> StateResult<bool> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let held = get_row(&tx, &id)?
                .filter(|j| j.status == JobStatus::Processing && j.lease_owner.as_deref() == Some(worker.as_str()));
            let Some(job) = held else { return Ok(false) };
            let status = match outcome {
                Outcome::Completed { .. } => JobStatus::Completed,
                Outcome::Failed { .. } => JobStatus::Failed,
            };
            finalize(&tx, &job, status, Some(&outcome), now)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn release(&self, id: &str, worker: &str, _now: u64) -> StateResult<bool> {
        let (id, worker) = (id.to_string(), worker.to_string());
        self.with(move |db| {
            let n = db.execute(
                "UPDATE jobs SET status = 'pending', attempts = MAX(attempts - 1, 0), lease_owner = NULL, \
                 lease_until = NULL WHERE id = ?1 AND status = 'processing' AND lease_owner = ?2",
                params![id, worker],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn counts(&self, now: u64) -> StateResult<JobCounts> {
        self.with(move |db| {
            let (runnable, running): (i64, i64) = db.query_row(
                "SELECT COALESCE(SUM(status = 'pending' OR lease_until <= ?1), 0), \
                 COALESCE(SUM(status = 'processing' AND lease_until > ?1), 0) \
                 FROM jobs WHERE status IN ('pending', 'processing')",
                [as_i64(now)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            Ok(JobCounts {
                runnable: u64::try_from(runnable).unwrap_or(0),
                running: u64::try_from(running).unwrap_or(0),
            })
        })
        .await
    }

    async fn cancel(&self, id: &str, owner: &str, now: u64) -> StateResult<bool> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let open = get_row(&tx, &id)?.filter(|j| j.owner == owner && !j.status.is_final());
            let Some(job) = open else { return Ok(false) };
            finalize(&tx, &job, JobStatus::Cancelled, None, now)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn remove_expired(&self, now: u64, limit: usize) -> StateResult<Vec<JobRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let expired = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {COLUMNS} FROM jobs WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![as_i64(now), limit], record)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for job in &expired {
                tx.execute("DELETE FROM jobs WHERE id = ?1", [&job.id])?;
            }
            tx.commit()?;
            Ok(expired)
        })
        .await
    }
}
