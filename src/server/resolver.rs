//! Provider addresses, resolved once and reused.
//!
//! Runs before each upstream connection to a provider named by host name (an IP address needs
//! no lookup). Pingora's pool is keyed by address, so every attempt needs one; resolving on
//! every request would run `getaddrinfo` on the blocking pool each time (a resolver round trip
//! of milliseconds on a real network). Instead an address is reused for [`FRESH`], or until a
//! connection to it fails ([`Resolver::forget`]); the first request after that resolves again, while the others for that host wait for the same lookup
//! (one lookup per host at a time). A lookup that fails falls back to the last address for up
//! to [`STALE`] (trying again every [`RETRY`]), so a resolver outage does not take the
//! providers down with it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a resolved address is used before it is looked up again.
pub const FRESH: Duration = Duration::from_secs(30);

/// How long the last address stands in when a new lookup fails.
pub const STALE: Duration = Duration::from_secs(600);

/// How long a standing-in address is used before the next lookup is tried.
pub const RETRY: Duration = Duration::from_secs(5);

/// Most host names kept. Providers are few, but result downloads of asynchronous providers go
/// to hosts the provider names; past this many the cache starts over rather than grow.
pub const MAX_HOSTS: usize = 1024;

/// The lookup a [`Resolver`] runs: every address of `host`:`port`.
pub type Lookup =
    Box<dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> + Send + Sync>;

/// One host's last address, when it was resolved, and when to look it up next.
#[derive(Debug, Clone, Copy)]
struct Resolved {
    addr: SocketAddr,
    at: Instant,
    next_lookup: Instant,
}

/// The slot of one host and port: the async lock makes callers wait for one lookup.
type Slot = Arc<tokio::sync::Mutex<Option<Resolved>>>;

