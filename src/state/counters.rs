//! Usage counters for governance: rate-limit windows, budget spend and concurrency slots,
//! shared by every replica that uses the same store.
//!
//! A counter is a named amount in a window. [`Counters::take`] checks and adds a set of
//! amounts all-or-nothing (one atomic step on the store: a Lua script in Redis, one
//! transaction on the embedded store's thread), so N replicas together admit exactly the
//! configured limit. [`Counters::adjust`] moves a counter by a signed amount afterwards (a
//! budget reservation settled to the real cost, images reserved but not delivered).
//! [`Counters::acquire`] / [`Counters::release`] hold concurrency slots with a lease, so a
//! replica that died does not hold its slots for ever.
//!
//! Three implementations with one semantics ([`apply_take`] is the rule, written once in
//! Rust; the Redis script mirrors it): [`MemoryCounters`] (one process; also the local
//! fallback when the shared store is unreachable and the policy is `fail_open`), the
//! embedded store's (SQLite, persisted: a restart keeps spend) and Redis's.
//!
//! Every call takes the current time (`now`, Unix milliseconds) from the caller.

use super::StateResult;
use async_trait::async_trait;

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
    /// window starting at `now`.
    FromFirstUse {
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
}

/// A counter as it is after a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    /// The amount counted in the current window (after the call's own amounts, if admitted).
    pub used: u64,
    /// When the current window started (Unix ms).
    pub window_start: u64,
    /// When it ends and the counter resets (Unix ms).
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

/// The rule of one take against a counter stored as `stored` (`used`, `window_start`), at
/// `now`: the counter with its window rolled over if it ended (used 0 in the new window), and
/// whether `take` fits. Nothing is added here; the caller adds `take.amount` to `used` when
/// every take of the call fits.
pub fn apply_take(stored: Option<(u64, u64)>, take: &Take<'_>, now: u64) -> (CounterState, bool) {
    let counter = current(stored, take.window, now);
    let fits = match take.check {
        Check::Fits => counter.used.saturating_add(take.amount) <= take.limit,
        Check::Below => counter.used < take.limit,
    };
    (counter, fits)
}

