//! Typed configuration of the gateway, loaded from one YAML file.
//!
//! It runs once at startup (before any listener is opened) and by
//! `refract check -c FILE`, which only reports. [`load_path`] reads the file,
//! resolves `env.NAME` secrets from the environment, checks every value and
//! every cross-reference, and returns either a complete [`Config`] or
//! [`ConfigErrors`] listing *every* problem found, each with its YAML path
//! (`providers[1].keys[0].value: environment variable OPENAI_KEY is not set`).
//!
//! The YAML is parsed into a generic tree and walked by hand (see `parse.rs`)
//! rather than derived with serde, so that unknown keys, wrong types and bad
//! references are all reported together, with paths and suggestions. The
//! reference for every key, its meaning and its default is
//! `conf/refract.yaml`.
//!
//! Secret values (provider key `value`, virtual key `key`) are held in
//! [`Secret`], whose `Debug` hides them, and never appear in a problem
//! message.

mod auth;
mod fields;
mod governance;
mod parse;
mod pricing;
mod print;
mod providers;
mod state;
mod telemetry;
#[cfg(test)]
mod test_util;
mod url;

pub use crate::kind::ProviderKind;
pub use auth::{algorithm, is_hmac, parse_jwks, AuthSettings, JwtIssuer, JwtKeySource, MIN_HS_SECRET_BYTES};
pub use governance::{parse_period, Budget, GovernanceSettings, KeyQuota, Period, RateLimit, StorePolicy, TeamConfig};
pub use print::{effective_yaml, providers_summary, providers_table};
pub use state::{
    JobsSettings, ObjectUrls, ObjectsSettings, RedisSettings, ResponseFormat, S3Settings, StoreSettings,
    DEFAULT_OBJECTS_PATH, DEFAULT_STORE_PATH,
};
pub use telemetry::{LogFormat, LogLevel, LogSettings, TracingSettings};
pub(crate) use url::parse_base_url;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Reads the YAML file at `path` and builds the [`Config`], resolving
/// `env.NAME` secrets from the process environment.
pub fn load_path(path: &Path) -> Result<Config, ConfigErrors> {
    load_path_hashed(path).map(|(config, _)| config)
}

/// [`load_path`], also returning the SHA-256 of the file's bytes in hex (as `sha256sum`
/// prints it): the running config's identity in `refract_config_info`.
pub fn load_path_hashed(path: &Path) -> Result<(Config, String), ConfigErrors> {
    let text = read_text(path)?;
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
    Ok((from_yaml_str(&text)?, hash))
}

/// The text of the config file at `path`, or the problem "cannot read".
fn read_text(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(FILE_PATH, format!("cannot read {}: {e}", path.display())))
}

/// Builds the [`Config`] from YAML text, resolving `env.NAME` secrets from
/// the process environment.
pub fn from_yaml_str(text: &str) -> Result<Config, ConfigErrors> {
    from_yaml_str_with_env(text, &|name| std::env::var(name).ok())
}

/// Builds the [`Config`] from YAML text, resolving `env.NAME` secrets with
/// `env` (which returns the variable's value, or `None` when it is unset).
/// Meant for tests; the other entry points pass the process environment.
pub fn from_yaml_str_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigErrors::single(FILE_PATH, e.to_string()))?;
    parse::build(&value, env).map_err(ConfigErrors)
}

/// The path given to problems about the file as a whole (unreadable file,
/// YAML syntax error).
pub const FILE_PATH: &str = "(file)";

/// Every problem found in a configuration, in the order found. `Display`
/// prints one `path: message` per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl ConfigErrors {
    fn single(path: &str, message: String) -> Self {
        ConfigErrors(vec![ConfigProblem {
            path: path.to_string(),
            message,
        }])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One problem in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where: a YAML path such as `providers[1].keys[0].value`, `(root)` for
    /// the document itself, or `(file)` for the file as a whole.
    pub path: String,
    /// What is wrong, e.g. `expected an integer, found a string`. Never
    /// contains a secret.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A secret string (an upstream API key, a virtual key). `Debug` prints
/// `Secret(***)` and there is no `Display`, so it cannot be logged by
/// accident; [`Secret::expose`] is the one way to read it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for putting it on the wire or hashing it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole gateway configuration, checked and with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pingora server settings (`server`).
    pub server: ServerSettings,
    /// The gateway's listening sockets (`listeners`); never empty.
    pub listeners: Vec<Listener>,
    /// The Prometheus metrics listener (`metrics`); `None` = no metrics.
    pub metrics: Option<MetricsSettings>,
    /// Client authentication (`auth`).
    pub auth: AuthSettings,
    /// Request size limits (`limits`).
    pub limits: Limits,
    /// Where uploaded files are buffered (`spool`).
    pub spool: SpoolSettings,
    /// The built-in provider simulator (`simulator`); `None` = not started.
    pub simulator: Option<SimulatorSettings>,
    /// Upstream providers (`providers`); never empty, names unique.
    pub providers: Vec<ProviderConfig>,
    /// Client API keys (`virtual_keys`); ids and keys unique.
    pub virtual_keys: Vec<VirtualKeyConfig>,
    /// Where job records live (`store`); read at startup only.
    pub store: StoreSettings,
    /// Where uploads and result images live (`objects`); read at startup only.
    pub objects: ObjectsSettings,
    /// How stored images are handed out as URLs (`objects.url_ttl`, `url_secret`,
    /// `public_url`, `default_response_format`); read at startup only.
    pub object_urls: ObjectUrls,
    /// How async jobs run (`jobs`).
    pub jobs: JobsSettings,
    /// The price table (`pricing`, then the shipped `conf/pricing.yaml`), compiled.
    pub pricing: Arc<crate::pricing::PriceTable>,
    /// Where the price table came from, for `--print`.
    pub pricing_source: PricingSource,
    /// Budgets, rate limits and quotas (`governance`, `teams`; the keys' own are on them).
    pub governance: GovernanceSettings,
    /// How the gateway logs (`log`).
    pub log: LogSettings,
    /// Where traces go (`tracing`); `None` = no traces.
    pub tracing: Option<TracingSettings>,
}

