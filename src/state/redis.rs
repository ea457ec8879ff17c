//! The Redis job store, shared by several gateway replicas.
//!
//! A job is the hash `refract:job:{id}`. Runnable jobs are the sorted set `refract:jobs:queue`
//! scored by the time they become runnable (created_at for a pending job, lease_until for a
//! processing one), so a lease that passed makes its job claimable again. Claims, renewals,
//! finishes and cancels are Lua scripts (atomic on the server). A finished job is scored in
//! `refract:jobs:expiring` by `expires_at`: reads hide it from then on, the cleaner
//! ([`JobStore::remove_expired`]) deletes it and returns it (for its objects), and the hash
//! itself carries an `EXPIRE` an hour later as a backstop should no cleaner run.
//!
//! Connections: a reachability check at startup (synchronous, within a timeout), then one
//! multiplexed, reconnecting `ConnectionManager`, made on first use in the runtime that uses it.

use super::{
    abandoned_error, millis, new_id, Claim, JobCounts, JobRecord, JobStatus, JobStore, NewJob, Outcome, StateError,
    StateResult,
};
use crate::config::RedisSettings;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use std::collections::HashMap;
use std::time::Duration;

const JOB: &str = "refract:job:";
const QUEUE: &str = "refract:jobs:queue";
const EXPIRING: &str = "refract:jobs:expiring";
/// How long a finished record's hash outlives its `expires_at` if no cleaner removes it.
const BACKSTOP_MS: u64 = 3_600_000;

/// Claims the oldest runnable job; fails those whose attempts are used up.
/// KEYS: queue, expiring. ARGV: now, worker, lease_ms, max_attempts, job prefix, backstop_ms,
/// the error of an abandoned job.
const CLAIM: &str = r"
local now = tonumber(ARGV[1])
for _ = 1, 100 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 1)
  if #ids == 0 then return false end
  local id = ids[1]
  local key = ARGV[5] .. id
  local f = redis.call('HMGET', key, 'status', 'attempts', 'lease_until', 'result_ttl_ms')
  if f[1] ~= 'pending' and f[1] ~= 'processing' then
    redis.call('ZREM', KEYS[1], id)
  elseif f[1] == 'processing' and tonumber(f[3] or '0') > now then
    redis.call('ZADD', KEYS[1], f[3], id)
  elseif tonumber(f[2] or '0') >= tonumber(ARGV[4]) then
    local expires = now + tonumber(f[4] or '0')
    redis.call('HDEL', key, 'lease_owner', 'lease_until')
    redis.call('HSET', key, 'status', 'failed', 'completed_at', now, 'expires_at', expires,
      'status_code', 500, 'error', ARGV[7])
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZADD', KEYS[2], expires, id)
    redis.call('PEXPIREAT', key, expires + tonumber(ARGV[6]))
  else
    local untill = now + tonumber(ARGV[3])
    redis.call('HSET', key, 'status', 'processing', 'attempts', tonumber(f[2] or '0') + 1,
      'started_at', now, 'lease_owner', ARGV[2], 'lease_until', untill)
    redis.call('ZADD', KEYS[1], untill, id)
    return id
  end
end
return false
";

/// Extends a lease held by the worker. KEYS: job, queue. ARGV: worker, until, id.
const RENEW: &str = r"
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner')
if f[1] ~= 'processing' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
";

/// Ends a job: finished by the worker holding it (ARGV[1] = 'lease_owner') or cancelled by
/// its owner (ARGV[1] = 'owner'). KEYS: job, queue, expiring. ARGV: field to check, its
/// expected value, now, id, new status, backstop_ms, then field/value pairs to set.
const END: &str = r"
local f = redis.call('HMGET', KEYS[1], 'status', ARGV[1], 'result_ttl_ms')
if f[2] ~= ARGV[2] then return 0 end
if ARGV[1] == 'lease_owner' and f[1] ~= 'processing' then return 0 end
if f[1] ~= 'pending' and f[1] ~= 'processing' then return 0 end
local now = tonumber(ARGV[3])
local expires = now + tonumber(f[3] or '0')
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'completed_at', now, 'expires_at', expires)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], expires, ARGV[4])
redis.call('PEXPIREAT', KEYS[1], expires + tonumber(ARGV[6]))
return 1
";

/// Removes expired records and returns them. KEYS: expiring. ARGV: now, limit, job prefix.
const RELEASE: &str = r"
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_owner', 'attempts', 'created_at')
if f[1] ~= 'processing' or f[2] ~= ARGV[1] then return 0 end
local attempts = tonumber(f[3] or '1') - 1
if attempts < 0 then attempts = 0 end
redis.call('HDEL', KEYS[1], 'lease_owner', 'lease_until')
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempts', attempts)
redis.call('ZADD', KEYS[2], f[4] or ARGV[3], ARGV[2])
return 1
";

