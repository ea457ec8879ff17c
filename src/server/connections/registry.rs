//! The connection slots: one per open client connection, at most the cap; the idle state of
//! each HTTP/1.x connection, so that at the cap the longest-idle one makes room; the
//! once-a-second refusal log.

use crate::metrics::{ConnectionClose, Metrics};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// `IdleState` value of a connection that is reading or answering a request.
const BUSY: u64 = 0;
/// `IdleState` value of a connection closed to make room for a new one.
const EVICTED: u64 = u64::MAX;

/// The connection slots: how many are taken, the HTTP/1.x connections among them (to find the
/// longest-idle one), and the refusal log.
pub(super) struct Slots {
    pub(super) cap: usize,
    open: AtomicUsize,
    /// Hands out the order in which connections become idle (1, 2, …).
    idle_order: AtomicU64,
    /// Every open HTTP/1.x connection; each knows its index ([`Tracked::index`]).
    h1: Mutex<Vec<Arc<Tracked>>>,
    /// Refused connections lingering after their answer.
    pub(super) lingering: AtomicUsize,
    refusals: RefusalLog,
    pub(super) metrics: Arc<Metrics>,
}

/// One HTTP/1.x connection as the slots see it.
pub(super) struct Tracked {
    /// [`BUSY`], [`EVICTED`], or the order in which it became idle.
    state: AtomicU64,
    /// Its index in [`Slots::h1`] (changed under that lock).
    index: AtomicUsize,
    /// Woken when the connection is evicted.
    evict: Notify,
}

/// A taken slot; gives it back when dropped.
pub(super) struct Slot<'a> {
    slots: &'a Slots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.release();
    }
}

/// A taken slot of an HTTP/1.x connection, registered so that it can be evicted while idle.
/// Dropped: unregistered, and the slot given back unless it was evicted (its slot then went
/// to the new connection).
pub(super) struct TrackedSlot<'a> {
    slots: &'a Slots,
    tracked: Arc<Tracked>,
}

impl<'a> Slot<'a> {
    /// Registers this slot's connection as an HTTP/1.x one.
    pub(super) fn track(self) -> TrackedSlot<'a> {
        let slots = self.slots;
        // The slot now belongs to the tracked one, which gives it back.
        std::mem::forget(self);
        let tracked = Arc::new(Tracked {
            state: AtomicU64::new(BUSY),
            index: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        let mut list = slots.h1.lock().unwrap_or_else(|e| e.into_inner());
        tracked.index.store(list.len(), Ordering::Relaxed);
        list.push(tracked.clone());
        drop(list);
        TrackedSlot { slots, tracked }
    }
}

impl TrackedSlot<'_> {
    /// Marks the connection idle (waiting for a request); returns the mark for
    /// [`TrackedSlot::leave_idle`].
    pub(super) fn enter_idle(&self) -> u64 {
        let order = self.slots.idle_order.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self
            .tracked
            .state
            .compare_exchange(BUSY, order, Ordering::AcqRel, Ordering::Relaxed);
        order
    }

    /// Marks the connection busy again; false when it was evicted meanwhile.
    pub(super) fn leave_idle(&self, order: u64) -> bool {
        self.tracked
            .state
            .compare_exchange(order, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Resolves when the connection is evicted.
    pub(super) async fn evicted(&self) {
        self.tracked.evict.notified().await;
    }
}

impl Drop for TrackedSlot<'_> {
    fn drop(&mut self) {
        let mut list = self.slots.h1.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.tracked.index.load(Ordering::Relaxed);
        if list.get(i).is_some_and(|t| Arc::ptr_eq(t, &self.tracked)) {
            list.swap_remove(i);
            if let Some(moved) = list.get(i) {
                moved.index.store(i, Ordering::Relaxed);
            }
        }
        drop(list);
        if self.tracked.state.load(Ordering::Acquire) != EVICTED {
            self.slots.release();
        }
    }
}

impl Slots {
    pub(super) fn new(cap: usize, metrics: Arc<Metrics>) -> Self {
        Slots {
            cap,
            open: AtomicUsize::new(0),
            idle_order: AtomicU64::new(0),
            h1: Mutex::new(Vec::new()),
            lingering: AtomicUsize::new(0),
            refusals: RefusalLog::new(),
            metrics,
        }
    }

