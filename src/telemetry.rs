//! Logging and tracing, set up once by `refract` (main.rs) before the server starts.
//!
//! Logs: one `tracing` subscriber writes every record on stderr, as text or one JSON object
//! per line (`log.format`); `log::` records (ours and Pingora's) reach it through
//! `tracing-log`. Its filter is `log.level` and `log.filters`, or `RUST_LOG` when that is set;
//! a reload applies a changed level and filters ([`apply_log`]), other `log:` and `tracing:`
//! changes take effect at restart.
//!
//! Traces: with `tracing.otlp_endpoint`, the spans of [`SPAN_TARGET`] (a request, its parse,
//! attempts, exchanges and answer; see `server::gateway`) become OpenTelemetry spans, sampled
//! parent-based at `tracing.sample_ratio`, batched and POSTed as OTLP/HTTP protobuf by a
//! thread of their own (never on the request path). Without it no layer records spans, so
//! creating one is a disabled-callsite check. The log layer never sees spans either: it does
//! not format span fields per request.

use crate::config::{LogFormat, LogSettings, TracingSettings};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use std::sync::OnceLock;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// The target of the gateway's trace spans (`tracing::info_span!(target: SPAN_TARGET, …)`):
/// the only spans exported.
pub const SPAN_TARGET: &str = "refract::trace";

/// The target of the access records (one per request).
pub const ACCESS_TARGET: &str = "refract::access";

/// The log filter's reload handle, once [`init`] ran with `RUST_LOG` unset.
static LOG_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `RUST_LOG` is not a valid filter.
    #[error("RUST_LOG: {0}")]
    Filter(String),
    /// A subscriber was installed already.
    #[error("logging: {0}")]
    Init(String),
    /// The OTLP exporter or its runtime could not be built.
    #[error("tracing: {0}")]
    Exporter(String),
}

/// The running telemetry: [`Telemetry::shutdown`] flushes the spans not exported yet.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Drives the exporter's HTTP client; dropped after the provider shut down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Exports the spans still queued (within the exporter's timeout) and stops exporting.
    /// Runs once, when the server has stopped.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                log::warn!("tracing: flushing spans at exit: {e}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs the process's subscriber: logs per `log`, traces per `tracing` (`None`: none).
/// Runs once, in main.rs, right after the config was loaded and before the server is built.
pub fn init(log: &LogSettings, tracing: Option<&TracingSettings>) -> Result<Telemetry, TelemetryError> {
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let filter = match &from_env {
        Some(spec) => EnvFilter::try_new(spec).map_err(|e| TelemetryError::Filter(e.to_string()))?,
        None => EnvFilter::new(log.directives()),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let events_only = filter.and(events_only());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let log_layer: Box<dyn Layer<Registry> + Send + Sync> = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(events_only)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(events_only)
            .boxed(),
    };
    let (trace_layer, provider, runtime) = match tracing {
        Some(settings) => {
            let (provider, runtime) = tracer_provider(settings)?;
            let tracer = provider.tracer("refract");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(
                    filter_fn(|m| m.is_span() && m.target() == SPAN_TARGET).with_max_level_hint(LevelFilter::INFO),
                )
                .boxed();
            (Some(layer), Some(provider), Some(runtime))
        }
        None => (None, None, None),
    };
    tracing_subscriber::registry()
        .with(log_layer)
        .with(trace_layer)
        .try_init()
        .map_err(|e| TelemetryError::Init(e.to_string()))?;
    sync_log_max_level();
    if from_env.is_none() {
        let _ = LOG_FILTER.set(handle);
    }
    Ok(Telemetry { provider, runtime })
}

/// The log layer's second filter: events only, so that it never records (nor formats) a
/// span. Its level hint is "any": the combined filter's hint is then the level filter's own,
/// and `log::` records above that level are dropped before they reach the subscriber.
fn events_only() -> tracing_subscriber::filter::FilterFn<fn(&tracing::Metadata<'_>) -> bool> {
    let events: fn(&tracing::Metadata<'_>) -> bool = |m| m.is_event();
    filter_fn(events).with_max_level_hint(LevelFilter::TRACE)
}

/// `log::` records below the subscriber's most verbose level are dropped before they reach
/// it (a cheap check at each `log::debug!`): that level follows the filter.
fn sync_log_max_level() {
    log::set_max_level(tracing_log::AsLog::as_log(&LevelFilter::current()));
}

/// Applies a reloaded config's `log` level and filters (its `format` and `tracing` are read
/// at start only). Does nothing when `RUST_LOG` set the filter, or [`init`] never ran (a
/// gateway embedded in tests).
pub fn apply_log(log: &LogSettings) {
    let Some(handle) = LOG_FILTER.get() else {
        return;
    };
    match handle.reload(EnvFilter::new(log.directives())) {
        Ok(()) => sync_log_max_level(),
        Err(e) => log::warn!("config reload: log filters not applied: {e}"),
    }
}

/// The tracer provider exporting to `settings.otlp_endpoint`, and the one-thread runtime that
/// drives its HTTP client.
fn tracer_provider(
    settings: &TracingSettings,
) -> Result<(opentelemetry_sdk::trace::SdkTracerProvider, tokio::runtime::Runtime), TelemetryError> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    use opentelemetry_sdk::trace::Sampler;
    let fail = |e: &dyn std::fmt::Display| TelemetryError::Exporter(e.to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| fail(&e))?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| fail(&e))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(settings.otlp_endpoint.clone())
        .with_http_client(OnRuntime {
            client,
            runtime: runtime.handle().clone(),
        })
        .build()
        .map_err(|e| fail(&e))?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    Ok((provider, runtime))
}

