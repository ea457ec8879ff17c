//! Governance's [`Counters`] in Redis, shared by every replica.
//!
//! A counter is the hash `refract:counter:{key}` {`used`, `start`}; a take is one Lua script
//! over all the call's counters that mirrors [`apply_takes`] (roll ended windows, check every
//! take, add all or none) and sets each written counter to expire at its `resets_at` plus a
//! minute, so Redis drops ended counters itself ([`Counters::remove_ended`] does nothing).
//! Concurrency slots are the sorted set `refract:slots:{key}` of holders scored by the end of
//! their lease; acquiring first drops the leases that passed.

#[cfg(doc)]
use super::counters::apply_takes;
use super::counters::{current, Check, CounterState, Counters, Take, Taken, Window};
use super::redis::RedisJobs;
use super::{StateError, StateResult};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

const COUNTER: &str = "refract:counter:";
const SLOTS: &str = "refract:slots:";
/// How long a counter's (or a slot set's) key outlives the end of its window (or last lease),
/// for clocks that disagree a little.
const MARGIN_MS: u64 = 60_000;

/// [`apply_takes`] on the server. KEYS: the takes' counters. ARGV: now, margin_ms, then per
/// take: kind (`fixed` / `first`), window start (0 for `first`), window end (`fixed`) or length
/// (`first`), amount, limit, check (`fits` / `below`). Returns the refused take's index (-1
/// when all were added), then used, start and resets_at per take.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local used, start, resets, amount = {}, {}, {}, {}
local refused = -1
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 6
  local kind, wstart, span = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local limit, check = tonumber(ARGV[a + 5]), ARGV[a + 6]
  amount[i] = tonumber(ARGV[a + 4])
  local u, s = nil, nil
  for j = i - 1, 1, -1 do
    if KEYS[j] == KEYS[i] then
      u = used[j] + amount[j]
      s = start[j]
      break
    end
  end
  if s == nil then
    local h = redis.call('HMGET', KEYS[i], 'used', 'start')
    if h[1] and h[2] then
      u = tonumber(h[1])
      s = tonumber(h[2])
    end
  end
  if kind == 'fixed' then
    if s ~= wstart then u = 0 end
    s = wstart
    resets[i] = span
  else
    if s == nil or now >= s + span then
      u = 0
      s = now
    end
    resets[i] = s + span
  end
  used[i] = u
  start[i] = s
  local fits
  if check == 'fits' then fits = u + amount[i] <= limit else fits = u < limit end
  if not fits and refused < 0 then refused = i - 1 end
end
local out = {refused}
for i = 1, #KEYS do
  if refused < 0 then
    used[i] = used[i] + amount[i]
    redis.call('HSET', KEYS[i], 'used', string.format('%d', used[i]), 'start', string.format('%d', start[i]))
    redis.call('PEXPIREAT', KEYS[i], string.format('%d', resets[i] + margin))
  end
  out[#out + 1] = used[i]
  out[#out + 1] = start[i]
  out[#out + 1] = resets[i]
end
return out
";

/// Moves a counter whose window still starts where it did, floored at 0. KEYS: the counter.
/// ARGV: window start, delta.
const ADJUST: &str = r"
local h = redis.call('HMGET', KEYS[1], 'used', 'start')
if h[2] ~= ARGV[1] then return 0 end
local used = tonumber(h[1] or '0') + tonumber(ARGV[2])
if used < 0 then used = 0 end
redis.call('HSET', KEYS[1], 'used', string.format('%d', used))
return 1
";

/// Takes a slot if fewer than the limit are held once passed leases are dropped. KEYS: the
/// slots. ARGV: now, holder, limit, lease end, margin_ms. The set expires after its last lease.
const ACQUIRE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2]) + tonumber(ARGV[5])))
return 1
";

