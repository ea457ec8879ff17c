//! The access record: one per request, written when it ends (the gateway's `logging` hook),
//! on target `refract::access` at info (health probes at debug). Its fields, in order:
//! `request_id, virtual_key, method, route, provider, model, status, outcome, stream,
//! attempts, fallback, upstream_ms, total_ms, bytes_in, bytes_out, images, cost_usd`; never a
//! secret, a prompt or an image byte. [`outcome`] classifies how the request ended.

/// How a request ended, for the access record, the request span and
/// `refract_request_outcomes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (2xx/3xx; a stream that completed).
    Ok,
    /// Refused because of the request itself (4xx: auth, validation, limits).
    ClientError,
    /// The provider failed or refused it (its error, a bad answer, no connection, busy).
    ProviderError,
    /// A stream that had begun (status line 200) failed afterwards.
    StreamError,
    /// The client went away before its answer was complete.
    ClientGone,
    /// An upstream timeout.
    Timeout,
    /// The gateway itself failed (5xx of its own).
    GatewayError,
}

impl Outcome {
    /// Every outcome (the metric's zero series).
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::ProviderError,
        Outcome::StreamError,
        Outcome::ClientGone,
        Outcome::Timeout,
        Outcome::GatewayError,
    ];

    /// The name in logs, spans and the metric's `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientError => "client_error",
            Outcome::ProviderError => "provider_error",
            Outcome::StreamError => "stream_error",
            Outcome::ClientGone => "client_gone",
            Outcome::Timeout => "timeout",
            Outcome::GatewayError => "gateway_error",
        }
    }
}

/// What [`outcome`] decides from: plain values of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ending<'a> {
    /// The status recorded (0 = no answer was written); a failed stream's is its error's.
    pub status: u16,
    /// The error code (`GatewayError::code`), when the request ended in one.
    pub reason: Option<&'a str>,
    /// An event stream was sent (its status line said 200).
    pub streamed: bool,
    /// The connection to the client failed (Pingora reported an error at the end).
    pub connection_failed: bool,
}

/// Error codes that mean the provider's side failed.
const PROVIDER_REASONS: [&str; 6] = [
    "provider_error",
    "upstream_connect_error",
    "upstream_protocol_error",
    "provider_keys_disabled",
    "provider_busy",
    "provider_quota_exceeded",
];

/// How a request ended (see [`Outcome`]): the client's leaving first, then a timeout, a
/// failed stream, the provider's failures, then the status's class.
pub fn outcome(e: &Ending<'_>) -> Outcome {
    let reason = e.reason.unwrap_or("");
    if reason == "client_closed" || e.status == 499 || (e.status == 0 && e.connection_failed) {
        return Outcome::ClientGone;
    }
    if reason == "upstream_timeout" {
        return Outcome::Timeout;
    }
    if e.streamed && e.status != 200 {
        return Outcome::StreamError;
    }
    if PROVIDER_REASONS.contains(&reason) {
        return Outcome::ProviderError;
    }
    match e.status {
        100..=399 => Outcome::Ok,
        400..=499 => Outcome::ClientError,
        _ => Outcome::GatewayError,
    }
}

/// The `stream` field: `-` (no stream), `complete` or `failed`.
pub fn stream_field(streamed: bool, status: u16) -> &'static str {
    match (streamed, status) {
        (false, _) => "-",
        (true, 200) => "complete",
        (true, _) => "failed",
    }
}

/// The record's fields, as the gateway's `logging` hook collects them.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// The request id (`x-request-id`).
    pub request_id: &'a str,
    /// The caller's virtual key id, `None` before (or without) authentication.
    pub virtual_key: Option<&'a str>,
    /// The request's method.
    pub method: &'a str,
    /// Its path (without the query, which may carry a signature).
    pub route: &'a str,
    /// The serving (or last tried) provider.
    pub provider: Option<&'a str>,
    /// The serving (or last tried) model.
    pub model: Option<&'a str>,
    /// The status recorded.
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// [`stream_field`].
    pub stream: &'static str,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: u32,
    /// The index of the candidate that answered (0 = the primary).
    pub fallback: usize,
    /// Time from the upload's start to the last upstream exchange's end.
    pub upstream_ms: u64,
    /// The request's duration in ms.
    pub total_ms: f64,
    /// Body bytes received.
    pub bytes_in: u64,
    /// Body bytes sent.
    pub bytes_out: u64,
    /// Images delivered.
    pub images: u32,
    /// The answer's cost in micro-dollars, when something was delivered and priced.
    pub cost_micros: Option<u64>,
    /// A health probe (or another request an operator does not want at info).
    pub probe: bool,
}

