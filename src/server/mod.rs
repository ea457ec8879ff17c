//! The only module that touches Pingora: builds the server from a validated config (gateway
//! listeners, the metrics listener, the built-in simulator) and runs it, either for good
//! (`refract -c FILE`, which also reloads FILE on SIGHUP: see [`reload`]) or on a thread that
//! a test can stop and reload ([`spawn`]).

pub mod breaker;
pub mod connections;
mod cork;
pub mod credentials;
pub mod exchange;
pub mod gateway;
pub mod jwks;
mod metrics_app;
pub mod reload;
pub mod resolver;
mod simulator_app;
pub mod slots;
pub mod upstreams;
pub mod workers;

use crate::admission::{Admission, AdmitAll};
use crate::auth::KeyStore;
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::route::{Router, Target};
use crate::server::upstreams::Connector;
use async_trait::async_trait;
use pingora::connectors::ConnectorOptions;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use thiserror::Error;

/// Everything a request needs under one config: each request loads the current one once
/// (see [`reload`]) and uses it to its end. The config-derived parts (`config`, `keys`,
/// `router`, and the per-config views `breakers` and `slots`) are built for each config; the
/// others are shared by every config the process runs.
pub struct AppState {
    /// The validated config.
    pub config: Config,
    /// Virtual keys.
    pub keys: KeyStore,
    /// Providers.
    pub router: Router,
    /// Metrics (process lifetime).
    pub metrics: Arc<Metrics>,
    /// Pooled upstream connections (process lifetime).
    pub connector: Arc<Connector>,
    /// Access tokens for service-account keys (process lifetime).
    pub credentials: Arc<credentials::Credentials>,
    /// The JWKS of the JWT issuers configured with a `jwks_url` (process lifetime).
    pub jwks: Arc<jwks::JwksCache>,
    /// The circuit breaker of every key of the providers that configure one, by key position
    /// in this config; the circuits themselves are kept by key name across reloads.
    pub breakers: breaker::Breakers,
    /// Every provider's bound on upstream exchanges in flight (`max_connections`), kept by
    /// provider name across reloads.
    pub slots: slots::Slots,
    /// Where masks are decoded and converted: blocking threads, at most
    /// `limits.decode_concurrency` at once, within `limits.max_image_pixels` (shared with the
    /// simulator; process lifetime).
    pub decoder: crate::imaging::DecodePool,
    /// What JSON request bodies may hold at once, one permit per KiB
    /// (`limits.json_body_memory_bytes`; process lifetime).
    pub json_bodies: Arc<tokio::sync::Semaphore>,
    /// The admit step, asked once per request and once per attempt before it goes upstream:
    /// the config's governance ([`crate::governance`]) around [`Options::admission`]
    /// ([`AdmitAll`] unless another is installed).
    pub admission: Arc<dyn Admission>,
    /// The same governance, for the provider keys' quotas and the usage endpoint.
    pub governance: crate::governance::Governance,
    /// Job records and stored objects (`store`, `objects`; process lifetime, opened at
    /// startup).
    pub store: Arc<crate::state::State>,
}

/// What a server is built with besides its config: the plug-ins that are code, not settings.
#[derive(Clone)]
pub struct Options {
    /// The admit step ([`crate::admission`]).
    pub admission: Arc<dyn Admission>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admission: Arc::new(AdmitAll),
        }
    }
}

impl AppState {
    /// Picks the key for one attempt at `provider`/`model`, when the attempt starts: by weight
    /// among the keys serving the model whose circuit is not open, preferring any key other
    /// than `avoid` (the key a 401/403/429 just refused) when there is one. A half-open key
    /// picked here carries the probe.
    pub fn pick(&self, provider: &str, model: &str, avoid: Option<usize>) -> Result<Target, GatewayError> {
        let target = self.choose(provider, model, avoid)?;
        self.breakers.begin(provider, target.key_index, Instant::now());
        Ok(target)
    }

