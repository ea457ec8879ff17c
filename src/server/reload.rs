//! Hot reload: a new config swapped in while the gateway runs.
//!
//! The gateway holds its state in an [`ArcSwap`]: each request loads the current [`AppState`]
//! once and keeps it to its end, so a request in flight finishes on the config it started with
//! and the next one sees the new one; loading is lock-free (no lock on the request path).
//! [`Live::reload`] builds the next `AppState` from a checked config, carrying over the parts
//! that outlive a config (`Lasting`: metrics, the pooled connector, service-account tokens,
//! circuit breakers by key name, slot bounds by provider name, the decode pool), and stores it.
//!
//! `refract -c FILE` reloads FILE on SIGHUP (`ReloadOnHangup`): the file is read and checked
//! as `refract check` does; a config with problems is refused, every problem logged (problems
//! never contain a secret), and the running one kept. Settings read only when the server is
//! built (listeners, TLS files, `server`, `metrics`, `simulator`, `store`, `objects`,
//! client-connection limits, the decode pool's) are compared with the ones the process started with: a change is logged as
//! taking effect only on restart or upgrade, and the rest of the reload applies.

use super::{breaker, credentials, jwks, slots, AppState};
use crate::auth::KeyStore;
use crate::config::{Config, ConfigErrors};
use crate::imaging::DecodePool;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::server::upstreams::Connector;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The parts of the gateway's state that live as long as the process: every [`AppState`]
/// gets them (shared) from here.
pub(super) struct Lasting {
    pub(super) metrics: Arc<Metrics>,
    pub(super) connector: Arc<Connector>,
    pub(super) credentials: Arc<credentials::Credentials>,
    pub(super) jwks: Arc<jwks::JwksCache>,
    pub(super) breakers: breaker::BreakerStore,
    pub(super) slots: slots::SlotPool,
    pub(super) decoder: DecodePool,
    /// The JSON bodies' memory budget (`limits.json_body_memory_bytes`, in KiB permits).
    pub(super) json_bodies: Arc<tokio::sync::Semaphore>,
    /// The admit step ([`crate::admission`]): code, not config; every state shares it.
    pub(super) admission: Arc<dyn crate::admission::Admission>,
    /// Job records and stored objects (`store`, `objects`), opened at startup.
    pub(super) state: Arc<crate::state::State>,
    /// Governance's counters (the store's, and this process's for `fail_open`).
    pub(super) governance: Arc<crate::governance::GovernanceStores>,
}

/// The running gateway's state, and what building the next one needs.
pub struct Live {
    current: Arc<ArcSwap<AppState>>,
    lasting: Lasting,
    /// The config the server was built with: the settings read only then are compared with it.
    started: Config,
    /// One reload at a time (never taken by requests).
    reloading: Mutex<()>,
}

impl Live {
    /// The state for `config` (its file's SHA-256 `hash`), when the server is built.
    pub(super) fn new(config: Config, hash: &str, lasting: Lasting) -> Live {
        let state = state_for(config.clone(), &lasting);
        lasting.metrics.config_loaded(hash, SystemTime::now());
        Live {
            current: Arc::new(ArcSwap::from_pointee(state)),
            lasting,
            started: config,
            reloading: Mutex::new(()),
        }
    }

    /// The job store and objects opened at startup (a reload keeps them).
    pub fn state(&self) -> Arc<crate::state::State> {
        self.lasting.state.clone()
    }

    /// The handle the gateway loads each request's state from.
    pub(super) fn current(&self) -> Arc<ArcSwap<AppState>> {
        self.current.clone()
    }