/// Where the compiled price table came from (`--print` prints the section as written).
#[derive(Debug, Clone, Default)]
pub struct PricingSource {
    /// How many of its first entries are `pricing.models`' (the rest are the file's).
    pub own_entries: usize,
    /// `pricing.file`; `None` = the built-in `conf/pricing.yaml`.
    pub file: Option<String>,
}

/// Pingora server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads for the gateway listeners, 1..=256.
    pub threads: usize,
    /// Seconds between SIGTERM and the start of the shutdown.
    pub grace_period_seconds: u64,
    /// Seconds the shutdown waits for in-flight requests.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Where to write the process id, if anywhere.
    pub pid_file: Option<String>,
    /// Unix socket for zero-downtime upgrades, if any.
    pub upgrade_sock: Option<String>,
    /// PEM file of the CA certificates trusted for https providers; `None` =
    /// the system roots. When set it replaces the system roots (it is not
    /// added to them). Existed when the config was loaded.
    pub ca_file: Option<PathBuf>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: 2,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            pid_file: None,
            upgrade_sock: None,
            ca_file: None,
        }
    }
}

/// One listening socket of the gateway.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The address to bind.
    pub address: SocketAddr,
    /// TLS certificate and key; `None` = plain HTTP.
    pub tls: Option<TlsFiles>,
}

/// PEM files for a TLS listener; both existed when the config was loaded.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// The Prometheus metrics listener.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// The address to serve `/metrics` on.
    pub address: SocketAddr,
}

/// Request size limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: u64,
    /// Most image parts accepted in one request.
    pub max_images: usize,
    /// Largest single file part, in bytes; never above `max_body_bytes`.
    pub max_part_bytes: u64,
    /// Largest single text field, in bytes.
    pub max_field_bytes: usize,
    /// The longest pause between two reads of a client's request body
    /// (`body_read_timeout_ms`, default 60 s); past it the request is a 408.
    pub body_read_timeout: Duration,
    /// The whole upload, from the request head to the body's end (`upload_timeout_ms`,
    /// default 300 s); past it the request is a 408, however steadily the body trickles.
    pub upload_timeout: Duration,
    /// Largest header block of one multipart part (its `Content-Disposition` and other
    /// header lines, with the boundary line before it), in bytes; enforced while it arrives.
    pub max_part_header_bytes: usize,
    /// Longest multipart field name, in bytes; a longer one is a 400 (never forwarded).
    pub max_field_name_bytes: usize,
    /// After an answer sent before the request body was read to its end (401, 413…): the most
    /// bytes of the rest of the body read and discarded so that the client, still sending, gets
    /// the answer (`linger_bytes`; default `max_body_bytes` + 16 MiB, so that a body refused
    /// for being just over the limit, all of it still to come, gets its 413). A longer rest
    /// closes the connection at once.
    pub linger_bytes: u64,
    /// The longest time spent reading and discarding that rest (`linger_timeout_ms`, default
    /// 5 s); then the connection is closed.
    pub linger_timeout: Duration,
    /// Most pixels (width × height, from the header) of an image the gateway or the simulator
    /// decodes (a mask it converts, an image the simulator edits); larger ones are refused
    /// before any decoding.
    pub max_image_pixels: u64,
    /// Most image decodes and mask conversions running at once (on blocking threads); the
    /// others wait their turn.
    pub decode_concurrency: usize,
    /// Most bytes of JSON request bodies (the GenAI, Bedrock and OpenAI JSON routes, which read
    /// a body whole before converting it) held at once by the whole process
    /// (`json_body_memory_bytes`, at least `max_body_bytes`): a body that would pass it is
    /// refused with a 503 `body_memory_busy` and `Retry-After`. Multipart bodies stream into the
    /// spool and do not count.
    pub json_body_memory_bytes: u64,
    /// The longest a client may take to send a request head (HTTP/1.x), from its first byte
    /// to the blank line that ends it (`head_timeout_ms`); past it the connection is closed.
    pub head_timeout: Duration,
    /// Largest request head (HTTP/1.x request line and headers), in bytes
    /// (`max_head_bytes`); past it the client gets a 431 and the connection is closed.
    pub max_head_bytes: usize,
    /// How long a client connection may wait for its next request (its first one included)
    /// before it is closed (`keepalive_timeout_ms`); also the idle timeout of h2 connections.
    pub keepalive_timeout: Duration,
    /// Most open client connections (`max_connections`); `None` = derived from the process's
    /// descriptor limit when the server starts.
    pub max_connections: Option<usize>,
    /// Images given by http(s) URL in a JSON edit body (`fetch_image_urls`): off by default.
    pub fetch_image_urls: ImageUrlFetch,
}