    /// [`AppState::pick`] without starting a probe: for a target that may never be used (the
    /// streamed upload's, started only when the adapter can stream); whoever sends with it
    /// calls `breakers.begin` then.
    pub fn choose(&self, provider: &str, model: &str, avoid: Option<usize>) -> Result<Target, GatewayError> {
        self.choose_except(provider, model, avoid, &[])
    }

    /// [`AppState::pick`] for an attempt asking `images` images, within the provider keys'
    /// quotas: a key whose `quota` is used up is skipped for another; when every key serving
    /// the model is, 429 `provider_quota_exceeded` (the request falls back). Keys without a
    /// quota cost nothing more.
    pub async fn pick_within_quota(
        &self,
        provider: &str,
        model: &str,
        avoid: Option<usize>,
        images: u32,
    ) -> Result<Target, GatewayError> {
        // Keys found saturated, by index (a provider has few keys).
        let mut saturated: Vec<usize> = Vec::new();
        loop {
            let target = match self.choose_except(provider, model, avoid, &saturated) {
                Ok(target) => target,
                Err(_) if !saturated.is_empty() => {
                    return Err(GatewayError::ProviderQuota {
                        provider: provider.to_string(),
                    })
                }
                Err(e) => return Err(e),
            };
            let key = target.key();
            let Some(quota) = &key.quota else {
                self.breakers.begin(provider, target.key_index, Instant::now());
                return Ok(target);
            };
            if self
                .governance
                .take_key_quota(provider, &key.name, quota, images)
                .await?
            {
                self.breakers.begin(provider, target.key_index, Instant::now());
                return Ok(target);
            }
            saturated.push(target.key_index);
        }
    }

    /// [`AppState::choose`] among the keys not in `except` (keys found saturated).
    fn choose_except(
        &self,
        provider: &str,
        model: &str,
        avoid: Option<usize>,
        except: &[usize],
    ) -> Result<Target, GatewayError> {
        // Every attempt's target comes from here: no request is built for an id outside its
        // kind's grammar, whatever path the candidate took.
        self.router.candidate(provider, model, "model")?;
        let now = Instant::now();
        let usable = |i: usize| !except.contains(&i) && self.breakers.usable(provider, i, now);
        let roll = fastrand::f64();
        match avoid {
            Some(a) => self
                .router
                .select_where(provider, model, roll, |i| i != a && usable(i))
                .or_else(|_| self.router.select_where(provider, model, roll, usable)),
            None => self.router.select_where(provider, model, roll, usable),
        }
    }

    /// Runs after every attempt that picked a key: tells the breaker of key `key` of `provider`
    /// how the attempt ended (`result`, after the provider's answer was converted), updates the
    /// circuit gauge, and counts a timeout by its kind.
    pub fn record(&self, provider: &str, key: usize, result: Result<(), &GatewayError>) {
        let Ok(p) = self.router.provider(provider) else {
            return;
        };
        if let Err(GatewayError::UpstreamTimeout { kind, .. }) = result {
            self.metrics.timeout(&p.name, *kind);
        }
        let Some(settings) = &p.options.circuit_breaker else {
            return;
        };
        let outcome = match result {
            Ok(_) => breaker::Outcome::Success,
            Err(e) if gateway::retry_reason(e).is_some() => breaker::Outcome::Failure,
            Err(GatewayError::Provider { .. }) => breaker::Outcome::Success,
            Err(_) => breaker::Outcome::Neutral,
        };
        if let Some(open) = self.breakers.record(provider, key, outcome, settings, Instant::now()) {
            if let Some(k) = p.keys.get(key) {
                if open {
                    log::warn!("provider {} key {}: circuit opened", p.name, k.name);
                } else {
                    log::info!("provider {} key {}: circuit closed", p.name, k.name);
                }
                self.metrics.circuit(&p.name, &k.name, open);
            }
        }
    }
}

/// Why the server could not be built.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A listener could not be set up (e.g. TLS files unreadable).
    #[error("listener {0}: {1}")]
    Listener(String, String),
    /// `server.ca_file` cannot be used as a root store.
    #[error("server.ca_file {0}: {1}")]
    CaFile(String, String),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The `store` or `objects` section cannot be opened or reached.
    #[error("{0}")]
    State(#[from] crate::state::StateError),
}

