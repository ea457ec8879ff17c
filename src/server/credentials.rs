//! Credentials that must be obtained before a request is built: OAuth access tokens for
//! Google service-account keys (`service_account_file`, kind `vertex`).
//!
//! [`Credentials::prepare`] runs once per upstream attempt, right before the request is
//! built. For a service-account key it returns the target with `access_token` set:
//!
//! - The token comes from the OAuth 2.0 JWT-bearer grant (RFC 7523) as Google's client
//!   libraries make it: a JWT signed with the key (RS256; header `{"alg":"RS256","typ":"JWT",
//!   "kid":private_key_id}`, claims `iss` = `client_email`, `scope` = cloud-platform,
//!   `aud` = `token_uri`, `iat`, `exp` = `iat` + 1 h) is POSTed form-encoded to the key's
//!   `token_uri` through the same pooled Pingora connector (and rustls setup, `server.ca_file`
//!   included) as provider calls; the answer's `access_token` and `expires_in` are kept.
//! - Tokens are cached per service account (client email and token URI) and reused until
//!   [`refresh_at`]: 5 minutes, or a tenth of a short lifetime, before they expire.
//! - One fetch per service account at a time: requests that find the token missing or stale
//!   queue on that account's refresh lock; the first fetches, the others then find the fresh
//!   token (or, if that fetch failed, get its error rather than each trying again).
//! - A failure is a 502 naming the provider (connect errors, a non-2xx answer with its OAuth
//!   `error` code, an unreadable answer). No key, JWT or token appears in any error or log line.

use crate::config::{parse_base_url, Credential, ServiceAccountKey};
use crate::error::GatewayError;
use crate::route::Target;
use crate::server::exchange::{exchange, Collect};
use crate::server::upstreams::Connector;
use crate::spool::Spool;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth scope requested for Vertex AI.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Lifetime asked for in the JWT (Google's maximum).
const JWT_LIFETIME_SECS: u64 = 3600;

/// The longest wait for the token endpoint's answer (the provider's read timeout if shorter).
const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long before its expiry a token is replaced, at most.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Lifetime assumed when the token endpoint does not say (`expires_in` missing).
const DEFAULT_EXPIRES_IN: u64 = 3600;

/// A token and when to stop using it.
#[derive(Debug, Clone)]
struct CachedToken {
    token: Arc<str>,
    refresh_at: Instant,
}

/// Why the last fetch failed, kept so that the requests waiting for it share the outcome.
#[derive(Debug, Clone)]
struct Failure {
    /// The token endpoint could not be reached (else: it answered something unusable).
    connect: bool,
    detail: String,
}

impl Failure {
    fn to_error(&self, provider: &str) -> GatewayError {
        let provider = provider.to_string();
        let detail = format!("service-account token endpoint: {}", self.detail);
        if self.connect {
            GatewayError::UpstreamConnect { provider, detail }
        } else {
            GatewayError::UpstreamProtocol { provider, detail }
        }
    }
}

/// The cache entry of one service account.
#[derive(Debug, Default)]
struct Slot {
    current: Mutex<Option<CachedToken>>,
    /// Fetches finished so far.
    fetches: AtomicU64,
    /// Held while fetching; holds the last failure and the fetch count it ended.
    refresh: tokio::sync::Mutex<Option<(u64, Failure)>>,
}

impl Slot {
    fn fresh(&self, now: Instant) -> Option<Arc<str>> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current.as_ref().filter(|t| now < t.refresh_at).map(|t| t.token.clone())
    }
}

/// Obtains and caches access tokens; one per server, shared by all requests.
#[derive(Debug, Default)]
pub struct Credentials {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
}

impl Credentials {
    /// A new, empty cache.
    pub fn new() -> Self {
        Credentials::default()
    }

    /// Fills `target.access_token` when its key is a service account (a cached token, or one
    /// fetched now through `connector`); other targets are returned unchanged. Errors are 502s
    /// naming the provider.
    pub async fn prepare(&self, connector: &Connector, mut target: Target) -> Result<Target, GatewayError> {
        let key = match &target.key().credential {
            Credential::Static(_) | Credential::Aws(_) => return Ok(target),
            Credential::ServiceAccount(key) => key.clone(),
        };
        let slot = self.slot(&key);
        target.access_token = Some(token(&slot, connector, &target, &key).await?);
        Ok(target)
    }

    fn slot(&self, key: &ServiceAccountKey) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((key.client_email.clone(), key.token_uri.clone()))
            .or_default()
            .clone()
    }
}