/// `limits.fetch_image_urls`: whether the gateway fetches images a JSON edit body names by
/// http(s) URL, and within what. Every fetch passes the SSRF guard ([`crate::ssrf`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrlFetch {
    /// Off (the default): a URL that is not a `data:` URL is a 400.
    pub enabled: bool,
    /// Largest image fetched, in bytes (never above `max_part_bytes`); enforced while reading.
    pub max_bytes: u64,
    /// The whole fetch of one image (every redirect, the body included).
    pub timeout: Duration,
    /// Most redirects followed (each re-checked by the guard); 0 = none.
    pub max_redirects: u32,
    /// Hosts (names or IP literals, lowercase, as in the URL) fetched even though they are or
    /// resolve to addresses the guard refuses: an operator's internal image store, a test's
    /// loopback server. Only the exact host: a redirect elsewhere is checked as usual.
    pub allow_hosts: Vec<String>,
}

impl Default for ImageUrlFetch {
    fn default() -> Self {
        ImageUrlFetch {
            enabled: false,
            max_bytes: 20 * MIB,
            timeout: Duration::from_secs(10),
            max_redirects: 3,
            allow_hosts: Vec::new(),
        }
    }
}

/// The default of `limits.decode_concurrency`: the number of CPU cores.
pub fn default_decode_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

impl Limits {
    /// The default of `json_body_memory_bytes` (or `max_body_bytes` when larger).
    pub const DEFAULT_JSON_BODY_MEMORY_BYTES: u64 = 512 * MIB;
    /// How far past `max_body_bytes` the default `linger_bytes` reaches.
    pub const LINGER_BEYOND_MAX_BODY: u64 = 16 * MIB;
    /// Default of `linger_timeout_ms`.
    pub const DEFAULT_LINGER_TIMEOUT_MS: u64 = 5000;
    /// Default of `max_field_name_bytes`: no field of the spec, nor any SDK encoding of one,
    /// comes near it.
    pub const DEFAULT_MAX_FIELD_NAME_BYTES: usize = 256;
}

impl Default for Limits {
    fn default() -> Self {
        let max_body_bytes = 100 * MIB;
        Limits {
            max_body_bytes,
            max_images: 16,
            max_part_bytes: 50 * MIB,
            max_field_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(60),
            upload_timeout: Duration::from_secs(300),
            max_part_header_bytes: 16 * 1024,
            max_field_name_bytes: Self::DEFAULT_MAX_FIELD_NAME_BYTES,
            linger_bytes: max_body_bytes + Self::LINGER_BEYOND_MAX_BODY,
            linger_timeout: Duration::from_millis(Self::DEFAULT_LINGER_TIMEOUT_MS),
            max_image_pixels: crate::imaging::DEFAULT_MAX_PIXELS,
            decode_concurrency: default_decode_concurrency(),
            json_body_memory_bytes: Self::DEFAULT_JSON_BODY_MEMORY_BYTES.max(max_body_bytes),
            head_timeout: Duration::from_secs(10),
            max_head_bytes: 64 * 1024,
            keepalive_timeout: Duration::from_secs(60),
            max_connections: None,
            fetch_image_urls: ImageUrlFetch::default(),
        }
    }
}

/// The largest `limits.max_head_bytes`: Pingora's own bound on a request head.
pub const MAX_HEAD_BYTES_LIMIT: u64 = 1_048_575;

const MIB: u64 = 1024 * 1024;

/// Where uploaded files are buffered while a request is processed.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    /// Bytes of uploaded files kept in memory per request before the rest
    /// spills to a temporary file.
    pub memory_bytes: usize,
    /// Directory for those temporary files; `None` = the system temp dir.
    pub directory: Option<PathBuf>,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            memory_bytes: 1024 * 1024,
            directory: None,
        }
    }
}

