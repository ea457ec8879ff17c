//! The circuit breaker per provider key, and the backoff between retries.
//!
//! Consulted when a key is picked for an attempt ([`Breakers::usable`], [`Breakers::begin`]) and
//! told each attempt's outcome ([`Breakers::record`]). A key whose attempts fail
//! `circuit_breaker.failures` times in a row is *open* for `open_ms`: key selection skips it.
//! Once that time has passed it is *half-open*: one request (the probe) may use it; the probe's
//! success closes the circuit, its failure opens it again for `open_ms`. Providers without a
//! `circuit_breaker` setting are never tracked. Times are injected (`now`) so the state machine
//! is tested without sleeping. Circuits are kept by provider and key name in a [`BreakerStore`]
//! that outlives any one config: a reload keeps every still-named key's state.

use crate::config::CircuitBreaker;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Longest wait between two retries, whatever the base and the attempt number.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest `Retry-After` a retry waits for; a provider asking for more is failed over at once.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The wait a `Retry-After` value asks for, read when a provider's answer arrives: delta
/// seconds, or an HTTP date (the time left until it, zero if past). `None` when unreadable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before retry number `retry` (0 for the first retry): "full jitter", a uniform time
/// in `[0, min(base × 2^retry, MAX_BACKOFF)]`; `roll` is a uniform number in `[0, 1)`.
pub fn backoff(base: Duration, retry: u32, roll: f64) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(20)).min(MAX_BACKOFF);
    ceiling.mul_f64(roll.clamp(0.0, 1.0))
}

/// What one attempt with a key tells its breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The provider answered usefully (a success, or a client-caused 4xx): closes the circuit.
    Success,
    /// A failure of the provider or the key (connect, timeout, garbage, 401/403/408/429/5xx).
    Failure,
    /// Says nothing about the key (the client went away): a probe in flight is released.
    Neutral,
}

/// The state of one key's circuit.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    /// Consecutive failures while closed.
    failures: u32,
    /// Set while open: the key is skipped until then.
    open_until: Option<Instant>,
    /// A half-open probe is in flight: other requests still skip the key.
    probing: bool,
}

impl KeyState {
    /// True when a request may use the key at `now` (closed, or half-open without a probe).
    fn usable(&self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) => now >= until && !self.probing,
        }
    }
}

/// One key's circuit, shared by every config that names the key (see [`BreakerStore`]).
type Circuit = Arc<Mutex<KeyState>>;

/// The circuit of every tracked key by provider name and key NAME, for the life of the process:
/// each loaded config gets its [`Breakers`] from here ([`BreakerStore::breakers`]), so a key
/// keeps its state across a reload that reorders, adds or removes other keys.
#[derive(Debug, Default)]
pub struct BreakerStore {
    circuits: Mutex<HashMap<(String, String), Circuit>>,
}

/// What [`BreakerStore::breakers`] built, and how the set of tracked keys changed.
#[derive(Debug)]
pub struct BreakerUpdate {
    /// The breakers of the config, by key position.
    pub breakers: Breakers,
    /// `(provider, key)` names tracked now and not before (their circuits start closed).
    pub added: Vec<(String, String)>,
    /// `(provider, key)` names tracked before and not now (their state is dropped).
    pub removed: Vec<(String, String)>,
}

