//! The circuit breaker per provider key, and the backoff between retries.
//!
//! Consulted when a key is picked for an attempt ([`Breakers::usable`], [`Breakers::begin`]) and
//! told each attempt's outcome ([`Breakers::record`]). A key whose attempts fail
//! `circuit_breaker.failures` times in a row is *open* for `open_ms`: key selection skips it.
//! Once that time has passed it is *half-open*: one request (the probe) may use it; the probe's
//! success closes the circuit, its failure opens it again for `open_ms`. Providers without a
//! `circuit_breaker` setting are never tracked. Times are injected (`now`) so the state machine
//! is tested without sleeping.

use crate::config::CircuitBreaker;
use std::collections::HashMap;
use std::sync::Mutex;
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

/// Every tracked key's circuit, one lock per provider (keys are few; the lock is held for a
/// few comparisons, never across an await).
#[derive(Debug, Default)]
pub struct Breakers {
    providers: HashMap<String, Mutex<Vec<KeyState>>>,
}

impl Breakers {
    /// Breakers for `(name, key count)` of every provider with a `circuit_breaker` setting.
    pub fn new<'a>(providers: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        Breakers {
            providers: providers
                .into_iter()
                .map(|(name, keys)| (name.to_string(), Mutex::new(vec![KeyState::default(); keys])))
                .collect(),
        }
    }

    /// True when key `key` of `provider` may be picked at `now` (always, for untracked ones).
    pub fn usable(&self, provider: &str, key: usize, now: Instant) -> bool {
        let Some(lock) = self.providers.get(provider) else {
            return true;
        };
        let Ok(states) = lock.lock() else {
            return true;
        };
        states.get(key).is_none_or(|s| s.usable(now))
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
        let mut states = self.providers.get(provider)?.lock().ok()?;
        states.get_mut(key).map(f)
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
}
