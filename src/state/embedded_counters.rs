//! Governance's [`Counters`] in the embedded store: tables of the same SQLite file, used on
//! the same store thread as the jobs. A take is one `BEGIN IMMEDIATE` transaction (read the
//! counters, [`apply_takes`], write them when all fit), so two processes on one file admit
//! exactly the limit together; spend outlives a restart. A fixed or first-use counter is a row
//! of `counters` (its settled amount) and its holders' rows of `reservations`; a sliding window
//! is its rows of `entries`. Ended counters, expired reservations, entries out of their window
//! and expired slots stay until [`Counters::remove_ended`] deletes them (a take also drops the
//! old entries and expired reservations of the keys it writes).

use super::counters::{apply_takes, current, CounterState, Counters, Stored, Take, Taken, Window};
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
CREATE TABLE IF NOT EXISTS reservations (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    amount INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (key, holder)
);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT NOT NULL,
    holder TEXT NOT NULL,
    ts INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (key, holder)
);
CREATE INDEX IF NOT EXISTS entries_by_ts ON entries (key, ts);
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

/// The last ts of a sliding window of `length` that is out of it at `now`.
fn cutoff(length: u64, now: u64) -> i64 {
    as_i64(now).saturating_sub(as_i64(length))
}

/// Counter `key` in `window` as stored at `now` (see [`Stored`]).
fn stored(db: &Connection, key: &str, window: Window, now: u64) -> rusqlite::Result<Stored> {
    if let Window::Sliding { length } = window {
        let (held, oldest): (i64, Option<i64>) = db
            .prepare_cached("SELECT COALESCE(SUM(amount), 0), MIN(ts) FROM entries WHERE key = ?1 AND ts > ?2")?
            .query_row(params![key, cutoff(length, now)], |row| Ok((row.get(0)?, row.get(1)?)))?;
        return Ok(Stored {
            settled: None,
            held: as_u64(held),
            oldest: oldest.map(as_u64),
        });
    }
    let settled = db
        .prepare_cached("SELECT used, window_start FROM counters WHERE key = ?1")?
        .query_row([key], |row| Ok((as_u64(row.get(0)?), as_u64(row.get(1)?))))
        .optional()?;
    let held: i64 = match settled {
        Some(_) => db
            .prepare_cached("SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE key = ?1 AND until > ?2")?
            .query_row(params![key, as_i64(now)], |row| row.get(0))?,
        None => 0,
    };
    Ok(Stored {
        settled,
        held: as_u64(held),
        oldest: None,
    })
}

/// Writes admitted `take` (its counter now `c`) as `holder`'s (see [`apply_takes`]).
fn write(db: &Connection, take: &Take<'_>, c: &CounterState, holder: &str, now: u64) -> rusqlite::Result<()> {
    let amount = as_i64(take.amount);
    if let Window::Sliding { length } = take.window {
        if take.amount == 0 {
            return Ok(());
        }
        db.prepare_cached("DELETE FROM entries WHERE key = ?1 AND ts <= ?2")?
            .execute(params![take.key, cutoff(length, now)])?;
        db.prepare_cached(
            "INSERT INTO entries (key, holder, ts, amount, until) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (key, holder) DO UPDATE SET ts = excluded.ts, until = excluded.until, \
             amount = amount + excluded.amount",
        )?
        .execute(params![
            take.key,
            holder,
            as_i64(now),
            amount,
            as_i64(now.saturating_add(length))
        ])?;
        return Ok(());
    }
    let start: Option<i64> = db
        .prepare_cached("SELECT window_start FROM counters WHERE key = ?1")?
        .query_row([take.key], |row| row.get(0))
        .optional()?;
    if start != Some(as_i64(c.window_start)) {
        db.prepare_cached(
            "INSERT INTO counters (key, used, window_start, resets_at) VALUES (?1, 0, ?2, ?3) \
             ON CONFLICT (key) DO UPDATE SET used = 0, window_start = excluded.window_start, \
             resets_at = excluded.resets_at",
        )?
        .execute(params![take.key, as_i64(c.window_start), as_i64(c.resets_at)])?;
        db.prepare_cached("DELETE FROM reservations WHERE key = ?1")?
            .execute([take.key])?;
    }
    match take.lease {
        None => {
            db.prepare_cached("UPDATE counters SET used = used + ?2 WHERE key = ?1")?
                .execute(params![take.key, amount])?;
        }
        Some(_) if take.amount == 0 => {}
        Some(lease) => {
            db.prepare_cached("DELETE FROM reservations WHERE key = ?1 AND until <= ?2")?
                .execute(params![take.key, as_i64(now)])?;
            db.prepare_cached(
                "INSERT INTO reservations (key, holder, amount, until) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (key, holder) DO UPDATE SET amount = amount + excluded.amount, \
                 until = MAX(until, excluded.until)",
            )?
            .execute(params![take.key, holder, amount, as_i64(now.saturating_add(lease))])?;
        }
    }
    Ok(())
}

