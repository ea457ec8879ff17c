//! The route plugin: turns `provider/model` into a target, a configured provider and one of its
//! keys, picked at random by weight among the keys that serve the model.
//!
//! It runs twice per request: the provider check as soon as `model` has been parsed (so an
//! unknown provider is refused before the images are read), and key selection once the whole
//! form is valid. Each time, the model id is checked against the provider kind's grammar
//! ([`crate::providers::model_id`]), for the primary and for every fallback, before any
//! request is built with it.

use crate::config::{Config, ProviderConfig, ProviderKey};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::model_id;
use std::sync::Arc;

/// Where one upstream attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The provider.
    pub provider: Arc<ProviderConfig>,
    /// Index of the chosen key in `provider.keys`.
    pub key_index: usize,
    /// The bare model name sent upstream.
    pub model: String,
    /// An access token obtained for this attempt (service-account keys), set by the server
    /// before the request is built.
    pub access_token: Option<Arc<str>>,
}

impl Target {
    /// The secret to send: the access token obtained for this attempt, else the key's static
    /// value. A service-account key without a token is an internal error (the server fetches
    /// one first).
    pub fn credential(&self) -> Result<&str, GatewayError> {
        match (&self.access_token, self.key().secret()) {
            (Some(token), _) => Ok(token),
            (None, Some(secret)) => Ok(secret),
            (None, None) => Err(GatewayError::Internal(format!(
                "no access token for key '{}' of provider '{}'",
                self.key().name,
                self.provider.name
            ))),
        }
    }

    /// The chosen provider key.
    pub fn key(&self) -> &ProviderKey {
        // key_index always comes from `select`, which only returns valid indices.
        &self.provider.keys[self.key_index.min(self.provider.keys.len().saturating_sub(1))]
    }
}

/// The configured providers, by name.
#[derive(Debug, Clone)]
pub struct Router {
    providers: Vec<Arc<ProviderConfig>>,
}

impl Router {
    /// The providers of a validated config.
    pub fn new(cfg: &Config) -> Self {
        Router {
            providers: cfg.providers.iter().cloned().map(Arc::new).collect(),
        }
    }

