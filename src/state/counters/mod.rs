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

mod memory;
pub use memory::MemoryCounters;

#[cfg(test)]
pub(super) mod suite;

#[cfg(test)]
mod tests {
    use super::*;

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
}
