//! The account plugin: Prometheus metrics, recorded once per request when it ends, whatever
//! the outcome, and served as text on the metrics listener.
//!
//! Labels are bounded: `provider` is a configured provider name or `none`; `model` is the
//! requested model only for the first [`MAX_MODEL_LABELS`] distinct names per gateway (then
//! `other`), since clients choose model names freely; `status` is an HTTP status; `reason` is
//! an error code from [`crate::error::GatewayError::code`]. Keys never appear.

use crate::error::TimeoutKind;
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Distinct model label values kept before new ones are counted as `other`.
pub const MAX_MODEL_LABELS: usize = 100;

/// The gateway's metrics, in their own registry (so several gateways in one process, as in
/// tests, do not mix).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_duration: HistogramVec,
    request_bytes: IntCounterVec,
    response_bytes: IntCounterVec,
    in_flight: IntGauge,
    rejected: IntCounterVec,
    /// `refract_request_outcomes_total{provider,outcome}` ([`crate::access::Outcome`]).
    outcomes: IntCounterVec,
    /// `refract_route_requests_total{route,status}`: requests by the route family the client
    /// used ([`RequestRecord::route`]).
    routes: IntCounterVec,
    fallbacks: IntCounterVec,
    retries: IntCounterVec,
    circuit_open: IntGaugeVec,
    timeouts: IntCounterVec,
    client_disconnects: IntCounterVec,
    upstream_in_flight: IntGaugeVec,
    queue_rejected: IntCounterVec,
    /// `refract_linger_total`, one counter per [`LingerOutcome`] (resolved once).
    lingers: [IntCounter; LingerOutcome::ALL.len()],
    image_decodes: IntCounter,
    /// `refract_cost_usd_total{provider}`.
    cost_usd: CounterVec,
    /// `refract_images_total{provider,model}`.
    images: IntCounterVec,
    /// `refract_unpriced_answers_total{provider}`.
    unpriced: IntCounterVec,
    /// `refract_config_reloads_total{result="ok"}` and `{result="error"}`.
    reloads: [IntCounter; 2],
    config_info: IntGaugeVec,
    config_loaded: Gauge,
    models: Mutex<HashSet<String>>,
    /// Client connections: open, refused, closed by the gateway.
    pub connections: ConnectionMetrics,
    /// Stored objects and the files the gateway serves.
    pub objects: ObjectMetrics,
    /// Async jobs: events, queue, durations, takeovers, stored bytes.
    pub jobs: JobMetrics,
    /// Budgets, rate limits and quotas ([`crate::governance`]).
    pub governance: GovernanceMetrics,
}

/// How reading and discarding the rest of a request body after an early answer ended (the
/// `outcome` label of `refract_linger_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerOutcome {
    /// The body's end was reached: the connection closes cleanly and the client reads the answer.
    Drained,
    /// More than `limits.linger_bytes` was left (known from `Content-Length`, or read): closed.
    BytesLimit,
    /// `limits.linger_timeout_ms` passed first, or a read stalled: closed.
    Timeout,
    /// The client closed or reset its side first.
    ClientClosed,
    /// The body's framing broke while it was being discarded (an invalid chunk): closed.
    FramingError,
}

impl LingerOutcome {
    /// Every outcome, in the order of their counters.
    pub const ALL: [LingerOutcome; 5] = [
        LingerOutcome::Drained,
        LingerOutcome::BytesLimit,
        LingerOutcome::Timeout,
        LingerOutcome::ClientClosed,
        LingerOutcome::FramingError,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LingerOutcome::Drained => "drained",
            LingerOutcome::BytesLimit => "bytes_limit",
            LingerOutcome::Timeout => "timeout",
            LingerOutcome::ClientClosed => "client_closed",
            LingerOutcome::FramingError => "framing_error",
        }
    }
}

/// When a client went away (the `phase` label of `refract_client_disconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientPhase {
    /// While sending its request body: the streamed upstream request is abandoned unfinished.
    Upload,
    /// After its request, while the gateway waited for the provider: the exchange is dropped.
    Wait,
    /// While its answer was being streamed: the provider's stream is closed.
    Stream,
}

impl ClientPhase {
    /// Every phase.
    pub const ALL: [ClientPhase; 3] = [ClientPhase::Upload, ClientPhase::Wait, ClientPhase::Stream];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientPhase::Upload => "upload",
            ClientPhase::Wait => "wait",
            ClientPhase::Stream => "stream",
        }
    }
}

/// What one finished request reports.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord<'a> {
    /// Configured provider name, if the request got that far.
    pub provider: Option<&'a str>,
    /// Requested bare model name, if known.
    pub model: Option<&'a str>,
    /// Status sent to the client (0 if none was sent); for a stream that failed after its 200
    /// head (an in-band `error` event, an abort), the failure's status instead.
    pub status: u16,
    /// Error code when the request failed.
    pub reason: Option<&'static str>,
    /// Start to end.
    pub duration: Duration,
    /// Time spent on upstream exchanges, if any happened.
    pub upstream: Option<Duration>,
    /// Request body bytes read from the client.
    pub request_bytes: u64,
    /// Response body bytes sent to the client.
    pub response_bytes: u64,
    /// What the delivered answer cost, when one was delivered.
    pub cost: Option<crate::pricing::AnswerCost>,
    /// The route family the client used (a bounded label: `v1`, `openai`, `litellm`,
    /// `langchain`, `pydanticai`, `azure`, `genai`, `bedrock`, `other`).
    pub route: &'static str,
}

/// The latency histograms' buckets (seconds): up to 900 s, past the default timeouts (180 s to
/// the first byte, 600 s per attempt). [`latency_buckets`] adds one for a longer configured timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0,
    300.0, 600.0, 900.0,
];