/// The built-in OpenAI-compatible provider simulator.
#[derive(Debug, Clone)]
pub struct SimulatorSettings {
    /// The address the simulator listens on.
    pub address: SocketAddr,
    /// How long a streamed answer (`stream=true`) waits before each event
    /// (`stream_interval_ms`, 0..=60000 ms, default 0).
    pub stream_interval: Duration,
    /// When greater than 0, each partial image of a streamed answer is padded
    /// to about this many bytes of PNG with an ancillary private chunk
    /// (`partial_image_bytes`, 0..=64 MiB, default 0 = the plain PNG).
    pub partial_image_bytes: usize,
}

impl SimulatorSettings {
    /// Default of `stream_interval_ms`.
    pub const DEFAULT_STREAM_INTERVAL_MS: u64 = 0;
    /// Largest `stream_interval_ms`.
    pub const MAX_STREAM_INTERVAL_MS: u64 = 60_000;
    /// Default of `partial_image_bytes` (no padding).
    pub const DEFAULT_PARTIAL_IMAGE_BYTES: usize = 0;
    /// Largest `partial_image_bytes`.
    pub const MAX_PARTIAL_IMAGE_BYTES: u64 = 64 * MIB;

    /// The simulator on `address` with every other setting at its default.
    pub fn new(address: SocketAddr) -> Self {
        SimulatorSettings {
            address,
            stream_interval: Duration::from_millis(Self::DEFAULT_STREAM_INTERVAL_MS),
            partial_image_bytes: Self::DEFAULT_PARTIAL_IMAGE_BYTES,
        }
    }
}

/// One upstream provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Unique name, `[a-z0-9_-]+`; the `provider` part of `provider/model`.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// Where requests are sent.
    pub base_url: BaseUrl,
    /// How long each wait on the provider may take.
    pub timeouts: Timeouts,
    /// Upstream API keys; never empty, names unique.
    pub keys: Vec<ProviderKey>,
    /// Settings only some kinds use.
    pub options: ProviderOptions,
}

/// How long each wait on a provider may take; each passed limit fails the attempt with a 504
/// `upstream_timeout` naming the kind of timeout (and counts in `refract_upstream_timeouts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a connection, TCP and TLS (`connect_timeout_ms`, default 5 s).
    pub connect: Duration,
    /// From the request's last byte sent to the answer's head (`first_byte_timeout_ms`,
    /// default 180 s: image models answer only when the image is done).
    pub first_byte: Duration,
    /// The longest pause between two reads of the answer after its head (for a stream: between
    /// events or keep-alive bytes) and between two writes of the request body
    /// (`idle_timeout_ms`, default 60 s).
    pub idle: Duration,
    /// One attempt from its connection to the answer's last byte, streams included
    /// (`total_timeout_ms`, default 600 s). For an upload streamed upstream while the client
    /// sends it, the clock starts when the upload is complete.
    pub total: Duration,
    /// How long a connection to the provider is kept idle in the pool for the next request
    /// (`pool_idle_timeout_ms`, default 60 s).
    pub pool_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(180),
            idle: Duration::from_secs(60),
            total: Duration::from_secs(600),
            pool_idle: Duration::from_secs(60),
        }
    }
}

/// Provider settings that only some kinds use (the config check rejects them elsewhere).
#[derive(Debug, Clone, Default)]
pub struct ProviderOptions {
    /// Azure: `api-version` of the deployments API (`api_version`).
    pub api_version: Option<String>,
    /// Azure: model → deployment name (`deployments`); a model not listed is its own deployment.
    pub deployments: Vec<(String, String)>,
    /// Vertex: Google Cloud project (`project`).
    pub project: Option<String>,
    /// Vertex: region such as `us-central1`, or `global` (`location`).
    pub location: Option<String>,
    /// Bedrock: AWS region such as `us-east-1` (`region`), for the endpoint and SigV4.
    pub region: Option<String>,
    /// Limits and settings per model pattern (`model_rules`), first match wins; they override the
    /// adapter's declared capabilities for the models they match.
    pub models: Vec<ModelRules>,
    /// Asynchronous kinds (bfl, fireworks, replicate): wait between polls (`poll_interval_ms`,
    /// default 500 ms); zero for other kinds.
    pub poll_interval: Duration,
    /// Asynchronous kinds: the longest a job may take from its submission to the final answer
    /// (`poll_timeout_ms`, default 120 s); past it the request fails with 504.
    pub poll_timeout: Duration,
    /// Extra attempts at the same candidate after a retryable failure (`retries`, default 0,
    /// at most 5), before the request moves on to its fallbacks.
    pub retries: u32,
    /// `rehost_urls` (default false): for `response_format=url`, ask the provider for base64
    /// and answer a gateway-stored URL instead of the provider's own URL.
    pub rehost_urls: bool,
    /// Base of the exponential backoff between retries (`retry_backoff_ms`, default 200 ms):
    /// retry n waits a uniform random time in `[0, base × 2^n]`, capped at 5 s.
    pub retry_backoff: Duration,
    /// The circuit breaker per provider key (`circuit_breaker`); `None` (absent) disables it.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Kinds that make one image per call (stability, bedrock's Stability models, bfl,
    /// fireworks): how many of the n calls that serve `n > 1` run at once
    /// (`repeat_concurrency`, default [`DEFAULT_REPEAT_CONCURRENCY`], 1..=10).
    pub repeat_concurrency: usize,
    /// How many upstream exchanges may be in flight to the provider at once, and how long a
    /// request waits for one to end (`max_connections`, `queue_timeout_ms`).
    pub connections: ConnectionLimit,
}