/// How long startup waits for a Redis store to answer.
const STORE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

fn server_conf(config: &Config) -> ServerConf {
    let s = &config.server;
    let mut conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        ..Default::default()
    };
    if let Some(pid) = &s.pid_file {
        conf.pid_file = pid.clone();
    }
    if let Some(sock) = &s.upgrade_sock {
        conf.upgrade_sock = sock.clone();
    }
    // Pingora's rustls connector then trusts exactly these CAs instead of the system roots.
    conf.ca_file = s.ca_file.as_ref().map(|p| p.to_string_lossy().into_owned());
    conf
}

/// Loads `server.ca_file` the way Pingora's rustls connector will, so that a bad file is a
/// startup error: Pingora's `Connector::new` unwraps the load (a PEM block other than a
/// CERTIFICATE, or a certificate rustls rejects, panics), and a file without any certificate
/// (empty, or not PEM at all) would be accepted and then fail every https connection.
fn check_ca_file(config: &Config) -> Result<(), ServerError> {
    let Some(path) = &config.server.ca_file else {
        return Ok(());
    };
    let fail = |msg: String| ServerError::CaFile(path.display().to_string(), msg);
    let mut store = pingora::tls::RootCertStore::empty();
    pingora::tls::load_ca_file_into_store(path, &mut store).map_err(|e| fail(e.to_string().trim().to_string()))?;
    if store.is_empty() {
        return Err(fail("no PEM CERTIFICATE in the file".to_string()));
    }
    Ok(())
}

/// Builds the Pingora server with every service the config asks for. `opt` carries the
/// command-line flags Pingora itself understands (`--upgrade`, `--daemon`). The config is
/// reloaded only through [`spawn`]'s handle; [`build_from_file`] reloads on SIGHUP.
pub fn build(config: Config, opt: Option<pingora::server::configuration::Opt>) -> Result<Server, ServerError> {
    build_with(config, opt, Options::default())
}

/// [`build`], with the plug-ins of `options`.
pub fn build_with(
    config: Config,
    opt: Option<pingora::server::configuration::Opt>,
    options: Options,
) -> Result<Server, ServerError> {
    let hash = reload::value_hash(&config);
    assemble(config, &hash, opt, options).map(|(server, _, _)| server)
}

/// Where a running gateway's config comes from, for reloads (`refract -c FILE`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The file, read again on each reload.
    pub path: PathBuf,
    /// The SHA-256 (hex) of the bytes the running config was loaded from.
    pub sha256: String,
    /// Also reload when the file's content changes, checked this often (`--watch`).
    pub watch: Option<std::time::Duration>,
}

/// [`build`] for `refract -c FILE`: the config was loaded from `file`, and a SIGHUP (or, with
/// `watch`, a change of its content) reloads it (see [`reload`]).
pub fn build_from_file(
    config: Config,
    file: ConfigFile,
    opt: Option<pingora::server::configuration::Opt>,
) -> Result<Server, ServerError> {
    let (mut server, live, gateway) = assemble(config, &file.sha256, opt, Options::default())?;
    let hangups = server.add_service(pingora::services::background::background_service(
        "config reload",
        reload::ReloadOnHangup { live, file },
    ));
    // The listeners open once SIGHUP is handled: a SIGHUP never terminates a serving process.
    gateway.add_dependency(&hangups);
    Ok(server)
}