/// The buckets of `refract_request_duration_seconds` and `refract_upstream_duration_seconds`:
/// [`LATENCY_BUCKETS`], and `ceiling` (whole seconds, rounded up) when it is past their last.
pub fn latency_buckets(ceiling: Duration) -> Vec<f64> {
    let mut buckets = LATENCY_BUCKETS.to_vec();
    let ceiling = ceiling.as_secs_f64().ceil();
    if buckets.last().is_some_and(|last| ceiling > *last) {
        buckets.push(ceiling);
    }
    buckets
}

/// The longest wait `config` allows in one request's life: the largest of every provider's
/// timeouts (connect, first byte, idle, total, poll) and the client upload's
/// (`limits.upload_timeout_ms`, `limits.body_read_timeout_ms`). The latency buckets reach it.
pub fn largest_timeout(config: &crate::config::Config) -> Duration {
    let limits = [config.limits.upload_timeout, config.limits.body_read_timeout];
    config
        .providers
        .iter()
        .flat_map(|p| {
            let t = p.timeouts;
            [t.connect, t.first_byte, t.idle, t.total, p.options.poll_timeout]
        })
        .chain(limits)
        .max()
        .unwrap_or_default()
}

/// The `reason` label values of `refract_retries_total` (what
/// [`crate::server::gateway::retry_reason`] returns).
pub const RETRY_REASONS: [&str; 6] = [
    "connect_error",
    "timeout",
    "protocol_error",
    "rate_limited",
    "auth",
    "server_error",
];

/// The `scope` and `limit` label pairs of `refract_governance_refusals_total` that can occur:
/// a virtual key's budget and rate limits, a team's budget, a provider key's quota.
pub const REFUSALS: [(&str, &str); 7] = [
    ("virtual_key", "budget"),
    ("virtual_key", "requests"),
    ("virtual_key", "images"),
    ("virtual_key", "concurrent"),
    ("team", "budget"),
    ("provider_key", "requests"),
    ("provider_key", "images"),
];

/// The `reason` values of `refract_rejected_requests_total` for a failure of the provider
/// (after retries and fallbacks), created at zero at startup so that an alert can read them.
pub const UPSTREAM_ERROR_REASONS: [&str; 6] = [
    "upstream_connect_error",
    "upstream_timeout",
    "upstream_protocol_error",
    "provider_keys_disabled",
    "provider_busy",
    "provider_error",
];

/// The `policy` label values of `refract_governance_store_errors_total`.
pub const STORE_ERROR_POLICIES: [&str; 2] = ["fail_open", "fail_closed"];

/// The labels of `refract_build_info`: the crate's version, the commit (`REFRACT_COMMIT` in
/// the build's environment, e.g. `REFRACT_COMMIT=$(git rev-parse --short HEAD) cargo build`;
/// `unknown` without it) and the cargo profile (`debug` or `release`).
pub const BUILD_INFO: [(&str, &str); 3] = [
    ("version", env!("CARGO_PKG_VERSION")),
    (
        "commit",
        match option_env!("REFRACT_COMMIT") {
            Some(commit) => commit,
            None => "unknown",
        },
    ),
    ("profile", if cfg!(debug_assertions) { "debug" } else { "release" }),
];

