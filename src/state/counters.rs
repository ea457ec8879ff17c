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
/// `on_store_error: fail_open` while the shared store cannot be reached, and in tests.
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