/// A provider's bound on upstream exchanges in flight at once (streamed uploads, polls and
/// result downloads included). A request that finds every slot taken waits up to
/// `queue_timeout`, then fails with 503 `provider_busy` (which falls back like a 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// The most exchanges in flight at once (`max_connections`, default 256, 1..=65536).
    pub max: usize,
    /// How long a request waits for a free slot (`queue_timeout_ms`, default 1 s, 0 = not at
    /// all).
    pub queue_timeout: Duration,
}

impl Default for ConnectionLimit {
    fn default() -> Self {
        ConnectionLimit {
            max: 256,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// Default `repeat_concurrency`: calls of one request in flight at once to a provider that makes
/// one image per call.
pub const DEFAULT_REPEAT_CONCURRENCY: usize = 4;

/// A provider's circuit breaker settings (`circuit_breaker: {failures, open_ms}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Consecutive failures of one key that open its circuit (`failures`, default 5).
    pub failures: u32,
    /// How long an open circuit skips the key before one probe may go (`open_ms`, default 30 s).
    pub open: Duration,
}

/// Rules for the models matching a pattern (`providers[].models[]`): limits checked before any
/// upstream call, and per-model wire settings. Kept in config because models retire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRules {
    /// Model name pattern: exact, or with `*` matching any run of characters (`match`).
    pub pattern: String,
    /// Most input images (`max_images`).
    pub max_images: Option<usize>,
    /// Largest input image in bytes (`max_image_bytes`).
    pub max_image_bytes: Option<u64>,
    /// Longest prompt in characters (`max_prompt_chars`).
    pub max_prompt_chars: Option<usize>,
    /// Accepted `size` values (`sizes`); `auto` is always accepted.
    pub sizes: Option<Vec<String>>,
    /// Accepted input image formats: `png`, `jpeg`, `webp` (`formats`).
    pub formats: Option<Vec<String>>,
    /// Replicate: the model's input key for images (`image_key`), e.g. `input_image`.
    pub image_key: Option<String>,
    /// The fallback chain of the matching models (`fallbacks`, `provider/model` entries), used
    /// when a request names no `fallbacks` of its own.
    pub fallbacks: Vec<crate::spec::Fallback>,
}

impl ModelRules {
    /// Whether `model` matches the pattern (`*` matches any run of characters).
    pub fn matches(&self, model: &str) -> bool {
        glob_match(&self.pattern, model)
    }
}

/// `*`-only glob matching, iterative (no backtracking blow-up); `model_rules` and the price
/// table's `match`.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

impl ProviderOptions {
    /// The rules for `model`: the first `model_rules` entry whose pattern matches.
    pub fn rules_for(&self, model: &str) -> Option<&ModelRules> {
        self.models.iter().find(|r| r.matches(model))
    }

    /// Azure: the deployment serving `model`.
    pub fn deployment<'m>(&'m self, model: &'m str) -> &'m str {
        self.deployments
            .iter()
            .find(|(m, _)| m == model)
            .map_or(model, |(_, d)| d.as_str())
    }
}

/// A provider base URL, split into the parts a proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `https` (true) or `http`.
    pub https: bool,
    /// Host name or IP address, lowercase; IPv6 without brackets.
    pub host: String,
    /// Port, defaulted to 443 / 80 from the scheme.
    pub port: u16,
    /// Path prefix such as `/v1`, or empty; never ends with `/`.
    pub path: String,
}

impl BaseUrl {
    /// `host[:port]` as a `Host` header value: IPv6 in brackets, port only
    /// when it is not the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.https {
            443
        } else {
            80
        }
    }
}

/// `scheme://authority/path`, as written in a config.
impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// One upstream API key of a provider.
#[derive(Debug, Clone)]
pub struct ProviderKey {
    /// Name, unique within the provider (for logs and metrics).
    pub name: String,
    /// What authenticates requests made with this key.
    pub credential: Credential,
    /// How it is sent (`auth`; the kind's default when not given).
    pub auth: KeyAuth,
    /// Relative share of traffic among the keys serving a model; > 0.
    pub weight: f64,
    /// Model names this key may serve; `"*"` means any.
    pub models: Vec<String>,
    /// The provider's own quota on this key, if configured (`quota`).
    pub quota: Option<KeyQuota>,
}

