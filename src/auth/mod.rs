//! The auth plugin: finds the caller's credential in the request head and decides who it is.
//!
//! It runs first, on the request head only, before a byte of the body is read, so an
//! unauthenticated 20 MB upload is refused without being read. The credential may come in
//! `x-bf-vk`, `Authorization: Bearer …`, `x-api-key`, `x-goog-api-key` or `api-key` (Azure
//! OpenAI's; first found, in that order), and is either a configured virtual key, whatever its prefix, or a JWT of a
//! configured issuer ([`jwt`]):
//!
//! - A virtual key: keys are stored and compared as SHA-256 digests, every configured key is
//!   compared on every request in constant time; disabled or past its `expires_at`: 401.
//! - A virtual-key JWT names a configured key in its issuer's `virtual_key_claim` (`vk`, or
//!   `sub`) and gets exactly that key's permissions; an admin JWT (the issuer's `admin_claim`
//!   holds `admin_value`) may use every provider and model and read every async job. A
//!   token's `models` claim may narrow either further, never widen it.
//!
//! No key or token ever reaches a log line, a metric or an error message: the identity's key
//! id is what logs and metrics see. The caller's credentials are never forwarded: providers
//! get the provider key from the config.

pub mod jwt;
pub mod sigv4;

use crate::config::{Config, VirtualKeyConfig};
use crate::error::GatewayError;
use http::HeaderMap;
pub use jwt::{FetchedKeys, KeySet, TokenRejection};
use jwt::{Issuer, Verification};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who is calling and what they may use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The virtual key's configured id (safe to log), or `None` for anonymous use and admin
    /// tokens. Logs, metrics and job ownership use this, never the issuer or subject.
    pub key_id: Option<String>,
    /// The issuer of the JWT presented, if one was.
    pub issuer: Option<String>,
    /// The JWT's `sub`, if one was presented and has one.
    pub subject: Option<String>,
    /// An admin token: every provider and model, every async job.
    pub admin: bool,
    /// Providers this caller may use; `None` = all.
    pub providers: Option<Vec<String>>,
    /// `provider/model` or `provider/*` entries this caller may use; `None` = all.
    pub models: Option<Vec<String>>,
    /// The token's own narrowing (`models` claim), in the same form, on top of `models`.
    pub token_models: Option<Vec<String>>,
}

/// Whether `provider`/`model` is in a `provider/model` / `provider/*` list.
fn listed(list: &[String], provider: &str, model: &str) -> bool {
    list.iter().any(|entry| match entry.split_once('/') {
        Some((p, "*")) => p == provider,
        Some((p, m)) => p == provider && m == model,
        None => false,
    })
}

impl Identity {
    /// The caller without a credential, when anonymous use is allowed: everything.
    pub fn anonymous() -> Identity {
        Identity::default()
    }

    /// An admin token's caller: every provider and model, every job.
    pub fn admin() -> Identity {
        Identity {
            admin: true,
            ..Identity::default()
        }
    }

    /// Checks that this caller may send `model` to `provider`: 403 otherwise.
    pub fn check(&self, provider: &str, model: &str) -> Result<(), GatewayError> {
        if let Some(list) = &self.providers {
            if !list.iter().any(|p| p == provider) {
                return Err(GatewayError::ProviderBlocked(provider.to_string()));
            }
        }
        for list in [&self.models, &self.token_models].into_iter().flatten() {
            if !listed(list, provider, model) {
                return Err(GatewayError::ModelBlocked(format!("{provider}/{model}")));
            }
        }
        Ok(())
    }
}

/// The configured virtual keys, by digest, and the trusted JWT issuers.
pub struct KeyStore {
    keys: Vec<VirtualKeyConfig>,
    allow_anonymous: bool,
    issuers: Vec<Issuer>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.keys.len())
            .field("allow_anonymous", &self.allow_anonymous)
            .field("issuers", &self.issuers.len())
            .finish()
    }
}

/// Where a presented credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `x-bf-vk`: always meant for the gateway.
    VirtualKeyHeader,
    /// `Authorization: Bearer`, `x-api-key`, `x-goog-api-key` or `api-key`: headers an SDK
    /// may also fill with a placeholder when anonymous use is on.
    ApiKeyHeader,
}