/// A [`Take`] that can cross to the store's thread.
struct OwnedTake {
    key: String,
    take: Take<'static>,
}

impl OwnedTake {
    fn of(take: &Take<'_>) -> OwnedTake {
        OwnedTake {
            key: take.key.to_string(),
            take: Take { key: "", ..*take },
        }
    }

    fn borrow(&self) -> Take<'_> {
        Take {
            key: &self.key,
            ..self.take
        }
    }
}

#[async_trait]
impl Counters for EmbeddedJobs {
    async fn take(&self, takes: &[Take<'_>], holder: &str, now: u64) -> StateResult<Taken> {
        let owned: Vec<OwnedTake> = takes.iter().map(OwnedTake::of).collect();
        let holder = holder.to_string();
        self.with(move |db| {
            let takes: Vec<Take<'_>> = owned.iter().map(OwnedTake::borrow).collect();
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let stored = takes
                .iter()
                .map(|t| stored(&tx, t.key, t.window, now))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let taken = apply_takes(&stored, &takes, now);
            if taken.refused.is_none() {
                for (take, c) in takes.iter().zip(&taken.counters) {
                    write(&tx, take, c, &holder, now)?;
                }
            }
            tx.commit()?;
            Ok(taken)
        })
        .await
    }

    async fn settle(&self, key: &str, window_start: u64, holder: &str, amount: u64, _now: u64) -> StateResult<()> {
        let (key, holder) = (key.to_string(), holder.to_string());
        self.with(move |db| {
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let entry: Option<i64> = tx
                .prepare_cached("SELECT ts FROM entries WHERE key = ?1 AND holder = ?2")?
                .query_row([&key, &holder], |row| row.get(0))
                .optional()?;
            if entry == Some(as_i64(window_start)) {
                if amount == 0 {
                    tx.prepare_cached("DELETE FROM entries WHERE key = ?1 AND holder = ?2")?
                        .execute([&key, &holder])?;
                } else {
                    tx.prepare_cached("UPDATE entries SET amount = ?3 WHERE key = ?1 AND holder = ?2")?
                        .execute(params![key, holder, as_i64(amount)])?;
                }
            } else {
                tx.prepare_cached("DELETE FROM reservations WHERE key = ?1 AND holder = ?2")?
                    .execute([&key, &holder])?;
                tx.prepare_cached("UPDATE counters SET used = used + ?3 WHERE key = ?1 AND window_start = ?2")?
                    .execute(params![key, as_i64(window_start), as_i64(amount)])?;
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
                .map(|(key, window)| Ok(current(stored(&tx, key, *window, now)?, *window, now)))
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
            let now = as_i64(now);
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let removed = tx.execute("DELETE FROM counters WHERE resets_at <= ?1", [now])?;
            tx.execute(
                "DELETE FROM reservations WHERE until <= ?1 OR key NOT IN (SELECT key FROM counters)",
                [now],
            )?;
            let windows = "SELECT COUNT(DISTINCT key) FROM entries";
            let before: i64 = tx.query_row(windows, [], |row| row.get(0))?;
            tx.execute("DELETE FROM entries WHERE until <= ?1", [now])?;
            let after: i64 = tx.query_row(windows, [], |row| row.get(0))?;
            tx.execute("DELETE FROM slots WHERE until <= ?1", [now])?;
            tx.commit()?;
            let removed = u64::try_from(removed).unwrap_or(u64::MAX);
            Ok(removed.saturating_add(as_u64(before - after)))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::counters::suite;
    use super::super::counters::Check;
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
        let left: i64 = store
            .with(|db| {
                let count = "SELECT (SELECT COUNT(*) FROM slots) + (SELECT COUNT(*) FROM reservations) \
                             + (SELECT COUNT(*) FROM entries)";
                Ok(db.query_row(count, [], |row| row.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(left, 0, "the expired slots, reservations and entries went too");
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
            lease: Some(60_000),
        };
        {
            let store = EmbeddedJobs::open(dir.path()).unwrap();
            assert_eq!(store.take(&[spend], "r1", t).await.unwrap().refused, None);
            store.settle("vk:a:budget", t, "r1", 1_250_000, t).await.unwrap();
        }
        let store = EmbeddedJobs::open(dir.path()).unwrap();
        let read = store.read(&[("vk:a:budget", month)], t + 1).await.unwrap();
        assert_eq!(read[0].used, 1_250_000);
    }
}