/// The permits of the JSON bodies' budget: one per KiB of `bytes`, within the semaphore's
/// bound.
fn json_body_permits(bytes: u64) -> usize {
    usize::try_from(bytes / 1024)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

/// The server, the handle that reloads its config, and the gateway service's handle.
fn assemble(
    config: Config,
    hash: &str,
    opt: Option<pingora::server::configuration::Opt>,
    options: Options,
) -> Result<(Server, Arc<reload::Live>, pingora::services::ServiceHandle), ServerError> {
    check_ca_file(&config)?;
    let state = Arc::new(crate::state::State::open(
        &config.store,
        &config.objects,
        &config.object_urls,
        STORE_CONNECT_TIMEOUT,
    )?);
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&config));
    server.bootstrap();
    let metrics = Arc::new(Metrics::for_config(&config)?);
    let lasting = reload::Lasting {
        connector: Arc::new(Connector::new(ConnectorOptions::from_server_conf(
            &server.configuration,
        ))),
        decoder: crate::imaging::DecodePool::new(config.limits.decode_concurrency, config.limits.max_image_pixels),
        json_bodies: Arc::new(tokio::sync::Semaphore::new(json_body_permits(
            config.limits.json_body_memory_bytes,
        ))),
        metrics: metrics.clone(),
        credentials: Arc::new(credentials::Credentials::new()),
        jwks: Arc::new(jwks::JwksCache::new()),
        breakers: breaker::BreakerStore::default(),
        slots: slots::SlotPool::default(),
        admission: options.admission,
        governance: Arc::new(crate::governance::GovernanceStores::new(state.counters.clone())),
        state,
    };
    let live = Arc::new(reload::Live::new(config, hash, lasting));
    let current = live.current();
    let state = current.load_full();

    // The async jobs' workers and cleaner, on a runtime of their own.
    let mut jobs = pingora::services::background::background_service(
        "refract jobs",
        workers::JobWorkers::new(current.clone(), state.config.jobs.workers),
    );
    jobs.threads = Some(state.config.server.threads);
    server.add_service(jobs);
    let mut gateway = pingora::services::listening::Service::new(
        "refract gateway".to_string(),
        client_connections(&server, &state, current),
    );
    for l in &state.config.listeners {
        let addr = l.address.to_string();
        match &l.tls {
            // Plain TCP without Pingora's 64 KiB read buffer per connection: it was most of an
            // idle connection's memory (about 85 KiB each, 22 KiB without). Heads are read into
            // a buffer of their own (connections.rs) and bodies in reads of up to 64 KiB, so
            // it costs at most one read call more per request and saves copying the body once
            // (no slower in the load bench). TLS keeps it: rustls reads in small pieces.
            None => gateway.add_listener(pingora::listeners::ListenerConfig::tcp(addr.clone()).l4_buffer(
                pingora::listeners::L4BufferSettings {
                    read: Some(0),
                    write: None,
                },
            )),
            Some(tls) => {
                let cert = tls.cert.to_string_lossy();
                let key = tls.key.to_string_lossy();
                let fail =
                    |e: Box<pingora::Error>| ServerError::Listener(addr.clone(), e.to_string().trim().to_string());
                let mut settings = pingora::listeners::tls::TlsSettings::intermediate(&cert, &key).map_err(fail)?;
                // With rustls, `intermediate` only stores the paths and the listener panics on a
                // bad file when it starts; these two check that each file holds what it should.
                settings.set_certificate_chain_file(&cert).map_err(fail)?;
                settings.set_private_key_file(&key).map_err(fail)?;
                settings.enable_h2();
                gateway.add_tls_with_settings(&addr, None, settings);
            }
        }
    }
    let gateway = server.add_service(gateway);

    if let Some(m) = &state.config.metrics {
        let mut svc = pingora::services::listening::Service::new(
            "refract metrics".to_string(),
            metrics_app::MetricsApp::new(metrics),
        );
        svc.add_tcp(&m.address.to_string());
        server.add_service(svc);
    }
    if let Some(sim) = &state.config.simulator {
        let mut svc = pingora::proxy::http_proxy_service_with_name(
            &server.configuration,
            simulator_app::SimulatorApp::new(sim, state.decoder.clone(), &state.config.spool),
            "refract simulator",
        );
        svc.add_tcp(&sim.address.to_string());
        server.add_service(svc);
    }
    Ok((server, live, gateway))
}