/// Reads the presented credential from the headers: `x-bf-vk`, then `Authorization: Bearer`,
/// then `x-api-key`, then `x-goog-api-key`, then `api-key` (the first present counts),
/// whatever its prefix.
pub fn presented_key(headers: &HeaderMap) -> Option<(&[u8], Source)> {
    if let Some(v) = headers.get("x-bf-vk") {
        return Some((v.as_bytes(), Source::VirtualKeyHeader));
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some((b[7..].trim_ascii(), Source::ApiKeyHeader));
        }
    }
    for name in ["x-api-key", "x-goog-api-key", "api-key"] {
        if let Some(v) = headers.get(name) {
            return Some((v.as_bytes().trim_ascii(), Source::ApiKeyHeader));
        }
    }
    None
}

/// What authenticating a request head came to.
#[derive(Debug)]
pub enum Verdict {
    /// The caller.
    Caller(Identity),
    /// A JWT whose signing key is not in the cached JWKS of the issuer number `issuer` (or
    /// nothing is cached): fetch it (within the refresh rate) and authenticate again; if it
    /// still is not there, the token is refused ([`KeyStore::unknown_key`]).
    FetchKeys {
        /// The issuer, by its position in `auth.jwt.issuers`.
        issuer: usize,
    },
}

impl KeyStore {
    /// The keys and issuers of a validated config.
    pub fn from_config(cfg: &Config) -> Self {
        KeyStore {
            keys: cfg.virtual_keys.clone(),
            allow_anonymous: cfg.auth.allow_anonymous,
            issuers: cfg.auth.issuers.iter().map(Issuer::new).collect(),
        }
    }

    /// The configured issuer number `index`.
    pub fn issuer(&self, index: usize) -> Option<&crate::config::JwtIssuer> {
        self.issuers.get(index).map(|i| &i.config)
    }

    /// The refusal of a token whose key is still unknown after a fetch (`fetched`: a set is
    /// cached, so the `kid` is not in it; else the endpoint could not be read).
    pub fn unknown_key(fetched: bool) -> GatewayError {
        GatewayError::InvalidToken(if fetched {
            TokenRejection::UnknownKey
        } else {
            TokenRejection::KeysUnavailable
        })
    }

    /// The identity of the configured key `key_id` as it is now (an async job runs with its
    /// submitter's permissions at run time): 401 when the key is gone, disabled or expired.
    pub fn identity_of(&self, key_id: &str, now: u64) -> Result<Identity, GatewayError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(GatewayError::VirtualKeyNotFound)?;
        key_identity(key, now)
    }

    /// Decides who the caller is, at `now` (Unix seconds), the JWKS-URL issuers' keys taken
    /// from `fetched`: 401 when no credential is presented (and anonymous use is off), when a
    /// key is unknown, disabled or expired, or a token is refused.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        now: u64,
        fetched: &dyn FetchedKeys,
    ) -> Result<Verdict, GatewayError> {
        let Some((presented, source)) = presented_key(headers) else {
            if self.allow_anonymous {
                return Ok(Verdict::Caller(Identity::anonymous()));
            }
            return Err(GatewayError::VirtualKeyRequired);
        };
        if let Some(key) = self.find_key(presented) {
            return key_identity(key, now).map(Verdict::Caller);
        }
        if !self.issuers.is_empty() && jwt::looks_like_jwt(presented) {
            return match jwt::verify(&self.issuers, fetched, presented)? {
                Verification::Verified(token) => self.token_identity(token, now).map(Verdict::Caller),
                Verification::KeysNeeded(issuer) => Ok(Verdict::FetchKeys { issuer }),
            };
        }
        if self.allow_anonymous && source == Source::ApiKeyHeader && !jwt::looks_like_jwt(presented) {
            // An SDK's placeholder key where anonymous use is on.
            return Ok(Verdict::Caller(Identity::anonymous()));
        }
        Err(GatewayError::VirtualKeyNotFound)
    }

    /// The configured key whose digest matches `presented`, compared with every key without
    /// branching on the result.
    fn find_key(&self, presented: &[u8]) -> Option<&VirtualKeyConfig> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = key.key_sha256.ct_eq(&digest);
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return None;
        }
        self.keys.get(index as usize)
    }

    /// What a verified token grants: an admin token everything, a virtual-key token its key's
    /// permissions; either narrowed by the token's models claim.
    fn token_identity(&self, token: jwt::Verified, now: u64) -> Result<Identity, GatewayError> {
        let issuer = self.issuers.get(token.issuer).ok_or(GatewayError::VirtualKeyNotFound)?;
        let config = &issuer.config;
        let claims = &token.claims;
        let is_admin = config
            .admin
            .as_ref()
            .is_some_and(|(claim, value)| jwt::claim_has(claims, claim, value));
        let mut identity = if is_admin {
            Identity::admin()
        } else {
            let key_id = claims
                .get(&config.virtual_key_claim)
                .and_then(|v| v.as_str())
                .ok_or_else(|| TokenRejection::BadClaim(config.virtual_key_claim.clone()))?;
            self.identity_of(key_id, now)?
        };
        identity.token_models = jwt::claim_list(claims, &config.models_claim)?;
        identity.issuer = Some(config.issuer.clone());
        identity.subject = claims.get("sub").and_then(|v| v.as_str()).map(str::to_string);
        Ok(identity)
    }
}