impl AccessRecord<'_> {
    /// Writes the record (at info, or at debug for a probe).
    pub fn write(&self) {
        /// One callsite per level (a callsite's level is fixed), the same fields.
        macro_rules! access_event {
            ($level:expr) => {
                tracing::event!(
                    target: "refract::access",
                    $level,
                    request_id = %self.request_id,
                    virtual_key = %self.virtual_key.unwrap_or("-"),
                    method = %self.method,
                    route = %Printable(self.route),
                    provider = %self.provider.unwrap_or("-"),
                    model = %Printable(self.model.unwrap_or("-")),
                    status = self.status,
                    outcome = %self.outcome.as_str(),
                    stream = %self.stream,
                    attempts = self.attempts,
                    fallback = self.fallback,
                    upstream_ms = self.upstream_ms,
                    total_ms = (self.total_ms * 100.0).round() / 100.0,
                    bytes_in = self.bytes_in,
                    bytes_out = self.bytes_out,
                    images = self.images,
                    cost_usd = %Cost(self.cost_micros),
                )
            };
        }
        if self.probe {
            access_event!(tracing::Level::DEBUG);
        } else {
            access_event!(tracing::Level::INFO);
        }
    }
}

/// A client-chosen string, at most 200 characters, control and non-ASCII characters and
/// spaces escaped (one `key=value` token in text lines).
struct Printable<'a>(&'a str);

impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars().take(200) {
            if c.is_ascii_graphic() && c != '\\' {
                f.write_char(c)?;
            } else {
                write!(f, "\\u{{{:x}}}", u32::from(c))?;
            }
        }
        Ok(())
    }
}

/// `cost_usd`: USD with six decimals, or `-` when nothing was delivered.
struct Cost(Option<u64>);

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(micros) => crate::pricing::Usd(micros).fmt(f),
            None => f.write_str("-"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(status: u16, reason: Option<&str>, streamed: bool, connection_failed: bool) -> &'static str {
        outcome(&Ending {
            status,
            reason,
            streamed,
            connection_failed,
        })
        .as_str()
    }

    #[test]
    fn outcomes_by_status_reason_and_stream() {
        assert_eq!(of(200, None, false, false), "ok");
        assert_eq!(of(202, None, false, false), "ok");
        assert_eq!(of(200, None, true, false), "ok");
        assert_eq!(of(401, Some("virtual_key_not_found"), false, false), "client_error");
        assert_eq!(of(400, Some("invalid_request"), false, false), "client_error");
        assert_eq!(of(429, Some("rate_limited"), false, false), "client_error");
        assert_eq!(of(500, Some("provider_error"), false, false), "provider_error");
        assert_eq!(of(400, Some("provider_error"), false, false), "provider_error");
        assert_eq!(of(502, Some("upstream_connect_error"), false, false), "provider_error");
        assert_eq!(of(503, Some("provider_busy"), false, false), "provider_error");
        assert_eq!(of(504, Some("upstream_timeout"), false, false), "timeout");
        assert_eq!(of(502, Some("upstream_protocol_error"), true, false), "stream_error");
        assert_eq!(of(500, Some("provider_error"), true, false), "stream_error");
        assert_eq!(of(0, Some("client_error"), false, true), "client_gone");
        assert_eq!(of(499, Some("client_closed"), true, true), "client_gone");
        assert_eq!(of(500, Some("internal_error"), false, false), "gateway_error");
        assert_eq!(of(503, Some("store_unavailable"), false, false), "gateway_error");
        assert_eq!(of(0, None, false, false), "gateway_error");
    }

    #[test]
    fn every_outcome_has_a_distinct_name() {
        let names: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Outcome::ALL.len());
    }

    #[test]
    fn stream_field_values() {
        assert_eq!(stream_field(false, 500), "-");
        assert_eq!(stream_field(true, 200), "complete");
        assert_eq!(stream_field(true, 502), "failed");
    }

    #[test]
    fn client_strings_are_one_token() {
        assert_eq!(Printable("a b\n\"c\"\\").to_string(), "a\\u{20}b\\u{a}\"c\"\\u{5c}");
        assert_eq!(Printable(&"x".repeat(300)).to_string().len(), 200);
        assert_eq!(Cost(None).to_string(), "-");
    }
}
