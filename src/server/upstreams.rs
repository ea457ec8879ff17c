//! Connections to providers: Pingora's connector (connect, TLS, HTTP/2) with idle HTTP/1.1
//! connections kept here and reused most recent first.
//!
//! Pingora's own pool hands out its *oldest* idle connection (a first-in, first-out queue of
//! 16, then a map), and watches each idle connection with a task of its own. After a burst, a
//! trickle of requests therefore rotates over every connection the burst opened, keeping them
//! all alive, and each reuse wakes that connection's watcher and waits for it to let go. Here a
//! request takes the connection released most recently (as hyper's pool does): a trickle keeps
//! reusing one warm connection, the others age out after the provider's
//! `pool_idle_timeout_ms`, and a reuse is a pop from a list.
//!
//! No task watches an idle connection. A sweep, about once a second while any connection is
//! idle, closes those past their idle timeout and those the provider closed (a non-blocking
//! read sees the end, an error or unexpected data); a connection idle for longer than
//! [`CHECK_AFTER`] gets the same check when it is taken. One closed in between fails before
//! any answer, and the exchange sends its request again on a fresh connection, as it did with
//! Pingora's pool. The number of idle connections is bounded as Pingora's pool was (128 ×
//! `server.threads`), the longest idle closed first.

use futures_util::FutureExt;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// A connection idle for longer than this is checked (one non-blocking read) before reuse.
const CHECK_AFTER: Duration = Duration::from_secs(1);

/// How often the idle connections are swept while there are any.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Process-lifetime connections to providers (see the module docs).
pub struct Connector {
    pingora: HttpConnector,
    idle: Arc<IdleConnections>,
}

impl Connector {
    /// A connector with Pingora's `options` (TLS roots, keepalive pool size, …).
    pub fn new(options: ConnectorOptions) -> Self {
        let limit = options.keepalive_pool_size;
        Connector {
            pingora: HttpConnector::new(Some(options)),
            idle: Arc::new(IdleConnections::new(limit)),
        }
    }

    /// A connection to `peer`: the idle HTTP/1.1 one released most recently, else Pingora's
    /// (a pooled HTTP/2 session or a new connection). The flag says whether it was reused.
    pub async fn get_http_session(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        if let Some(stream) = self.idle.take(peer.reuse_hash(), Instant::now()) {
            return Ok((HttpSession::H1(Http1Session::new_with_options(stream, peer)), true));
        }
        // Boxed: Pingora's connect future is large (TLS, address choice), and held inline it
        // would make every exchange's future, and a debug build's stack, that much larger on
        // the path that reuses a connection too.
        Box::pin(self.pingora.get_http_session(peer)).await
    }

    /// Keeps `session` for reuse when its answer was read to the end and it may be kept alive
    /// (HTTP/1.1 here, HTTP/2 in Pingora's pool); closes it otherwise.
    pub async fn release_http_session(&self, session: HttpSession, peer: &HttpPeer) {
        match session {
            HttpSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    let timeout = peer.idle_timeout();
                    if self.idle.put(peer.reuse_hash(), stream, timeout, Instant::now()) {
                        sweep_in_background(&self.idle);
                    }
                }
            }
            other => Box::pin(self.pingora.release_http_session(other, peer, peer.idle_timeout())).await,
        }
    }
}

/// Starts the sweep on the current runtime (there is none outside one: then connections
/// still age out when taken).
fn sweep_in_background(idle: &Arc<IdleConnections>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        idle.sweeping.store(false, Ordering::Release);
        return;
    };
    let weak = Arc::downgrade(idle);
    runtime.spawn(sweep_while_idle(weak));
}

/// Sweeps every [`SWEEP_EVERY`] until no connection is idle (or the connector is gone).
async fn sweep_while_idle(idle: Weak<IdleConnections>) {
    // While armed, dropping it (the task ending early, or its runtime shutting down) clears
    // the flag, so that a later release starts another sweep.
    struct Sweeping(Weak<IdleConnections>, bool);
    impl Drop for Sweeping {
        fn drop(&mut self) {
            if let (true, Some(idle)) = (self.1, self.0.upgrade()) {
                idle.sweeping.store(false, Ordering::Release);
            }
        }
    }
    let mut sweeping = Sweeping(idle.clone(), true);
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(pool) = idle.upgrade() else { return };
        if pool.sweep(Instant::now()) > 0 {
            continue;
        }
        pool.sweeping.store(false, Ordering::Release);
        // A connection released after the sweep found none, while this task still counted as
        // running, started no sweep of its own: go on sweeping for it.
        if pool.count() == 0 || pool.sweeping.swap(true, Ordering::AcqRel) {
            sweeping.1 = false;
            return;
        }
    }
}