    /// The provider called `name`, or 400 `unknown_provider`.
    pub fn provider(&self, name: &str) -> Result<&Arc<ProviderConfig>, GatewayError> {
        self.providers
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| GatewayError::UnknownProvider(name.chars().take(64).collect()))
    }

    /// The provider called `provider` (else 400 `unknown_provider`), once `model` passed its
    /// kind's model-id grammar (else a 400 naming `param`, the field it came in).
    pub fn candidate(&self, provider: &str, model: &str, param: &str) -> Result<&Arc<ProviderConfig>, GatewayError> {
        let p = self.provider(provider)?;
        model_id::check(p.kind, model, param)?;
        Ok(p)
    }

    /// Checks every fallback candidate of a parsed `form` (its own `fallbacks`, or the chain
    /// its primary's `model_rules` configure when it names none) against its kind's model-id
    /// grammar, as field `fallbacks`. A candidate whose provider is not configured (it will be
    /// skipped) gets the rules every kind shares.
    pub fn check_fallbacks(&self, form: &EditForm) -> Result<(), GatewayError> {
        let configured = || {
            self.provider(&form.provider)
                .ok()
                .and_then(|p| p.options.rules_for(&form.model))
                .map_or(&[][..], |r| r.fallbacks.as_slice())
        };
        let candidates = if form.fallbacks.is_empty() {
            configured()
        } else {
            &form.fallbacks
        };
        for fb in candidates {
            match self.provider(&fb.provider) {
                Ok(p) => model_id::check(p.kind, &fb.model, "fallbacks")?,
                Err(_) => {
                    if let Err(why) = model_id::check_common(&fb.model) {
                        return Err(GatewayError::invalid(
                            "fallbacks",
                            format!("invalid model id in fallback to '{}': {why}", clip(&fb.provider)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Picks a key of `provider` that serves `model`, at random by weight; `roll` is a uniform
    /// number in `[0, 1)` (injected so tests are deterministic).
    pub fn select(&self, provider: &str, model: &str, roll: f64) -> Result<Target, GatewayError> {
        self.select_where(provider, model, roll, |_| true)
    }

    /// [`Router::select`] among the keys for which `usable(key_index)` holds (the circuit
    /// breaker's verdict, or "not the key that was just refused"). When keys serve the model
    /// but none is usable: 503 `provider_keys_disabled`.
    pub fn select_where(
        &self,
        provider: &str,
        model: &str,
        roll: f64,
        usable: impl Fn(usize) -> bool,
    ) -> Result<Target, GatewayError> {
        let p = self.provider(provider)?;
        let serving: Vec<usize> = (0..p.keys.len()).filter(|&i| p.keys[i].serves(model)).collect();
        let candidates: Vec<usize> = serving.iter().copied().filter(|&i| usable(i)).collect();
        let total: f64 = candidates.iter().map(|&i| p.keys[i].weight).sum();
        if candidates.is_empty() && serving.iter().any(|&i| p.keys[i].weight > 0.0) {
            return Err(GatewayError::KeysDisabled {
                provider: provider.to_string(),
            });
        }
        if candidates.is_empty() || total <= 0.0 {
            return Err(GatewayError::NoKeyForModel {
                provider: provider.to_string(),
                model: model.chars().take(64).collect(),
            });
        }
        let mut point = roll.clamp(0.0, 1.0) * total;
        let mut chosen = candidates[candidates.len() - 1];
        for &i in &candidates {
            if point < p.keys[i].weight {
                chosen = i;
                break;
            }
            point -= p.keys[i].weight;
        }
        Ok(Target {
            provider: p.clone(),
            key_index: chosen,
            model: model.to_string(),
            access_token: None,
        })
    }
}

/// A provider name as quoted in a message (client text: clipped).
fn clip(name: &str) -> String {
    name.chars().take(64).flat_map(char::escape_default).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    fn router() -> Router {
        let yaml = r#"
providers:
  - name: openai
    kind: openai
    base_url: http://127.0.0.1:9/v1
    keys:
      - { name: a, value: ka, weight: 1, models: ["gpt-image-1"] }
      - { name: b, value: kb, weight: 3 }
      - { name: c, value: kc, weight: 1, models: ["dall-e-2"] }
"#;
        let cfg = from_yaml_str_with_env(yaml, &|_| None).expect("valid config");
        Router::new(&cfg)
    }

    #[test]
    fn weighted_choice_among_keys_serving_the_model() {
        let r = router();
        // gpt-image-1: a (weight 1) and b (weight 3) serve it
        assert_eq!(r.select("openai", "gpt-image-1", 0.0).unwrap().key().name, "a");
        assert_eq!(r.select("openai", "gpt-image-1", 0.24).unwrap().key().name, "a");
        assert_eq!(r.select("openai", "gpt-image-1", 0.26).unwrap().key().name, "b");
        assert_eq!(r.select("openai", "gpt-image-1", 0.999).unwrap().key().name, "b");
        // dall-e-2: b and c
        assert_eq!(r.select("openai", "dall-e-2", 0.9).unwrap().key().name, "c");
        // another model: only b
        assert_eq!(r.select("openai", "other", 0.0).unwrap().key().name, "b");
        let mut counts = [0usize; 3];
        for i in 0..1000 {
            let t = r.select("openai", "gpt-image-1", i as f64 / 1000.0).unwrap();
            counts[t.key_index] += 1;
        }
        assert_eq!(counts, [250, 750, 0]);
    }

    #[test]
    fn unusable_keys_are_skipped() {
        let r = router();
        let t = r.select_where("openai", "gpt-image-1", 0.0, |i| i != 0).unwrap();
        assert_eq!(t.key().name, "b");
        let e = r.select_where("openai", "gpt-image-1", 0.0, |_| false).unwrap_err();
        assert_eq!((e.status(), e.code()), (503, "provider_keys_disabled"));
    }

    #[test]
    fn unknown_provider_is_400() {
        let e = router().select("nope", "m", 0.5).unwrap_err();
        assert_eq!(
            (e.status(), e.code(), e.param()),
            (400, "unknown_provider", Some("model"))
        );
    }
}
