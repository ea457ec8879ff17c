//! Governance's [`Counters`] in Redis, shared by every replica.
//!
//! A fixed or first-use counter is the hash `refract:counter:{key}` {`used` (settled),
//! `start`}, with its reservations in the sorted set `refract:reserved:{key}` (holders scored by
//! the end of their lease) and the hash `refract:reserved-amounts:{key}` (holder → amount). A
//! sliding window is the sorted set `refract:entries:{key}` (holders scored by their entry's
//! ts) and the hash `refract:entry-amounts:{key}`. A take is one Lua script over all the call's
//! counters that mirrors [`apply_takes`] (roll ended windows, count live holds, check every
//! take, write all or none); it sets each written counter to expire at its `resets_at` (a
//! sliding window: `now + length`) plus a minute, so Redis drops ended counters itself
//! ([`Counters::remove_ended`] does nothing); expired reservations and old entries are dropped
//! by the takes that write their key, and never counted. A read is a script that writes
//! nothing, its result turned into counters by [`current`]. Concurrency slots are the sorted
//! set `refract:slots:{key}` of holders scored by the end of their lease; acquiring first drops
//! the leases that passed.

#[cfg(doc)]
use super::counters::apply_takes;
use super::counters::{current, Check, CounterState, Counters, Stored, Take, Taken, Window};
use super::redis::RedisJobs;
use super::{StateError, StateResult};
use async_trait::async_trait;
use redis::Script;
use std::sync::LazyLock;

const COUNTER: &str = "refract:counter:";
const RESERVED: &str = "refract:reserved:";
const RESERVED_AMOUNTS: &str = "refract:reserved-amounts:";
const ENTRIES: &str = "refract:entries:";
const ENTRY_AMOUNTS: &str = "refract:entry-amounts:";
const SLOTS: &str = "refract:slots:";
/// How long a counter's (or a slot set's) key outlives the end of its window (or last lease),
/// for clocks that disagree a little.
const MARGIN_MS: u64 = 60_000;