impl BreakerStore {
    /// The breakers of one config: for each `(provider, key names in config order)` of the
    /// providers with a `circuit_breaker` setting, the circuits known by those names (new
    /// ones closed). Runs when a config is loaded (startup, reload), never per request; keys
    /// no longer named are forgotten (requests still running on the old config keep theirs).
    pub fn breakers<'a, K>(&self, providers: impl IntoIterator<Item = (&'a str, K)>) -> BreakerUpdate
    where
        K: IntoIterator<Item = &'a str>,
    {
        let mut known = self.circuits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = HashMap::new();
        let mut by_provider = HashMap::new();
        let mut added = Vec::new();
        for (provider, keys) in providers {
            let circuits: Vec<Circuit> = keys
                .into_iter()
                .map(|key| {
                    let name = (provider.to_string(), key.to_string());
                    let circuit = known.remove(&name).unwrap_or_else(|| {
                        added.push(name.clone());
                        Circuit::default()
                    });
                    next.insert(name, circuit.clone());
                    circuit
                })
                .collect();
            by_provider.insert(provider.to_string(), circuits);
        }
        let removed = std::mem::replace(&mut *known, next).into_keys().collect();
        BreakerUpdate {
            breakers: Breakers { providers: by_provider },
            added,
            removed,
        }
    }
}

/// The circuits of one config's tracked keys, by provider name and key position; each key's
/// lock is held for a few comparisons, never across an await.
#[derive(Debug, Default)]
pub struct Breakers {
    providers: HashMap<String, Vec<Circuit>>,
}