/// One idle connection.
struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

/// Idle HTTP/1.1 connections per peer (Pingora's reuse hash), most recent last.
struct IdleConnections {
    peers: Mutex<Peers>,
    limit: usize,
    /// Whether a sweep task is running.
    sweeping: AtomicBool,
}

#[derive(Default)]
struct Peers {
    lists: HashMap<u64, VecDeque<Idle>>,
    count: usize,
}

impl IdleConnections {
    fn new(limit: usize) -> Self {
        IdleConnections {
            peers: Mutex::new(Peers::default()),
            limit,
            sweeping: AtomicBool::new(false),
        }
    }

    fn count(&self) -> usize {
        self.peers.lock().map_or(0, |p| p.count)
    }

    /// The most recently released usable connection for `key`, if any; expired ones met on
    /// the way are closed.
    fn take(&self, key: u64, now: Instant) -> Option<Stream> {
        loop {
            let idle = self.peers.lock().ok()?.pop(key, End::Newest)?;
            if idle.expired(now) {
                // Everything older for this peer has expired too (same timeout).
                self.drop_expired(key, now);
                return None;
            }
            let mut stream = idle.stream;
            if now.saturating_duration_since(idle.since) < CHECK_AFTER || still_open(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` as the most recent idle connection of `key`, closing the oldest idle
    /// connection when over the limit. Returns true when the caller should start a sweep.
    fn put(&self, key: u64, stream: Stream, timeout: Option<Duration>, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let evicted = {
            let Ok(mut peers) = self.peers.lock() else {
                return false;
            };
            peers.push_newest(
                key,
                Idle {
                    stream,
                    since: now,
                    timeout,
                },
            );
            peers.over_limit(self.limit)
        };
        drop(evicted);
        !self.sweeping.swap(true, Ordering::AcqRel)
    }

    /// Closes `key`'s expired connections.
    fn drop_expired(&self, key: u64, now: Instant) {
        let mut closed = Vec::new();
        if let Ok(mut peers) = self.peers.lock() {
            while peers.oldest(key).is_some_and(|i| i.expired(now)) {
                closed.extend(peers.pop(key, End::Oldest));
            }
        }
        drop(closed);
    }

    /// Closes expired connections and those the provider closed; returns how many are left.
    /// The checks (a non-blocking read each) run outside the lock, with the lists taken out,
    /// so that no request waits on them; one that comes for those peers meanwhile opens a
    /// connection of its own.
    fn sweep(&self, now: Instant) -> usize {
        let taken = match self.peers.lock() {
            Ok(mut peers) => {
                peers.count = 0;
                std::mem::take(&mut peers.lists)
            }
            Err(_) => return 0,
        };
        let mut closed = Vec::new();
        let kept: Vec<(u64, VecDeque<Idle>)> = taken
            .into_iter()
            .map(|(key, list)| {
                let mut open = VecDeque::with_capacity(list.len());
                for mut idle in list {
                    if idle.expired(now) || !still_open(&mut idle.stream) {
                        closed.push(idle);
                    } else {
                        open.push_back(idle);
                    }
                }
                (key, open)
            })
            .collect();
        let left = match self.peers.lock() {
            Ok(mut peers) => {
                for (key, open) in kept {
                    // Older than anything released meanwhile: in front of it.
                    peers.push_oldest(key, open);
                }
                closed.extend(peers.over_limit(self.limit));
                peers.count
            }
            Err(_) => 0,
        };
        // Closed outside the lock.
        drop(closed);
        left
    }
}

/// Which end of a peer's list: the most recently released connection, or the longest idle.
#[derive(Clone, Copy)]
enum End {
    Newest,
    Oldest,
}

impl Peers {
    /// Adds `idle` as `key`'s most recently released connection.
    fn push_newest(&mut self, key: u64, idle: Idle) {
        self.count += 1;
        self.lists.entry(key).or_default().push_back(idle);
    }

    /// Puts `list` (oldest first) before `key`'s connections, as the longest idle.
    fn push_oldest(&mut self, key: u64, mut list: VecDeque<Idle>) {
        if list.is_empty() {
            return;
        }
        self.count += list.len();
        if let Some(newer) = self.lists.remove(&key) {
            list.extend(newer);
        }
        self.lists.insert(key, list);
    }

    /// `key`'s longest idle connection.
    fn oldest(&self, key: u64) -> Option<&Idle> {
        self.lists.get(&key)?.front()
    }

    /// Removes `key`'s connection at `end`.
    fn pop(&mut self, key: u64, end: End) -> Option<Idle> {
        let list = self.lists.get_mut(&key)?;
        let idle = match end {
            End::Newest => list.pop_back(),
            End::Oldest => list.pop_front(),
        };
        if list.is_empty() {
            self.lists.remove(&key);
        }
        if idle.is_some() {
            self.count -= 1;
        }
        idle
    }

    /// Removes the connections idle the longest, over all peers, while there are more than
    /// `limit`.
    fn over_limit(&mut self, limit: usize) -> Vec<Idle> {
        let mut evicted = Vec::new();
        while self.count > limit {
            let Some(key) = self
                .lists
                .iter()
                .filter_map(|(key, list)| Some((*key, list.front()?.since)))
                .min_by_key(|(_, since)| *since)
                .map(|(key, _)| key)
            else {
                break;
            };
            evicted.extend(self.pop(key, End::Oldest));
        }
        evicted
    }
}

/// Whether an idle connection is still usable: a non-blocking read finds nothing to read.
/// The end of the stream (the provider closed it), an error or unexpected bytes mean it is not.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget could make a ready read look pending.
    tokio::task::unconstrained(stream.read(&mut byte))
        .now_or_never()
        .is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connected pair: our side as Pingora's stream, the provider's side as a tokio stream.
    async fn pair(listener: &TcpListener) -> (Stream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            Box::new(pingora::protocols::l4::stream::Stream::from(ours.unwrap())),
            theirs.unwrap().0,
        )
    }

    fn id(stream: &Stream) -> i32 {
        stream.id()
    }

    #[tokio::test]
    async fn the_connection_released_last_is_taken_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new(8);
        let now = Instant::now();
        let mut theirs = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let (ours, t) = pair(&listener).await;
            ids.push(id(&ours));
            theirs.push(t);
            pool.put(7, ours, Some(Duration::from_secs(60)), now);
        }
        assert_eq!(pool.count(), 3);
        assert!(
            pool.take(8, now).is_none(),
            "another peer's connections are not handed out"
        );
        let taken = pool.take(7, now).unwrap();
        assert_eq!(id(&taken), ids[2]);
        pool.put(7, taken, Some(Duration::from_secs(60)), now);
        assert_eq!(
            id(&pool.take(7, now).unwrap()),
            ids[2],
            "a trickle keeps reusing one connection"
        );
        assert_eq!(id(&pool.take(7, now).unwrap()), ids[1]);
        assert_eq!(id(&pool.take(7, now).unwrap()), ids[0]);
        assert!(pool.take(7, now).is_none());
        assert_eq!(pool.count(), 0);
    }

    #[tokio::test]
    async fn expired_connections_are_closed_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new(8);
        let start = Instant::now();
        let (old, mut old_theirs) = pair(&listener).await;
        pool.put(1, old, Some(Duration::from_secs(5)), start);
        let (new, _new_theirs) = pair(&listener).await;
        let new_id = id(&new);
        pool.put(1, new, Some(Duration::from_secs(5)), start + Duration::from_secs(3));
        // At 6 s the first has expired, the second not: the second is taken.
        let later = start + Duration::from_secs(6);
        let taken = pool.take(1, later);
        assert_eq!(taken.as_ref().map(id), Some(new_id));
        // The newest expired: nothing is handed out, and everything older is closed too.
        pool.put(1, taken.unwrap(), Some(Duration::from_secs(5)), start);
        assert!(pool.take(1, later).is_none());
        assert_eq!(pool.count(), 0);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), old_theirs.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the provider sees the expired connection closed: {read:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_the_provider_closed_is_not_reused_after_a_pause() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new(8);
        let now = Instant::now();
        let (ours, theirs) = pair(&listener).await;
        pool.put(1, ours, Some(Duration::from_secs(60)), now);
        drop(theirs);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Idle past CHECK_AFTER: checked, found closed, not handed out.
        assert!(pool.take(1, now + CHECK_AFTER).is_none());
        assert_eq!(pool.count(), 0);

        // A provider that sends bytes on an idle connection: not reusable either.
        let (ours, mut theirs) = pair(&listener).await;
        pool.put(1, ours, Some(Duration::from_secs(60)), now);
        theirs.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(1, now + CHECK_AFTER).is_none());
    }

    #[tokio::test]
    async fn the_sweep_closes_closed_and_expired_connections_and_keeps_the_rest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new(8);
        let now = Instant::now();
        let (closed, theirs) = pair(&listener).await;
        pool.put(1, closed, Some(Duration::from_secs(60)), now);
        drop(theirs);
        let (expired, _t2) = pair(&listener).await;
        pool.put(2, expired, Some(Duration::from_secs(1)), now);
        let (alive, _t3) = pair(&listener).await;
        let alive_id = id(&alive);
        pool.put(3, alive, Some(Duration::from_secs(60)), now);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.sweep(now + Duration::from_secs(2)), 1);
        assert_eq!(pool.take(3, now).as_ref().map(id), Some(alive_id));
        assert!(pool.take(1, now).is_none() && pool.take(2, now).is_none());
    }

    /// What the sweep checked goes back in front of what was released meanwhile, and the
    /// limit holds over both.
    #[tokio::test]
    async fn swept_connections_go_back_as_the_oldest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let now = Instant::now();
        let idle = |stream| Idle {
            stream,
            since: now,
            timeout: None,
        };
        let mut peers = Peers::default();
        let (released, _t1) = pair(&listener).await;
        let released_id = id(&released);
        peers.push_newest(1, idle(released));
        let (swept_a, _t2) = pair(&listener).await;
        let (swept_b, _t3) = pair(&listener).await;
        let (a_id, b_id) = (id(&swept_a), id(&swept_b));
        peers.push_oldest(1, VecDeque::from([idle(swept_a), idle(swept_b)]));
        assert_eq!(peers.count, 3);
        let evicted = peers.over_limit(2);
        assert_eq!(evicted.iter().map(|i| id(&i.stream)).collect::<Vec<_>>(), [a_id]);
        assert_eq!(peers.pop(1, End::Newest).map(|i| id(&i.stream)), Some(released_id));
        assert_eq!(peers.pop(1, End::Newest).map(|i| id(&i.stream)), Some(b_id));
        assert!(peers.pop(1, End::Newest).is_none() && peers.lists.is_empty());
        assert_eq!(peers.count, 0);
    }

    #[tokio::test]
    async fn over_the_limit_the_connection_idle_longest_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = IdleConnections::new(2);
        let now = Instant::now();
        let (a, mut a_theirs) = pair(&listener).await;
        pool.put(1, a, None, now);
        let (b, _b_theirs) = pair(&listener).await;
        let b_id = id(&b);
        pool.put(2, b, None, now + Duration::from_millis(1));
        let (c, _c_theirs) = pair(&listener).await;
        let c_id = id(&c);
        pool.put(1, c, None, now + Duration::from_millis(2));
        assert_eq!(pool.count(), 2);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), a_theirs.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "the oldest was closed: {read:?}");
        assert_eq!(pool.take(1, now).as_ref().map(id), Some(c_id));
        assert_eq!(pool.take(2, now).as_ref().map(id), Some(b_id));

        let none = IdleConnections::new(0);
        let (d, _d_theirs) = pair(&listener).await;
        assert!(!none.put(1, d, None, now));
        assert_eq!(none.count(), 0, "a pool size of 0 keeps nothing");
    }

    #[tokio::test]
    async fn the_background_sweep_runs_while_connections_are_idle_and_then_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idle = Arc::new(IdleConnections::new(8));
        let (ours, theirs) = pair(&listener).await;
        assert!(idle.put(1, ours, Some(Duration::from_secs(60)), Instant::now()));
        sweep_in_background(&idle);
        let (second, _t) = pair(&listener).await;
        assert!(
            !idle.put(2, second, Some(Duration::from_millis(100)), Instant::now()),
            "one sweep at a time"
        );
        drop(theirs);
        let deadline = Instant::now() + Duration::from_secs(10);
        while idle.sweeping.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(idle.count(), 0, "the closed and the expired connection were swept");
        assert!(
            !idle.sweeping.load(Ordering::Acquire),
            "the sweep ended once nothing was idle"
        );
    }
}