/// What authenticates upstream requests.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A key or token used as is (`value`).
    Static(Secret),
    /// A Google service account (`service_account_file`): exchanged for OAuth access tokens.
    ServiceAccount(Arc<ServiceAccountKey>),
    /// AWS credentials for SigV4 (`aws_access_key_id`, `aws_secret_access_key`, optional
    /// `aws_session_token`).
    Aws(Arc<AwsCredentials>),
}

/// AWS credentials, for signing requests with SigV4.
#[derive(Clone)]
pub struct AwsCredentials {
    /// Access key id (not secret, but not logged either).
    pub access_key_id: Secret,
    /// Secret access key.
    pub secret_access_key: Secret,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AwsCredentials(***)")
    }
}

/// A Google service-account key file, checked when the config is loaded.
#[derive(Clone)]
pub struct ServiceAccountKey {
    /// `client_email`: the JWT's issuer.
    pub client_email: String,
    /// `private_key_id`: the JWT header's `kid`, if given.
    pub private_key_id: Option<String>,
    /// `private_key` as PKCS#8 DER (an RSA key).
    pub private_key_der: Vec<u8>,
    /// `token_uri`: where the signed JWT is exchanged for an access token.
    pub token_uri: String,
}

impl fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// How a key is sent upstream (`auth:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAuth {
    /// `Authorization: Bearer` (OpenAI; Azure Entra tokens; Vertex OAuth tokens).
    Bearer,
    /// The provider's API-key header (`api-key` on Azure, `x-goog-api-key` on Google).
    ApiKey,
}

impl ProviderKey {
    /// The static key or token, if this key has one.
    pub fn secret(&self) -> Option<&str> {
        match &self.credential {
            Credential::Static(s) => Some(s.expose()),
            Credential::ServiceAccount(_) | Credential::Aws(_) => None,
        }
    }

    /// Whether this key may serve `model`.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// A client API key ("virtual key") and what it may use.
#[derive(Debug, Clone)]
pub struct VirtualKeyConfig {
    /// Unique id (for logs and metrics).
    pub id: String,
    /// SHA-256 of the key clients send.
    pub key_sha256: [u8; 32],
    /// The key itself when configured as `key` (not `key_sha256`): the secret a SigV4
    /// signature (the `/bedrock` route) is verified with. `None`: a digest-only key, which
    /// cannot sign.
    pub signing_secret: Option<Secret>,
    /// Whether the key is accepted at all.
    pub enabled: bool,
    /// Provider names it may use; `None` = all.
    pub providers: Option<Vec<String>>,
    /// `provider/model` or `provider/*` entries it may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// When it stops being accepted (`expires_at`, RFC 3339; Unix seconds); `None` = never.
    pub expires_at: Option<u64>,
    /// The team whose budget it also spends (an id of `teams`).
    pub team: Option<String>,
    /// Its own budget.
    pub budget: Option<Budget>,
    /// Its rate limits.
    pub rate_limit: Option<RateLimit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_patterns() {
        let rule = |p: &str| ModelRules {
            pattern: p.into(),
            ..Default::default()
        };
        assert!(rule("amazon.nova-canvas-v1:0").matches("amazon.nova-canvas-v1:0"));
        assert!(!rule("amazon.nova-canvas-v1:0").matches("amazon.nova-canvas-v1:01"));
        assert!(rule("amazon.*").matches("amazon.titan-image-generator-v2:0"));
        assert!(rule("*-kontext-*").matches("black-forest-labs/flux-kontext-pro"));
        assert!(rule("*").matches(""));
        assert!(!rule("a*b").matches("a-c"));
        assert!(rule("a*b*c").matches("a-b-x-b-c"));
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "OPENAI_API_KEY" => Some("sk-upstream-SECRET-1".to_string()),
            "REFRACT_VK_TEAM_A" => Some("vk-team-a-SECRET-2".to_string()),
            "VERTEX_ACCESS_TOKEN" => Some("ya29.vertex-SECRET-3".to_string()),
            "AZURE_OPENAI_API_KEY" => Some("azure-SECRET-4".to_string()),
            "GEMINI_API_KEY" => Some("gemini-SECRET-5".to_string()),
            other if other.chars().all(|c| c.is_ascii_uppercase() || c == '_') => Some(format!("{other}-SECRET")),
            _ => None,
        }
    }

    const MINIMAL: &str = "
providers:
  - name: openai
    kind: openai
    base_url: https://api.openai.com/v1/
    keys:
      - name: primary
        value: env.OPENAI_API_KEY
";