/// The slot's token: cached, or fetched by this call or by the one it waited for.
async fn token(
    slot: &Slot,
    connector: &Connector,
    target: &Target,
    key: &ServiceAccountKey,
) -> Result<Arc<str>, GatewayError> {
    if let Some(t) = slot.fresh(Instant::now()) {
        return Ok(t);
    }
    let seen = slot.fetches.load(Ordering::SeqCst);
    let mut last_failure = slot.refresh.lock().await;
    if let Some(t) = slot.fresh(Instant::now()) {
        return Ok(t);
    }
    if let Some((ended, failure)) = last_failure.as_ref() {
        if *ended > seen {
            // A fetch that finished while this request waited failed: share its error.
            return Err(failure.to_error(&target.provider.name));
        }
    }
    let outcome = fetch(connector, target, key).await;
    let ended = slot.fetches.fetch_add(1, Ordering::SeqCst) + 1;
    match outcome {
        Ok(cached) => {
            let token = cached.token.clone();
            *slot.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(cached);
            *last_failure = None;
            Ok(token)
        }
        Err(failure) => {
            log::warn!(
                "provider {}: no access token for service account {}: {}",
                target.provider.name,
                key.client_email,
                failure.detail
            );
            let error = failure.to_error(&target.provider.name);
            *last_failure = Some((ended, failure));
            Err(error)
        }
    }
}

/// One token request to the key's `token_uri`.
async fn fetch(connector: &Connector, target: &Target, key: &ServiceAccountKey) -> Result<CachedToken, Failure> {
    let internal = |detail: String| Failure { connect: false, detail };
    let base_url = parse_base_url(&key.token_uri).map_err(|e| internal(format!("token_uri: {e}")))?;
    let issued_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let jwt = jwt_assertion(key, issued_at).map_err(internal)?;
    let path = if base_url.path.is_empty() {
        "/".to_string()
    } else {
        base_url.path.clone()
    };
    let mut provider = (*target.provider).clone();
    provider.base_url = base_url;
    for limit in [
        &mut provider.timeouts.first_byte,
        &mut provider.timeouts.idle,
        &mut provider.timeouts.total,
    ] {
        *limit = (*limit).min(TOKEN_READ_TIMEOUT);
    }
    let token_target = Target {
        provider: Arc::new(provider),
        key_index: target.key_index,
        model: target.model.clone(),
        access_token: None,
    };
    let request = crate::providers::UpstreamRequest {
        method: http::Method::POST,
        path,
        headers: vec![
            (
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded".to_string(),
            ),
            (http::header::ACCEPT, "application/json".to_string()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
        ],
        body: vec![crate::providers::BodySegment::Bytes(token_request_body(&jwt))],
    };
    let started = Instant::now();
    let answer = exchange(connector, &token_target, &request, &Spool::new(0, None), &mut Collect)
        .await
        .map_err(|e| Failure {
            connect: true,
            detail: match e {
                GatewayError::UpstreamConnect { detail, .. }
                | GatewayError::UpstreamTimeout { detail, .. }
                | GatewayError::UpstreamProtocol { detail, .. } => detail,
                other => other.code().to_string(),
            },
        })?;
    if !(200..300).contains(&answer.status) {
        return Err(internal(format!(
            "HTTP {}{}",
            answer.status,
            oauth_error_code(&answer.body).map_or(String::new(), |c| format!(" ({c})"))
        )));
    }
    let (token, expires_in) = parse_token_response(&answer.body).map_err(internal)?;
    log::debug!(
        "provider {}: access token for service account {} obtained, valid {expires_in} s",
        target.provider.name,
        key.client_email
    );
    Ok(CachedToken {
        token: token.into(),
        refresh_at: refresh_at(started, Duration::from_secs(expires_in)),
    })
}

/// base64url without padding (JWT segments).
fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The signed JWT (`header.claims.signature`, RS256) asserting `key`'s identity, issued at
/// `issued_at` (Unix seconds) and valid one hour. Pure apart from RSA signing; the error never
/// contains key material.
pub fn jwt_assertion(key: &ServiceAccountKey, issued_at: u64) -> Result<String, String> {
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &key.private_key_id {
        header["kid"] = serde_json::json!(kid);
    }
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": key.token_uri,
        "iat": issued_at,
        "exp": issued_at + JWT_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&key.private_key_der)
        .map_err(|_| "the service account's private key is not a usable RSA key".to_string())?;
    let mut signature = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| "signing the JWT failed".to_string())?;
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

/// The token request's form body for `jwt` (base64url and dots need no percent-encoding).
pub fn token_request_body(jwt: &str) -> Bytes {
    Bytes::from(format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
    ))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// `access_token` and `expires_in` (seconds) of a token endpoint's 2xx answer. The error
/// describes what is wrong without repeating the body.
pub fn parse_token_response(body: &[u8]) -> Result<(String, u64), String> {
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not a token JSON object ({e})"))?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the answer has no access_token".to_string())?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the access_token is not a printable ASCII word".into());
    }
    Ok((token, parsed.expires_in.unwrap_or(DEFAULT_EXPIRES_IN)))
}

/// The OAuth `error` code of an error answer (`invalid_grant`, …) when it is a short
/// identifier; the description is not kept (it may echo request details).
fn oauth_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    (code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
    .then(|| code.to_string())
}