impl Metrics {
    /// Registers every metric in a fresh registry, with the latency buckets of the default
    /// timeouts ([`LATENCY_BUCKETS`]).
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_latency_ceiling(Duration::ZERO)
    }

    /// [`Metrics::new`] for the gateway built from `config`: the latency buckets reach its
    /// [`largest_timeout`] (fixed for the process's life: a reload does not change them).
    pub fn for_config(config: &crate::config::Config) -> Result<Self, prometheus::Error> {
        Self::with_latency_ceiling(largest_timeout(config))
    }

    /// Registers every metric in a fresh registry; the latency histograms' buckets reach
    /// `ceiling` ([`latency_buckets`]).
    fn with_latency_ceiling(ceiling: Duration) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        register_build_and_process(&registry)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "refract_requests_total",
                "Image-edit requests by provider, model and HTTP status.",
            ),
            &["provider", "model", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("refract_request_duration_seconds", "End-to-end request latency.")
                .buckets(latency_buckets(ceiling)),
            &["provider"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new("refract_upstream_duration_seconds", "Time spent in upstream exchanges.")
                .buckets(latency_buckets(ceiling)),
            &["provider"],
        )?;
        let request_bytes = IntCounterVec::new(
            Opts::new(
                "refract_request_bytes_total",
                "Request body bytes received from clients.",
            ),
            &["provider"],
        )?;
        let response_bytes = IntCounterVec::new(
            Opts::new("refract_response_bytes_total", "Response body bytes sent to clients."),
            &["provider"],
        )?;
        let in_flight = IntGauge::new("refract_requests_in_flight", "Requests being processed.")?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "refract_rejected_requests_total",
                "Requests that ended in an error, by reason.",
            ),
            &["reason"],
        )?;
        for reason in UPSTREAM_ERROR_REASONS {
            rejected.with_label_values(&[reason]);
        }
        registry.register(Box::new(requests.clone()))?;
        let routes = IntCounterVec::new(
            Opts::new(
                "refract_route_requests_total",
                "Requests by the route family the client used (v1, openai, litellm, langchain, pydanticai, azure, genai, bedrock, other) and HTTP status.",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(routes.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "refract_fallbacks_total",
                "Attempts moved from a failed candidate to the next one, by configured provider names.",
            ),
            &["from", "to"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "refract_request_outcomes_total",
                "Requests by provider and how they ended (ok, client_error, provider_error, stream_error, client_gone, timeout, gateway_error).",
            ),
            &["provider", "outcome"],
        )?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        let retries = IntCounterVec::new(
            Opts::new(
                "refract_retries_total",
                "Retries of the same candidate, by configured provider name and reason.",
            ),
            &["provider", "reason"],
        )?;
        let circuit_open = IntGaugeVec::new(
            Opts::new(
                "refract_circuit_open",
                "1 while a provider key's circuit is open (skipped), 0 when closed; by key name.",
            ),
            &["provider", "key"],
        )?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(circuit_open.clone()))?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "refract_upstream_timeouts_total",
                "Upstream attempts that passed a timeout, by configured provider name and kind (connect, first_byte, idle, total, poll).",
            ),
            &["provider", "kind"],
        )?;
        let client_disconnects = IntCounterVec::new(
            Opts::new(
                "refract_client_disconnects_total",
                "Clients that went away before their answer was complete, by phase (upload, wait, stream); the upstream work is cancelled.",
            ),
            &["phase"],
        )?;
        for phase in ClientPhase::ALL {
            client_disconnects.with_label_values(&[phase.as_str()]);
        }
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(client_disconnects.clone()))?;
        let upstream_in_flight = IntGaugeVec::new(
            Opts::new(
                "refract_upstream_in_flight",
                "Upstream exchanges in flight (slots of max_connections in use), by configured provider name.",
            ),
            &["provider"],
        )?;
        let queue_rejected = IntCounterVec::new(
            Opts::new(
                "refract_upstream_queue_rejected_total",
                "Requests refused (503 provider_busy) because every slot of the provider stayed taken for queue_timeout_ms, by configured provider name.",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(upstream_in_flight.clone()))?;
        registry.register(Box::new(queue_rejected.clone()))?;
        let linger = IntCounterVec::new(
            Opts::new(
                "refract_linger_total",
                "Request bodies read and discarded after an early answer (401, 413…) so that the client gets it, by outcome (drained, bytes_limit, timeout, client_closed, framing_error).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(linger.clone()))?;
        let lingers = LingerOutcome::ALL.map(|o| linger.with_label_values(&[o.as_str()]));
        let image_decodes = IntCounter::new(
            "refract_image_decodes_total",
            "Images the gateway decoded: mask conversions, at most one per request and provider mask convention (retries and fallbacks reuse it).",
        )?;
        registry.register(Box::new(image_decodes.clone()))?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "refract_config_reloads_total",
                "Config reloads (SIGHUP) by result: ok (swapped in) or error (refused, the running config kept).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        let reloads = ["ok", "error"].map(|r| reloads.with_label_values(&[r]));
        let config_info = IntGaugeVec::new(
            Opts::new(
                "refract_config_info",
                "1 for the running config, labelled with the SHA-256 of its file (as sha256sum prints it).",
            ),
            &["hash"],
        )?;
        registry.register(Box::new(config_info.clone()))?;
        let config_loaded = Gauge::new(
            "refract_config_loaded_timestamp_seconds",
            "When the running config was loaded (startup or the latest successful reload), in Unix seconds.",
        )?;
        registry.register(Box::new(config_loaded.clone()))?;
        let cost_usd = CounterVec::new(
            Opts::new(
                "refract_cost_usd_total",
                "What delivered answers cost, in USD (the price table's, see docs/governance.md), by configured provider name.",
            ),
            &["provider"],
        )?;
        let images = IntCounterVec::new(
            Opts::new(
                "refract_images_total",
                "Images delivered, by configured provider name and model (bounded label).",
            ),
            &["provider", "model"],
        )?;
        let unpriced = IntCounterVec::new(
            Opts::new(
                "refract_unpriced_answers_total",
                "Delivered answers of a model no price entry matches, priced by pricing.default, by configured provider name.",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(cost_usd.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(unpriced.clone()))?;
        let connections = ConnectionMetrics::register(&registry)?;
        let objects = ObjectMetrics::register(&registry)?;
        let jobs = JobMetrics::register(&registry)?;
        let governance = GovernanceMetrics::register(&registry)?;
        Ok(Metrics {
            objects,
            jobs,
            governance,
            reloads,
            config_info,
            config_loaded,
            connections,
            registry,
            requests,
            routes,
            duration,
            upstream_duration,
            request_bytes,
            response_bytes,
            in_flight,
            rejected,
            outcomes,
            fallbacks,
            retries,
            circuit_open,
            timeouts,
            client_disconnects,
            upstream_in_flight,
            queue_rejected,
            lingers,
            image_decodes,
            cost_usd,
            images,
            unpriced,
            models: Mutex::new(HashSet::new()),
        })
    }

    /// Creates at zero every labelled series named after what `config` configures, so that
    /// alerts and dashboards find them before the first event. For each provider: the latency
    /// histograms, the byte, cost and unpriced-answer counters, retries by every reason, upstream
    /// timeouts by kind (`poll` only for the asynchronous kinds, which poll), and fallbacks
    /// between the candidates of its model rules' chains; each budget's limit
    /// ([`GovernanceMetrics::budget_limits`]). Runs when a config is loaded (startup and each
    /// reload, off the request path); the series of a provider a reload removed stay at their
    /// values. (Circuit gauges, upstream slots and queue refusals are created where their state
    /// is: [`Metrics::circuit`], [`Metrics::upstream_slots`].)
    pub fn config_series(&self, config: &crate::config::Config) {
        const KINDS: [TimeoutKind; 5] = [
            TimeoutKind::Connect,
            TimeoutKind::FirstByte,
            TimeoutKind::Idle,
            TimeoutKind::Total,
            TimeoutKind::Poll,
        ];
        for p in &config.providers {
            let name = p.name.as_str();
            self.duration.with_label_values(&[name]);
            self.upstream_duration.with_label_values(&[name]);
            self.request_bytes.with_label_values(&[name]);
            self.response_bytes.with_label_values(&[name]);
            self.cost_usd.with_label_values(&[name]);
            self.unpriced.with_label_values(&[name]);
            for reason in RETRY_REASONS {
                self.retries.with_label_values(&[name, reason]);
            }
            for outcome in crate::access::Outcome::ALL {
                self.outcomes.with_label_values(&[name, outcome.as_str()]);
            }
            let polls = !p.options.poll_interval.is_zero();
            for kind in KINDS.into_iter().filter(|k| polls || *k != TimeoutKind::Poll) {
                self.timeouts.with_label_values(&[name, kind.as_str()]);
            }
            for rule in &p.options.models {
                let chain: Vec<&str> = std::iter::once(name)
                    .chain(rule.fallbacks.iter().map(|f| f.provider.as_str()))
                    .collect();
                for (i, from) in chain.iter().enumerate() {
                    for to in chain.iter().skip(i + 1) {
                        self.fallbacks.with_label_values(&[from, to]);
                    }
                }
            }
        }
        self.governance.budget_limits(config);
    }

    /// A request moved on to a fallback candidate, counted when that candidate's attempt
    /// starts. Both names are configured provider names (bounded labels).
    pub fn fallback(&self, from: &str, to: &str) {
        self.fallbacks.with_label_values(&[from, to]).inc();
    }

    /// A candidate is retried, counted before the backoff wait. `reason` is one of
    /// [`crate::server::gateway::retry_reason`]'s fixed values.
    pub fn retry(&self, provider: &str, reason: &str) {
        self.retries.with_label_values(&[provider, reason]).inc();
    }

    /// A provider key's circuit opened (`true`) or closed; also called at start (closed) for
    /// every key of a provider with a circuit breaker. `key` is the key's configured NAME.
    pub fn circuit(&self, provider: &str, key: &str, open: bool) {
        self.circuit_open
            .with_label_values(&[provider, key])
            .set(i64::from(open));
    }

    /// A reload dropped `key` of `provider` (or the provider's circuit breaker): its circuit
    /// gauge goes.
    pub fn forget_circuit(&self, provider: &str, key: &str) {
        let _ = self.circuit_open.remove_label_values(&[provider, key]);
    }

    /// A config was loaded and now runs (startup, or a reload that succeeded): its file's
    /// SHA-256 `hash` (hex) and when (`at`).
    pub fn config_loaded(&self, hash: &str, at: std::time::SystemTime) {
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.config_loaded.set(secs.as_secs_f64());
    }

    /// A reload ended: swapped in (`ok`) or refused.
    pub fn config_reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// An upstream attempt at `provider` (a configured name) passed a timeout of `kind`.
    pub fn timeout(&self, provider: &str, kind: TimeoutKind) {
        self.timeouts.with_label_values(&[provider, kind.as_str()]).inc();
    }

    /// A client went away in `phase`, before its answer was complete.
    pub fn client_disconnect(&self, phase: ClientPhase) {
        self.client_disconnects.with_label_values(&[phase.as_str()]).inc();
    }

    /// The gauge of upstream exchanges in flight to `provider` (a configured name) and the
    /// counter of its requests refused for a full queue, both created at zero: called at
    /// startup for every provider, so the series exist before the first event.
    pub fn upstream_slots(&self, provider: &str) -> (IntGauge, IntCounter) {
        (
            self.upstream_in_flight.with_label_values(&[provider]),
            self.queue_rejected.with_label_values(&[provider]),
        )
    }

    /// Lingering after an early answer ended with `outcome`.
    pub fn linger(&self, outcome: LingerOutcome) {
        if let Some(counter) = self.lingers.get(outcome as usize) {
            counter.inc();
        }
    }

    /// The gateway decoded an image (converted a mask), on its decode pool.
    pub fn image_decoded(&self) {
        self.image_decodes.inc();
    }

    /// A request started.
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// The bounded label value for a client-chosen model name.
    fn model_label(&self, model: &str) -> String {
        let Ok(mut seen) = self.models.lock() else {
            return "other".to_string();
        };
        if seen.contains(model) {
            return model.to_string();
        }
        let printable = model.len() <= 128 && model.bytes().all(|b| b.is_ascii_graphic());
        if printable && seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_string());
            return model.to_string();
        }
        "other".to_string()
    }

    /// A request ended: counts it everywhere it belongs.
    pub fn request_finished(&self, r: &RequestRecord<'_>) {
        self.in_flight.dec();
        let provider = r.provider.unwrap_or("none");
        let model = match (r.provider, r.model) {
            (Some(_), Some(m)) => self.model_label(m),
            _ => "none".to_string(),
        };
        let status = r.status.to_string();
        self.requests.with_label_values(&[provider, &model, &status]).inc();
        self.routes.with_label_values(&[r.route, &status]).inc();
        self.duration
            .with_label_values(&[provider])
            .observe(r.duration.as_secs_f64());
        if let Some(up) = r.upstream {
            self.upstream_duration
                .with_label_values(&[provider])
                .observe(up.as_secs_f64());
        }
        self.request_bytes
            .with_label_values(&[provider])
            .inc_by(r.request_bytes);
        self.response_bytes
            .with_label_values(&[provider])
            .inc_by(r.response_bytes);
        if let Some(reason) = r.reason {
            self.rejected.with_label_values(&[reason]).inc();
        }
        if let Some(cost) = &r.cost {
            self.count_cost(provider, &model, cost);
        }
    }

    /// An async job's answer was delivered (the job's run is not a request of its own): its
    /// cost and images, as [`Metrics::request_finished`] counts a request's.
    pub fn job_answered(&self, provider: &str, model: &str, cost: &crate::pricing::AnswerCost) {
        let model = self.model_label(model);
        self.count_cost(provider, &model, cost);
    }

    /// Counts a delivered answer's cost, images and (when no price matched) the unpriced
    /// answer; `model` is the bounded label.
    fn count_cost(&self, provider: &str, model: &str, cost: &crate::pricing::AnswerCost) {
        self.cost_usd
            .with_label_values(&[provider])
            .inc_by(cost.micros as f64 / crate::pricing::MICROS_PER_USD as f64);
        self.images
            .with_label_values(&[provider, model])
            .inc_by(u64::from(cost.images));
        if cost.unpriced {
            self.unpriced.with_label_values(&[provider]).inc();
        }
    }

    /// A request ended with `outcome` (an [`crate::access::Outcome`] name); `provider` is the
    /// serving (or last tried) provider, `none` before one was chosen.
    pub fn request_outcome(&self, provider: Option<&str>, outcome: &str) {
        self.outcomes
            .with_label_values(&[provider.unwrap_or("none"), outcome])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Registers `refract_build_info` (1, labelled with [`BUILD_INFO`]) and, on Linux, the
/// process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`,
/// `process_start_time_seconds`, `process_threads`), read from `/proc` at each scrape.
fn register_build_and_process(registry: &Registry) -> Result<(), prometheus::Error> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "refract_build_info",
            "1, labelled with the running binary's version, commit (unknown unless REFRACT_COMMIT was set at build time) and cargo profile.",
        ),
        &BUILD_INFO.map(|(name, _)| name),
    )?;
    build_info.with_label_values(&BUILD_INFO.map(|(_, value)| value)).set(1);
    registry.register(Box::new(build_info))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok(())
}