/// The exporter's HTTP client: reqwest's async client, run on the exporter's own runtime (the
/// batch processor's thread awaits the spawned call, whatever executor it runs).
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await
            .map_err(|e| Box::new(e) as opentelemetry_http::HttpError)?
    }
}

/// Makes `span` (a request's) the child of the client's W3C `traceparent` in `headers`, when
/// spans are recorded and the header is there. Runs once per request, before any child span.
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    use opentelemetry::propagation::TextMapPropagator;
    let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    let parent = propagator.extract(&opentelemetry_http::HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The W3C `traceparent` naming `span` (`00-{trace id}-{span id}-{flags}`), for the upstream
/// request it covers; `None` when spans are not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let otel = context.span();
    let ids = otel.span_context();
    ids.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            ids.trace_id(),
            ids.span_id(),
            ids.trace_flags().to_u8()
        )
    })
}

/// The startup summary's fields: what the process loaded, without a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The gateway's listeners (`address`, `address (tls)`), comma-separated.
    pub listeners: String,
    /// The metrics address, or `-`.
    pub metrics: String,
    /// Providers by kind: `openai=2,gemini=1` (in first-configured order).
    pub providers: String,
    /// Configured virtual keys.
    pub virtual_keys: usize,
    /// Where job records live: `embedded` or `redis`.
    pub store: &'static str,
    /// Where objects live: `fs` or `s3`.
    pub objects: &'static str,
    /// Async job workers of this process.
    pub job_workers: usize,
    /// `tracing.otlp_endpoint`, or `-`.
    pub traces: String,
}

impl Summary {
    /// The summary of `config`.
    pub fn of(config: &crate::config::Config) -> Summary {
        use crate::config::{ObjectsSettings, StoreSettings};
        let listeners = config
            .listeners
            .iter()
            .map(|l| match l.tls {
                Some(_) => format!("{} (tls)", l.address),
                None => l.address.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut kinds: Vec<(&str, usize)> = Vec::new();
        for p in &config.providers {
            match kinds.iter_mut().find(|(k, _)| *k == p.kind.as_str()) {
                Some((_, n)) => *n += 1,
                None => kinds.push((p.kind.as_str(), 1)),
            }
        }
        let providers = kinds
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        Summary {
            listeners,
            metrics: config
                .metrics
                .as_ref()
                .map_or("-".to_string(), |m| m.address.to_string()),
            providers,
            virtual_keys: config.virtual_keys.len(),
            store: match config.store {
                StoreSettings::Embedded { .. } => "embedded",
                StoreSettings::Redis(_) => "redis",
            },
            objects: match config.objects {
                ObjectsSettings::Fs { .. } => "fs",
                ObjectsSettings::S3(_) => "s3",
            },
            job_workers: config.jobs.workers,
            traces: config
                .tracing
                .as_ref()
                .map_or("-".to_string(), |t| t.otlp_endpoint.clone()),
        }
    }

    /// Logs it at info (target `refract::startup`), once the config is loaded.
    pub fn log(&self) {
        tracing::info!(
            target: "refract::startup",
            version = env!("CARGO_PKG_VERSION"),
            listeners = %self.listeners,
            metrics = %self.metrics,
            providers = %self.providers,
            virtual_keys = self.virtual_keys,
            store = self.store,
            objects = self.objects,
            job_workers = self.job_workers,
            traces = %self.traces,
            "refract starting"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_filter_keeps_the_levels_hint() {
        use tracing_subscriber::layer::Filter;
        let filter = EnvFilter::new("info,pingora_core=warn").and(events_only());
        assert_eq!(Filter::<Registry>::max_level_hint(&filter), Some(LevelFilter::INFO));
    }

    #[test]
    fn summary_counts_providers_by_kind_and_names_the_stores() {
        let config = crate::config::from_yaml_str(
            "listeners:\n  - address: 127.0.0.1:8080\nmetrics:\n  address: 127.0.0.1:9091\n\
             providers:\n  - {name: a, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: x}]}\n\
             \x20 - {name: b, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: x}]}\n\
             \x20 - {name: c, kind: xai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: x}]}\n\
             virtual_keys:\n  - {id: v, key: sk-secret-1}\n",
        )
        .unwrap();
        let s = Summary::of(&config);
        assert_eq!(s.listeners, "127.0.0.1:8080");
        assert_eq!(s.metrics, "127.0.0.1:9091");
        assert_eq!(s.providers, "openai=2,xai=1");
        assert_eq!(s.virtual_keys, 1);
        assert_eq!((s.store, s.objects, s.traces.as_str()), ("embedded", "fs", "-"));
    }
}
