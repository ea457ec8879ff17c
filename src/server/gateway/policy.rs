//! The retry policy: after each attempt, what the candidate loop ([`super::fallback`]) does
//! next, decided from plain values only, in the spirit of tower's `retry::Policy`: the
//! attempt's [`Outcome`], how many retries the candidate had, a random roll in [0, 1) and the
//! provider's [`RetrySettings`] give a [`Decision`]. No clock, no I/O: the loop sleeps, counts
//! and logs.
//!
//! - an answer (or a stream already started downstream: never retried) stops the loop;
//! - a retryable failure ([`retry_reason`]) is retried after the jittered exponential
//!   backoff while the provider's `retries` last, waiting at least what the provider's
//!   `Retry-After` asks; one asking more than [`MAX_RETRY_AFTER`] is not retried. After a
//!   401/403/429 the retry avoids the refused key. Retries used up: the next candidate;
//! - every key's circuit open (`provider_keys_disabled`), slots full for the queue timeout
//!   (`provider_busy`: that was its wait), every key's quota used up
//!   (`provider_quota_exceeded`), or the plug-in admission refusing: the next candidate,
//!   without retry; the caller's own budget or rate limit (`budget_exceeded`,
//!   `rate_limited`) stops: it holds for every candidate;
//! - a fallback candidate skipped (the caller's key may not use it, not configured, no key for
//!   the model, its capabilities refuse): the next candidate;
//! - anything else (the request's own 4xx, the client gone) stops.

use crate::error::GatewayError;
use crate::server::breaker::{backoff, MAX_RETRY_AFTER};
use std::time::Duration;

/// How an attempt ended, as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Outcome<'a> {
    /// The failure; `None` when the attempt answered (or started a stream downstream).
    pub(super) error: Option<&'a GatewayError>,
    /// The provider's `Retry-After`, when its answer had one.
    pub(super) retry_after: Option<Duration>,
    /// The candidate tried: 0 the primary, i ≥ 1 the i-th fallback.
    pub(super) candidate: usize,
}

/// A provider's retry settings (`retries`, `retry_backoff_ms`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RetrySettings {
    /// Retries of one candidate after its first attempt.
    pub(super) retries: u32,
    /// The backoff's base (doubled per retry, jittered).
    pub(super) backoff: Duration,
}

/// What comes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Try the same candidate again after `wait`; `reason` is the label of
    /// `refract_retries_total`; `avoid_key`: prefer another key than the one just refused.
    RetryAfter {
        /// The wait before the retry.
        wait: Duration,
        /// Why it is retried.
        reason: &'static str,
        /// Whether the retry should use another key when there is one.
        avoid_key: bool,
    },
    /// Give up on this candidate; the next one, if any, tries.
    NextCandidate,
    /// The attempt's outcome is the request's (an answer, or a failure of the request's own).
    Stop,
}

/// Decides what follows an attempt whose outcome is `outcome`, the candidate having had
/// `retries_done` retries so far; `roll` is uniform in [0, 1) (the backoff's jitter).
pub(super) fn decide(outcome: &Outcome<'_>, retries_done: u32, roll: f64, settings: RetrySettings) -> Decision {
    let Some(e) = outcome.error else {
        return Decision::Stop;
    };
    if let Some(reason) = retry_reason(e) {
        if retries_done >= settings.retries {
            return Decision::NextCandidate;
        }
        let mut wait = backoff(settings.backoff, retries_done, roll);
        if let Some(asked) = outcome.retry_after {
            if asked > MAX_RETRY_AFTER {
                return Decision::NextCandidate;
            }
            wait = wait.max(asked);
        }
        return Decision::RetryAfter {
            wait,
            reason,
            avoid_key: matches!(reason, "auth" | "rate_limited"),
        };
    }
    if may_fall_back(e) || (outcome.candidate > 0 && skipped(e)) {
        return Decision::NextCandidate;
    }
    Decision::Stop
}

/// True when `e`, from a candidate that sent nothing downstream, lets the next candidate try.
pub(super) fn may_fall_back(e: &GatewayError) -> bool {
    retry_reason(e).is_some()
        || matches!(
            e,
            GatewayError::KeysDisabled { .. }
                | GatewayError::ProviderBusy { .. }
                | GatewayError::ProviderQuota { .. }
                | GatewayError::Refused { .. }
        )
}