/// Why the gateway closed a client connection: the `reason` label of
/// `refract_client_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// No request began within `limits.keepalive_timeout_ms` (the first one or the next one).
    IdleTimeout,
    /// A request head was not complete within `limits.head_timeout_ms` of its first byte.
    HeadTimeout,
    /// A request head crossed `limits.max_head_bytes` (answered 431).
    HeadTooLarge,
    /// Closed while idle to make room for a new connection at the connection cap.
    Evicted,
}

impl ConnectionClose {
    /// Every reason, in the order of [`ConnectionMetrics`]' counters.
    pub const ALL: [ConnectionClose; 4] = [
        ConnectionClose::IdleTimeout,
        ConnectionClose::HeadTimeout,
        ConnectionClose::HeadTooLarge,
        ConnectionClose::Evicted,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionClose::IdleTimeout => "idle_timeout",
            ConnectionClose::HeadTimeout => "head_timeout",
            ConnectionClose::HeadTooLarge => "head_too_large",
            ConnectionClose::Evicted => "evicted",
        }
    }
}

/// The client-connection metrics. Each is a plain atomic behind a handle resolved once, so
/// counting costs no label lookup and no allocation.
pub struct ConnectionMetrics {
    open: IntGauge,
    max: IntGauge,
    refused: IntCounter,
    closed: [IntCounter; 4],
}