    #[test]
    fn minimal_config_gets_every_default() {
        let c = from_yaml_str_with_env(MINIMAL, &env).unwrap();
        let s = &c.server;
        assert_eq!(
            (s.threads, s.grace_period_seconds, s.graceful_shutdown_timeout_seconds),
            (2, 5, 5)
        );
        assert!(s.pid_file.is_none() && s.upgrade_sock.is_none() && s.ca_file.is_none());
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert!(c.listeners[0].tls.is_none());
        assert!(c.metrics.is_none() && c.simulator.is_none());
        assert!(!c.auth.allow_anonymous);
        let l = &c.limits;
        assert_eq!(
            (l.max_body_bytes, l.max_images, l.max_part_bytes, l.max_field_bytes),
            (104_857_600, 16, 52_428_800, 65_536)
        );
        assert_eq!(l.max_part_header_bytes, 16_384);
        assert_eq!(l.max_field_name_bytes, 256);
        assert_eq!(
            (l.linger_bytes, l.linger_timeout),
            (121_634_816, Duration::from_millis(5000))
        );
        assert_eq!(
            (l.max_image_pixels, l.decode_concurrency),
            (16_777_216, default_decode_concurrency())
        );
        assert_eq!(
            (l.head_timeout, l.max_head_bytes, l.keepalive_timeout, l.max_connections),
            (Duration::from_secs(10), 65_536, Duration::from_secs(60), None)
        );
        assert_eq!(c.spool.memory_bytes, 1_048_576);
        assert!(c.spool.directory.is_none());
        let p = &c.providers[0];
        assert_eq!((p.name.as_str(), p.kind), ("openai", ProviderKind::OpenAi));
        assert_eq!(p.base_url.path, "/v1");
        assert_eq!(p.base_url.to_string(), "https://api.openai.com/v1");
        assert_eq!(p.timeouts, Timeouts::default());
        assert_eq!(p.timeouts.connect, Duration::from_millis(5000));
        let k = &p.keys[0];
        assert_eq!(
            (k.name.as_str(), k.secret().unwrap(), k.weight),
            ("primary", "sk-upstream-SECRET-1", 1.0)
        );
        assert_eq!(k.models, ["*"]);
        assert!(k.serves("gpt-image-1"));
        assert!(c.virtual_keys.is_empty());
    }

    #[test]
    fn defaults_match_the_default_impls() {
        let c = from_yaml_str_with_env(MINIMAL, &env).unwrap();
        let (l, d) = (&c.limits, Limits::default());
        assert_eq!(
            (l.max_body_bytes, l.max_images, l.max_part_bytes, l.max_field_bytes),
            (d.max_body_bytes, d.max_images, d.max_part_bytes, d.max_field_bytes)
        );
        assert_eq!((l.linger_bytes, l.linger_timeout), (d.linger_bytes, d.linger_timeout));
        assert_eq!(
            (l.head_timeout, l.max_head_bytes, l.keepalive_timeout, l.max_connections),
            (d.head_timeout, d.max_head_bytes, d.keepalive_timeout, d.max_connections)
        );
        assert_eq!(c.server.threads, ServerSettings::default().threads);
        assert_eq!(c.spool.memory_bytes, SpoolSettings::default().memory_bytes);
        assert_eq!(c.auth.allow_anonymous, AuthSettings::default().allow_anonymous);
    }

    #[test]
    fn reference_config_loads_with_every_section() {
        let text = include_str!("../../conf/refract.yaml");
        let c = from_yaml_str_with_env(text, &env).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<ProviderKind> = c.providers.iter().map(|p| p.kind).collect();
        assert_eq!(kinds, ProviderKind::ALL, "one documented provider per kind, in order");
        assert_eq!(c.providers[0].keys[0].secret().unwrap(), "sk-upstream-SECRET-1");
        assert_eq!(
            c.providers[1].options.deployment("gpt-image-1"),
            "my-gpt-image-deployment"
        );
        assert_eq!(
            c.providers[2].base_url.to_string(),
            "https://generativelanguage.googleapis.com/v1beta"
        );
        assert_eq!(c.providers[3].keys[0].secret().unwrap(), "ya29.vertex-SECRET-3");
        assert!(c.metrics.is_some() && c.simulator.is_some());
        assert_eq!(c.virtual_keys.len(), 2);
        let team_a = c.virtual_keys.iter().find(|v| v.id == "team-a").unwrap();
        assert_eq!(team_a.key_sha256, providers::sha256("vk-team-a-SECRET-2"));
        assert!(c.listeners.iter().all(|l| l.tls.is_none()));

        // Without the environment variables it names them.
        let errors = from_yaml_str_with_env(text, &|_| None).unwrap_err();
        let shown = errors.to_string();
        assert!(errors.0.len() >= 5, "{shown}");
        assert!(
            shown.contains("environment variable VERTEX_ACCESS_TOKEN is not set"),
            "{shown}"
        );
        assert!(
            shown.contains("environment variable OPENAI_API_KEY is not set"),
            "{shown}"
        );
        assert!(
            shown.contains("environment variable REFRACT_VK_TEAM_A is not set"),
            "{shown}"
        );
    }

