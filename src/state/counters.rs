//! Usage counters for governance: rate-limit windows, budget spend and concurrency slots,
//! shared by every replica that uses the same store.
//!
//! A counter is a named amount in a window. [`Counters::take`] checks and adds a set of
//! amounts all-or-nothing (one atomic step on the store: a Lua script in Redis, one
//! transaction on the embedded store's thread), so N replicas together admit exactly the
//! configured limit. An amount is counted for good at once, or held as a *reservation* of the
//! call's holder with a lease ([`Take::lease`]): [`Counters::settle`] replaces it with the real
//! amount (a budget's worst case settled to the real cost, images reserved but not delivered),
//! and a reservation nobody settles (its process died) stops counting when its lease passes.
//! A sliding window ([`Window::Sliding`]) counts each take as an entry that leaves the window
//! `length` ms after it was made, so its limit holds within every window of that length.
//! [`Counters::acquire`] / [`Counters::release`] hold concurrency slots with a lease, so a
//! replica that died does not hold its slots for ever.
//!
//! Three implementations with one semantics ([`apply_takes`] and [`current`] are the rule,
//! written once in Rust; the Redis scripts mirror them): [`MemoryCounters`] (one process; also
//! the local fallback when the shared store is unreachable and the policy is `fail_open`), the
//! embedded store's (SQLite, persisted: a restart keeps spend) and Redis's.
//!
//! Every call takes the current time (`now`, Unix milliseconds) from the caller.

use super::StateResult;
use async_trait::async_trait;
use std::collections::HashMap;

/// The window a counter counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A window with fixed bounds (a calendar day, a calendar month), computed by the caller:
    /// a counter whose stored window starts elsewhere is reset to this one.
    Fixed {
        /// First millisecond of the window.
        start: u64,
        /// First millisecond after it.
        end: u64,
    },
    /// A window of `length` milliseconds that starts with the first take after the previous
    /// one ended (Bifrost's `reset_duration`): a counter whose window ended is reset, its new
    /// window starting at `now`. Admits up to twice the limit around a boundary.
    FromFirstUse {
        /// The window's length in milliseconds (> 0).
        length: u64,
    },
    /// The last `length` milliseconds: each take is an entry (`ts` = its `now`, amount,
    /// holder) that counts while `ts > now - length`, so a `Fits` limit is never passed within
    /// any window of that length. The entry is the take's reservation ([`Take::lease`] is
    /// ignored): [`Counters::settle`] changes its amount.
    Sliding {
        /// The window's length in milliseconds (> 0).
        length: u64,
    },
}

/// How a take is checked against its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Admitted when `used + amount <= limit`: request and image counts, held exactly.
    Fits,
    /// Admitted when `used < limit`: budgets; the last admitted request may pass the limit by
    /// its own amount, and no request starts once it is reached.
    Below,
}

/// One amount to add to one counter if every take of the call is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take<'a> {
    /// The counter's name (`vk:{id}:requests`…; the store adds its own prefix).
    pub key: &'a str,
    /// Its window.
    pub window: Window,
    /// The amount to add (images, micro-dollars, 1 for a request).
    pub amount: u64,
    /// The limit it is checked against.
    pub limit: u64,
    /// How it is checked.
    pub check: Check,
    /// `None`: the amount is counted for good at once. `Some(ms)`: it is a reservation of the
    /// call's holder, counted until [`Counters::settle`] ends it or until `now + ms` passes
    /// (whichever comes first). Ignored by a [`Window::Sliding`] counter, whose entry is the
    /// reservation.
    pub lease: Option<u64>,
}

/// A counter as it is after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    /// The amount counted in the current window (after the call's own amounts, if admitted):
    /// the settled amount and the live reservations, or a sliding window's live entries.
    pub used: u64,
    /// When the current window started (Unix ms); a sliding window's is `now`, the ts of the
    /// call's entry (what [`Counters::settle`] is given back).
    pub window_start: u64,
    /// When it ends and the counter resets (Unix ms); for a sliding window, when its oldest
    /// live entry leaves it (`now + length` when there is none).
    pub resets_at: u64,
}

/// The result of [`Counters::take`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The index (in the call's takes) of the first take that was refused; `None` when every
    /// take was admitted and every amount added.
    pub refused: Option<usize>,
    /// Each counter as it is after the call, in the order of the takes (nothing added when
    /// one was refused).
    pub counters: Vec<CounterState>,
}

/// A counter as a store holds it at `now`, the input of [`current`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// [`Window::Fixed`] / [`Window::FromFirstUse`]: the amount counted for good and the start
    /// of its window, when the counter exists.
    pub settled: Option<(u64, u64)>,
    /// The live holds' total: the reservations whose lease has not passed (`until > now`), or
    /// a sliding window's entries still in it (`ts > now - length`).
    pub held: u64,
    /// A sliding window's oldest live entry's ts.
    pub oldest: Option<u64>,
}

impl From<Option<(u64, u64)>> for Stored {
    /// A windowed counter with `(used, window_start)` settled and nothing held.
    fn from(settled: Option<(u64, u64)>) -> Stored {
        Stored {
            settled,
            ..Stored::default()
        }
    }
}