impl ConnectionMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let open = IntGauge::new(
            "refract_client_connections",
            "Open client connections (HTTP/1.x and h2), each holding one of limits.max_connections slots.",
        )?;
        let max = IntGauge::new(
            "refract_client_connections_max",
            "The cap on open client connections (limits.max_connections, or derived from the descriptor limit).",
        )?;
        let refused = IntCounter::new(
            "refract_client_connections_refused_total",
            "Client connections refused (503, then closed) because every slot was held by a busy connection.",
        )?;
        let closed_vec = IntCounterVec::new(
            Opts::new(
                "refract_client_connections_closed_total",
                "Client connections the gateway closed, by reason (idle_timeout, head_timeout, head_too_large, evicted).",
            ),
            &["reason"],
        )?;
        let closed = ConnectionClose::ALL.map(|r| closed_vec.with_label_values(&[r.as_str()]));
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(max.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(closed_vec))?;
        Ok(ConnectionMetrics {
            open,
            max,
            refused,
            closed,
        })
    }

    /// The connection cap, set once when the server starts.
    pub fn set_max(&self, max: usize) {
        self.max.set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// A client connection took a slot.
    pub fn opened(&self) {
        self.open.inc();
    }

    /// A client connection gave its slot back.
    pub fn released(&self) {
        self.open.dec();
    }

    /// A new client connection was refused at the cap.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// The gateway closed a client connection for `reason`.
    pub fn closed(&self, reason: ConnectionClose) {
        self.closed[reason as usize].inc();
    }
}

/// The file route's metrics: its answers by status, every series from startup. (Bytes stored,
/// rehosted images included, are [`JobMetrics::stored`]'s.)
pub struct ObjectMetrics {
    /// `refract_files_served_total{status}`, one counter per status of [`FILE_STATUSES`].
    served: [IntCounter; FILE_STATUSES.len()],
}

/// The statuses the file route answers (`refract_files_served_total`).
pub const FILE_STATUSES: [u16; 4] = [200, 403, 404, 500];

impl ObjectMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let served = IntCounterVec::new(
            Opts::new(
                "refract_files_served_total",
                "Answers of the file route (GET/HEAD /v1/images/files/{name}), by status: 200, 403 (signature missing, wrong or expired), 404, 500.",
            ),
            &["status"],
        )?;
        registry.register(Box::new(served.clone()))?;
        Ok(ObjectMetrics {
            served: FILE_STATUSES.map(|s| served.with_label_values(&[&s.to_string()])),
        })
    }

    /// The file route answered `status`.
    pub fn served(&self, status: u16) {
        if let Some(i) = FILE_STATUSES.iter().position(|s| *s == status) {
            self.served[i].inc();
        }
    }
}

