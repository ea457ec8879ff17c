//! The auth plugin: finds the caller's virtual key in the request head and decides who it is.
//!
//! It runs first, on the request head only, before a byte of the body is read, so an
//! unauthenticated 20 MB upload is refused without being read. The key may come in `x-bf-vk`,
//! in `Authorization: Bearer sk-bf-…` or in `x-api-key: sk-bf-…` (Bifrost's headers). Keys are
//! stored and compared as SHA-256 digests, every configured key is compared on every request in
//! constant time, and no key ever reaches a log line or a metric. The caller's credentials are
//! never forwarded: providers get the provider key from the config.

use crate::config::{Config, VirtualKeyConfig};
use crate::error::GatewayError;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Who is calling and what they may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The virtual key's configured id (safe to log), or `None` for anonymous use.
    pub key_id: Option<String>,
    /// Providers this caller may use; `None` = all.
    pub providers: Option<Vec<String>>,
    /// `provider/model` or `provider/*` entries this caller may use; `None` = all.
    pub models: Option<Vec<String>>,
}

impl Identity {
    /// Checks that this caller may send `model` to `provider`: 403 otherwise.
    pub fn check(&self, provider: &str, model: &str) -> Result<(), GatewayError> {
        if let Some(list) = &self.providers {
            if !list.iter().any(|p| p == provider) {
                return Err(GatewayError::ProviderBlocked(provider.to_string()));
            }
        }
        if let Some(list) = &self.models {
            let allowed = list.iter().any(|entry| match entry.split_once('/') {
                Some((p, "*")) => p == provider,
                Some((p, m)) => p == provider && m == model,
                None => false,
            });
            if !allowed {
                return Err(GatewayError::ModelBlocked(format!("{provider}/{model}")));
            }
        }
        Ok(())
    }
}

/// The configured virtual keys, by digest.
#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Vec<VirtualKeyConfig>,
    allow_anonymous: bool,
}

/// Reads the presented virtual key from the headers, in Bifrost's order of precedence.
/// `Authorization` and `x-api-key` count only when they carry an `sk-bf-` key, so a client that
/// sends its own provider key there is treated as sending none (and the key is dropped).
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-bf-vk") {
        return Some(v.as_bytes());
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let b = v.as_bytes();
        if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
            let token = b[7..].trim_ascii();
            if token.starts_with(b"sk-bf-") {
                return Some(token);
            }
        }
    }
    if let Some(v) = headers.get("x-api-key") {
        let token = v.as_bytes().trim_ascii();
        if token.starts_with(b"sk-bf-") {
            return Some(token);
        }
    }
    None
}

impl KeyStore {
    /// The keys of a validated config.
    pub fn from_config(cfg: &Config) -> Self {
        KeyStore {
            keys: cfg.virtual_keys.clone(),
            allow_anonymous: cfg.auth.allow_anonymous,
        }
    }