const REMOVE_EXPIRED: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(ids) do
  local key = ARGV[3] .. id
  local h = redis.call('HGETALL', key)
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
  if #h > 0 then table.insert(out, h) end
end
return out
";

/// Job records in Redis.
pub struct RedisJobs {
    client: redis::Client,
    manager: tokio::sync::OnceCell<ConnectionManager>,
    timeout: Duration,
    scripts: Scripts,
}

struct Scripts {
    claim: Script,
    renew: Script,
    end: Script,
    remove_expired: Script,
    release: Script,
}

impl RedisJobs {
    /// Checks that the server at `settings.url` answers a PING within `timeout` (with the
    /// configured credentials). Runs at startup, outside any async runtime.
    pub fn open(settings: &RedisSettings, timeout: Duration) -> StateResult<RedisJobs> {
        let fail = |what: String| StateError::Open(format!("redis at {}: {what}", settings.url));
        if settings.url.starts_with("rediss:") {
            // rustls needs a process-wide provider; Pingora installs the same one (ring).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let info = settings
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| fail(e.to_string()))?;
        let mut auth = info.redis_settings().clone();
        if let Some(user) = &settings.username {
            auth = auth.set_username(user);
        }
        if let Some(password) = &settings.password {
            auth = auth.set_password(password.expose());
        }
        let client = redis::Client::open(info.set_redis_settings(auth)).map_err(|e| fail(e.to_string()))?;
        let mut con = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| fail(format!("cannot connect within {} ms: {e}", timeout.as_millis())))?;
        con.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
        let pong: String = redis::cmd("PING").query(&mut con).map_err(|e| fail(e.to_string()))?;
        if pong != "PONG" {
            return Err(fail(format!("PING answered {pong:?}")));
        }
        Ok(RedisJobs {
            client,
            manager: tokio::sync::OnceCell::new(),
            timeout,
            scripts: Scripts {
                claim: Script::new(CLAIM),
                renew: Script::new(RENEW),
                end: Script::new(END),
                remove_expired: Script::new(REMOVE_EXPIRED),
                release: Script::new(RELEASE),
            },
        })
    }

    /// The shared connection (made on first use).
    pub(super) async fn con(&self) -> StateResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(2);
        let manager = self
            .manager
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await?;
        Ok(manager.clone())
    }

    async fn end(
        &self,
        check: (&str, &str),
        id: &str,
        status: JobStatus,
        fields: &[(&str, String)],
        now: u64,
    ) -> StateResult<bool> {
        let mut con = self.con().await?;
        let mut call = self.scripts.end.key(format!("{JOB}{id}"));
        call.key(QUEUE)
            .key(EXPIRING)
            .arg(check.0)
            .arg(check.1)
            .arg(now)
            .arg(id)
            .arg(status.as_str())
            .arg(BACKSTOP_MS);
        for (field, value) in fields {
            call.arg(*field).arg(value);
        }
        let done: i64 = call.invoke_async(&mut con).await?;
        Ok(done == 1)
    }

    async fn load(&self, con: &mut ConnectionManager, id: &str) -> StateResult<Option<JobRecord>> {
        let hash: HashMap<String, String> = con.hgetall(format!("{JOB}{id}")).await?;
        if hash.is_empty() {
            return Ok(None);
        }
        record(&hash).map(Some)
    }
}

fn record(h: &HashMap<String, String>) -> StateResult<JobRecord> {
    let bad = |field: &str| StateError::BadRecord(format!("field {field}"));
    let text = |f: &str| h.get(f).cloned();
    let num =
        |f: &str| -> StateResult<Option<u64>> { h.get(f).map(|v| v.parse::<u64>().map_err(|_| bad(f))).transpose() };
    let list = |f: &str| -> StateResult<Vec<String>> {
        h.get(f)
            .map_or(Ok(Vec::new()), |v| serde_json::from_str(v).map_err(|_| bad(f)))
    };
    let mut objects = list("objects")?;
    objects.extend(list("result_objects")?);
    Ok(JobRecord {
        id: text("id").ok_or_else(|| bad("id"))?,
        owner: text("owner").ok_or_else(|| bad("owner"))?,
        status: h
            .get("status")
            .and_then(|s| JobStatus::from_name(s))
            .ok_or_else(|| bad("status"))?,
        created_at: num("created_at")?.unwrap_or(0),
        started_at: num("started_at")?,
        completed_at: num("completed_at")?,
        expires_at: num("expires_at")?,
        attempts: num("attempts")?.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
        lease_owner: text("lease_owner"),
        lease_until: num("lease_until")?,
        request: text("request").unwrap_or_default(),
        objects,
        result: text("result"),
        status_code: num("status_code")?.map(|n| u16::try_from(n).unwrap_or(500)),
        error: text("error"),
        result_ttl_ms: num("result_ttl_ms")?.unwrap_or(0),
    })
}