/// Why a failed attempt (`e`, nothing of it sent downstream) may be retried at the same
/// candidate, as the `reason` label of `refract_retries_total`: `connect_error`, `timeout`
/// (also provider 408), `protocol_error`, `rate_limited` (429), `auth` (401/403: the next
/// attempt uses another key when there is one), `server_error` (5xx). `None`: not retryable
/// (the request's own fault, the client left, every key's circuit is open, the provider's
/// slots stayed full for its queue timeout, already a wait of its own, or the admission
/// refused). Also decides what counts as a failure for the circuit breaker.
pub fn retry_reason(e: &GatewayError) -> Option<&'static str> {
    match e {
        GatewayError::UpstreamConnect { .. } => Some("connect_error"),
        GatewayError::UpstreamTimeout { .. } => Some("timeout"),
        GatewayError::UpstreamProtocol { .. } => Some("protocol_error"),
        GatewayError::Provider { status, .. } => match *status {
            401 | 403 => Some("auth"),
            408 => Some("timeout"),
            429 => Some("rate_limited"),
            s if s >= 500 => Some("server_error"),
            _ => None,
        },
        _ => None,
    }
}

/// True when `e` means the candidate was not tried at all (skipped): the next one may try.
fn skipped(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::Unsupported { .. }
            | GatewayError::UnknownProvider(_)
            | GatewayError::NoKeyForModel { .. }
            | GatewayError::ProviderBlocked(_)
            | GatewayError::ModelBlocked(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(status: u16) -> GatewayError {
        GatewayError::Provider {
            provider: "p".into(),
            status,
            error: Default::default(),
        }
    }

    const SETTINGS: RetrySettings = RetrySettings {
        retries: 2,
        backoff: Duration::from_millis(100),
    };

    fn after(e: &GatewayError, candidate: usize, retries_done: u32, retry_after: Option<Duration>) -> Decision {
        let outcome = Outcome {
            error: Some(e),
            retry_after,
            candidate,
        };
        decide(&outcome, retries_done, 0.5, SETTINGS)
    }

    #[test]
    fn an_answer_stops() {
        let outcome = Outcome {
            error: None,
            retry_after: Some(Duration::from_secs(1)),
            candidate: 0,
        };
        assert_eq!(decide(&outcome, 0, 0.5, SETTINGS), Decision::Stop);
    }

    #[test]
    fn retryable_failures_are_retried_with_their_reason() {
        let connect = GatewayError::UpstreamConnect {
            provider: "p".into(),
            detail: "d".into(),
        };
        let timeout = GatewayError::UpstreamTimeout {
            provider: "p".into(),
            kind: crate::error::TimeoutKind::FirstByte,
            detail: "d".into(),
        };
        let garbage = GatewayError::UpstreamProtocol {
            provider: "p".into(),
            detail: "d".into(),
        };
        let cases = [
            (connect, "connect_error", false),
            (timeout, "timeout", false),
            (garbage, "protocol_error", false),
            (provider(408), "timeout", false),
            (provider(500), "server_error", false),
            (provider(503), "server_error", false),
            (provider(401), "auth", true),
            (provider(403), "auth", true),
            (provider(429), "rate_limited", true),
        ];
        for (e, reason, avoid_key) in cases {
            for candidate in [0, 2] {
                assert_eq!(
                    after(&e, candidate, 0, None),
                    // Jitter 0.5 of the first ceiling (the base).
                    Decision::RetryAfter {
                        wait: Duration::from_millis(50),
                        reason,
                        avoid_key
                    },
                    "{e}"
                );
            }
        }
        // The second retry's ceiling is twice the base.
        assert!(matches!(
            after(&provider(502), 0, 1, None),
            Decision::RetryAfter { wait, .. } if wait == Duration::from_millis(100)
        ));
    }

    #[test]
    fn every_retry_reason_has_a_series_from_startup() {
        let errors = [
            GatewayError::UpstreamConnect {
                provider: "p".into(),
                detail: "d".into(),
            },
            GatewayError::UpstreamTimeout {
                provider: "p".into(),
                kind: crate::error::TimeoutKind::Total,
                detail: "d".into(),
            },
            GatewayError::UpstreamProtocol {
                provider: "p".into(),
                detail: "d".into(),
            },
        ];
        let statuses = (400..600).map(provider);
        for e in errors.into_iter().chain(statuses) {
            if let Some(reason) = retry_reason(&e) {
                assert!(crate::metrics::RETRY_REASONS.contains(&reason), "{reason} ({e})");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let asked = Duration::from_secs(2);
        assert!(matches!(
            after(&provider(429), 0, 0, Some(asked)),
            Decision::RetryAfter { wait, .. } if wait == asked
        ));
        // A shorter ask than the backoff keeps the backoff.
        assert!(matches!(
            after(&provider(503), 0, 0, Some(Duration::from_millis(1))),
            Decision::RetryAfter { wait, .. } if wait == Duration::from_millis(50)
        ));
        assert!(matches!(
            after(&provider(429), 0, 0, Some(MAX_RETRY_AFTER)),
            Decision::RetryAfter { wait, .. } if wait == MAX_RETRY_AFTER
        ));
        let too_long = MAX_RETRY_AFTER + Duration::from_secs(1);
        assert_eq!(after(&provider(429), 0, 0, Some(too_long)), Decision::NextCandidate);
    }

    #[test]
    fn exhausted_retries_move_on() {
        assert_eq!(after(&provider(500), 0, 2, None), Decision::NextCandidate);
        assert_eq!(after(&provider(500), 1, 3, None), Decision::NextCandidate);
        let none = RetrySettings::default();
        let outcome = Outcome {
            error: Some(&provider(502)),
            retry_after: None,
            candidate: 0,
        };
        assert_eq!(decide(&outcome, 0, 0.5, none), Decision::NextCandidate);
    }

    #[test]
    fn request_faults_stop() {
        for s in [400, 404, 413, 422] {
            assert_eq!(after(&provider(s), 0, 0, None), Decision::Stop, "{s}");
            assert_eq!(after(&provider(s), 1, 0, None), Decision::Stop, "{s}");
        }
        assert_eq!(after(&GatewayError::ClientClosed, 0, 0, None), Decision::Stop);
        assert_eq!(after(&GatewayError::ClientClosed, 1, 0, None), Decision::Stop);
        let internal = GatewayError::Internal("x".into());
        assert_eq!(after(&internal, 1, 0, None), Decision::Stop);
    }

    #[test]
    fn busy_disabled_and_refused_move_on_without_retry() {
        let busy = GatewayError::ProviderBusy {
            provider: "p".into(),
            max_connections: 1,
            queue_timeout_ms: 1,
        };
        let disabled = GatewayError::KeysDisabled { provider: "p".into() };
        let refused = GatewayError::Refused {
            status: 429,
            code: "rate_limited",
            message: "m".into(),
        };
        for e in [busy, disabled, refused] {
            assert_eq!(after(&e, 0, 0, None), Decision::NextCandidate, "{e}");
            assert_eq!(after(&e, 1, 0, None), Decision::NextCandidate, "{e}");
        }
    }

    #[test]
    fn skipped_fallbacks_move_on_but_the_primary_stops() {
        let skipped = [
            GatewayError::Unsupported {
                provider: "p".into(),
                param: "mask".into(),
                message: "m".into(),
            },
            GatewayError::UnknownProvider("p".into()),
            GatewayError::NoKeyForModel {
                provider: "p".into(),
                model: "m".into(),
            },
            GatewayError::ProviderBlocked("p".into()),
            GatewayError::ModelBlocked("p/m".into()),
        ];
        for e in skipped {
            assert_eq!(after(&e, 1, 0, None), Decision::NextCandidate, "{e}");
            assert_eq!(after(&e, 0, 0, None), Decision::Stop, "{e}");
        }
    }

    #[test]
    fn request_faults_never_fall_back() {
        for s in [429, 500, 502, 503, 401, 403, 408] {
            assert!(may_fall_back(&provider(s)), "{s}");
        }
        for s in [400, 404, 413, 422] {
            assert!(!may_fall_back(&provider(s)), "{s}");
        }
        assert!(!may_fall_back(&GatewayError::ClientClosed));
        assert!(may_fall_back(&GatewayError::KeysDisabled { provider: "p".into() }));
        assert_eq!(retry_reason(&GatewayError::KeysDisabled { provider: "p".into() }), None);
        let busy = GatewayError::ProviderBusy {
            provider: "p".into(),
            max_connections: 1,
            queue_timeout_ms: 1,
        };
        assert!(may_fall_back(&busy));
        assert_eq!(retry_reason(&busy), None);
        assert_eq!(retry_reason(&provider(429)), Some("rate_limited"));
        assert_eq!(retry_reason(&provider(401)), Some("auth"));
        assert_eq!(retry_reason(&provider(408)), Some("timeout"));
        assert_eq!(retry_reason(&provider(502)), Some("server_error"));
        assert!(may_fall_back(&GatewayError::UpstreamConnect {
            provider: "p".into(),
            detail: "d".into()
        }));
    }
}