    /// The identity of the configured key `key_id` as it is now (an async job runs with its
    /// submitter's permissions at run time): 401 when the key is gone or disabled.
    pub fn identity_of(&self, key_id: &str) -> Result<Identity, GatewayError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(GatewayError::VirtualKeyNotFound)?;
        if !key.enabled {
            return Err(GatewayError::VirtualKeyBlocked);
        }
        Ok(Identity {
            key_id: Some(key.id.clone()),
            providers: key.providers.clone(),
            models: key.models.clone(),
        })
    }

    /// Decides who the caller is: 401 when no key is presented (and anonymous use is off),
    /// when the key is unknown, or when it is disabled.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, GatewayError> {
        let Some(presented) = presented_key(headers) else {
            if self.allow_anonymous {
                return Ok(Identity {
                    key_id: None,
                    providers: None,
                    models: None,
                });
            }
            return Err(GatewayError::VirtualKeyRequired);
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Compare against every key without branching on the result.
        let mut found = subtle::Choice::from(0u8);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = key.key_sha256.ct_eq(&digest);
            index = u32::conditional_select(&index, &(i as u32), eq);
            found |= eq;
        }
        if !bool::from(found) {
            return Err(GatewayError::VirtualKeyNotFound);
        }
        let key = self.keys.get(index as usize).ok_or(GatewayError::VirtualKeyNotFound)?;
        if !key.enabled {
            return Err(GatewayError::VirtualKeyBlocked);
        }
        Ok(Identity {
            key_id: Some(key.id.clone()),
            providers: key.providers.clone(),
            models: key.models.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn vk(id: &str, key: &str, enabled: bool) -> VirtualKeyConfig {
        VirtualKeyConfig {
            id: id.into(),
            key_sha256: Sha256::digest(key.as_bytes()).into(),
            enabled,
            providers: Some(vec!["openai".into()]),
            models: Some(vec!["openai/gpt-image-1".into()]),
        }
    }

    fn store(anon: bool) -> KeyStore {
        KeyStore {
            keys: vec![vk("a", "sk-bf-aaa", true), vk("b", "sk-bf-bbb", false)],
            allow_anonymous: anon,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn finds_the_key_in_each_header() {
        let s = store(false);
        for h in [
            headers(&[("x-bf-vk", "sk-bf-aaa")]),
            headers(&[("authorization", "Bearer sk-bf-aaa")]),
            headers(&[("authorization", "bearer   sk-bf-aaa ")]),
            headers(&[("x-api-key", "sk-bf-aaa")]),
        ] {
            assert_eq!(s.authenticate(&h).unwrap().key_id.as_deref(), Some("a"));
        }
    }

    #[test]
    fn missing_unknown_disabled_are_401() {
        let s = store(false);
        let cases = [
            (headers(&[]), "virtual_key_required"),
            (
                headers(&[("authorization", "Bearer sk-openai-123")]),
                "virtual_key_required",
            ),
            (
                headers(&[("authorization", "Basic dXNlcjpwYXNz")]),
                "virtual_key_required",
            ),
            (headers(&[("x-bf-vk", "sk-bf-nope")]), "virtual_key_not_found"),
            (headers(&[("x-bf-vk", "")]), "virtual_key_not_found"),
            (headers(&[("x-bf-vk", "sk-bf-bbb")]), "virtual_key_blocked"),
        ];
        for (h, code) in cases {
            let e = s.authenticate(&h).unwrap_err();
            assert_eq!((e.status(), e.code()), (401, code));
        }
    }

    #[test]
    fn anonymous_when_allowed() {
        let id = store(true).authenticate(&headers(&[])).unwrap();
        assert_eq!(id.key_id, None);
        assert!(id.check("anything", "m").is_ok());
        // a wrong key is still refused when anonymous use is allowed
        assert!(store(true).authenticate(&headers(&[("x-bf-vk", "sk-bf-zzz")])).is_err());
    }

    #[test]
    fn provider_and_model_permissions_are_403() {
        let id = store(false)
            .authenticate(&headers(&[("x-bf-vk", "sk-bf-aaa")]))
            .unwrap();
        assert!(id.check("openai", "gpt-image-1").is_ok());
        let e = id.check("azure", "gpt-image-1").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "provider_blocked"));
        let e = id.check("openai", "dall-e-2").unwrap_err();
        assert_eq!((e.status(), e.code()), (403, "model_blocked"));
        let wild = Identity {
            key_id: None,
            providers: None,
            models: Some(vec!["openai/*".into()]),
        };
        assert!(wild.check("openai", "dall-e-2").is_ok());
        assert!(wild.check("demo", "x").is_err());
    }

    #[test]
    fn key_never_in_error_text() {
        let s = store(false);
        let e = s
            .authenticate(&headers(&[("x-bf-vk", "sk-bf-secret-value")]))
            .unwrap_err();
        let body = String::from_utf8(e.to_body(&Default::default())).unwrap();
        assert!(!body.contains("secret-value"));
    }
}