/// A cache of provider addresses in front of a lookup.
pub struct Resolver {
    lookup: Lookup,
    hosts: Mutex<HashMap<String, Vec<(u16, Slot)>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver over the system's (`getaddrinfo`, on tokio's blocking pool).
    pub fn system() -> Resolver {
        Resolver::new(Box::new(|host, port| {
            Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
        }))
    }

    /// A resolver over `lookup`.
    pub fn new(lookup: Lookup) -> Resolver {
        Resolver {
            lookup,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, host: &str, port: u16) -> Slot {
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = hosts.get(host).and_then(|ports| ports.iter().find(|(p, _)| *p == port)) {
            return slot.1.clone();
        }
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            hosts.clear();
        }
        let slot = Slot::default();
        hosts.entry(host.to_string()).or_default().push((port, slot.clone()));
        slot
    }

    /// Marks the address of `host`:`port` as due for a lookup (after a connection to it
    /// failed: the host may have moved). It still stands in if that lookup fails.
    pub async fn forget(&self, host: &str, port: u16) {
        let slot = self.slot(host, port);
        let mut last = slot.lock().await;
        if let Some(r) = last.as_mut() {
            r.next_lookup = Instant::now();
        }
    }

    /// The address to connect to for `host`:`port` (its first address): cached while fresh,
    /// else looked up; the last one while stale if the lookup fails.
    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let slot = self.slot(host, port);
        let mut last = slot.lock().await;
        let now = Instant::now();
        if let Some(r) = *last {
            if now < r.next_lookup {
                return Ok(r.addr);
            }
        }
        let looked_up = (self.lookup)(host.to_string(), port).await.and_then(|addrs| {
            addrs
                .into_iter()
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
        });
        match (looked_up, *last) {
            (Ok(addr), _) => {
                let at = Instant::now();
                *last = Some(Resolved {
                    addr,
                    at,
                    next_lookup: at + FRESH,
                });
                Ok(addr)
            }
            (Err(e), Some(r)) if r.at.elapsed() < STALE => {
                log::warn!(
                    "cannot resolve {host} ({e}); using its address of {} s ago",
                    r.at.elapsed().as_secs()
                );
                *last = Some(Resolved {
                    next_lookup: Instant::now() + RETRY,
                    ..r
                });
                Ok(r.addr)
            }
            (Err(e), _) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A lookup that counts its calls and answers with `answer(call number)`.
    fn counting(
        answer: impl Fn(usize) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> (Resolver, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let answer = Arc::new(answer);
        let resolver = Resolver::new(Box::new(move |_host, _port| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            Box::pin(async move {
                // A lookup that takes a while, so concurrent callers overlap.
                tokio::time::sleep(Duration::from_millis(20)).await;
                answer(n)
            })
        }));
        (resolver, calls)
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 443))
    }

    /// Makes the cached address of `host` look `age` old, and due for a lookup.
    async fn age(resolver: &Resolver, host: &str, port: u16, age: Duration) {
        let slot = resolver.slot(host, port);
        let mut last = slot.lock().await;
        let r = last.as_mut().unwrap();
        r.at = Instant::now().checked_sub(age).unwrap();
        r.next_lookup = Instant::now();
    }

    #[tokio::test]
    async fn an_address_is_reused_while_fresh_and_one_lookup_serves_concurrent_callers() {
        let (resolver, calls) = counting(|n| Ok(vec![addr(n as u8 + 1), addr(99)]));
        let resolver = Arc::new(resolver);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let r = resolver.clone();
            tasks.push(tokio::spawn(
                async move { r.resolve("api.example", 443).await.unwrap() },
            ));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), addr(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another port or host is another entry.
        assert_eq!(resolver.resolve("api.example", 8443).await.unwrap(), addr(2));
        assert_eq!(resolver.resolve("other.example", 443).await.unwrap(), addr(3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(1));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_forgotten_address_is_looked_up_again() {
        let (resolver, calls) = counting(|n| Ok(vec![addr(n as u8 + 1)]));
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(1));
        resolver.forget("api.example", 443).await;
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(2));
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Forgetting a host never resolved is harmless.
        resolver.forget("never.example", 443).await;
    }

    #[tokio::test]
    async fn the_cache_starts_over_rather_than_grow_past_its_limit() {
        let (resolver, calls) = counting(|_| Ok(vec![addr(1)]));
        for i in 0..=MAX_HOSTS {
            resolver.slot(&format!("h{i}.example"), 443);
        }
        let kept = resolver.hosts.lock().unwrap().len();
        assert!((1..=MAX_HOSTS).contains(&kept), "{kept}");
        // Still answers, and caches again.
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(1));
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(1));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_old_address_is_looked_up_again() {
        let (resolver, calls) = counting(|n| Ok(vec![addr(n as u8 + 1)]));
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(1));
        age(&resolver, "api.example", 443, FRESH).await;
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(2));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_lookup_falls_back_to_the_last_address_until_it_is_too_old() {
        let (resolver, calls) = counting(|n| {
            if n == 0 {
                Ok(vec![addr(7)])
            } else {
                Err(io::Error::other("resolver down"))
            }
        });
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(7));
        age(&resolver, "api.example", 443, FRESH).await;
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(7));
        // While it stands in, the next lookup waits RETRY: no lookup per request.
        assert_eq!(resolver.resolve("api.example", 443).await.unwrap(), addr(7));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        age(&resolver, "api.example", 443, STALE).await;
        let err = resolver.resolve("api.example", 443).await.unwrap_err();
        assert_eq!(err.to_string(), "resolver down");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_address_and_no_last_one_is_an_error_each_time() {
        let (resolver, calls) = counting(|_| Ok(Vec::new()));
        for _ in 0..2 {
            let err = resolver.resolve("nothing.example", 443).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_system_lookup_resolves_localhost() {
        let resolver = Resolver::system();
        let a = resolver.resolve("localhost", 8080).await.unwrap();
        assert!(a.ip().is_loopback(), "{a}");
        assert_eq!(a.port(), 8080);
    }
}