    /// Swaps in `config` (already checked; its file's SHA-256 `hash`): requests from now on
    /// see it. Logs, and returns, the changed settings that take effect only on restart.
    pub fn reload(&self, config: Config, hash: &str) -> Vec<&'static str> {
        let _one = self.reloading.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let pending = restart_only_changes(&self.started, &config);
        for setting in &pending {
            log::warn!(
                "config reload: {setting} changed; it takes effect only on a restart or upgrade (refract --upgrade, then SIGQUIT to this process); the rest of the config is reloaded"
            );
        }
        crate::telemetry::apply_log(&config.log);
        let state = state_for(config, &self.lasting);
        self.current.store(Arc::new(state));
        self.lasting.metrics.config_loaded(hash, SystemTime::now());
        self.lasting.metrics.config_reload(true);
        pending
    }

    /// Reads and checks the config file at `path` as `refract check` does and swaps it in; a
    /// file with problems is refused (logged, counted) and the running config kept.
    pub fn reload_file(&self, path: &Path) -> Result<(), ConfigErrors> {
        match crate::config::load_path_hashed(path) {
            Ok((config, hash)) => {
                self.reload(config, &hash);
                log::info!("config reloaded from {} (sha256 {hash})", path.display());
                Ok(())
            }
            Err(problems) => {
                for p in &problems.0 {
                    log::error!("config reload refused: {p}");
                }
                // Last, so that whoever reads the log up to it has read every problem.
                log::error!(
                    "config reload refused: {}: {} problem(s); the running config is kept",
                    path.display(),
                    problems.0.len()
                );
                self.lasting.metrics.config_reload(false);
                Err(problems)
            }
        }
    }
}

/// The SHA-256 of a config given as a value rather than a file (`spawn`): of its `Debug`
/// text, which hides secrets.
pub(super) fn value_hash(config: &Config) -> String {
    hex::encode(Sha256::digest(format!("{config:?}").as_bytes()))
}

/// One config's [`AppState`], with the process-lifetime parts carried over; the circuit gauge
/// of every key newly tracked is created (closed, or as its circuit stands) and those of keys
/// no longer tracked removed; the config's other series are created at zero
/// ([`Metrics::config_series`]).
fn state_for(config: Config, lasting: &Lasting) -> AppState {
    lasting.metrics.config_series(&config);
    let tracked = config
        .providers
        .iter()
        .filter(|p| p.options.circuit_breaker.is_some())
        .map(|p| (p.name.as_str(), p.keys.iter().map(|k| k.name.as_str())));
    let update = lasting.breakers.breakers(tracked);
    for (provider, key) in &update.removed {
        lasting.metrics.forget_circuit(provider, key);
    }
    for (provider, key) in &update.added {
        lasting.metrics.circuit(provider, key, false);
    }
    let governance = crate::governance::Governance::new(
        &config,
        lasting.governance.clone(),
        lasting.metrics.clone(),
        lasting.admission.clone(),
    );
    AppState {
        keys: KeyStore::from_config(&config),
        router: Router::new(&config),
        metrics: lasting.metrics.clone(),
        connector: lasting.connector.clone(),
        credentials: lasting.credentials.clone(),
        jwks: lasting.jwks.clone(),
        breakers: update.breakers,
        slots: lasting.slots.slots(&config.providers, &lasting.metrics),
        decoder: lasting.decoder.clone(),
        json_bodies: lasting.json_bodies.clone(),
        admission: Arc::new(governance.clone()),
        governance,
        store: lasting.state.clone(),
        config,
    }
}