/// The rule of one [`Counters::take`] call against the counters stored as `stored[i]` (`used`,
/// `window_start`) for `takes[i]`, at `now`: each take checked in order ([`apply_take`]), and,
/// when all fit, every amount added to its counter. A take on a key that an earlier take of the
/// same call names sees that take's amount added (the call runs as if its takes came one after
/// the other), so the last take on a key holds the counter's final value. When one take is
/// refused, the counters are reported as they stand, nothing added. Every store writes
/// `counters[i]` under `takes[i].key`, in order, when `refused` is `None`, and nothing otherwise.
pub fn apply_takes(stored: &[Option<(u64, u64)>], takes: &[Take<'_>], now: u64) -> Taken {
    let mut counters: Vec<CounterState> = Vec::with_capacity(takes.len());
    let mut refused = None;
    for (i, take) in takes.iter().enumerate() {
        let base = match takes[..i].iter().rposition(|t| t.key == take.key) {
            Some(j) => counters
                .get(j)
                .map(|c| (c.used.saturating_add(takes[j].amount), c.window_start)),
            None => stored.get(i).copied().flatten(),
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

/// `used` moved by `delta` ([`Counters::adjust`]): floored at 0, saturating at the top.
pub fn adjusted(used: u64, delta: i64) -> u64 {
    if delta >= 0 {
        used.saturating_add(delta.unsigned_abs())
    } else {
        used.saturating_sub(delta.unsigned_abs())
    }
}

/// The counter stored as `stored` (`used`, `window_start`) at `now`, its window rolled over if
/// it ended.
pub fn current(stored: Option<(u64, u64)>, window: Window, now: u64) -> CounterState {
    match window {
        Window::Fixed { start, end } => match stored {
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
        Window::FromFirstUse { length } => match stored {
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
    }
}

/// Governance's counters (see the module docs). Implementations are atomic across every
/// process that shares the store.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Checks every take against its counter (each rolled to its current window first, see
    /// [`apply_take`]); when all are admitted, adds every amount; when one is refused, adds
    /// none. One atomic step. A counter is kept until its window ended (and, for the
    /// embedded store, until [`Counters::remove_ended`] removes it).
    async fn take(&self, takes: &[Take<'_>], now: u64) -> StateResult<Taken>;

    /// Adds `delta` (negative to give back; the result is floored at 0) to counter `key` if
    /// its window still starts at `window_start`; a counter whose window has since rolled over
    /// (or that is gone) is left as it is. Settles a reservation made by [`Counters::take`].
    async fn adjust(&self, key: &str, window_start: u64, delta: i64, now: u64) -> StateResult<()>;

    /// The counters `keys` (each in its window) as they are at `now`, without changing them
    /// (for the usage endpoint and the remaining-budget gauge).
    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>>;

    /// Takes a concurrency slot of `key` for `holder` (unique per request) until
    /// `now + lease_ms`, if fewer than `limit` unexpired slots are held; `false` otherwise.
    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool>;

    /// Gives back `holder`'s slot of `key` (nothing when it holds none).
    async fn release(&self, key: &str, holder: &str) -> StateResult<()>;

    /// Removes counters whose window ended before `now` (the embedded store; Redis expires
    /// them itself). Returns how many went.
    async fn remove_ended(&self, now: u64) -> StateResult<u64>;
}

/// Counters in this process's memory: [`Counters`] without a store. Used with
/// `on_store_error: fail_open` while the shared store cannot be reached, and in tests. Every
/// call holds one lock for its length (never across an await: there is none). Ended counters
/// and expired slots stay until [`Counters::remove_ended`], which drops both and counts the
/// counters.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    inner: std::sync::Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// `key` → (used, window_start, resets_at).
    counters: std::collections::HashMap<String, (u64, u64, u64)>,
    /// `key` → holder → lease end.
    slots: std::collections::HashMap<String, std::collections::HashMap<String, u64>>,
}

impl MemoryCounters {
    /// The maps, whoever held the lock last (a panic elsewhere leaves them usable).
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Counters for MemoryCounters {
    async fn take(&self, takes: &[Take<'_>], now: u64) -> StateResult<Taken> {
        let mut inner = self.lock();
        let stored: Vec<Option<(u64, u64)>> = takes
            .iter()
            .map(|t| inner.counters.get(t.key).map(|&(used, start, _)| (used, start)))
            .collect();
        let taken = apply_takes(&stored, takes, now);
        if taken.refused.is_none() {
            for (take, c) in takes.iter().zip(&taken.counters) {
                let entry = (c.used, c.window_start, c.resets_at);
                match inner.counters.get_mut(take.key) {
                    Some(slot) => *slot = entry,
                    None => {
                        inner.counters.insert(take.key.to_string(), entry);
                    }
                }
            }
        }
        Ok(taken)
    }

    async fn adjust(&self, key: &str, window_start: u64, delta: i64, _now: u64) -> StateResult<()> {
        if let Some((used, start, _)) = self.lock().counters.get_mut(key) {
            if *start == window_start {
                *used = adjusted(*used, delta);
            }
        }
        Ok(())
    }

    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|&(key, window)| {
                let stored = inner.counters.get(key).map(|&(used, start, _)| (used, start));
                current(stored, window, now)
            })
            .collect())
    }

    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool> {
        let mut inner = self.lock();
        if !inner.slots.contains_key(key) {
            inner.slots.insert(key.to_string(), std::collections::HashMap::new());
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
        let before = inner.counters.len();
        inner.counters.retain(|_, &mut (_, _, resets_at)| resets_at > now);
        let removed = before - inner.counters.len();
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
        let got = c.take(&[images(3)], t).await.unwrap();
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
            c.take(&[images(2)], t).await.unwrap().counters[0].used,
            5,
            "exactly at the limit"
        );
        let over = c.take(&[images(1)], t + 1).await.unwrap();
        assert_eq!(over.refused, Some(0));
        assert_eq!(over.counters[0].used, 5, "a refused take adds nothing");
        assert_eq!(used(c, "vk:a:images", day, t + 2).await, 5);

        // Below: admitted while used < limit (the last one may pass it), refused at and after.
        let budget = Window::FromFirstUse { length: MINUTE };
        let spend = |key, n| take(key, budget, n, 10, Check::Below);
        assert_eq!(c.take(&[spend("vk:a:budget", 4)], t).await.unwrap().refused, None);
        let passed = c.take(&[spend("vk:a:budget", 7)], t + 1).await.unwrap();
        assert_eq!((passed.refused, passed.counters[0].used), (None, 11));
        assert_eq!(
            passed.counters[0].window_start, t,
            "the window started at the first take"
        );
        assert_eq!(
            c.take(&[spend("vk:a:budget", 1)], t + 2).await.unwrap().refused,
            Some(0)
        );
        assert_eq!(
            c.take(&[spend("vk:a:exact", 10)], t).await.unwrap().counters[0].used,
            10
        );
        let at_limit = c.take(&[spend("vk:a:exact", 1)], t).await.unwrap();
        assert_eq!(
            (at_limit.refused, at_limit.counters[0].used),
            (Some(0), 10),
            "used == limit"
        );

        // All or nothing: one take refused, no counter of the call moves.
        let requests = |n| take("vk:b:requests", day, n, 100, Check::Fits);
        c.take(&[requests(1)], t).await.unwrap();
        let calls = [
            requests(1),
            take("vk:b:images", day, 3, 2, Check::Fits),
            take("vk:b:spend", day, 9, 5, Check::Fits),
        ];
        let refused = c.take(&calls, t).await.unwrap();
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
        let added = c.take(&both, t).await.unwrap();
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
            c.take(&twice, t).await.unwrap().refused,
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
            c.take(&[take("vk:c:day", first, 5, 5, Check::Fits)], t)
                .await
                .unwrap()
                .refused,
            None
        );
        assert_eq!(
            c.take(&[take("vk:c:day", first, 1, 5, Check::Fits)], t + 999)
                .await
                .unwrap()
                .refused,
            Some(0)
        );
        let next = c
            .take(&[take("vk:c:day", second, 1, 5, Check::Fits)], t + 1000)
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
        c.take(&[rate()], t).await.unwrap();
        assert_eq!(c.take(&[rate()], t + 500).await.unwrap().counters[0].used, 2);
        assert_eq!(c.take(&[rate()], t + 999).await.unwrap().refused, Some(0));
        let rolled = c.take(&[rate()], t + 1000).await.unwrap();
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

        // Adjust: +/-, floored at 0, only while the window still starts where it did.
        let spend = |n| take("vk:e:budget", budget, n, 1000, Check::Below);
        let start = c.take(&[spend(100)], t).await.unwrap().counters[0].window_start;
        c.adjust("vk:e:budget", start, 50, t + 1).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 2).await, 150);
        c.adjust("vk:e:budget", start, -30, t + 3).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 4).await, 120);
        c.adjust("vk:e:budget", start + 1, 500, t + 5).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 6).await, 120, "another window start");
        c.adjust("vk:e:budget", start, -1000, t + 7).await.unwrap();
        assert_eq!(used(c, "vk:e:budget", budget, t + 8).await, 0, "floored at 0");
        c.adjust("vk:e:none", t, 5, t).await.unwrap();
        assert_eq!(used(c, "vk:e:none", budget, t).await, 0, "adjust creates nothing");
        let later = c.take(&[spend(10)], t + MINUTE).await.unwrap().counters[0];
        assert_eq!((later.used, later.window_start), (10, t + MINUTE), "rolled over");
        c.adjust("vk:e:budget", start, 500, t + MINUTE + 1).await.unwrap();
        assert_eq!(
            used(c, "vk:e:budget", budget, t + MINUTE + 2).await,
            10,
            "the old window's settlement is dropped"
        );

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
        assert_eq!(c.take(&calls, t).await.unwrap().refused, None);
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
                        .take(&[take("vk:h:requests", day, 1, 10, Check::Fits)], t)
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
        };
        let all = apply_takes(&[Some((1, 0)), None], &[t("a", 2), t("b", 3)], 5);
        assert_eq!(all.refused, None);
        assert_eq!(all.counters.iter().map(|c| c.used).collect::<Vec<_>>(), vec![3, 3]);
        let one = apply_takes(&[Some((1, 0)), Some((1, 0))], &[t("a", 2), t("b", 3)], 5);
        assert_eq!(one.refused, Some(1));
        assert_eq!(one.counters.iter().map(|c| c.used).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(
            (adjusted(5, -9), adjusted(5, 2), adjusted(u64::MAX, 1)),
            (0, 7, u64::MAX)
        );
    }
}
