//! The signing keys of JWT issuers configured with a `jwks_url`, and the auth step as the
//! gateway runs it ([`authenticate`]).
//!
//! - A JWKS is fetched through the same pooled Pingora connector (and TLS roots,
//!   `server.ca_file` included) as provider calls, on the first token of its issuer, and kept
//!   for the process's lifetime (across reloads, by URL).
//! - A token whose `kid` is not in the cached set fetches it again, at most once per
//!   `jwks_refresh_interval_ms` per URL, one fetch at a time: concurrent requests wait for it
//!   and then look again.
//! - A set older than `jwks_max_age_ms` is still used, and fetched again in the background (at
//!   most once per refresh interval), so a key the issuer has removed stops verifying.
//! - A failed fetch (unreachable, non-2xx, not a JWKS) keeps the last good set, and is logged
//!   without the answer's body; with no set at all the token is refused (401
//!   `token_unknown_key`, "signing keys are unavailable").
//!
//! The pure checks are in [`crate::auth`]; only the fetching and its cache live here.

use super::AppState;
use crate::auth::{FetchedKeys, Identity, KeySet, KeyStore, Verdict};
use crate::config::{parse_jwks, BaseUrl, JwtKeySource, ProviderConfig, ProviderOptions, Timeouts};
use crate::error::GatewayError;
use crate::kind::ProviderKind;
use crate::route::Target;
use crate::server::exchange::{exchange, Collect};
use crate::server::upstreams::Connector;
use crate::spool::Spool;
use arc_swap::ArcSwapOption;
use http::HeaderMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a JWKS fetch may take, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The cache of one JWKS URL.
#[derive(Default)]
struct Slot {
    /// The last good set.
    set: ArcSwapOption<KeySet>,
    /// Held while fetching; holds when the last fetch started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// When the last good set was fetched.
    fetched_at: Mutex<Option<Instant>>,
}

impl Slot {
    /// Whether the set is older than `max_age` and no fetch is running or started within
    /// `interval`: time to fetch it again in the background.
    fn due(&self, max_age: Duration, interval: Duration) -> bool {
        let old = self
            .fetched_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() >= max_age);
        old && self
            .refresh
            .try_lock()
            .is_ok_and(|last| last.is_none_or(|t| t.elapsed() >= interval))
    }
}

/// The JWKS of every `jwks_url` issuer, by URL; one per process, shared by all requests.
#[derive(Default)]
pub struct JwksCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl JwksCache {
    /// A new, empty cache.
    pub fn new() -> Self {
        JwksCache::default()
    }

    fn slot(&self, url: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(url.to_string()).or_default().clone()
    }

    /// Fetches the set of `url` again unless a fetch started less than `interval` ago (then
    /// this waits for a running one, if any, and returns). A failure keeps the last good set.
    async fn refresh(&self, connector: &Connector, url: &BaseUrl, text: &str, interval: Duration) {
        let slot = self.slot(text);
        let mut last = slot.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        *last = Some(Instant::now());
        match fetch(connector, url).await {
            Ok(set) => {
                log::info!("jwks {text}: {} keys", set.len());
                slot.set.store(Some(Arc::new(set)));
                *slot.fetched_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            }
            Err(why) => log::warn!("jwks {text}: cannot refresh ({why}); keeping the last good set"),
        }
    }
}

/// The cached sets, as the issuers of one config see them.
struct Cached<'a> {
    state: &'a AppState,
}

impl FetchedKeys for Cached<'_> {
    /// The cached set of issuer `index`; a set past its max age is returned all the same and
    /// fetched again in the background.
    fn keys(&self, index: usize) -> Option<Arc<KeySet>> {
        let issuer = self.state.keys.issuer(index)?;
        let JwtKeySource::Url { url, text } = &issuer.keys else {
            return None;
        };
        let slot = self.state.jwks.slot(text);
        let set = slot.set.load_full();
        if set.is_some() && slot.due(issuer.jwks_max_age, issuer.jwks_refresh_interval) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (cache, connector) = (self.state.jwks.clone(), self.state.connector.clone());
                let (url, text, interval) = (url.clone(), text.clone(), issuer.jwks_refresh_interval);
                runtime.spawn(async move { cache.refresh(&connector, &url, &text, interval).await });
            }
        }
        set
    }
}

/// The auth step: who the caller of this request head is ([`KeyStore::authenticate`]), a JWKS
/// fetched first when a token's key is not cached yet.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Identity, GatewayError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let cached = Cached { state };
    let issuer = match state.keys.authenticate(headers, now, &cached)? {
        Verdict::Caller(identity) => return Ok(identity),
        Verdict::FetchKeys { issuer } => issuer,
    };
    let config = state.keys.issuer(issuer).ok_or(KeyStore::unknown_key(false))?;
    if let JwtKeySource::Url { url, text } = &config.keys {
        state
            .jwks
            .refresh(&state.connector, url, text, config.jwks_refresh_interval)
            .await;
    }
    match state.keys.authenticate(headers, now, &cached)? {
        Verdict::Caller(identity) => Ok(identity),
        Verdict::FetchKeys { issuer } => Err(KeyStore::unknown_key(cached.keys(issuer).is_some())),
    }
}

/// One GET of the JWKS at `url`: its usable keys, or why not (without the body).
async fn fetch(connector: &Connector, url: &BaseUrl) -> Result<KeySet, String> {
    let provider = ProviderConfig {
        name: "jwks".to_string(),
        kind: ProviderKind::OpenAi,
        base_url: url.clone(),
        timeouts: Timeouts {
            connect: FETCH_TIMEOUT,
            first_byte: FETCH_TIMEOUT,
            idle: FETCH_TIMEOUT,
            total: FETCH_TIMEOUT,
            pool_idle: Timeouts::default().pool_idle,
        },
        keys: Vec::new(),
        options: ProviderOptions::default(),
    };
    let target = Target {
        provider: Arc::new(provider),
        key_index: 0,
        model: String::new(),
        access_token: None,
    };
    let path = if url.path.is_empty() {
        "/".to_string()
    } else {
        url.path.clone()
    };
    let request = crate::providers::UpstreamRequest {
        method: http::Method::GET,
        path,
        headers: vec![
            (http::header::ACCEPT, "application/json".to_string()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
        ],
        body: Vec::new(),
    };
    let answer = exchange(connector, &target, &request, &Spool::new(0, None), &mut Collect)
        .await
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&answer.status) {
        return Err(format!("HTTP {}", answer.status));
    }
    let set = parse_jwks(&answer.body)?;
    Ok(KeySet::from_jwks(&set))
}
