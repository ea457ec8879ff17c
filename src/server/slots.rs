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
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The slots of one provider.
struct ProviderSlots {
    name: String,
    max: usize,
    queue_timeout: Duration,
    /// `max` permits: every exchange holds one.
    slots: Semaphore,
    /// `max / 2` permits: an upload streamed while it arrives also holds one of these.
    streams: Semaphore,
    /// `refract_upstream_in_flight{provider}`.
    in_flight: IntGauge,
    /// `refract_upstream_queue_rejected_total{provider}`.
    refused: IntCounter,
}

impl ProviderSlots {
    fn held<'a>(&'a self, slot: SemaphorePermit<'a>, stream: Option<SemaphorePermit<'a>>) -> Slot<'a> {
        self.in_flight.inc();
        Slot {
            _held: Some(Held {
                _slot: slot,
                _stream: stream,
                in_flight: &self.in_flight,
            }),
        }
    }

    fn busy(&self) -> GatewayError {
        self.refused.inc();
        GatewayError::ProviderBusy {
            provider: self.name.clone(),
            max_connections: self.max,
            queue_timeout_ms: u64::try_from(self.queue_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Every configured provider's slots.
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
    _slot: SemaphorePermit<'a>,
    _stream: Option<SemaphorePermit<'a>>,
    in_flight: &'a IntGauge,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.in_flight.dec();
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
    /// zero) in `metrics`. Runs once at startup.
    pub fn new(providers: &[ProviderConfig], metrics: &Metrics) -> Slots {
        let providers = providers
            .iter()
            .map(|p| {
                let limit = p.options.connections;
                let (in_flight, refused) = metrics.upstream_slots(&p.name);
                ProviderSlots {
                    name: p.name.clone(),
                    max: limit.max,
                    queue_timeout: limit.queue_timeout,
                    slots: Semaphore::new(limit.max),
                    streams: Semaphore::new(limit.max / 2),
                    in_flight,
                    refused,
                }
            })
            .collect();
        Slots { providers }
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
        if let Ok(slot) = p.slots.try_acquire() {
            return Ok(p.held(slot, None));
        }
        if p.queue_timeout.is_zero() {
            return Err(p.busy());
        }
        match pingora::prelude::timeout(p.queue_timeout, p.slots.acquire()).await {
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
        match p.slots.acquire().await {
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
        let stream = p.streams.try_acquire().ok()?;
        let slot = p.slots.try_acquire().ok()?;
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
        assert_eq!(p.streams.available_permits(), 128);
    }
}
