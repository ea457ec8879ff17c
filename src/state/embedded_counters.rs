//! Governance's [`Counters`] in the embedded store: two tables of the same SQLite file, used on
//! the same store thread as the jobs. A take is one `BEGIN IMMEDIATE` transaction (read the
//! counters, [`apply_takes`], write them back when all fit), so two processes on one file
//! admit exactly the limit together; spend outlives a restart. Ended counters and expired slots
//! stay until [`Counters::remove_ended`], which deletes both and counts the counters.

use super::counters::{adjusted, apply_takes, current, Check, CounterState, Counters, Take, Taken, Window};
use super::embedded::{as_i64, EmbeddedJobs};
use super::StateResult;
use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// The counters' tables, created with the jobs' (`connect`).
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY,
    used INTEGER NOT NULL,
    window_start INTEGER NOT NULL,
    resets_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS slots (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (key, holder)
);
";

fn as_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The counter `key` as stored (`used`, `window_start`).
fn stored(db: &Connection, key: &str) -> rusqlite::Result<Option<(u64, u64)>> {
    db.prepare_cached("SELECT used, window_start FROM counters WHERE key = ?1")?
        .query_row([key], |row| Ok((as_u64(row.get(0)?), as_u64(row.get(1)?))))
        .optional()
}

/// A [`Take`] that can cross to the store's thread.
struct OwnedTake {
    key: String,
    window: Window,
    amount: u64,
    limit: u64,
    check: Check,
}

impl OwnedTake {
    fn of(take: &Take<'_>) -> OwnedTake {
        OwnedTake {
            key: take.key.to_string(),
            window: take.window,
            amount: take.amount,
            limit: take.limit,
            check: take.check,
        }
    }

    fn borrow(&self) -> Take<'_> {
        Take {
            key: &self.key,
            window: self.window,
            amount: self.amount,
            limit: self.limit,
            check: self.check,
        }
    }
}

#[async_trait]
impl Counters for EmbeddedJobs {
    async fn take(&self, takes: &[Take<'_>], now: u64) -> StateResult<Taken> {
        let owned: Vec<OwnedTake> = takes.iter().map(OwnedTake::of).collect();
        self.with(move |db| {
            let takes: Vec<Take<'_>> = owned.iter().map(OwnedTake::borrow).collect();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = takes
                .iter()
                .map(|t| stored(&tx, t.key))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let taken = apply_takes(&stored, &takes, now);
            if taken.refused.is_none() {
                let mut write = tx.prepare_cached(
                    "INSERT INTO counters (key, used, window_start, resets_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (key) DO UPDATE SET used = excluded.used, window_start = excluded.window_start, \
                     resets_at = excluded.resets_at",
                )?;
                for (take, c) in takes.iter().zip(&taken.counters) {
                    write.execute(params![
                        take.key,
                        as_i64(c.used),
                        as_i64(c.window_start),
                        as_i64(c.resets_at)
                    ])?;
                }
            }
            tx.commit()?;
            Ok(taken)
        })
        .await
    }

    async fn adjust(&self, key: &str, window_start: u64, delta: i64, _now: u64) -> StateResult<()> {
        let key = key.to_string();
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some((used, start)) = stored(&tx, &key)? {
                if start == window_start {
                    tx.prepare_cached("UPDATE counters SET used = ?2 WHERE key = ?1")?
                        .execute(params![key, as_i64(adjusted(used, delta))])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn read(&self, keys: &[(&str, Window)], now: u64) -> StateResult<Vec<CounterState>> {
        let keys: Vec<(String, Window)> = keys.iter().map(|&(k, w)| (k.to_string(), w)).collect();
        self.with(move |db| {
            let tx = db.transaction()?;
            let read = keys
                .iter()
                .map(|(key, window)| Ok(current(stored(&tx, key)?, *window, now)))
                .collect::<StateResult<Vec<_>>>()?;
            tx.commit()?;
            Ok(read)
        })
        .await
    }

    async fn acquire(&self, key: &str, holder: &str, limit: u64, lease_ms: u64, now: u64) -> StateResult<bool> {
        let (key, holder) = (key.to_string(), holder.to_string());
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached("DELETE FROM slots WHERE key = ?1 AND until <= ?2")?
                .execute(params![key, as_i64(now)])?;
            let held: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM slots WHERE key = ?1")?
                .query_row([&key], |row| row.get(0))?;
            let free = as_u64(held) < limit;
            if free {
                tx.prepare_cached("INSERT OR REPLACE INTO slots (key, holder, until) VALUES (?1, ?2, ?3)")?
                    .execute(params![key, holder, as_i64(now.saturating_add(lease_ms))])?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
    }

    async fn release(&self, key: &str, holder: &str) -> StateResult<()> {
        let (key, holder) = (key.to_string(), holder.to_string());
        self.with(move |db| {
            db.prepare_cached("DELETE FROM slots WHERE key = ?1 AND holder = ?2")?
                .execute(params![key, holder])?;
            Ok(())
        })
        .await
    }

    async fn remove_ended(&self, now: u64) -> StateResult<u64> {
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute("DELETE FROM counters WHERE resets_at <= ?1", [as_i64(now)])?;
            tx.execute("DELETE FROM slots WHERE until <= ?1", [as_i64(now)])?;
            tx.commit()?;
            Ok(u64::try_from(removed).unwrap_or(u64::MAX))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::counters::suite;
    use super::super::now_ms;
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn embedded_conformance() {
        let dir = tempfile::tempdir().unwrap();
        suite::conformance(&EmbeddedJobs::open(dir.path()).unwrap(), now_ms()).await;
    }

    #[tokio::test]
    async fn embedded_remove_ended() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedJobs::open(dir.path()).unwrap();
        suite::remove_ended(&store, now_ms()).await;
        let slots: i64 = store
            .with(|db| Ok(db.query_row("SELECT COUNT(*) FROM slots", [], |row| row.get(0))?))
            .await
            .unwrap();
        assert_eq!(slots, 0, "the expired slots went too");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_concurrent_two_processes() {
        let dir = tempfile::tempdir().unwrap();
        let a: Arc<dyn Counters> = Arc::new(EmbeddedJobs::open(dir.path()).unwrap());
        let b: Arc<dyn Counters> = Arc::new(EmbeddedJobs::open(dir.path()).unwrap());
        suite::concurrent(a, b, now_ms()).await;
    }

    #[tokio::test]
    async fn spend_outlives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t = now_ms();
        let month = Window::Fixed {
            start: t,
            end: t + 86_400_000,
        };
        let spend = Take {
            key: "vk:a:budget",
            window: month,
            amount: 1_500_000,
            limit: 10_000_000,
            check: Check::Below,
        };
        {
            let store = EmbeddedJobs::open(dir.path()).unwrap();
            assert_eq!(store.take(&[spend], t).await.unwrap().refused, None);
            store.adjust("vk:a:budget", t, -250_000, t).await.unwrap();
        }
        let store = EmbeddedJobs::open(dir.path()).unwrap();
        let read = store.read(&[("vk:a:budget", month)], t + 1).await.unwrap();
        assert_eq!(read[0].used, 1_250_000);
    }
}