/// What happened to an async job (the `event` label of `refract_jobs_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// Accepted (202), its upload stored.
    Submitted,
    /// Claimed by a worker of this process (a takeover counts here too).
    Claimed,
    /// Ran to an answer.
    Completed,
    /// Ran to an error (every candidate failed, or its key went away).
    Failed,
    /// Cancelled by its owner.
    Cancelled,
    /// Handed back to the queue by a worker shutting down.
    Released,
    /// Its worker lost the lease while running it (cancelled, or taken over): the run stopped.
    Lost,
}

impl JobEvent {
    /// Every event, in the order of their counters.
    pub const ALL: [JobEvent; 7] = [
        JobEvent::Submitted,
        JobEvent::Claimed,
        JobEvent::Completed,
        JobEvent::Failed,
        JobEvent::Cancelled,
        JobEvent::Released,
        JobEvent::Lost,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobEvent::Submitted => "submitted",
            JobEvent::Claimed => "claimed",
            JobEvent::Completed => "completed",
            JobEvent::Failed => "failed",
            JobEvent::Cancelled => "cancelled",
            JobEvent::Released => "released",
            JobEvent::Lost => "lost",
        }
    }
}

/// What the gateway writes to the objects store (the `kind` label of
/// `refract_objects_stored_bytes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    /// An async job's upload (its file parts).
    Upload,
    /// An async job's answer, when too large to keep in its record.
    Result,
    /// A rehosted image (`response_format=url`).
    Image,
}

impl StoredKind {
    /// Every kind, in the order of their counters.
    pub const ALL: [StoredKind; 3] = [StoredKind::Upload, StoredKind::Result, StoredKind::Image];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredKind::Upload => "upload",
            StoredKind::Result => "result",
            StoredKind::Image => "image",
        }
    }
}

/// Async jobs' series, all present from startup.
pub struct JobMetrics {
    events: [IntCounter; JobEvent::ALL.len()],
    runnable: IntGauge,
    running: IntGauge,
    duration: HistogramVec,
    takeovers: IntCounter,
    stored: [IntCounter; StoredKind::ALL.len()],
}

