//! [`MemoryCounters`]: the counters of one process.

use super::*;

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

#[cfg(test)]
mod tests {
    use super::super::suite;
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn memory_conformance() {
        suite::conformance(&MemoryCounters::default(), crate::state::now_ms()).await;
    }

    #[tokio::test]
    async fn memory_remove_ended() {
        let c = MemoryCounters::default();
        let t = crate::state::now_ms();
        suite::remove_ended(&c, t).await;
        assert!(c.lock().slots.is_empty(), "the expired slots went too");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_concurrent() {
        let c: Arc<dyn Counters> = Arc::new(MemoryCounters::default());
        suite::concurrent(c.clone(), c, crate::state::now_ms()).await;
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
