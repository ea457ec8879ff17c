//! Upstream slots: the bound on exchanges in flight to each provider (`max_connections`).
//!
//! A slot is taken right before each upstream exchange and held until it ends (the answer's
//! last byte read, or the stream's end); the guard ([`Slot`]) gives it back when dropped, on
//! every path (success, error, a client that went away, a cancelled future). Taking a free slot
//! is one uncontended semaphore operation and one gauge increment; nothing is allocated.
//!
//! - A request whose upload is complete waits for a slot up to the provider's
//!   `queue_timeout_ms`, first come first served, then fails with 503 `provider_busy`
//!   ([`Slots::acquire`]), which falls back like other provider-side failures.
//! - An upload streamed upstream while the client is still sending it never waits: it takes a
//!   slot only when one is free at once and fewer than half of the provider's slots are held by
//!   such uploads ([`Slots::try_stream`]); otherwise the upload is only spooled and sent once it
//!   is complete. Slow clients therefore never hold more than half of a provider's slots (each
//!   for at most `limits.upload_timeout_ms`), and complete requests always find the rest.
//! - Follow-ups of asynchronous providers (polls, result downloads) wait without a limit of
//!   their own ([`Slots::wait`]): the job's `poll_timeout_ms` bounds them, and giving up on a
//!   job the provider already accepted would waste it.

use crate::config::ProviderConfig;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use prometheus::{IntCounter, IntGauge};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Permits whose number can change while some are held: growing adds permits, shrinking
/// forgets the free ones at once and the rest as their holders give them back.
struct Resizable {
    permits: Semaphore,
    /// Permits still to forget when they come back (a shrink larger than the free permits).
    owed: AtomicUsize,
}

impl Resizable {
    fn new(size: usize) -> Self {
        Resizable {
            permits: Semaphore::new(size),
            owed: AtomicUsize::new(0),
        }
    }

    /// From `from` permits to `to`, when a reload changes the bound (under the pool's lock).
    fn resize(&self, from: usize, to: usize) {
        if to >= from {
            let grow = to - from;
            // Permits still owed are simply no longer owed; the rest are added.
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| Some(n - grow.min(n)))
                .unwrap_or(0);
            self.permits.add_permits(grow - grow.min(owed));
        } else {
            let shrink = from - to;
            let forgotten = self.permits.forget_permits(shrink);
            self.owed.fetch_add(shrink - forgotten, Ordering::AcqRel);
        }
    }

    /// A held permit comes back: forgotten if a shrink still owes one, else freed.
    fn give_back(&self, permit: SemaphorePermit<'_>) {
        if self.owed.load(Ordering::Relaxed) > 0
            && self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            permit.forget();
        }
    }
}

/// One provider's bound and its metrics, kept by provider name for the life of the process
/// ([`SlotPool`]): exchanges in flight when a config is reloaded still count against it.
struct Bound {
    /// `max_connections` permits: every exchange holds one.
    slots: Resizable,
    /// `max_connections / 2` permits: an upload streamed while it arrives also holds one.
    streams: Resizable,
    /// `refract_upstream_in_flight{provider}`.
    in_flight: IntGauge,
    /// `refract_upstream_queue_rejected_total{provider}`.
    refused: IntCounter,
}

/// The slots of one provider under one config.
struct ProviderSlots {
    name: String,
    max: usize,
    queue_timeout: Duration,
    bound: Arc<Bound>,
}

impl ProviderSlots {
    fn held<'a>(&'a self, slot: SemaphorePermit<'a>, stream: Option<SemaphorePermit<'a>>) -> Slot<'a> {
        self.bound.in_flight.inc();
        Slot {
            _held: Some(Held {
                slot: Some(slot),
                stream,
                bound: &self.bound,
            }),
        }
    }

    fn busy(&self) -> GatewayError {
        self.bound.refused.inc();
        GatewayError::ProviderBusy {
            provider: self.name.clone(),
            max_connections: self.max,
            queue_timeout_ms: u64::try_from(self.queue_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Every provider's bound by name, for the life of the process; each loaded config gets its
/// [`Slots`] from here ([`SlotPool::slots`]).
#[derive(Default)]
pub struct SlotPool {
    /// Each bound with the `max_connections` it was last sized to.
    bounds: Mutex<HashMap<String, (Arc<Bound>, usize)>>,
}

impl SlotPool {
    /// The slots of every provider in `providers`, when a config is loaded (startup, reload):
    /// a provider already known keeps its bound, resized when its `max_connections` changed
    /// (the new bound holds for every wait from now on; exchanges in flight keep their slot,
    /// and a smaller bound is reached as they end); a new one gets its gauge and counter
    /// created at zero in `metrics`.
    pub fn slots(&self, providers: &[ProviderConfig], metrics: &Metrics) -> Slots {
        let mut bounds = self.bounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let providers = providers
            .iter()
            .map(|p| {
                let limit = p.options.connections;
                let (bound, sized) = bounds.entry(p.name.clone()).or_insert_with(|| {
                    let (in_flight, refused) = metrics.upstream_slots(&p.name);
                    let bound = Bound {
                        slots: Resizable::new(limit.max),
                        streams: Resizable::new(limit.max / 2),
                        in_flight,
                        refused,
                    };
                    (Arc::new(bound), limit.max)
                });
                if *sized != limit.max {
                    bound.slots.resize(*sized, limit.max);
                    bound.streams.resize(*sized / 2, limit.max / 2);
                    *sized = limit.max;
                }
                ProviderSlots {
                    name: p.name.clone(),
                    max: limit.max,
                    queue_timeout: limit.queue_timeout,
                    bound: bound.clone(),
                }
            })
            .collect();
        Slots { providers }
    }
}

/// Every configured provider's slots, under one config.
pub struct Slots {
    providers: Vec<ProviderSlots>,
}

/// One slot held for an upstream exchange; dropping it frees the slot.
#[must_use = "the slot is freed when dropped: hold it for the whole exchange"]
pub struct Slot<'a> {
    /// `None` for a provider without slots (not configured; never the case for a request's).
    _held: Option<Held<'a>>,
}

struct Held<'a> {
    /// Always `Some` until dropped.
    slot: Option<SemaphorePermit<'a>>,
    stream: Option<SemaphorePermit<'a>>,
    bound: &'a Bound,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.bound.in_flight.dec();
        if let Some(slot) = self.slot.take() {
            self.bound.slots.give_back(slot);
        }
        if let Some(stream) = self.stream.take() {
            self.bound.streams.give_back(stream);
        }
    }
}