    /// Takes a slot for a new connection: a free one, else the one of the longest-idle
    /// HTTP/1.x connection (which is evicted); `None` when every slot is busy.
    pub(super) fn acquire(&self) -> Option<Slot<'_>> {
        let mut open = self.open.load(Ordering::Relaxed);
        while open < self.cap {
            match self
                .open
                .compare_exchange_weak(open, open + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.metrics.connections.opened();
                    return Some(Slot { slots: self });
                }
                Err(now) => open = now,
            }
        }
        self.evict_longest_idle().then(|| Slot { slots: self })
    }

    /// Evicts the HTTP/1.x connection idle the longest, if any: its slot goes to the caller.
    pub(super) fn evict_longest_idle(&self) -> bool {
        let list = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        // A candidate that turns busy while it is picked is skipped; a few tries suffice.
        for _ in 0..8 {
            let oldest = list
                .iter()
                .filter_map(|t| {
                    let state = t.state.load(Ordering::Acquire);
                    (state != BUSY && state != EVICTED).then_some((state, t))
                })
                .min_by_key(|(state, _)| *state);
            let Some((state, tracked)) = oldest else {
                return false;
            };
            if tracked
                .state
                .compare_exchange(state, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracked.evict.notify_one();
                self.metrics.connections.closed(ConnectionClose::Evicted);
                return true;
            }
        }
        false
    }

    pub(super) fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections.released();
    }

    /// Counts and (rate-limited) logs a refused connection.
    pub(super) fn refused(&self) {
        self.metrics.connections.refused();
        if let Some(count) = self.refusals.note(Instant::now()) {
            log::warn!(
                "refused {count} client connection(s) since the last such line: all {} connection slots \
                 (limits.max_connections) are held by busy connections",
                self.cap
            );
        }
    }
}

/// Rate-limits the refusal log line to one a second, carrying the count of the refusals since
/// the last line.
pub(super) struct RefusalLog {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last line, plus one (0 = none yet).
    last: AtomicU64,
    pending: AtomicU64,
}

impl RefusalLog {
    pub(super) fn new() -> Self {
        RefusalLog {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }

    /// Notes one refusal at `now`; returns the count to log when a line is due.
    pub(super) fn note(&self, now: Instant) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let ms = u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && ms < last.saturating_add(1000) {
            return None;
        }
        self.last
            .compare_exchange(last, ms, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| self.pending.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(cap: usize) -> Slots {
        Slots::new(cap, Arc::new(Metrics::new().unwrap()))
    }

    #[test]
    fn slots_evict_the_longest_idle_connection_then_refuse() {
        let s = slots(3);
        let a = s.acquire().unwrap().track();
        let b = s.acquire().unwrap().track();
        let c = s.acquire().unwrap().track();
        // All busy: refused.
        assert!(s.acquire().is_none());
        let b_idle = b.enter_idle();
        let a_idle = a.enter_idle();
        // b has been idle longest: it goes.
        let d = s.acquire().unwrap().track();
        assert!(!b.leave_idle(b_idle), "b was evicted");
        assert_eq!(b.tracked.state.load(Ordering::Relaxed), EVICTED);
        assert_eq!(s.open.load(Ordering::Relaxed), 3, "the slot was handed over");
        drop(b);
        assert_eq!(
            s.open.load(Ordering::Relaxed),
            3,
            "an evicted connection gives nothing back"
        );
        // a is busy again before anyone needs its slot: nothing to evict.
        assert!(a.leave_idle(a_idle));
        assert!(s.acquire().is_none());
        drop(c);
        assert_eq!(s.open.load(Ordering::Relaxed), 2);
        let e = s.acquire().unwrap();
        assert_eq!(s.open.load(Ordering::Relaxed), 3);
        drop((a, d, e));
        assert_eq!(s.open.load(Ordering::Relaxed), 0);
        assert!(s.h1.lock().unwrap().is_empty());
        let text = String::from_utf8(s.metrics.encode()).unwrap();
        assert!(text.contains(r#"refract_client_connections_closed_total{reason="evicted"} 1"#));
        assert!(text.lines().any(|l| l == "refract_client_connections 0"), "{text}");
    }

    #[test]
    fn registry_indexes_stay_right_after_removals() {
        let s = slots(100);
        let mut held: Vec<_> = (0..10).map(|_| s.acquire().unwrap().track()).collect();
        for i in [3, 0, 5, 1] {
            held.remove(i);
        }
        let list = s.h1.lock().unwrap();
        assert_eq!(list.len(), 6);
        for (i, t) in list.iter().enumerate() {
            assert_eq!(t.index.load(Ordering::Relaxed), i);
        }
    }

    #[test]
    fn refusal_log_says_at_most_one_line_a_second_with_the_count() {
        let log = RefusalLog::new();
        let t0 = log.epoch;
        assert_eq!(log.note(t0), Some(1));
        for ms in [1, 200, 999] {
            assert_eq!(log.note(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.note(t0 + Duration::from_millis(1001)), Some(4));
        assert_eq!(log.note(t0 + Duration::from_millis(1500)), None);
        assert_eq!(log.note(t0 + Duration::from_millis(5000)), Some(2));
    }
}