fn json_list(items: &[String]) -> StateResult<String> {
    serde_json::to_string(items).map_err(|e| StateError::BadRecord(e.to_string()))
}

#[async_trait]
impl JobStore for RedisJobs {
    async fn create(&self, job: NewJob, now: u64) -> StateResult<JobRecord> {
        let record = JobRecord::pending(new_id()?, job, now);
        let (id, ttl) = (record.id.clone(), record.result_ttl_ms);
        let mut con = self.con().await?;
        let fields: Vec<(&str, String)> = vec![
            ("id", id.clone()),
            ("owner", record.owner.clone()),
            ("status", "pending".to_string()),
            ("created_at", now.to_string()),
            ("attempts", "0".to_string()),
            ("request", record.request.clone()),
            ("objects", json_list(&record.objects)?),
            ("result_ttl_ms", ttl.to_string()),
        ];
        let _: () = redis::pipe()
            .atomic()
            .hset_multiple(format!("{JOB}{id}"), &fields)
            .ignore()
            .zadd(QUEUE, &id, now)
            .ignore()
            .query_async(&mut con)
            .await?;
        Ok(record)
    }

    async fn get(&self, id: &str, owner: &str, now: u64) -> StateResult<Option<JobRecord>> {
        let mut con = self.con().await?;
        let job = self.load(&mut con, id).await?;
        Ok(job.filter(|j| j.owner == owner && j.expires_at.is_none_or(|t| t > now)))
    }

    async fn get_any_owner(&self, id: &str, now: u64) -> StateResult<Option<JobRecord>> {
        let mut con = self.con().await?;
        let job = self.load(&mut con, id).await?;
        Ok(job.filter(|j| j.expires_at.is_none_or(|t| t > now)))
    }

    async fn claim(&self, claim: &Claim<'_>, now: u64) -> StateResult<Option<JobRecord>> {
        let mut con = self.con().await?;
        let id: Option<String> = self
            .scripts
            .claim
            .key(QUEUE)
            .key(EXPIRING)
            .arg(now)
            .arg(claim.worker)
            .arg(millis(claim.lease))
            .arg(claim.max_attempts)
            .arg(JOB)
            .arg(BACKSTOP_MS)
            .arg(abandoned_error(claim.max_attempts))
            .invoke_async(&mut con)
            .await?;
        match id {
            Some(id) => self.load(&mut con, &id).await,
            None => Ok(None),
        }
    }

    async fn renew(&self, id: &str, worker: &str, lease: Duration, now: u64) -> StateResult<bool> {
        let mut con = self.con().await?;
        let renewed: i64 = self
            .scripts
            .renew
            .key(format!("{JOB}{id}"))
            .key(QUEUE)
            .arg(worker)
            .arg(now.saturating_add(millis(lease)))
            .arg(id)
            .invoke_async(&mut con)
            .await?;
        Ok(renewed == 1)
    }

    async fn finish(&self, id: &str, worker: &str, outcome: Outcome, now: u64) -> StateResult<bool> {
        let (status, fields) = match outcome {
            Outcome::Completed { result, objects } => (
                JobStatus::Completed,
                vec![("result", result), ("result_objects", json_list(&objects)?)],
            ),
            Outcome::Failed { status_code, error } => (
                JobStatus::Failed,
                vec![("status_code", status_code.to_string()), ("error", error)],
            ),
        };
        self.end(("lease_owner", worker), id, status, &fields, now).await
    }

    async fn release(&self, id: &str, worker: &str, now: u64) -> StateResult<bool> {
        let mut con = self.con().await?;
        let released: i64 = self
            .scripts
            .release
            .key(format!("{JOB}{id}"))
            .key(QUEUE)
            .arg(worker)
            .arg(id)
            .arg(now)
            .invoke_async(&mut con)
            .await?;
        Ok(released == 1)
    }

    async fn counts(&self, now: u64) -> StateResult<JobCounts> {
        // The queue holds every unfinished job, scored by when it becomes claimable.
        let mut con = self.con().await?;
        let (runnable, total): (u64, u64) = redis::pipe()
            .zcount(QUEUE, "-inf", now)
            .zcard(QUEUE)
            .query_async(&mut con)
            .await?;
        Ok(JobCounts {
            runnable,
            running: total.saturating_sub(runnable),
        })
    }

    async fn cancel(&self, id: &str, owner: &str, now: u64) -> StateResult<bool> {
        self.end(("owner", owner), id, JobStatus::Cancelled, &[], now).await
    }

    async fn remove_expired(&self, now: u64, limit: usize) -> StateResult<Vec<JobRecord>> {
        let mut con = self.con().await?;
        let hashes: Vec<HashMap<String, String>> = self
            .scripts
            .remove_expired
            .key(EXPIRING)
            .arg(now)
            .arg(limit)
            .arg(JOB)
            .invoke_async(&mut con)
            .await?;
        hashes.iter().map(record).collect()
    }
}