/// Turns transparent huge pages on or off for this process (`refract` turns them off first
/// thing, and back on once its config has no `simulator:`). The allocator (mimalloc) asks the
/// kernel to back its arenas with 2 MiB huge pages: a gateway spends about 5 % less CPU per
/// request with them (64 KB edits), but every touched 2 MiB stays resident, and the simulator,
/// whose render jobs run on the decode pool's blocking threads, each with pages of its own,
/// then peaked near 90 MiB instead of 45 for 16 concurrent 20 MB edits: a process that runs
/// the simulator (a demo or test setup) goes without. Failing (a kernel without the flag)
/// only costs that memory.
pub fn transparent_huge_pages(enabled: bool) {
    if let Err(e) = nix::sys::prctl::set_thp_disable(!enabled) {
        log::debug!("transparent huge pages left as they are (prctl: {e})");
    }
}

/// The gateway listeners' app: the gateway's Pingora HTTP app behind the client-connection
/// limits of `limits` (head deadline and size, keep-alive timeout, connection cap; see
/// [`connections`]; from `state`, the config the server is built with). Runs once, when the
/// server is built; the gateway loads each request's state from `current`.
fn client_connections(
    server: &Server,
    state: &AppState,
    current: Arc<arc_swap::ArcSwap<AppState>>,
) -> connections::ClientConnections<pingora::proxy::HttpProxy<gateway::Gateway>> {
    let l = &state.config.limits;
    let limits = connections::ConnectionLimits {
        head_timeout: l.head_timeout,
        max_head_bytes: l.max_head_bytes,
        keepalive_timeout: l.keepalive_timeout,
        max_connections: connections::connection_cap(l.max_connections),
    };
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway::Gateway::new(current));
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(l.keepalive_timeout);
    proxy.server_options = Some(options);
    connections::ClientConnections::new(Arc::new(proxy), limits, state.metrics.clone())
}

/// Runs the server until a signal stops it (SIGTERM graceful, SIGQUIT graceful upgrade,
/// SIGINT fast: Pingora's own handling); exits the process. SIGHUP does not stop it: a server
/// from [`build_from_file`] reloads its config file.
pub fn run_forever(server: Server) -> ! {
    server.run_forever()
}

/// Runs the server until a signal stops it, as [`run_forever`], then returns (so that the
/// caller can flush what it buffered, such as spans, before the process exits).
pub fn run(server: Server) {
    server.run(pingora::server::RunArgs::default());
}

struct StopOnSignal(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut g| g.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// A server running on its own thread; dropping it stops the server and waits for the thread.
pub struct RunningServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    live: Arc<reload::Live>,
}

impl RunningServer {
    /// Swaps in `config` as a SIGHUP reload does (after the same check: `config` is a checked
    /// one); returns the changed settings that would need a restart.
    pub fn reload(&self, config: Config) -> Vec<&'static str> {
        let hash = reload::value_hash(&config);
        self.live.reload(config, &hash)
    }

    /// The job store and objects the server opened at startup.
    pub fn state(&self) -> Arc<crate::state::State> {
        self.live.state()
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Builds and starts the server on a background thread (tests, benchmarks). Returns once the
/// thread runs; callers wait for their listeners to accept.
pub fn spawn(config: Config) -> Result<RunningServer, ServerError> {
    spawn_with(config, Options::default())
}

/// [`spawn`], with the plug-ins of `options` (a test's admission).
pub fn spawn_with(config: Config, options: Options) -> Result<RunningServer, ServerError> {
    let hash = reload::value_hash(&config);
    let (server, live, _) = assemble(config, &hash, None, options)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(StopOnSignal(Mutex::new(Some(rx)))),
        })
    });
    Ok(RunningServer {
        stop: Some(tx),
        thread: Some(thread),
        live,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The switch reaches the kernel's per-process flag both ways (a kernel without the flag
    /// is the only excuse).
    #[test]
    fn transparent_huge_pages_switch_off_and_on() {
        let Ok(before) = nix::sys::prctl::get_thp_disable() else {
            return;
        };
        transparent_huge_pages(false);
        assert!(nix::sys::prctl::get_thp_disable().unwrap());
        transparent_huge_pages(true);
        assert!(!nix::sys::prctl::get_thp_disable().unwrap());
        transparent_huge_pages(!before);
    }
}