/// The rule of one take against a counter stored as `stored` at `now`: the counter with its
/// window rolled over if it ended (used 0 in the new window), and whether `take` fits.
/// Nothing is added here; the caller adds `take.amount` to `used` when every take of the call
/// fits.
pub fn apply_take(stored: Stored, take: &Take<'_>, now: u64) -> (CounterState, bool) {
    let counter = current(stored, take.window, now);
    let fits = match take.check {
        Check::Fits => counter.used.saturating_add(take.amount) <= take.limit,
        Check::Below => counter.used < take.limit,
    };
    (counter, fits)
}

/// The rule of one [`Counters::take`] call against the counters stored as `stored[i]` for
/// `takes[i]`, at `now`: each take checked in order ([`apply_take`]), and, when all fit, every
/// amount added to its counter. A take on a key that an earlier take of the same call names
/// sees that take's amount added (the call runs as if its takes came one after the other), so
/// the last take on a key holds the counter's final value. When one take is refused, the
/// counters are reported as they stand, nothing added.
///
/// When `refused` is `None`, every store then writes each take, in order, as the holder's:
/// - a sliding window: drops the key's entries that left it (`ts <= now - length`), and adds
///   `amount` to the holder's entry (ts `now`; created when it has none);
/// - a windowed counter whose stored window does not start at `counters[i].window_start` (or
///   that does not exist) first starts afresh there: settled 0, no reservations, ends at
///   `resets_at`; then `amount` is added to the settled amount (`lease` `None`), or to the
///   holder's reservation, whose lease end becomes at least `now + lease` (expired
///   reservations of the key are dropped).
///
/// An amount of 0 writes no reservation or entry (a windowed counter is still started).
pub fn apply_takes(stored: &[Stored], takes: &[Take<'_>], now: u64) -> Taken {
    let mut counters: Vec<CounterState> = Vec::with_capacity(takes.len());
    let mut refused = None;
    for (i, take) in takes.iter().enumerate() {
        let base = match takes[..i].iter().rposition(|t| t.key == take.key) {
            Some(j) => match (counters.get(j), takes.get(j)) {
                (Some(c), Some(earlier)) => after(c, earlier),
                _ => Stored::default(),
            },
            None => stored.get(i).copied().unwrap_or_default(),
        };
        let (counter, fits) = apply_take(base, take, now);
        if !fits && refused.is_none() {
            refused = Some(i);
        }
        counters.push(counter);
    }
    if refused.is_none() {
        for (counter, take) in counters.iter_mut().zip(takes) {
            counter.used = counter.used.saturating_add(take.amount);
        }
    }
    Taken { refused, counters }
}

/// The counter `c` (before `take`) as stored once `take` is added (a later take of the same
/// call on the same key starts from it).
fn after(c: &CounterState, take: &Take<'_>) -> Stored {
    let used = c.used.saturating_add(take.amount);
    match take.window {
        Window::Sliding { length } => Stored {
            settled: None,
            held: used,
            oldest: Some(c.resets_at.saturating_sub(length)),
        },
        Window::Fixed { .. } | Window::FromFirstUse { .. } => Some((used, c.window_start)).into(),
    }
}

/// The counter stored as `stored` at `now`, its window rolled over if it ended: a windowed
/// counter's `used` is its settled amount plus its live reservations (0 in a new window).
pub fn current(stored: Stored, window: Window, now: u64) -> CounterState {
    let counted = stored.settled.map(|(used, at)| (used.saturating_add(stored.held), at));
    match window {
        Window::Fixed { start, end } => match counted {
            Some((used, at)) if at == start => CounterState {
                used,
                window_start: start,
                resets_at: end,
            },
            _ => CounterState {
                used: 0,
                window_start: start,
                resets_at: end,
            },
        },
        Window::FromFirstUse { length } => match counted {
            Some((used, at)) if now < at.saturating_add(length) => CounterState {
                used,
                window_start: at,
                resets_at: at.saturating_add(length),
            },
            _ => CounterState {
                used: 0,
                window_start: now,
                resets_at: now.saturating_add(length),
            },
        },
        Window::Sliding { length } => CounterState {
            used: stored.held,
            window_start: now,
            resets_at: stored.oldest.unwrap_or(now).saturating_add(length),
        },
    }
}

/// Whether a sliding window's entry made at `ts` still counts at `now` (`ts > now - length`).
pub fn in_window(ts: u64, length: u64, now: u64) -> bool {
    ts.saturating_add(length) > now
}

/// Governance's counters (see the module docs). Implementations are atomic across every
/// process that shares the store.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Checks every take against its counter (each rolled to its current window first, see
    /// [`apply_takes`]); when all are admitted, adds every amount, reservations and entries as
    /// `holder`'s (unique per call, e.g. a uuid); when one is refused, adds none. One atomic
    /// step. A counter is kept until its window ended (and, for the embedded store, until
    /// [`Counters::remove_ended`] removes it).
    async fn take(&self, takes: &[Take<'_>], holder: &str, now: u64) -> StateResult<Taken>;

    /// Ends `holder`'s reservation on counter `key` and counts `amount` for good in its place,
    /// if the counter's window still starts at `window_start` (the take's
    /// [`CounterState::window_start`]); a counter whose window has since rolled over (or that
    /// is gone) counts nothing. A reservation whose lease passed is gone, and `amount` is still
    /// counted. On a sliding window (`holder` has an entry made at `window_start`), sets that
    /// entry's amount to `amount` (0 removes it); nothing when the entry is gone.
    async fn settle(&self, key: &str, window_start: u64, holder: &str, amount: u64, now: u64) -> StateResult<()>;

    /// The counters `keys` (each in its window) as they are at `now`, live reservations and
    /// entries included, without changing what they count (for the usage endpoint and the
    /// remaining-budget gauge).
    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>>;

    /// Takes a concurrency slot of `key` for `holder` (unique per request) until
    /// `now + lease_ms`, if fewer than `limit` unexpired slots are held; `false` otherwise.
    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool>;

    /// Gives back `holder`'s slot of `key` (nothing when it holds none).
    async fn release(&self, key: &str, holder: &str) -> StateResult<()>;

    /// Removes counters whose window ended before `now` and sliding windows left without
    /// entries, and drops expired reservations, entries out of their window and expired slots
    /// (the embedded store and memory; Redis expires them itself). Returns how many counters
    /// went.
    async fn remove_ended(&self, now: u64) -> StateResult<u64>;
}

/// Counters in this process's memory: [`Counters`] without a store. Used with
/// `on_store_error: fail_open` while the shared store cannot be reached, and in tests. Every
/// call holds one lock for its length (never across an await: there is none). A sliding
/// window's entries that left it are dropped whenever the key is taken or read; ended
/// counters, expired reservations and slots stay until [`Counters::remove_ended`].
#[derive(Debug, Default)]
pub struct MemoryCounters {
    inner: std::sync::Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Fixed and first-use windows by key.
    counters: HashMap<String, Windowed>,
    /// Sliding windows by key.
    sliding: HashMap<String, Sliding>,
    /// `key` → holder → lease end.
    slots: HashMap<String, HashMap<String, u64>>,
}

/// A fixed or first-use counter in memory.
#[derive(Debug)]
struct Windowed {
    /// The amount counted for good.
    used: u64,
    window_start: u64,
    resets_at: u64,
    /// holder → (amount, lease end).
    reserved: HashMap<String, (u64, u64)>,
}

/// A sliding window in memory.
#[derive(Debug)]
struct Sliding {
    /// Its length as last taken (for [`Counters::remove_ended`]).
    length: u64,
    /// (ts, holder) → amount, oldest first.
    entries: std::collections::BTreeMap<(u64, String), u64>,
}

impl Sliding {
    /// Drops the entries that left the window at `now`.
    fn trim(&mut self, now: u64) {
        while let Some(entry) = self.entries.first_entry() {
            if in_window(entry.key().0, self.length, now) {
                break;
            }
            entry.remove();
        }
    }
}

impl MemoryInner {
    /// Counter `key` in `window` as stored at `now` (a sliding window trimmed first).
    fn stored(&mut self, key: &str, window: Window, now: u64) -> Stored {
        match window {
            Window::Sliding { length } => match self.sliding.get_mut(key) {
                Some(s) => {
                    s.length = length;
                    s.trim(now);
                    Stored {
                        settled: None,
                        held: s.entries.values().fold(0, |sum, a| sum.saturating_add(*a)),
                        oldest: s.entries.keys().next().map(|(ts, _)| *ts),
                    }
                }
                None => Stored::default(),
            },
            Window::Fixed { .. } | Window::FromFirstUse { .. } => match self.counters.get(key) {
                Some(w) => Stored {
                    settled: Some((w.used, w.window_start)),
                    held: w
                        .reserved
                        .values()
                        .filter(|(_, until)| *until > now)
                        .fold(0, |sum, (a, _)| sum.saturating_add(*a)),
                    oldest: None,
                },
                None => Stored::default(),
            },
        }
    }

    /// Writes admitted `take` (its counter now `c`) as `holder`'s (see [`apply_takes`]).
    fn write(&mut self, take: &Take<'_>, c: &CounterState, holder: &str, now: u64) {
        match take.window {
            Window::Sliding { length } => {
                if take.amount == 0 {
                    return;
                }
                let s = self.sliding.entry(take.key.to_string()).or_insert_with(|| Sliding {
                    length,
                    entries: std::collections::BTreeMap::new(),
                });
                s.length = length;
                s.trim(now);
                let amount = s.entries.entry((now, holder.to_string())).or_insert(0);
                *amount = amount.saturating_add(take.amount);
            }
            Window::Fixed { .. } | Window::FromFirstUse { .. } => {
                let fresh = || Windowed {
                    used: 0,
                    window_start: c.window_start,
                    resets_at: c.resets_at,
                    reserved: HashMap::new(),
                };
                let w = self.counters.entry(take.key.to_string()).or_insert_with(fresh);
                if w.window_start != c.window_start {
                    *w = fresh();
                }
                match take.lease {
                    None => w.used = w.used.saturating_add(take.amount),
                    Some(_) if take.amount == 0 => {}
                    Some(lease) => {
                        w.reserved.retain(|_, (_, until)| *until > now);
                        let r = w.reserved.entry(holder.to_string()).or_insert((0, 0));
                        r.0 = r.0.saturating_add(take.amount);
                        r.1 = r.1.max(now.saturating_add(lease));
                    }
                }
            }
        }
    }
}

impl MemoryCounters {
    /// The maps, whoever held the lock last (a panic elsewhere leaves them usable).
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn take(&self, takes: &[Take<'_>], holder: &str, now: u64) -> StateResult<Taken> {
        let mut inner = self.lock();
        let stored: Vec<Stored> = takes.iter().map(|t| inner.stored(t.key, t.window, now)).collect();
        let taken = apply_takes(&stored, takes, now);
        if taken.refused.is_none() {
            for (take, c) in takes.iter().zip(&taken.counters) {
                inner.write(take, c, holder, now);
            }
        }
        Ok(taken)
    }

    async fn settle(&self, key: &str, window_start: u64, holder: &str, amount: u64, _now: u64) -> StateResult<()> {
        let mut inner = self.lock();
        if let Some(s) = inner.sliding.get_mut(key) {
            let entry = (window_start, holder.to_string());
            if let Some(held) = s.entries.get_mut(&entry) {
                if amount == 0 {
                    s.entries.remove(&entry);
                } else {
                    *held = amount;
                }
                return Ok(());
            }
        }
        if let Some(w) = inner.counters.get_mut(key) {
            w.reserved.remove(holder);
            if w.window_start == window_start {
                w.used = w.used.saturating_add(amount);
            }
        }
        Ok(())
    }

    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>> {
        let mut inner = self.lock();
        Ok(keys
            .iter()
            .map(|&(key, window)| current(inner.stored(key, window, now), window, now))
            .collect())
    }

    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool> {
        let mut inner = self.lock();
        if !inner.slots.contains_key(key) {
            inner.slots.insert(key.to_string(), HashMap::new());
        }
        let Some(held) = inner.slots.get_mut(key) else {
            return Ok(false);
        };
        held.retain(|_, until| *until > now);
        if u64::try_from(held.len()).unwrap_or(u64::MAX) >= limit {
            return Ok(false);
        }
        held.insert(holder.to_string(), now.saturating_add(lease_ms));
        Ok(true)
    }

    async fn release(&self, key: &str, holder: &str) -> StateResult<()> {
        let mut inner = self.lock();
        if let Some(held) = inner.slots.get_mut(key) {
            held.remove(holder);
            if held.is_empty() {
                inner.slots.remove(key);
            }
        }
        Ok(())
    }

    async fn remove_ended(&self, now: u64) -> StateResult<u64> {
        let mut inner = self.lock();
        let before = inner.counters.len() + inner.sliding.len();
        inner.counters.retain(|_, w| {
            w.reserved.retain(|_, (_, until)| *until > now);
            w.resets_at > now
        });
        inner.sliding.retain(|_, s| {
            s.trim(now);
            !s.entries.is_empty()
        });
        let removed = before - inner.counters.len() - inner.sliding.len();
        inner.slots.retain(|_, held| {
            held.retain(|_, until| *until > now);
            !held.is_empty()
        });
        Ok(u64::try_from(removed).unwrap_or(u64::MAX))
    }
}

/// The behaviour every [`Counters`] shares, run against each implementation by the tests at
/// the bottom of its file. Time moves by hand (`now`), never by sleeping.
#[cfg(test)]
pub(super) mod suite {
    use super::*;
    use std::sync::Arc;

    const MINUTE: u64 = 60_000;

    fn take(key: &str, window: Window, amount: u64, limit: u64, check: Check) -> Take<'_> {
        Take {
            key,
            window,
            amount,
            limit,
            check,
            lease: None,
        }
    }

    async fn used(c: &dyn Counters, key: &str, window: Window, now: u64) -> u64 {
        c.read(&[(key, window)], now).await.unwrap()[0].used
    }

    /// Every rule of the trait but [`Counters::remove_ended`], on one store, from `t` (a recent
    /// Unix ms: Redis expires keys on its own clock).
    pub async fn conformance(c: &dyn Counters, t: u64) {
        // Fits: admitted up to the limit exactly, then refused, nothing added.
        let day = Window::Fixed {
            start: t,
            end: t + MINUTE,
        };
        let images = |n| take("vk:a:images", day, n, 5, Check::Fits);
        let got = c.take(&[images(3)], "h", t).await.unwrap();
        let expect = CounterState {
            used: 3,
            window_start: t,
            resets_at: t + MINUTE,
        };
        assert_eq!(
            got,
            Taken {
                refused: None,
                counters: vec![expect]
            }
        );
        assert_eq!(
            c.take(&[images(2)], "h", t).await.unwrap().counters[0].used,
            5,
            "exactly at the limit"
        );
        let over = c.take(&[images(1)], "h", t + 1).await.unwrap();
        assert_eq!(over.refused, Some(0));
        assert_eq!(over.counters[0].used, 5, "a refused take adds nothing");
        assert_eq!(used(c, "vk:a:images", day, t + 2).await, 5);

        // Below: admitted while used < limit (the last one may pass it), refused at and after.
        let budget = Window::FromFirstUse { length: MINUTE };
        let spend = |key, n| take(key, budget, n, 10, Check::Below);
        assert_eq!(c.take(&[spend("vk:a:budget", 4)], "h", t).await.unwrap().refused, None);
        let passed = c.take(&[spend("vk:a:budget", 7)], "h", t + 1).await.unwrap();
        assert_eq!((passed.refused, passed.counters[0].used), (None, 11));
        assert_eq!(
            passed.counters[0].window_start, t,
            "the window started at the first take"
        );
        assert_eq!(
            c.take(&[spend("vk:a:budget", 1)], "h", t + 2).await.unwrap().refused,
            Some(0)
        );
        assert_eq!(
            c.take(&[spend("vk:a:exact", 10)], "h", t).await.unwrap().counters[0].used,
            10
        );
        let at_limit = c.take(&[spend("vk:a:exact", 1)], "h", t).await.unwrap();
        assert_eq!(
            (at_limit.refused, at_limit.counters[0].used),
            (Some(0), 10),
            "used == limit"
        );

        // All or nothing: one take refused, no counter of the call moves.
        let requests = |n| take("vk:b:requests", day, n, 100, Check::Fits);
        c.take(&[requests(1)], "h", t).await.unwrap();
        let calls = [
            requests(1),
            take("vk:b:images", day, 3, 2, Check::Fits),
            take("vk:b:spend", day, 9, 5, Check::Fits),
        ];
        let refused = c.take(&calls, "h", t).await.unwrap();
        assert_eq!(refused.refused, Some(1), "the first refused take");
        let unchanged: Vec<u64> = refused.counters.iter().map(|s| s.used).collect();
        assert_eq!(unchanged, vec![1, 0, 0]);
        assert_eq!(
            used(c, "vk:b:requests", day, t).await,
            1,
            "the admitted take was not added"
        );
        assert_eq!(used(c, "vk:b:images", day, t).await, 0);
        // ... and all are added when all fit; a key named twice sees its earlier amount.
        let both = [requests(2), take("vk:b:images", day, 2, 2, Check::Fits), requests(3)];
        let added = c.take(&both, "h", t).await.unwrap();
        assert_eq!(added.refused, None);
        let after: Vec<u64> = added.counters.iter().map(|s| s.used).collect();
        assert_eq!(after, vec![3, 2, 6]);
        assert_eq!(used(c, "vk:b:requests", day, t).await, 6);
        let twice = [
            take("vk:b:images", day, 0, 2, Check::Fits),
            take("vk:b:twice", day, 1, 1, Check::Fits),
            take("vk:b:twice", day, 1, 1, Check::Fits),
        ];
        assert_eq!(
            c.take(&twice, "h", t).await.unwrap().refused,
            Some(2),
            "the second take on a key counts the first"
        );
        assert_eq!(used(c, "vk:b:twice", day, t).await, 0);

        // Fixed window: a new start resets the counter.
        let first = Window::Fixed {
            start: t,
            end: t + 1000,
        };
        let second = Window::Fixed {
            start: t + 1000,
            end: t + 2000,
        };
        assert_eq!(
            c.take(&[take("vk:c:day", first, 5, 5, Check::Fits)], "h", t)
                .await
                .unwrap()
                .refused,
            None
        );
        assert_eq!(
            c.take(&[take("vk:c:day", first, 1, 5, Check::Fits)], "h", t + 999)
                .await
                .unwrap()
                .refused,
            Some(0)
        );
        let next = c
            .take(&[take("vk:c:day", second, 1, 5, Check::Fits)], "h", t + 1000)
            .await
            .unwrap();
        let expect = CounterState {
            used: 1,
            window_start: t + 1000,
            resets_at: t + 2000,
        };
        assert_eq!(
            next,
            Taken {
                refused: None,
                counters: vec![expect]
            }
        );

        // From first use: the window rolls over once its length has passed since it started.
        let minute = Window::FromFirstUse { length: 1000 };
        let rate = || take("vk:d:minute", minute, 1, 2, Check::Fits);
        c.take(&[rate()], "h", t).await.unwrap();
        assert_eq!(c.take(&[rate()], "h", t + 500).await.unwrap().counters[0].used, 2);
        assert_eq!(c.take(&[rate()], "h", t + 999).await.unwrap().refused, Some(0));
        let rolled = c.take(&[rate()], "h", t + 1000).await.unwrap();
        let expect = CounterState {
            used: 1,
            window_start: t + 1000,
            resets_at: t + 2000,
        };
        assert_eq!(
            rolled,
            Taken {
                refused: None,
                counters: vec![expect]
            }
        );

        // Read changes nothing: an ended window reads as empty, and is still there after.
        let ended = c.read(&[("vk:d:minute", minute)], t + 5000).await.unwrap();
        assert_eq!(
            ended,
            vec![CounterState {
                used: 0,
                window_start: t + 5000,
                resets_at: t + 6000
            }]
        );
        let again = c
            .read(&[("vk:d:minute", minute), ("vk:d:unknown", day)], t + 1500)
            .await
            .unwrap();
        let unknown = CounterState {
            used: 0,
            window_start: t,
            resets_at: t + MINUTE,
        };
        assert_eq!(again, vec![expect, unknown]);
        assert_eq!(c.read(&[], t).await.unwrap(), vec![]);

        // Settle: a reservation counts (reads included) until settled, then the settled amount
        // counts for good in its place, only while the window still starts where it did.
        let reserve = |n, lease| Take {
            lease,
            ..take("vk:e:budget", budget, n, 1000, Check::Below)
        };
        let start = c.take(&[reserve(100, Some(MINUTE))], "e1", t).await.unwrap().counters[0].window_start;
        assert_eq!(
            used(c, "vk:e:budget", budget, t + 1).await,
            100,
            "the reservation counts"
        );
        let both = c.take(&[reserve(30, None)], "e2", t + 1).await.unwrap();
        assert_eq!(both.counters[0].used, 130, "settled 30 + reserved 100");
        c.settle("vk:e:budget", start, "e1", 150, t + 2).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 3).await, 180, "settled 30 + 150");
        c.take(&[reserve(70, Some(MINUTE))], "e3", t + 4).await.unwrap();
        c.settle("vk:e:budget", start, "e3", 20, t + 5).await.unwrap();
        assert_eq!(
            used(c, "vk:e:budget", budget, t + 6).await,
            200,
            "settled below the reservation"
        );
        c.settle("vk:e:budget", start + 1, "e4", 500, t + 7).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 8).await, 200, "another window start");
        c.settle("vk:e:none", t, "e1", 5, t).await.unwrap();
        assert_eq!(used(c, "vk:e:none", budget, t).await, 0, "settle creates nothing");
        // A reservation nobody settles stops counting when its lease passes; settled late, its
        // amount is still counted in its window.
        c.take(&[reserve(50, Some(1000))], "e5", t + 10).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 1009).await, 250, "within the lease");
        assert_eq!(used(c, "vk:e:budget", budget, t + 1010).await, 200, "the lease passed");
        let after_lease = c.take(&[reserve(0, None)], "e6", t + 1010).await.unwrap();
        assert_eq!(after_lease.counters[0].used, 200, "a take does not count it either");
        c.settle("vk:e:budget", start, "e5", 40, t + 1020).await.unwrap();
        assert_eq!(
            used(c, "vk:e:budget", budget, t + 1021).await,
            240,
            "settled after expiry"
        );
        // Settling into a window that rolled over counts nothing.
        c.take(&[reserve(60, Some(2 * MINUTE))], "e7", t + 2000).await.unwrap();
        let later = c.take(&[reserve(10, None)], "e8", t + MINUTE).await.unwrap().counters[0];
        assert_eq!((later.used, later.window_start), (10, t + MINUTE), "rolled over");
        c.settle("vk:e:budget", start, "e7", 500, t + MINUTE + 1).await.unwrap();
        assert_eq!(
            used(c, "vk:e:budget", budget, t + MINUTE + 2).await,
            10,
            "the old window's settlement is dropped (and its reservation with it)"
        );

        sliding(c, t).await;

        // Slots: up to the limit; a release frees one; a lease that passed frees its slot.
        let slot = "vk:f:concurrent";
        assert!(c.acquire(slot, "h1", 2, 1000, t).await.unwrap());
        assert!(c.acquire(slot, "h2", 2, 1000, t + 10).await.unwrap());
        assert!(!c.acquire(slot, "h3", 2, 1000, t + 20).await.unwrap(), "at the limit");
        c.release(slot, "h1").await.unwrap();
        c.release(slot, "nobody").await.unwrap();
        c.release("vk:f:none", "h1").await.unwrap();
        assert!(c.acquire(slot, "h3", 2, 1000, t + 30).await.unwrap(), "released");
        assert!(
            !c.acquire(slot, "h4", 2, 1000, t + 1009).await.unwrap(),
            "h2 holds until t + 1010"
        );
        assert!(
            c.acquire(slot, "h4", 2, 1000, t + 1010).await.unwrap(),
            "h2's lease passed"
        );
        assert!(!c.acquire(slot, "h5", 2, 1000, t + 1011).await.unwrap(), "h3 and h4");
        assert!(!c.acquire("vk:f:zero", "h1", 0, 1000, t).await.unwrap(), "limit 0");
    }

    /// A sliding window: exact within every window of its length; entries settle and leave.
    async fn sliding(c: &dyn Counters, t: u64) {
        let window = Window::Sliding { length: 1000 };
        let hit = |now: u64| async move {
            let taken = c
                .take(
                    &[take("vk:s:requests", window, 1, 3, Check::Fits)],
                    &format!("s{now}"),
                    now,
                )
                .await
                .unwrap();
            (taken.refused.is_none(), taken.counters[0])
        };
        let state = |used, now, resets_at| CounterState {
            used,
            window_start: now,
            resets_at,
        };
        assert_eq!(hit(t).await, (true, state(1, t, t + 1000)));
        assert_eq!(hit(t + 400).await, (true, state(2, t + 400, t + 1000)));
        assert_eq!(hit(t + 800).await, (true, state(3, t + 800, t + 1000)));
        assert_eq!(
            hit(t + 900).await,
            (false, state(3, t + 900, t + 1000)),
            "3 in the window"
        );
        assert_eq!(hit(t + 999).await, (false, state(3, t + 999, t + 1000)));
        assert_eq!(
            hit(t + 1001).await,
            (true, state(3, t + 1001, t + 1400)),
            "the first entry left"
        );
        assert_eq!(hit(t + 1300).await, (false, state(3, t + 1300, t + 1400)));
        assert_eq!(hit(t + 1400).await, (true, state(3, t + 1400, t + 1800)));
        let read = c.read(&[("vk:s:requests", window)], t + 1850).await.unwrap();
        assert_eq!(read, vec![state(2, t + 1850, t + 2001)], "read counts live entries");
        let empty = c.read(&[("vk:s:requests", window)], t + 2400).await.unwrap();
        assert_eq!(empty, vec![state(0, t + 2400, t + 3400)], "none live: now + length");

        // A key named twice in one call: the second take counts the first.
        let twice = |n| take("vk:s:twice", window, n, 2, Check::Fits);
        let both = c.take(&[twice(1), twice(1)], "s1", t).await.unwrap();
        assert_eq!((both.refused, both.counters[1].used), (None, 2));
        assert_eq!(c.take(&[twice(1)], "s2", t + 1).await.unwrap().refused, Some(0));

        // Settle sets the holder's entry's amount (0 removes it); a gone entry stays gone.
        let images = |n| Take {
            lease: Some(5),
            ..take("vk:s:images", window, n, 10, Check::Fits)
        };
        let first = c.take(&[images(4)], "i1", t).await.unwrap().counters[0];
        assert_eq!(first.window_start, t, "the entry's ts");
        c.settle("vk:s:images", first.window_start, "i1", 2, t + 10)
            .await
            .unwrap();
        assert_eq!(used(c, "vk:s:images", window, t + 11).await, 2, "settled to 2");
        assert_eq!(
            used(c, "vk:s:images", window, t + 500).await,
            2,
            "an entry's lease is its window"
        );
        let second = c.take(&[images(3)], "i2", t + 20).await.unwrap().counters[0];
        assert_eq!(second.used, 5);
        c.settle("vk:s:images", second.window_start, "i2", 0, t + 21)
            .await
            .unwrap();
        assert_eq!(used(c, "vk:s:images", window, t + 22).await, 2, "0 removes the entry");
        c.settle("vk:s:images", second.window_start, "i2", 5, t + 23)
            .await
            .unwrap();
        assert_eq!(
            used(c, "vk:s:images", window, t + 24).await,
            2,
            "nothing: the entry is gone"
        );
        c.settle("vk:s:images", t + 1, "i1", 9, t + 25).await.unwrap();
        assert_eq!(
            used(c, "vk:s:images", window, t + 26).await,
            2,
            "another ts: not the entry"
        );
        assert_eq!(used(c, "vk:s:images", window, t + 1000).await, 0, "i1 left the window");
    }

    /// [`Counters::remove_ended`] on a store that keeps counters until it is called: ended
    /// counters go (and are counted), others stay; expired slots go too.
    pub async fn remove_ended(c: &dyn Counters, t: u64) {
        let short = Window::Fixed {
            start: t,
            end: t + 1000,
        };
        let long = Window::FromFirstUse { length: 5000 };
        let calls = [
            take("vk:g:short", short, 1, 9, Check::Fits),
            take("vk:g:long", long, 2, 9, Check::Fits),
        ];
        assert_eq!(c.take(&calls, "h", t).await.unwrap().refused, None);
        assert!(c.acquire("vk:g:slots", "h1", 1, 1000, t).await.unwrap());
        assert_eq!(c.remove_ended(t + 999).await.unwrap(), 0);
        assert_eq!(used(c, "vk:g:short", short, t + 999).await, 1);
        assert_eq!(c.remove_ended(t + 1000).await.unwrap(), 1);
        assert_eq!(
            used(c, "vk:g:short", short, t + 500).await,
            0,
            "removed: its own window reads empty"
        );
        assert_eq!(used(c, "vk:g:long", long, t + 1000).await, 2, "still in its window");
        assert!(c.acquire("vk:g:slots", "h2", 1, 1000, t + 1000).await.unwrap());
        assert_eq!(c.remove_ended(t + 5000).await.unwrap(), 1);
        assert_eq!(c.remove_ended(t + 5000).await.unwrap(), 0);

        // A sliding window goes once its last entry left it; an expired reservation is dropped
        // (its counter stays until its window ends).
        let sliding = Window::Sliding { length: 1000 };
        let fixed = Window::Fixed {
            start: t + 6000,
            end: t + 9000,
        };
        let calls = [
            take("vk:g:sliding", sliding, 1, 9, Check::Fits),
            Take {
                lease: Some(500),
                ..take("vk:g:reserved", fixed, 4, 9, Check::Fits)
            },
        ];
        assert_eq!(c.take(&calls, "g1", t + 6000).await.unwrap().refused, None);
        assert_eq!(c.remove_ended(t + 6999).await.unwrap(), 0);
        assert_eq!(used(c, "vk:g:sliding", sliding, t + 6999).await, 1);
        assert_eq!(c.remove_ended(t + 7000).await.unwrap(), 1, "the sliding window");
        assert_eq!(used(c, "vk:g:reserved", fixed, t + 7000).await, 0);
        assert_eq!(c.remove_ended(t + 9000).await.unwrap(), 1, "the fixed counter");
    }

    /// 50 tasks, shared between `a` and `b` (two clients of one store, like two replicas), each
    /// take 1 against a limit of 10, and each ask for one of 10 slots: exactly 10 get each.
    pub async fn concurrent(a: Arc<dyn Counters>, b: Arc<dyn Counters>, t: u64) {
        let day = Window::Fixed {
            start: t,
            end: t + MINUTE,
        };
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let c = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let taken = c
                        .take(&[take("vk:h:requests", day, 1, 10, Check::Fits)], "h", t)
                        .await
                        .unwrap();
                    let slot = c
                        .acquire("vk:h:slots", &format!("holder-{i}"), 10, MINUTE, t)
                        .await
                        .unwrap();
                    (taken.refused.is_none(), slot)
                })
            })
            .collect();
        let (mut admitted, mut slots) = (0, 0);
        for task in tasks {
            let (took, slot) = task.await.unwrap();
            admitted += usize::from(took);
            slots += usize::from(slot);
        }
        assert_eq!((admitted, slots), (10, 10));
        assert_eq!(used(&*a, "vk:h:requests", day, t).await, 10);
        assert_eq!(used(&*b, "vk:h:requests", day, t).await, 10);

        // The same on a sliding window, each task at its own ms, with a reserved budget beside.
        let window = Window::Sliding { length: MINUTE };
        let budget = Window::FromFirstUse { length: MINUTE };
        let tasks: Vec<_> = (0..50u64)
            .map(|i| {
                let c = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move {
                    let takes = [
                        take("vk:h:sliding", window, 1, 10, Check::Fits),
                        Take {
                            lease: Some(MINUTE),
                            ..take("vk:h:usd", budget, 3, 1000, Check::Below)
                        },
                    ];
                    let taken = c.take(&takes, &format!("holder-{i}"), t + i).await.unwrap();
                    taken.refused.is_none()
                })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.unwrap());
        }
        assert_eq!(admitted, 10);
        assert_eq!(used(&*a, "vk:h:sliding", window, t + 50).await, 10);
        assert_eq!(used(&*b, "vk:h:usd", budget, t + 50).await, 30, "10 reservations of 3");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn memory_conformance() {
        suite::conformance(&MemoryCounters::default(), super::super::now_ms()).await;
    }

    #[tokio::test]
    async fn memory_remove_ended() {
        let c = MemoryCounters::default();
        let t = super::super::now_ms();
        suite::remove_ended(&c, t).await;
        assert!(c.lock().slots.is_empty(), "the expired slots went too");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_concurrent() {
        let c: Arc<dyn Counters> = Arc::new(MemoryCounters::default());
        suite::concurrent(c.clone(), c, super::super::now_ms()).await;
    }

    #[test]
    fn apply_takes_adds_only_when_all_fit() {
        let w = Window::Fixed { start: 0, end: 10 };
        let t = |key, amount| Take {
            key,
            window: w,
            amount,
            limit: 3,
            check: Check::Fits,
            lease: None,
        };
        let all = apply_takes(&[Some((1, 0)).into(), None.into()], &[t("a", 2), t("b", 3)], 5);
        assert_eq!(all.refused, None);
        assert_eq!(all.counters.iter().map(|c| c.used).collect::<Vec<_>>(), vec![3, 3]);
        let one = apply_takes(&[Some((1, 0)).into(), Some((1, 0)).into()], &[t("a", 2), t("b", 3)], 5);
        assert_eq!(one.refused, Some(1));
        assert_eq!(one.counters.iter().map(|c| c.used).collect::<Vec<_>>(), vec![1, 1]);
    }

    #[test]
    fn current_counts_holds() {
        let reserved = Stored {
            settled: Some((5, 100)),
            held: 3,
            oldest: None,
        };
        let fixed = Window::Fixed { start: 100, end: 200 };
        assert_eq!(current(reserved, fixed, 150).used, 8, "settled + reserved");
        let next = Window::Fixed { start: 200, end: 300 };
        assert_eq!(current(reserved, next, 250).used, 0, "another window: neither");
        let entries = Stored {
            settled: None,
            held: 4,
            oldest: Some(120),
        };
        let sliding = Window::Sliding { length: 100 };
        let expect = CounterState {
            used: 4,
            window_start: 150,
            resets_at: 220,
        };
        assert_eq!(current(entries, sliding, 150), expect);
        assert!(in_window(120, 100, 219) && !in_window(120, 100, 220));
    }

    /// The memory store drops an expired reservation and a sliding window's old entries when
    /// it removes ended counters, while the counter itself stays in its window.
    #[tokio::test]
    async fn memory_remove_ended_drops_holds() {
        let c = MemoryCounters::default();
        let fixed = Window::Fixed { start: 0, end: 10_000 };
        let takes = [
            Take {
                key: "r",
                window: fixed,
                amount: 4,
                limit: 9,
                check: Check::Fits,
                lease: Some(500),
            },
            Take {
                key: "s",
                window: Window::Sliding { length: 1000 },
                amount: 1,
                limit: 9,
                check: Check::Fits,
                lease: None,
            },
        ];
        c.take(&takes, "h1", 0).await.unwrap();
        c.take(&takes[1..], "h2", 600).await.unwrap();
        assert_eq!(c.remove_ended(1000).await.unwrap(), 0);
        let inner = c.lock();
        assert!(inner.counters.get("r").is_some_and(|w| w.reserved.is_empty()));
        assert_eq!(inner.sliding.get("s").map(|s| s.entries.len()), Some(1), "h1's left");
    }
}