#[cfg(test)]
impl Slot<'_> {
    /// Whether this slot counts against a provider's `max_connections`.
    fn is_bounded(&self) -> bool {
        self._held.is_some()
    }
}

impl Slots {
    /// The slots of every provider in `providers`, with their gauge and counter created (at
    /// zero) in `metrics`, in a pool of their own (tests; the server keeps one [`SlotPool`]).
    pub fn new(providers: &[ProviderConfig], metrics: &Metrics) -> Slots {
        SlotPool::default().slots(providers, metrics)
    }

    fn of(&self, provider: &str) -> Option<&ProviderSlots> {
        self.providers.iter().find(|p| p.name == provider)
    }

    /// A slot for an exchange to `provider` whose request is complete: a free one at once, else
    /// the first freed within the provider's `queue_timeout_ms`; past that, 503 `provider_busy`
    /// (counted).
    pub async fn acquire(&self, provider: &str) -> Result<Slot<'_>, GatewayError> {
        let Some(p) = self.of(provider) else {
            return Ok(Slot { _held: None });
        };
        if let Ok(slot) = p.bound.slots.permits.try_acquire() {
            return Ok(p.held(slot, None));
        }
        if p.queue_timeout.is_zero() {
            return Err(p.busy());
        }
        match pingora::prelude::timeout(p.queue_timeout, p.bound.slots.permits.acquire()).await {
            Ok(Ok(slot)) => Ok(p.held(slot, None)),
            _ => Err(p.busy()),
        }
    }

    /// A slot for a follow-up exchange to `provider` (a poll, a result download), waiting as
    /// long as it takes: the caller's deadline bounds the wait.
    pub async fn wait(&self, provider: &str) -> Slot<'_> {
        let Some(p) = self.of(provider) else {
            return Slot { _held: None };
        };
        match p.bound.slots.permits.acquire().await {
            Ok(slot) => p.held(slot, None),
            // The semaphore is never closed.
            Err(_) => Slot { _held: None },
        }
    }

    /// A slot for an upload streamed to `provider` while the client is still sending it, only
    /// if one is free at once and fewer than half of the provider's slots are held by such
    /// uploads; `None` otherwise (the upload is then sent from the spool once complete).
    pub fn try_stream(&self, provider: &str) -> Option<Slot<'_>> {
        let Some(p) = self.of(provider) else {
            return Some(Slot { _held: None });
        };
        let stream = p.bound.streams.permits.try_acquire().ok()?;
        let slot = p.bound.slots.permits.try_acquire().ok()?;
        Some(p.held(slot, Some(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    fn slots(settings: &str) -> (Slots, Metrics) {
        let yaml = format!(
            "providers:\n  - name: p\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n{settings}    keys:\n      - {{name: k, value: v}}\n"
        );
        let config = from_yaml_str_with_env(&yaml, &|_| None).unwrap();
        let metrics = Metrics::new().unwrap();
        (Slots::new(&config.providers, &metrics), metrics)
    }

    fn gauge(metrics: &Metrics, series: &str) -> String {
        let text = String::from_utf8(metrics.encode()).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    }

    #[tokio::test]
    async fn slots_are_bounded_freed_on_drop_and_refused_past_the_queue_timeout() {
        let (s, m) = slots("    max_connections: 2\n    queue_timeout_ms: 0\n");
        let in_flight = r#"refract_upstream_in_flight{provider="p"}"#;
        let refused = r#"refract_upstream_queue_rejected_total{provider="p"}"#;
        assert_eq!((gauge(&m, in_flight), gauge(&m, refused)), ("0".into(), "0".into()));
        let a = s.acquire("p").await.unwrap();
        let b = s.acquire("p").await.unwrap();
        assert!(a.is_bounded() && b.is_bounded());
        assert_eq!(gauge(&m, in_flight), "2");
        let e = s.acquire("p").await.err().unwrap();
        assert_eq!((e.status(), e.code()), (503, "provider_busy"));
        assert_eq!(gauge(&m, refused), "1");
        drop(a);
        assert_eq!(gauge(&m, in_flight), "1");
        let c = s.acquire("p").await.unwrap();
        assert_eq!(gauge(&m, in_flight), "2");
        drop((b, c));
        assert_eq!(gauge(&m, in_flight), "0");
        // An unknown name is not bounded (never a request's provider).
        assert!(!s.acquire("other").await.unwrap().is_bounded());
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_first_freed_slot() {
        let (s, _m) = slots("    max_connections: 1\n    queue_timeout_ms: 5000\n");
        let held = s.acquire("p").await.unwrap();
        let waiting = s.acquire("p");
        let free = async {
            tokio::task::yield_now().await;
            drop(held);
        };
        let (got, ()) = tokio::join!(waiting, free);
        assert!(got.unwrap().is_bounded());
    }

    #[tokio::test]
    async fn streamed_uploads_hold_at_most_half_of_the_slots() {
        let (s, _m) = slots("    max_connections: 4\n");
        let first = s.try_stream("p").expect("a free slot");
        let second = s.try_stream("p").expect("a free slot");
        assert!(s.try_stream("p").is_none(), "a third upload in progress took a slot");
        // Complete requests still find the other half.
        let (c, d) = (s.acquire("p").await.unwrap(), s.acquire("p").await.unwrap());
        drop(first);
        let e = s.acquire("p").await.unwrap();
        // A stream permit is free again, but no slot is.
        assert!(s.try_stream("p").is_none());
        drop(c);
        assert!(s.try_stream("p").is_some());
        drop((second, d, e));
        // One slot: never streamed while uploading.
        let (one, _m) = slots("    max_connections: 1\n");
        assert!(one.try_stream("p").is_none());
        assert!(one.acquire("p").await.is_ok());
    }

    #[test]
    fn defaults() {
        let (s, _m) = slots("");
        let p = s.of("p").unwrap();
        assert_eq!((p.max, p.queue_timeout), (256, Duration::from_secs(1)));
        assert_eq!(p.bound.streams.permits.available_permits(), 128);
    }

    /// A reload that changes `max_connections` keeps the provider's bound: slots held under
    /// the old config still count, a larger bound frees waits at once, a smaller one is reached
    /// as the held slots come back.
    #[tokio::test]
    async fn a_reload_resizes_the_bound_and_keeps_held_slots() {
        let config = |max: usize| {
            let yaml = format!(
                "providers:\n  - name: p\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n    max_connections: {max}\n    queue_timeout_ms: 0\n    keys:\n      - {{name: k, value: v}}\n"
            );
            from_yaml_str_with_env(&yaml, &|_| None).unwrap()
        };
        let metrics = Metrics::new().unwrap();
        let pool = SlotPool::default();
        let one = pool.slots(&config(2).providers, &metrics);
        let (a, b) = (one.acquire("p").await.unwrap(), one.acquire("p").await.unwrap());
        // Grown to 3: one more, held ones still count.
        let grown = pool.slots(&config(3).providers, &metrics);
        let c = grown.acquire("p").await.unwrap();
        assert!(grown.acquire("p").await.is_err(), "3 held of 3");
        assert_eq!(gauge(&metrics, r#"refract_upstream_in_flight{provider="p"}"#), "3");
        // Shrunk to 1 with 3 held (2 owed), then grown to 2 before any came back (1 owed).
        let _shrunk = pool.slots(&config(1).providers, &metrics);
        let regrown = pool.slots(&config(2).providers, &metrics);
        drop(a);
        assert!(regrown.acquire("p").await.is_err(), "2 held of 2: a's slot was owed");
        drop(b);
        let d = regrown.acquire("p").await.expect("1 held of 2");
        assert!(regrown.acquire("p").await.is_err(), "2 held of 2");
        drop((c, d));
        let (e, f) = (regrown.acquire("p").await.unwrap(), regrown.acquire("p").await.unwrap());
        assert!(regrown.acquire("p").await.is_err(), "2 held of 2");
        drop((e, f));
        // Shrunk with nothing held: at once. Requests on the old config share the bound.
        let small = pool.slots(&config(1).providers, &metrics);
        let g = small.acquire("p").await.unwrap();
        assert!(
            one.acquire("p").await.is_err(),
            "1 held of 1, through the old config's view"
        );
        assert_eq!(gauge(&metrics, r#"refract_upstream_in_flight{provider="p"}"#), "1");
        drop(g);
    }
}