/// The identity of a configured key at `now`: 401 when disabled or expired.
fn key_identity(key: &VirtualKeyConfig, now: u64) -> Result<Identity, GatewayError> {
    if !key.enabled {
        return Err(GatewayError::VirtualKeyBlocked);
    }
    if key.expires_at.is_some_and(|t| now >= t) {
        return Err(GatewayError::VirtualKeyExpired);
    }
    Ok(Identity {
        key_id: Some(key.id.clone()),
        providers: key.providers.clone(),
        models: key.models.clone(),
        ..Identity::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// A key `id` whose value is `key` (the signing secret too), allowed `openai/gpt-image-1`.
    pub(super) fn vk_for_tests(id: &str, key: &str, enabled: bool) -> VirtualKeyConfig {
        vk(id, key, enabled)
    }

    fn vk(id: &str, key: &str, enabled: bool) -> VirtualKeyConfig {
        VirtualKeyConfig {
            id: id.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            signing_secret: Some(crate::config::Secret::new(key)),
            enabled,
            providers: Some(vec!["openai".into()]),
            models: Some(vec!["openai/gpt-image-1".into()]),
            expires_at: None,
            team: None,
            budget: None,
            rate_limit: None,
        }
    }

    fn store(anon: bool) -> KeyStore {
        let mut expired = vk("c", "sk-bf-ccc", true);
        expired.expires_at = Some(1_000);
        KeyStore {
            keys: vec![
                vk("a", "sk-bf-aaa", true),
                vk("b", "sk-bf-bbb", false),
                expired,
                vk("plain", "team-plain-key", true),
            ],
            allow_anonymous: anon,
            issuers: Vec::new(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// Authenticates at time 500 (before key `c` expires at 1000) with no fetched keys.
    fn auth(s: &KeyStore, h: &HeaderMap) -> Result<Identity, GatewayError> {
        auth_at(s, h, 500)
    }

    fn auth_at(s: &KeyStore, h: &HeaderMap, now: u64) -> Result<Identity, GatewayError> {
        match s.authenticate(h, now, &())? {
            Verdict::Caller(identity) => Ok(identity),
            Verdict::FetchKeys { .. } => panic!("no JWKS URL issuer here"),
        }
    }

    #[test]
    fn finds_the_key_in_each_header() {
        let s = store(false);
        for h in [
            headers(&[("x-bf-vk", "sk-bf-aaa")]),
            headers(&[("authorization", "Bearer sk-bf-aaa")]),
            headers(&[("authorization", "bearer   sk-bf-aaa ")]),
            headers(&[("x-api-key", "sk-bf-aaa")]),
            headers(&[("x-goog-api-key", "sk-bf-aaa")]),
            headers(&[("api-key", " sk-bf-aaa")]),
        ] {
            assert_eq!(auth(&s, &h).unwrap().key_id.as_deref(), Some("a"));
        }
    }

    #[test]
    fn a_key_without_the_sk_bf_prefix_works_in_every_header() {
        let s = store(false);
        for name in ["x-bf-vk", "x-api-key", "x-goog-api-key", "api-key"] {
            let id = auth(&s, &headers(&[(name, "team-plain-key")])).unwrap();
            assert_eq!(id.key_id.as_deref(), Some("plain"), "{name}");
        }
        let id = auth(&s, &headers(&[("authorization", "Bearer team-plain-key")])).unwrap();
        assert_eq!(id.key_id.as_deref(), Some("plain"));
    }

    #[test]
    fn missing_unknown_disabled_are_401() {
        let s = store(false);
        let cases = [
            (headers(&[]), "virtual_key_required"),
            // A bearer that is no configured key is an unknown key (it used to count as none).
            (
                headers(&[("authorization", "Bearer sk-openai-123")]),
                "virtual_key_not_found",
            ),
            (
                headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
                "virtual_key_required",
            ),
            (headers(&[("x-bf-vk", "sk-bf-nope")]), "virtual_key_not_found"),
            (headers(&[("x-goog-api-key", "nope")]), "virtual_key_not_found"),
            (headers(&[("x-bf-vk", "")]), "virtual_key_not_found"),
            (headers(&[("x-bf-vk", "sk-bf-bbb")]), "virtual_key_blocked"),
        ];
        for (h, code) in cases {
            let e = auth(&s, &h).unwrap_err();
            assert_eq!((e.status(), e.code()), (401, code));
        }
    }

    #[test]
    fn an_expired_key_is_401() {
        let s = store(false);
        let h = headers(&[("authorization", "Bearer sk-bf-ccc")]);
        assert_eq!(auth_at(&s, &h, 999).unwrap().key_id.as_deref(), Some("c"));
        let e = auth_at(&s, &h, 1_000).unwrap_err();
        assert_eq!((e.status(), e.code()), (401, "virtual_key_expired"));
        let e = s.identity_of("c", 1_001).unwrap_err();
        assert_eq!(e.code(), "virtual_key_expired");
    }

    #[test]
    fn anonymous_when_allowed() {
        let id = auth(&store(true), &headers(&[])).unwrap();
        assert_eq!(id.key_id, None);
        assert!(id.check("anything", "m").is_ok());
        // a wrong key is still refused when anonymous use is allowed
        assert!(auth(&store(true), &headers(&[("x-bf-vk", "sk-bf-zzz")])).is_err());
        // an SDK's placeholder in Authorization is no key at all then
        let id = auth(&store(true), &headers(&[("authorization", "Bearer placeholder")])).unwrap();
        assert_eq!(id, Identity::anonymous());
        // but something shaped like a JWT is never waved through
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln";
        assert!(auth(&store(true), &headers(&[("authorization", &format!("Bearer {jwt}"))])).is_err());
    }

    #[test]
    fn provider_and_model_permissions_are_403() {
        let id = auth(&store(false), &headers(&[("x-bf-vk", "sk-bf-aaa")])).unwrap();
        assert!(id.check("openai", "gpt-image-1").is_ok());
        let e = id.check("azure", "gpt-image-1").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "provider_blocked"));
        let e = id.check("openai", "dall-e-2").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "model_blocked"));
        let wild = Identity {
            models: Some(vec!["openai/*".into()]),
            ..Identity::default()
        };
        assert!(wild.check("openai", "dall-e-2").is_ok());
        assert!(wild.check("demo", "x").is_err());
    }

    #[test]
    fn a_token_narrows_and_never_widens() {
        let narrowed = Identity {
            models: Some(vec!["openai/*".into()]),
            token_models: Some(vec!["openai/gpt-image-1".into(), "demo/*".into()]),
            ..Identity::default()
        };
        assert!(narrowed.check("openai", "gpt-image-1").is_ok());
        assert_eq!(
            narrowed.check("openai", "dall-e-2").unwrap_err().code(),
            "model_blocked"
        );
        // demo/* in the token does not add what the key lacks
        assert_eq!(narrowed.check("demo", "x").unwrap_err().code(), "model_blocked");
        let admin = Identity {
            token_models: Some(vec!["demo/*".into()]),
            ..Identity::admin()
        };
        assert!(admin.check("demo", "x").is_ok());
        assert!(admin.check("openai", "gpt-image-1").is_err());
    }

    #[test]
    fn key_never_in_error_text() {
        let s = store(false);
        let e = auth(&s, &headers(&[("x-bf-vk", "sk-bf-secret-value")])).unwrap_err();
        let body = String::from_utf8(e.to_body(&Default::default())).unwrap();
        assert!(!body.contains("secret-value"));
    }
}