/// When a token obtained at `obtained` and valid for `lifetime` is replaced: 5 minutes before
/// it expires, or a tenth of its lifetime before when that is less. A lifetime over a day counts as a day.
pub fn refresh_at(obtained: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(Duration::from_secs(86_400));
    obtained + lifetime - REFRESH_MARGIN.min(lifetime / 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    fn key() -> ServiceAccountKey {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/service-account.json");
        let yaml = format!(
            "providers:\n  - name: v\n    kind: vertex\n    project: p\n    location: l\n    keys:\n      - name: sa\n        service_account_file: {file}\n"
        );
        let cfg = crate::config::from_yaml_str_with_env(&yaml, &|_| None).unwrap();
        match &cfg.providers[0].keys[0].credential {
            Credential::ServiceAccount(k) => (**k).clone(),
            Credential::Static(_) | Credential::Aws(_) => panic!("expected a service account"),
        }
    }

    fn segment(jwt: &str, i: usize) -> serde_json::Value {
        let part = jwt.split('.').nth(i).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn jwt_is_rs256_signed_with_googles_claims() {
        let key = key();
        let jwt = jwt_assertion(&key, 1_700_000_000).unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(
            !jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'),
            "base64url, no padding"
        );
        assert_eq!(
            segment(&jwt, 0),
            serde_json::json!({"alg":"RS256","typ":"JWT","kid":"test-key-1"})
        );
        let claims = segment(&jwt, 1);
        assert_eq!(claims["iss"], "refract-test@refract-test.iam.gserviceaccount.com");
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], key.token_uri.as_str());
        assert_eq!(claims["iat"], 1_700_000_000u64);
        assert_eq!(claims["exp"], 1_700_003_600u64);
        // The signature verifies with the key's public half.
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&key.private_key_der).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref().to_vec());
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig).unwrap();
        public.verify(input.as_bytes(), &sig).unwrap();
        assert!(public.verify(b"other input", &sig).is_err());
        // Without private_key_id there is no kid.
        let no_kid = ServiceAccountKey {
            private_key_id: None,
            ..key.clone()
        };
        assert_eq!(
            segment(&jwt_assertion(&no_kid, 1).unwrap(), 0),
            serde_json::json!({"alg":"RS256","typ":"JWT"})
        );
        // A broken key is an error that does not show it.
        let broken = ServiceAccountKey {
            private_key_der: vec![1, 2, 3],
            ..key
        };
        let e = jwt_assertion(&broken, 1).unwrap_err();
        assert!(!e.contains("\u{1}"), "{e}");
    }

    #[test]
    fn token_request_is_a_jwt_bearer_grant() {
        let body = token_request_body("a.b.c");
        assert_eq!(
            &body[..],
            b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c"
        );
    }

    #[test]
    fn token_answers_are_parsed_and_checked() {
        assert_eq!(
            parse_token_response(br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#).unwrap(),
            ("ya29.abc".to_string(), 3599)
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"t"}"#).unwrap(),
            ("t".to_string(), DEFAULT_EXPIRES_IN)
        );
        for bad in [
            &br#"{"expires_in":3599}"#[..],
            br#"{"access_token":""}"#,
            br#"{"access_token":"a\r\nX-Injected: 1"}"#,
            b"<html>",
        ] {
            let e = parse_token_response(bad).unwrap_err();
            assert!(!e.contains("Injected"), "{e}");
        }
        assert_eq!(
            oauth_error_code(br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#).as_deref(),
            Some("invalid_grant")
        );
        assert_eq!(oauth_error_code(br#"{"error":"has spaces in it"}"#), None);
        assert_eq!(oauth_error_code(b"nope"), None);
    }

    #[test]
    fn tokens_are_replaced_shortly_before_expiry() {
        let t0 = Instant::now();
        assert_eq!(
            refresh_at(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(3300)
        );
        assert_eq!(refresh_at(t0, Duration::from_secs(60)), t0 + Duration::from_secs(54));
        assert_eq!(refresh_at(t0, Duration::ZERO), t0);
        let slot = Slot::default();
        assert!(slot.fresh(t0).is_none());
        *slot.current.lock().unwrap() = Some(CachedToken {
            token: "tok".into(),
            refresh_at: refresh_at(t0, Duration::from_secs(100)),
        });
        assert_eq!(slot.fresh(t0 + Duration::from_secs(89)).as_deref(), Some("tok"));
        assert!(slot.fresh(t0 + Duration::from_secs(90)).is_none());
    }

    #[test]
    fn failures_name_the_provider_only() {
        let f = Failure {
            connect: true,
            detail: "connect: ConnectRefused".into(),
        };
        let e = f.to_error("vx");
        assert_eq!((e.status(), e.code()), (502, "upstream_connect_error"));
        assert!(
            e.to_string().contains("'vx'") && e.to_string().contains("token endpoint"),
            "{e}"
        );
        let e = Failure {
            connect: false,
            detail: "HTTP 400 (invalid_grant)".into(),
        }
        .to_error("vx");
        assert_eq!((e.status(), e.code()), (502, "upstream_protocol_error"));
    }
}