impl Breakers {
    /// Fresh (closed) circuits for `(name, key count)` of every provider with a
    /// `circuit_breaker` setting, kept by no store (tests, tools); the server gets its
    /// breakers from a [`BreakerStore`].
    pub fn new<'a>(providers: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        Breakers {
            providers: providers
                .into_iter()
                .map(|(name, keys)| (name.to_string(), (0..keys).map(|_| Circuit::default()).collect()))
                .collect(),
        }
    }

    /// True when key `key` of `provider` may be picked at `now` (always, for untracked ones).
    pub fn usable(&self, provider: &str, key: usize, now: Instant) -> bool {
        self.with(provider, key, |s| s.usable(now)).unwrap_or(true)
    }

    /// Whether key `key` of `provider` is open (or half-open) now: for the circuit gauge.
    pub fn is_open(&self, provider: &str, key: usize) -> bool {
        self.with(provider, key, |s| s.open_until.is_some()).unwrap_or(false)
    }

    /// Called when an attempt starts with the key: a half-open key becomes probing (other
    /// requests skip it until the probe's outcome is recorded).
    pub fn begin(&self, provider: &str, key: usize, now: Instant) {
        self.with(provider, key, |s| {
            if s.open_until.is_some_and(|until| now >= until) {
                s.probing = true;
            }
        });
    }

    /// Records an attempt's outcome; returns `Some(open)` when the circuit changed state
    /// (`true`: it opened or re-opened, `false`: it closed), for the circuit gauge.
    pub fn record(
        &self,
        provider: &str,
        key: usize,
        outcome: Outcome,
        settings: &CircuitBreaker,
        now: Instant,
    ) -> Option<bool> {
        self.with(provider, key, |s| match outcome {
            Outcome::Success => {
                let was_open = s.open_until.is_some();
                *s = KeyState::default();
                was_open.then_some(false)
            }
            Outcome::Failure => {
                if s.open_until.is_some() {
                    // The probe (or an attempt begun before the circuit opened) failed.
                    s.open_until = Some(now + settings.open);
                    s.probing = false;
                    return Some(true);
                }
                s.failures = s.failures.saturating_add(1);
                if s.failures >= settings.failures {
                    s.open_until = Some(now + settings.open);
                    s.failures = 0;
                    return Some(true);
                }
                None
            }
            Outcome::Neutral => {
                s.probing = false;
                None
            }
        })
        .flatten()
    }

    fn with<T>(&self, provider: &str, key: usize, f: impl FnOnce(&mut KeyState) -> T) -> Option<T> {
        let mut state = self.providers.get(provider)?.get(key)?.lock().ok()?;
        Some(f(&mut state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_exponential_and_capped() {
        let base = Duration::from_millis(200);
        assert_eq!(backoff(base, 0, 0.0), Duration::ZERO);
        assert_eq!(backoff(base, 0, 1.0), base);
        assert_eq!(backoff(base, 1, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(base, 2, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(base, 10, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(base, 40, 1.0), MAX_BACKOFF);
        for i in 0..100 {
            let roll = fastrand::f64();
            let wait = backoff(base, i % 6, roll);
            assert!(wait <= (base * (1 << (i % 6))).min(MAX_BACKOFF), "{wait:?}");
        }
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(12)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn opens_after_consecutive_failures_probes_and_closes() {
        let cb = CircuitBreaker {
            failures: 2,
            open: Duration::from_secs(10),
        };
        let b = Breakers::new([("p", 2)]);
        let t0 = Instant::now();
        assert_eq!(b.record("p", 0, Outcome::Failure, &cb, t0), None);
        assert_eq!(b.record("p", 0, Outcome::Success, &cb, t0), None);
        assert_eq!(b.record("p", 0, Outcome::Failure, &cb, t0), None);
        assert_eq!(b.record("p", 0, Outcome::Failure, &cb, t0), Some(true));
        assert!(!b.usable("p", 0, t0));
        assert!(b.usable("p", 1, t0), "other keys are not affected");
        assert!(b.usable("q", 0, t0), "untracked providers are always usable");
        let later = t0 + Duration::from_secs(10);
        assert!(!b.usable("p", 0, later - Duration::from_millis(1)));
        assert!(b.usable("p", 0, later), "half-open");
        b.begin("p", 0, later);
        assert!(!b.usable("p", 0, later), "one probe at a time");
        assert_eq!(b.record("p", 0, Outcome::Failure, &cb, later), Some(true));
        assert!(!b.usable("p", 0, later + Duration::from_secs(9)));
        let again = later + Duration::from_secs(10);
        b.begin("p", 0, again);
        assert_eq!(b.record("p", 0, Outcome::Neutral, &cb, again), None);
        assert!(b.usable("p", 0, again), "a neutral probe frees the slot");
        b.begin("p", 0, again);
        assert_eq!(b.record("p", 0, Outcome::Success, &cb, again), Some(false));
        assert!(b.usable("p", 0, again));
        assert_eq!(b.record("p", 0, Outcome::Failure, &cb, again), None, "count restarts");
    }

    /// A reload that reorders the keys, adds one and drops another keeps each remaining key's
    /// circuit with its NAME, not its position.
    #[test]
    fn circuits_follow_key_names_across_reloads() {
        let cb = CircuitBreaker {
            failures: 1,
            open: Duration::from_secs(10),
        };
        let store = BreakerStore::default();
        let first = store.breakers([("p", vec!["a", "b", "c"]), ("q", vec!["a"])]);
        assert_eq!(first.added.len(), 4);
        let b = first.breakers;
        let t0 = Instant::now();
        assert_eq!(b.record("p", 1, Outcome::Failure, &cb, t0), Some(true), "b opens");
        assert!(!b.usable("p", 1, t0));
        // b moves to position 0, a to 2, c is dropped, d is added.
        let second = store.breakers([("p", vec!["b", "d", "a"]), ("q", vec!["a"])]);
        assert_eq!(second.added, vec![("p".to_string(), "d".to_string())]);
        assert_eq!(second.removed, vec![("p".to_string(), "c".to_string())]);
        let r = second.breakers;
        assert!(!r.usable("p", 0, t0), "b is still open at its new position");
        assert!(r.is_open("p", 0));
        assert!(r.usable("p", 1, t0) && r.usable("p", 2, t0), "d and a are closed");
        assert!(r.usable("q", 0, t0), "the other provider's a is its own key");
        // Requests still running on the old config share the same circuits.
        assert_eq!(b.record("p", 1, Outcome::Success, &cb, t0), Some(false));
        assert!(r.usable("p", 0, t0), "closed through the old view too");
        // A provider that drops its circuit breaker forgets its keys.
        let third = store.breakers([("q", ["a"])]);
        assert_eq!(third.removed.len(), 3);
        assert!(third.breakers.usable("p", 0, t0));
    }
}