const JOB_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl JobMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events_vec = IntCounterVec::new(
            Opts::new(
                "refract_jobs_total",
                "Async job events seen by this process (submitted, claimed, completed, failed, cancelled, released, lost).",
            ),
            &["event"],
        )?;
        let events = JobEvent::ALL.map(|e| events_vec.with_label_values(&[e.as_str()]));
        let state = IntGaugeVec::new(
            Opts::new(
                "refract_jobs",
                "Unfinished async jobs in the store (shared by replicas): runnable (waiting for a worker, or whose worker's lease passed) and running.",
            ),
            &["state"],
        )?;
        let runnable = state.with_label_values(&["runnable"]);
        let running = state.with_label_values(&["running"]);
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "refract_job_duration_seconds",
                "From a worker's claim to the job's end, by outcome (completed, failed).",
            )
            .buckets(JOB_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        for outcome in ["completed", "failed"] {
            duration.with_label_values(&[outcome]);
        }
        let takeovers = IntCounter::new(
            "refract_job_lease_takeovers_total",
            "Jobs this process claimed after another worker's lease on them passed (a crashed or lost worker).",
        )?;
        let stored_vec = IntCounterVec::new(
            Opts::new(
                "refract_objects_stored_bytes_total",
                "Bytes written to the objects store, by kind (upload, result, image).",
            ),
            &["kind"],
        )?;
        let stored = StoredKind::ALL.map(|k| stored_vec.with_label_values(&[k.as_str()]));
        registry.register(Box::new(events_vec))?;
        registry.register(Box::new(state))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(takeovers.clone()))?;
        registry.register(Box::new(stored_vec))?;
        Ok(JobMetrics {
            events,
            runnable,
            running,
            duration,
            takeovers,
            stored,
        })
    }

    /// Counts `event`.
    pub fn event(&self, event: JobEvent) {
        self.events[event as usize].inc();
    }

    /// The store's unfinished jobs, as last counted.
    pub fn queue(&self, runnable: u64, running: u64) {
        self.runnable.set(i64::try_from(runnable).unwrap_or(i64::MAX));
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
    }

    /// A job ran for `elapsed` since its claim and ended `completed` (or failed).
    pub fn finished(&self, completed: bool, elapsed: Duration) {
        let outcome = if completed { "completed" } else { "failed" };
        self.duration
            .with_label_values(&[outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// A job was claimed after another worker's lease passed.
    pub fn takeover(&self) {
        self.takeovers.inc();
    }

    /// `bytes` of `kind` were written to the objects store.
    pub fn stored(&self, kind: StoredKind, bytes: u64) {
        self.stored[kind as usize].inc_by(bytes);
    }
}

/// The governance's metrics: refusals by scope and limit, spend by virtual key, what remains
/// of each budget, and the store's failures.
pub struct GovernanceMetrics {
    refusals: IntCounterVec,
    spend: CounterVec,
    remaining: GaugeVec,
    limits: GaugeVec,
    store_errors: IntCounterVec,
}

impl GovernanceMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let refusals = IntCounterVec::new(
            Opts::new(
                "refract_governance_refusals_total",
                "Requests and attempts refused by a limit, by scope (virtual_key, team, provider_key) and limit (budget, requests, images, concurrent).",
            ),
            &["scope", "limit"],
        )?;
        let spend = CounterVec::new(
            Opts::new(
                "refract_virtual_key_spend_usd_total",
                "USD charged to virtual keys (settled cost of delivered answers), by virtual key id and provider.",
            ),
            &["virtual_key", "provider"],
        )?;
        let remaining = GaugeVec::new(
            Opts::new(
                "refract_budget_remaining_usd",
                "What remains of a budget in its current period, as this process last saw it, by scope (virtual_key, team) and id.",
            ),
            &["scope", "id"],
        )?;
        let store_errors = IntCounterVec::new(
            Opts::new(
                "refract_governance_store_errors_total",
                "Calls to the store of counters that failed, by the policy applied (fail_open: counted locally; fail_closed: refused).",
            ),
            &["policy"],
        )?;
        let limits = GaugeVec::new(
            Opts::new(
                "refract_budget_limit_usd",
                "A configured budget's limit per period (max_usd), by scope (virtual_key, team) and id; set when the config is loaded.",
            ),
            &["scope", "id"],
        )?;
        for (scope, limit) in REFUSALS {
            refusals.with_label_values(&[scope, limit]);
        }
        for policy in STORE_ERROR_POLICIES {
            store_errors.with_label_values(&[policy]);
        }
        registry.register(Box::new(refusals.clone()))?;
        registry.register(Box::new(spend.clone()))?;
        registry.register(Box::new(remaining.clone()))?;
        registry.register(Box::new(limits.clone()))?;
        registry.register(Box::new(store_errors.clone()))?;
        Ok(GovernanceMetrics {
            refusals,
            spend,
            remaining,
            limits,
            store_errors,
        })
    }

    /// Counts a refusal by `scope` and `limit` (both from a fixed set).
    pub fn refused(&self, scope: &str, limit: &str) {
        self.refusals.with_label_values(&[scope, limit]).inc();
    }

    /// Counts `micros` charged to virtual key `key` for an answer of `provider`.
    pub fn spent(&self, key: &str, provider: &str, micros: u64) {
        self.spend
            .with_label_values(&[key, provider])
            .inc_by(micros as f64 / crate::pricing::MICROS_PER_USD as f64);
    }

    /// Sets what remains of the budget of `scope` `id`, in micro-dollars.
    pub fn remaining(&self, scope: &str, id: &str, micros: u64) {
        self.remaining
            .with_label_values(&[scope, id])
            .set(micros as f64 / crate::pricing::MICROS_PER_USD as f64);
    }

    /// Sets `refract_budget_limit_usd` to the budgets `config` configures (virtual keys' and
    /// teams'), dropping those of budgets it no longer has: runs when a config is loaded.
    pub fn budget_limits(&self, config: &crate::config::Config) {
        self.limits.reset();
        let keys = config.virtual_keys.iter().map(|k| ("virtual_key", &k.id, &k.budget));
        let teams = config.governance.teams.iter().map(|t| ("team", &t.id, &t.budget));
        for (scope, id, budget) in keys.chain(teams) {
            if let Some(budget) = budget {
                self.limits
                    .with_label_values(&[scope, id.as_str()])
                    .set(budget.max as f64 / crate::pricing::MICROS_PER_USD as f64);
            }
        }
    }

    /// Counts a failed call to the store, under `policy` (`fail_open`, `fail_closed`).
    pub fn store_error(&self, policy: &str) {
        self.store_errors.with_label_values(&[policy]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_metrics_exist_from_startup_and_count() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.lines()
                .any(|l| l == r#"refract_files_served_total{status="403"} 0"#),
            "{text}"
        );
        m.objects.served(200);
        m.objects.served(403);
        m.objects.served(403);
        m.objects.served(302);
        let text = String::from_utf8(m.encode()).unwrap();
        for line in [
            r#"refract_files_served_total{status="200"} 1"#,
            r#"refract_files_served_total{status="403"} 2"#,
            r#"refract_files_served_total{status="404"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"status="302""#), "{text}");
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    const CONFIG: &str = "
virtual_keys:
  - {id: app, key: k1, team: design, budget: {max_usd: '5.5', period: 1d}}
  - {id: free, key: k2}
teams:
  - {id: design, budget: {max_usd: 200, period: 1M}}
providers:
  - name: main
    kind: openai
    base_url: http://127.0.0.1:1/v1
    total_timeout_ms: 1200000
    keys: [{name: k, value: v}]
    model_rules:
      - {match: '*', fallbacks: [spare/m, poller/m]}
  - name: spare
    kind: openai
    base_url: http://127.0.0.1:1/v1
    keys: [{name: k, value: v}]
  - name: poller
    kind: bfl
    base_url: http://127.0.0.1:1
    keys: [{name: k, value: v}]
";

    fn config(text: &str) -> crate::config::Config {
        crate::config::from_yaml_str(text).unwrap()
    }

    #[test]
    fn configured_series_exist_at_zero_before_any_event() {
        let m = Metrics::new().unwrap();
        m.config_series(&config(CONFIG));
        let text = String::from_utf8(m.encode()).unwrap();
        for provider in ["main", "spare", "poller"] {
            for reason in RETRY_REASONS {
                let line = format!(r#"refract_retries_total{{provider="{provider}",reason="{reason}"}} 0"#);
                assert!(has_line(&text, &line), "{line} missing from:\n{text}");
            }
            for kind in ["connect", "first_byte", "idle", "total"] {
                let line = format!(r#"refract_upstream_timeouts_total{{kind="{kind}",provider="{provider}"}} 0"#);
                assert!(has_line(&text, &line), "{line} missing from:\n{text}");
            }
            for line in [
                format!(r#"refract_request_duration_seconds_count{{provider="{provider}"}} 0"#),
                format!(r#"refract_upstream_duration_seconds_count{{provider="{provider}"}} 0"#),
                format!(r#"refract_cost_usd_total{{provider="{provider}"}} 0"#),
                format!(r#"refract_unpriced_answers_total{{provider="{provider}"}} 0"#),
                format!(r#"refract_request_bytes_total{{provider="{provider}"}} 0"#),
                format!(r#"refract_response_bytes_total{{provider="{provider}"}} 0"#),
            ] {
                assert!(has_line(&text, &line), "{line} missing from:\n{text}");
            }
        }
        // Only the asynchronous kind polls.
        assert!(has_line(
            &text,
            r#"refract_upstream_timeouts_total{kind="poll",provider="poller"} 0"#
        ));
        assert!(!text.contains(r#"refract_upstream_timeouts_total{kind="poll",provider="main"}"#));
        // Every step of the chain main → spare → poller (a skipped candidate makes main → poller).
        for (from, to) in [("main", "spare"), ("main", "poller"), ("spare", "poller")] {
            let line = format!(r#"refract_fallbacks_total{{from="{from}",to="{to}"}} 0"#);
            assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains(r#"refract_fallbacks_total{from="spare",to="main"}"#));
        assert!(
            has_line(&text, r#"refract_budget_limit_usd{id="app",scope="virtual_key"} 5.5"#),
            "{text}"
        );
        assert!(
            has_line(&text, r#"refract_budget_limit_usd{id="design",scope="team"} 200"#),
            "{text}"
        );
        assert!(!text.contains(r#"id="free""#), "{text}");
    }

    #[test]
    fn a_reload_replaces_the_budget_limits() {
        let m = Metrics::new().unwrap();
        m.config_series(&config(CONFIG));
        m.config_series(&config(
            "virtual_keys: [{id: other, key: k1, budget: {max_usd: 1, period: 1d}}]\nproviders: [{name: added, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: v}]}]\n",
        ));
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            has_line(&text, r#"refract_budget_limit_usd{id="other",scope="virtual_key"} 1"#),
            "{text}"
        );
        assert!(!text.contains(r#"id="app""#), "{text}");
        assert!(!text.contains(r#"id="design""#), "{text}");
        assert!(
            has_line(
                &text,
                r#"refract_retries_total{provider="added",reason="server_error"} 0"#
            ),
            "{text}"
        );
    }

    #[test]
    fn fixed_series_exist_from_startup() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        for (scope, limit) in REFUSALS {
            let line = format!(r#"refract_governance_refusals_total{{limit="{limit}",scope="{scope}"}} 0"#);
            assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        }
        for policy in STORE_ERROR_POLICIES {
            let line = format!(r#"refract_governance_store_errors_total{{policy="{policy}"}} 0"#);
            assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        }
        for result in ["ok", "error"] {
            let line = format!(r#"refract_config_reloads_total{{result="{result}"}} 0"#);
            assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        }
        for reason in UPSTREAM_ERROR_REASONS {
            let line = format!(r#"refract_rejected_requests_total{{reason="{reason}"}} 0"#);
            assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn the_upstream_error_reasons_are_the_errors_codes() {
        use crate::error::GatewayError;
        let provider = || "p".to_string();
        let errors = [
            GatewayError::UpstreamConnect {
                provider: provider(),
                detail: "d".into(),
            },
            GatewayError::UpstreamTimeout {
                provider: provider(),
                kind: TimeoutKind::Idle,
                detail: "d".into(),
            },
            GatewayError::UpstreamProtocol {
                provider: provider(),
                detail: "d".into(),
            },
            GatewayError::KeysDisabled { provider: provider() },
            GatewayError::ProviderBusy {
                provider: provider(),
                max_connections: 1,
                queue_timeout_ms: 1,
            },
            GatewayError::Provider {
                provider: provider(),
                status: 502,
                error: Default::default(),
            },
        ];
        let codes: Vec<&str> = errors.iter().map(GatewayError::code).collect();
        assert_eq!(codes, UPSTREAM_ERROR_REASONS);
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let m = Metrics::new().unwrap();
        let text = String::from_utf8(m.encode()).unwrap();
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let line = format!(
            r#"refract_build_info{{commit="{}",profile="{profile}",version="{}"}} 1"#,
            option_env!("REFRACT_COMMIT").unwrap_or("unknown"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(has_line(&text, &line), "{line} missing from:\n{text}");
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{name} "))),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn latency_buckets_reach_the_largest_timeout() {
        // The default timeouts (600 s the longest) fit the fixed buckets.
        let defaults = config(
            "providers: [{name: p, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: v}]}]\n",
        );
        assert_eq!(largest_timeout(&defaults), Duration::from_secs(600));
        assert_eq!(latency_buckets(largest_timeout(&defaults)), LATENCY_BUCKETS.to_vec());
        assert_eq!(LATENCY_BUCKETS.last(), Some(&900.0));
        // A longer one gets a bucket of its own (rounded up to a whole second).
        let long = config(CONFIG);
        assert_eq!(largest_timeout(&long), Duration::from_secs(1200));
        assert_eq!(latency_buckets(Duration::from_millis(1_200_500)).last(), Some(&1201.0));
        let m = Metrics::for_config(&long).unwrap();
        m.config_series(&long);
        let text = String::from_utf8(m.encode()).unwrap();
        for histogram in ["refract_request_duration_seconds", "refract_upstream_duration_seconds"] {
            for le in ["180", "600", "900", "1200"] {
                let line = format!(r#"{histogram}_bucket{{provider="main",le="{le}"}} 0"#);
                assert!(has_line(&text, &line), "{line} missing from:\n{text}");
            }
        }
    }

    #[test]
    fn model_labels_are_bounded() {
        let m = Metrics::new().unwrap();
        for i in 0..(MAX_MODEL_LABELS + 50) {
            m.request_started();
            m.request_finished(&RequestRecord {
                provider: Some("p"),
                model: Some(&format!("model-{i}")),
                status: 200,
                ..Default::default()
            });
        }
        let text = String::from_utf8(m.encode()).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("refract_requests_total{"))
            .count();
        assert_eq!(series, MAX_MODEL_LABELS + 1);
        assert!(text.contains(r#"model="other""#));
    }
}