/// The helpers every counters script starts with: `int` (a number as Redis reads it), `live`
/// (the total amount and lowest score of the holds of sorted set `z`, amounts in hash `a`,
/// scored above `cutoff`) and `drop` (removes the holds scored at or below `cutoff`).
const HOLDS: &str = r"
local function int(x) return string.format('%d', x) end
local function live(z, a, cutoff)
  local members = redis.call('ZRANGEBYSCORE', z, '(' .. int(cutoff), '+inf', 'WITHSCORES')
  local held, oldest, names = 0, nil, {}
  if #members > 0 then oldest = tonumber(members[2]) end
  for j = 1, #members, 2 do
    names[#names + 1] = members[j]
    if #names == 500 or j + 1 >= #members then
      local amounts = redis.call('HMGET', a, unpack(names))
      for k = 1, #amounts do held = held + (tonumber(amounts[k]) or 0) end
      names = {}
    end
  end
  return held, oldest
end
local function drop(z, a, cutoff)
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', int(cutoff))
  for j = 1, #gone, 500 do
    redis.call('HDEL', a, unpack(gone, j, math.min(j + 499, #gone)))
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', int(cutoff))
end
";

/// [`apply_takes`] on the server. KEYS: per take its counter hash, holds set and holds'
/// amounts (reservations, or a sliding window's entries). ARGV: now, margin_ms, holder, then
/// per take: kind (`fixed` / `first` / `sliding`), window start (0 unless `fixed`), window end
/// (`fixed`) or length, amount, limit, check (`fits` / `below`), lease (-1: none). Returns the
/// refused take's index (-1 when all were added), then used, start and resets_at per take.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
local margin = tonumber(ARGV[2])
local holder = ARGV[3]
local n = #KEYS / 3
local used, start, resets, amount, kind, span, lease = {}, {}, {}, {}, {}, {}, {}
local refused = -1
for i = 1, n do
  local b = 3 + (i - 1) * 7
  local wstart = tonumber(ARGV[b + 2])
  kind[i], span[i] = ARGV[b + 1], tonumber(ARGV[b + 3])
  amount[i], lease[i] = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 7])
  local limit, check = tonumber(ARGV[b + 5]), ARGV[b + 6]
  local c, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local u, s, held, oldest, earlier = nil, nil, 0, nil, nil
  for j = i - 1, 1, -1 do
    if KEYS[3 * j - 1] == z then earlier = j break end
  end
  if earlier then
    if kind[i] == 'sliding' then
      held = used[earlier] + amount[earlier]
      oldest = resets[earlier] - span[i]
    else
      u = used[earlier] + amount[earlier]
      s = start[earlier]
    end
  elseif kind[i] == 'sliding' then
    held, oldest = live(z, a, now - span[i])
  else
    local h = redis.call('HMGET', c, 'used', 'start')
    if h[1] and h[2] then
      u = tonumber(h[1])
      s = tonumber(h[2])
      held = live(z, a, now)
    end
  end
  if kind[i] == 'sliding' then
    used[i] = held
    start[i] = now
    resets[i] = (oldest or now) + span[i]
  elseif kind[i] == 'fixed' then
    if s ~= wstart then used[i] = 0 else used[i] = u + held end
    start[i] = wstart
    resets[i] = span[i]
  else
    if s == nil or now >= s + span[i] then
      used[i] = 0
      start[i] = now
    else
      used[i] = u + held
      start[i] = s
    end
    resets[i] = start[i] + span[i]
  end
  local fits
  if check == 'fits' then fits = used[i] + amount[i] <= limit else fits = used[i] < limit end
  if not fits and refused < 0 then refused = i - 1 end
end
local out = {refused}
for i = 1, n do
  local c, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if refused < 0 then
    used[i] = used[i] + amount[i]
    if kind[i] == 'sliding' then
      if amount[i] > 0 then
        drop(z, a, now - span[i])
        redis.call('HINCRBY', a, holder, int(amount[i]))
        redis.call('ZADD', z, int(now), holder)
        redis.call('PEXPIREAT', z, int(now + span[i] + margin))
        redis.call('PEXPIREAT', a, int(now + span[i] + margin))
      end
    else
      local st = redis.call('HGET', c, 'start')
      if not st or tonumber(st) ~= start[i] then
        redis.call('HSET', c, 'used', '0', 'start', int(start[i]))
        redis.call('DEL', z, a)
      end
      if lease[i] < 0 then
        redis.call('HINCRBY', c, 'used', int(amount[i]))
      elseif amount[i] > 0 then
        drop(z, a, now)
        redis.call('HINCRBY', a, holder, int(amount[i]))
        local until_ = now + lease[i]
        local cur = redis.call('ZSCORE', z, holder)
        if not cur or tonumber(cur) < until_ then redis.call('ZADD', z, int(until_), holder) end
      end
      redis.call('PEXPIREAT', c, int(resets[i] + margin))
      redis.call('PEXPIREAT', z, int(resets[i] + margin))
      redis.call('PEXPIREAT', a, int(resets[i] + margin))
    end
  end
  out[#out + 1] = used[i]
  out[#out + 1] = start[i]
  out[#out + 1] = resets[i]
end
return out
";

/// The counters as stored, writing nothing. KEYS: per counter its hash, holds set and holds'
/// amounts (as [`TAKE`]). ARGV: now, then per counter the cutoff of its live holds (`now` for
/// reservations, `now - length` for a sliding window's entries). Returns per counter: settled
/// used and window start (-1 when there is no counter), live held total, oldest live hold's
/// score (-1 when none).
const READ: &str = r"
local out = {}
for i = 1, #KEYS / 3 do
  local c, z, a = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local h = redis.call('HMGET', c, 'used', 'start')
  local held, oldest = live(z, a, tonumber(ARGV[1 + i]))
  out[#out + 1] = tonumber(h[1]) or -1
  out[#out + 1] = tonumber(h[2]) or -1
  out[#out + 1] = held
  out[#out + 1] = oldest or -1
end
return out
";

/// [`Counters::settle`]. KEYS: the counter hash, its reservations and their amounts, its
/// sliding entries and their amounts. ARGV: window start, holder, amount.
const SETTLE: &str = r"
local ts = redis.call('ZSCORE', KEYS[4], ARGV[2])
if ts and tonumber(ts) == tonumber(ARGV[1]) then
  if tonumber(ARGV[3]) == 0 then
    redis.call('ZREM', KEYS[4], ARGV[2])
    redis.call('HDEL', KEYS[5], ARGV[2])
  else
    redis.call('HSET', KEYS[5], ARGV[2], ARGV[3])
  end
  return 1
end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
local start = redis.call('HGET', KEYS[1], 'start')
if start and tonumber(start) == tonumber(ARGV[1]) then
  redis.call('HINCRBY', KEYS[1], 'used', ARGV[3])
  return 1
end
return 0
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

static TAKE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{HOLDS}{TAKE}")));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(&format!("{HOLDS}{READ}")));
static SETTLE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SETTLE));
static ACQUIRE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ACQUIRE));

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The keys of counter `key` in `window`, in the order the scripts take them: its hash, its
/// holds' set and their amounts.
fn keys_of(key: &str, window: Window) -> [String; 3] {
    let (holds, amounts) = match window {
        Window::Sliding { .. } => (ENTRIES, ENTRY_AMOUNTS),
        Window::Fixed { .. } | Window::FromFirstUse { .. } => (RESERVED, RESERVED_AMOUNTS),
    };
    [
        format!("{COUNTER}{key}"),
        format!("{holds}{key}"),
        format!("{amounts}{key}"),
    ]
}

#[async_trait]
impl Counters for RedisJobs {
    async fn take(&self, takes: &[Take<'_>], holder: &str, now: u64) -> StateResult<Taken> {
        let mut call = TAKE_SCRIPT.prepare_invoke();
        call.arg(now).arg(MARGIN_MS).arg(holder);
        for take in takes {
            let (kind, start, span) = match take.window {
                Window::Fixed { start, end } => ("fixed", start, end),
                Window::FromFirstUse { length } => ("first", 0, length),
                Window::Sliding { length } => ("sliding", 0, length),
            };
            let check = match take.check {
                Check::Fits => "fits",
                Check::Below => "below",
            };
            let lease = take.lease.map_or(-1, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
            for key in keys_of(take.key, take.window) {
                call.key(key);
            }
            call.arg(kind)
                .arg(start)
                .arg(span)
                .arg(take.amount)
                .arg(take.limit)
                .arg(check)
                .arg(lease);
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

    async fn settle(&self, key: &str, window_start: u64, holder: &str, amount: u64, _now: u64) -> StateResult<()> {
        let mut con = self.con().await?;
        let _: i64 = SETTLE_SCRIPT
            .key(format!("{COUNTER}{key}"))
            .key(format!("{RESERVED}{key}"))
            .key(format!("{RESERVED_AMOUNTS}{key}"))
            .key(format!("{ENTRIES}{key}"))
            .key(format!("{ENTRY_AMOUNTS}{key}"))
            .arg(window_start)
            .arg(holder)
            .arg(amount)
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = READ_SCRIPT.prepare_invoke();
        call.arg(now);
        for &(key, window) in keys {
            for key in keys_of(key, window) {
                call.key(key);
            }
            let cutoff = match window {
                Window::Sliding { length } => i128::from(now) - i128::from(length),
                Window::Fixed { .. } | Window::FromFirstUse { .. } => i128::from(now),
            };
            call.arg(i64::try_from(cutoff).unwrap_or(i64::MIN));
        }
        let mut con = self.con().await?;
        let reply: Vec<i64> = call.invoke_async(&mut con).await?;
        if reply.len() != keys.len() * 4 {
            return Err(StateError::BadRecord("counters: short answer to a read".to_string()));
        }
        Ok(keys
            .iter()
            .zip(reply.chunks_exact(4))
            .map(|(&(_, window), s)| {
                let stored = Stored {
                    settled: (s[0] >= 0 && s[1] >= 0).then(|| (as_u64(s[0]), as_u64(s[1]))),
                    held: as_u64(s[2]),
                    oldest: (s[3] >= 0).then(|| as_u64(s[3])),
                };
                current(stored, window, now)
            })
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
            lease: None,
        };
        assert_eq!(store.take(&[take], "h", t).await.unwrap().refused, None);
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
        // A sliding window's entries expire a window and the margin after the last take, a
        // reservation's keys with its counter.
        let sliding = Take {
            key: "vk:a:images",
            window: Window::Sliding { length: 30_000 },
            ..take
        };
        let reserved = Take {
            key: "vk:a:usd",
            lease: Some(10_000),
            ..take
        };
        assert_eq!(store.take(&[sliding, reserved], "h2", t).await.unwrap().refused, None);
        let ttls: Vec<i64> = redis::pipe()
            .cmd("PTTL")
            .arg(format!("{ENTRIES}vk:a:images"))
            .cmd("PTTL")
            .arg(format!("{ENTRY_AMOUNTS}vk:a:images"))
            .cmd("PTTL")
            .arg(format!("{RESERVED}vk:a:usd"))
            .cmd("PTTL")
            .arg(format!("{RESERVED_AMOUNTS}vk:a:usd"))
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(
            ttls[..2].iter().all(|ttl| (30_000..=90_000).contains(ttl)),
            "entries PTTL {ttls:?}"
        );
        assert!(
            ttls[2..].iter().all(|ttl| (120_000..=180_000).contains(ttl)),
            "reserved PTTL {ttls:?}"
        );
        assert_eq!(store.remove_ended(t + 200_000).await.unwrap(), 0, "Redis expires them");
    }
}