/// The settings that differ between `running` and `next` and are read only when the server
/// is built, by their YAML names: a reload cannot apply them.
pub fn restart_only_changes(running: &Config, next: &Config) -> Vec<&'static str> {
    fn differs<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (a, b) = (running, next);
    let (la, lb) = (&a.limits, &b.limits);
    let addresses = |c: &Config| c.listeners.iter().map(|l| l.address).collect::<Vec<_>>();
    let tls = |c: &Config| c.listeners.iter().map(|l| format!("{:?}", l.tls)).collect::<Vec<_>>();
    [
        ("listeners (addresses)", addresses(a) != addresses(b)),
        ("listeners (tls files)", tls(a) != tls(b)),
        ("server", differs(&a.server, &b.server)),
        ("metrics", differs(&a.metrics, &b.metrics)),
        ("simulator", differs(&a.simulator, &b.simulator)),
        ("store", a.store != b.store),
        ("objects", a.objects != b.objects),
        ("jobs.workers", a.jobs.workers != b.jobs.workers),
        ("log.format", a.log.format != b.log.format),
        ("tracing", a.tracing != b.tracing),
        ("limits.head_timeout_ms", la.head_timeout != lb.head_timeout),
        ("limits.max_head_bytes", la.max_head_bytes != lb.max_head_bytes),
        (
            "limits.keepalive_timeout_ms",
            la.keepalive_timeout != lb.keepalive_timeout,
        ),
        ("limits.max_connections", la.max_connections != lb.max_connections),
        (
            "limits.decode_concurrency",
            la.decode_concurrency != lb.decode_concurrency,
        ),
        ("limits.max_image_pixels", la.max_image_pixels != lb.max_image_pixels),
        (
            "limits.json_body_memory_bytes",
            la.json_body_memory_bytes != lb.json_body_memory_bytes,
        ),
        (
            "spool (the simulator's)",
            b.simulator.is_some() && differs(&a.spool, &b.spool),
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// The background service that reloads the config file on SIGHUP (`refract -c FILE`) and, with
/// `--watch`, when the file's content changes. Pingora handles SIGTERM, SIGINT and SIGQUIT
/// itself; this adds SIGHUP only, and is ready (the gateway's listeners wait for it) once its
/// handler is installed, so a SIGHUP never terminates a serving process.
pub(super) struct ReloadOnHangup {
    pub(super) live: Arc<Live>,
    pub(super) file: super::ConfigFile,
}

impl ReloadOnHangup {
    /// Reloads the file on a blocking thread (reading it, and any service-account file, blocks).
    async fn reload(&self) {
        let (live, path) = (self.live.clone(), self.file.path.clone());
        let _ = tokio::task::spawn_blocking(move || live.reload_file(&path)).await;
    }

    /// The SHA-256 of the file's bytes now (`None`: unreadable).
    async fn file_hash(&self) -> Option<String> {
        let bytes = tokio::fs::read(&self.file.path).await.ok()?;
        Some(hex::encode(Sha256::digest(&bytes)))
    }
}

#[async_trait]
impl BackgroundService for ReloadOnHangup {
    async fn start_with_ready_notifier(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("SIGHUP handler not installed ({e}): the config cannot be reloaded");
                ready.notify_ready();
                return;
            }
        };
        ready.notify_ready();
        // With --watch: the content last seen, so that each change is loaded (or refused) once.
        let mut seen = Some(self.file.sha256.clone());
        let mut ticks = self.file.watch.map(tokio::time::interval);
        loop {
            let tick = async {
                match ticks.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = hangups.recv() => {
                    if got.is_none() {
                        return;
                    }
                    log::info!("SIGHUP received: reloading {}", self.file.path.display());
                    seen = self.file_hash().await;
                    self.reload().await;
                }
                _ = tick => {
                    let now = self.file_hash().await;
                    if now.is_some() && now != seen {
                        log::info!("{} changed: reloading", self.file.path.display());
                        seen = now;
                        self.reload().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    fn config(listen: &str, extra: &str) -> Config {
        let yaml = format!(
            "listeners:\n  - address: {listen}\n{extra}providers:\n  - name: p\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n    keys:\n      - {{name: k, value: v}}\n"
        );
        from_yaml_str_with_env(&yaml, &|_| None).unwrap()
    }

    #[test]
    fn settings_read_at_build_time_are_named_when_they_change() {
        let running = config("127.0.0.1:8080", "");
        assert!(restart_only_changes(&running, &config("127.0.0.1:8080", "")).is_empty());
        assert_eq!(
            restart_only_changes(&running, &config("127.0.0.1:8081", "")),
            vec!["listeners (addresses)"]
        );
        let changed = config(
            "127.0.0.1:8080",
            "server:\n  threads: 3\nlimits:\n  head_timeout_ms: 1234\n  max_body_bytes: 1000\n",
        );
        assert_eq!(
            restart_only_changes(&running, &changed),
            vec!["server", "limits.head_timeout_ms"],
            "max_body_bytes is read per request"
        );
        let moved = config(
            "127.0.0.1:8080",
            "store: {kind: embedded, path: /var/lib/refract}\nobjects: {kind: fs, path: /srv/images}\n",
        );
        assert_eq!(restart_only_changes(&running, &moved), vec!["store", "objects"]);
    }
}