static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE));
static ADJUST_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ADJUST));
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[async_trait]
impl Counters for RedisJobs {
    async fn take(&self, takes: &[Take<'_>], now: u64) -> StateResult<Taken> {
        let mut call = TAKE_SCRIPT.prepare_invoke();
        call.arg(now).arg(MARGIN_MS);
        for take in takes {
            let (kind, start, span) = match take.window {
                Window::Fixed { start, end } => ("fixed", start, end),
                Window::FromFirstUse { length } => ("first", 0, length),
            };
            let check = match take.check {
                Check::Fits => "fits",
                Check::Below => "below",
            };
            call.key(format!("{COUNTER}{}", take.key))
                .arg(kind)
                .arg(start)
                .arg(span)
                .arg(take.amount)
                .arg(take.limit)
                .arg(check);
        }
        let mut con = self.con().await?;
        let reply: Vec<i64> = call.invoke_async(&mut con).await?;
        let (Some(&refused), Some(states)) = (reply.first(), reply.get(1..)) else {
            return Err(StateError::BadRecord("counters: empty answer to a take".to_string()));
        };
        if states.len() != takes.len() * 3 {
            return Err(StateError::BadRecord("counters: short answer to a take".to_string()));
        }
        Ok(Taken {
            refused: usize::try_from(refused).ok(),
            counters: states
                .chunks_exact(3)
                .map(|s| CounterState {
                    used: as_u64(s[0]),
                    window_start: as_u64(s[1]),
                    resets_at: as_u64(s[2]),
                })
                .collect(),
        })
    }

    async fn adjust(&self, key: &str, window_start: u64, delta: i64, _now: u64) -> StateResult<()> {
        let mut con = self.con().await?;
        let _: i64 = ADJUST_SCRIPT
            .key(format!("{COUNTER}{key}"))
            .arg(window_start)
            .arg(delta)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, _) in keys {
            pipe.cmd("HMGET")
                .arg(format!("{COUNTER}{key}"))
                .arg("used")
                .arg("start");
        }
        let mut con = self.con().await?;
        let stored: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(&mut con).await?;
        Ok(keys
            .iter()
            .zip(stored)
            .map(|(&(_, window), (used, start))| current(used.zip(start), window, now))
            .collect())
    }

    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool> {
        let mut con = self.con().await?;
        let acquired: i64 = ACQUIRE_SCRIPT
            .key(format!("{SLOTS}{key}"))
            .arg(now)
            .arg(holder)
            .arg(limit)
            .arg(now.saturating_add(lease_ms))
            .arg(MARGIN_MS)
            .invoke_async(&mut con)
            .await?;
        Ok(acquired == 1)
    }

    async fn release(&self, key: &str, holder: &str) -> StateResult<()> {
        let mut con = self.con().await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(format!("{SLOTS}{key}"))
            .arg(holder)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    async fn remove_ended(&self, _now: u64) -> StateResult<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::counters::suite;
    use super::super::now_ms;
    use super::*;
    use crate::config::RedisSettings;
    use std::io::{Read, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// A `redis-server` on a unix socket in a temp dir (no port, no persistence), killed (by
    /// its id) when dropped, as tests/common/engines.rs starts it for the integration tests.
    struct Server {
        child: Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `None` (with a note) when `redis-server` is not installed, outside CI.
    fn redis_server() -> Option<Server> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let msg = "redis-server is not installed (apt-get install redis-server; .ci/deps does it)";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("r.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            url: format!("redis+unix://{}", sock.display()),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let pong = || -> std::io::Result<bool> {
            let mut s = std::os::unix::net::UnixStream::connect(&sock)?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        };
        while !pong().unwrap_or(false) {
            assert!(Instant::now() < deadline, "redis-server did not start within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn client(server: &Server) -> RedisJobs {
        let settings = RedisSettings {
            url: server.url.clone(),
            password: None,
            username: None,
        };
        RedisJobs::open(&settings, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn redis_conformance() {
        let Some(server) = redis_server() else { return };
        suite::conformance(&client(&server), now_ms()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_concurrent_two_replicas() {
        let Some(server) = redis_server() else { return };
        let a: Arc<dyn Counters> = Arc::new(client(&server));
        let b: Arc<dyn Counters> = Arc::new(client(&server));
        suite::concurrent(a, b, now_ms()).await;
    }

    #[tokio::test]
    async fn redis_expires_counters_and_slots_itself() {
        let Some(server) = redis_server() else { return };
        let store = client(&server);
        let t = now_ms();
        let day = Window::Fixed {
            start: t,
            end: t + 120_000,
        };
        let take = Take {
            key: "vk:a:requests",
            window: day,
            amount: 1,
            limit: 5,
            check: Check::Fits,
        };
        assert_eq!(store.take(&[take], t).await.unwrap().refused, None);
        assert!(store.acquire("vk:a:slots", "h1", 1, 30_000, t).await.unwrap());
        let mut con = store.con().await.unwrap();
        let (counter, slots): (i64, i64) = redis::pipe()
            .cmd("PTTL")
            .arg(format!("{COUNTER}vk:a:requests"))
            .cmd("PTTL")
            .arg(format!("{SLOTS}vk:a:slots"))
            .query_async(&mut con)
            .await
            .unwrap();
        // The window's end (2 min) plus the margin (1 min), less the time the test took.
        assert!((120_000..=180_000).contains(&counter), "counter PTTL {counter}");
        // The lease (30 s) plus the margin.
        assert!((30_000..=90_000).contains(&slots), "slots PTTL {slots}");
        assert_eq!(store.remove_ended(t + 200_000).await.unwrap(), 0, "Redis expires them");
    }
}