    #[test]
    fn reference_config_documents_every_key() {
        let text = include_str!("../../conf/refract.yaml");
        for key in [
            "server:",
            "threads:",
            "grace_period_seconds:",
            "graceful_shutdown_timeout_seconds:",
            "pid_file:",
            "upgrade_sock:",
            "ca_file:",
            "listeners:",
            "address:",
            "tls:",
            "cert:",
            "key:",
            "metrics:",
            "auth:",
            "allow_anonymous:",
            "limits:",
            "max_body_bytes:",
            "max_images:",
            "max_part_bytes:",
            "max_field_bytes:",
            "body_read_timeout_ms:",
            "upload_timeout_ms:",
            "max_part_header_bytes:",
            "max_field_name_bytes:",
            "linger_bytes:",
            "linger_timeout_ms:",
            "max_image_pixels:",
            "decode_concurrency:",
            "head_timeout_ms:",
            "max_head_bytes:",
            "keepalive_timeout_ms:",
            "max_connections:",
            "spool:",
            "memory_bytes:",
            "directory:",
            "simulator:",
            "stream_interval_ms:",
            "partial_image_bytes:",
            "providers:",
            "name:",
            "kind:",
            "base_url:",
            "connect_timeout_ms:",
            "first_byte_timeout_ms:",
            "idle_timeout_ms:",
            "total_timeout_ms:",
            "pool_idle_timeout_ms:",
            "max_connections:",
            "queue_timeout_ms:",
            "keys:",
            "value:",
            "weight:",
            "models:",
            "virtual_keys:",
            "id:",
            "key_sha256:",
            "enabled:",
        ] {
            assert!(text.contains(key), "conf/refract.yaml does not mention {key}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_or_errors() {
        let yaml = "
providers:
  - name: openai
    kind: openai
    base_url: https://api.openai.com
    keys:
      - {name: a, value: env.OPENAI_API_KEY}
      - {name: b, value: literal-upstream-SECRET-3, weight: -1}
virtual_keys:
  - {id: one, key: env.REFRACT_VK_TEAM_A}
  - {id: two, key: vk-team-a-SECRET-2, providers: [nope]}
  - {id: three, key: 'bad SECRET-4'}
";
        let errors = from_yaml_str_with_env(yaml, &env).unwrap_err();
        let shown = format!("{errors}\n{errors:?}");
        assert!(shown.contains("duplicate key (same as virtual_keys[0])"), "{shown}");
        assert!(shown.contains("keys[1].weight"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");

        let ok = yaml
            .replace("weight: -1", "weight: 2")
            .replace("vk-team-a-SECRET-2, providers: [nope]", "other")
            .replace("'bad SECRET-4'", "third");
        let config = from_yaml_str_with_env(&ok, &env).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{config:?} {config:#?}");
        assert!(shown.contains("Secret(***)"));
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(!shown.contains("literal-upstream"), "{shown}");
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }

    #[test]
    fn syntax_error_is_one_problem_at_file_with_location() {
        let errors = from_yaml_str_with_env("server:\n  threads: [1, 2\nproviders: x\n", &env).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "(file)");
        assert!(errors.0[0].message.contains("line"), "{errors}");
    }

    #[test]
    fn load_path_reads_files_and_reports_missing_ones() {
        let errors = load_path(Path::new("/nonexistent/refract.yaml")).unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].path, "(file)");
        assert!(
            errors.0[0].message.starts_with("cannot read /nonexistent/refract.yaml"),
            "{errors}"
        );

        let path = std::env::temp_dir().join(format!("refract-config-test-{}.yaml", std::process::id()));
        std::fs::write(&path, MINIMAL.replace("env.OPENAI_API_KEY", "sk-literal")).unwrap();
        let loaded = load_path(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap().providers[0].keys[0].secret().unwrap(), "sk-literal");
    }

    #[test]
    fn errors_display_one_problem_per_line() {
        let errors = ConfigErrors(vec![
            ConfigProblem {
                path: "a".into(),
                message: "one".into(),
            },
            ConfigProblem {
                path: "b[0].c".into(),
                message: "two".into(),
            },
        ]);
        assert_eq!(errors.to_string(), "a: one\nb[0].c: two");
        let boxed: Box<dyn std::error::Error> = Box::new(errors);
        assert!(boxed.to_string().ends_with("two"));
    }

    #[test]
    fn provider_kinds_round_trip() {
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::from_name(kind.as_str()), Some(*kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(ProviderKind::from_name("OpenAI"), None);
    }

    #[test]
    fn provider_key_serves_listed_models_only() {
        let key = ProviderKey {
            name: "k".into(),
            credential: Credential::Static(Secret::new("s")),
            auth: KeyAuth::Bearer,
            weight: 1.0,
            models: vec!["gpt-image-1".into(), "dall-e-2".into()],
            quota: None,
        };
        assert!(key.serves("gpt-image-1"));
        assert!(key.serves("dall-e-2"));
        assert!(!key.serves("dall-e-3"));
        assert!(!key.serves("*"));
    }
}
