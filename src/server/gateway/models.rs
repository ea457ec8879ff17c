//! The models routes (`GET …/models`, `GET …/models/{id}`) and the model a path names (Azure
//! OpenAI's `…/openai/deployments/{deployment}/images/edits`).
//!
//! Both run once per such request, after the route step picked the endpoint. What a caller may
//! use is decided by pure functions of the config's providers and the caller's identity
//! ([`usable_models`], [`usable`], [`deployment_model`]); the handlers only authenticate and
//! write OpenAI's list shape.

use super::RequestCtx;
use crate::auth::Identity;
use crate::config::ProviderConfig;
use crate::error::GatewayError;
use crate::providers::kernel::percent::percent_decode_segment;
use crate::providers::UnifiedAnswer;
use crate::route::Router;
use crate::server::AppState;
use pingora::proxy::Session;
use serde_json::{json, Value};

/// `GET …/models`: the models the caller may use ([`usable_models`]) as OpenAI's list,
/// `{"object":"list","data":[{"id":"provider/model","object":"model","created":0,"owned_by":"provider"}…]}`;
/// authenticated like an edit (401 without a credential).
pub(super) async fn list(
    state: &AppState,
    session: &Session,
    ctx: &mut RequestCtx,
) -> Result<UnifiedAnswer, GatewayError> {
    let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
    ctx.virtual_key.clone_from(&identity.key_id);
    let data: Vec<Value> = usable_models(&state.config.providers, &state.router, &identity)
        .iter()
        .map(|(provider, model)| model_object(provider, model))
        .collect();
    Ok(to_answer(&json!({ "object": "list", "data": data })))
}

/// `GET …/models/{id}` (`id` percent-encoded, as the SDKs send `provider%2Fmodel`): the model
/// object when the caller may use that model ([`usable`]; also a model no config entry spells
/// out, at a provider whose keys serve any), else 404 `model_not_found`.
pub(super) async fn retrieve(
    state: &AppState,
    session: &Session,
    ctx: &mut RequestCtx,
    id: &str,
) -> Result<UnifiedAnswer, GatewayError> {
    let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
    ctx.virtual_key.clone_from(&identity.key_id);
    let name = percent_decode_segment(id).unwrap_or_default();
    let found = crate::form::split_model(&name)
        .ok()
        .filter(|(provider, model)| usable(&state.router, &identity, provider, model).is_ok());
    match found {
        Some((provider, model)) => Ok(to_answer(&model_object(&provider, &model))),
        None => Err(GatewayError::Refused {
            status: 404,
            code: "model_not_found",
            message: format!(
                "the model '{}' does not exist or this key may not use it",
                name.chars().take(128).collect::<String>()
            ),
        }),
    }
}

/// One entry of OpenAI's model list. `created` is 0: the config dates no model.
fn model_object(provider: &str, model: &str) -> Value {
    json!({ "id": format!("{provider}/{model}"), "object": "model", "created": 0, "owned_by": provider })
}

/// A JSON answer's body.
fn to_answer(body: &Value) -> UnifiedAnswer {
    UnifiedAnswer::from(serde_json::to_vec(body).unwrap_or_default())
}

/// The `provider/model` pairs `identity` may use, each once, in the config's order: the model
/// names the config spells out for a provider (its keys' `models`, Azure's `deployments`
/// aliases, `model_rules` patterns without `*`, every fallback chain's targets) and the
/// caller's own `provider/model` entries (its key's `models`, a token's `models` claim); each
/// kept when [`usable`] says so. A provider whose keys serve any model (`*`) thus lists only
/// the names spelled out somewhere.
pub fn usable_models(providers: &[ProviderConfig], router: &Router, identity: &Identity) -> Vec<(String, String)> {
    let mut named: Vec<(&str, &str)> = Vec::new();
    for p in providers {
        let keys = p.keys.iter().flat_map(|k| k.models.iter().map(String::as_str));
        let aliases = p.options.deployments.iter().map(|(model, _)| model.as_str());
        let rules = p.options.models.iter().map(|r| r.pattern.as_str());
        for model in keys.chain(aliases).chain(rules).filter(|m| !m.contains('*')) {
            named.push((&p.name, model));
        }
    }
    let chains = providers
        .iter()
        .flat_map(|p| p.options.models.iter().flat_map(|r| r.fallbacks.iter()));
    named.extend(chains.map(|fb| (fb.provider.as_str(), fb.model.as_str())));
    let own = [&identity.models, &identity.token_models]
        .into_iter()
        .flatten()
        .flatten();
    named.extend(own.filter_map(|entry| entry.split_once('/')).filter(|(_, m)| *m != "*"));
    let mut out: Vec<(String, String)> = Vec::new();
    for (provider, model) in named {
        let seen = out.iter().any(|(p, m)| p == provider && m == model);
        if !seen && usable(router, identity, provider, model).is_ok() {
            out.push((provider.to_string(), model.to_string()));
        }
    }
    out
}

/// Whether `identity` may send an edit to `provider`/`model`, as the route step would decide
/// it: the provider is configured (else 400 `unknown_provider`), the model fits its kind's
/// grammar, a key serves it (else 400 `no_key_for_model`), and the caller may use it (else
/// 403).
pub fn usable(router: &Router, identity: &Identity, provider: &str, model: &str) -> Result<(), GatewayError> {
    let p = router.candidate(provider, model, "model")?;
    if !p.keys.iter().any(|k| k.serves(model)) {
        return Err(GatewayError::NoKeyForModel {
            provider: provider.to_string(),
            model: model.chars().take(64).collect(),
        });
    }
    identity.check(provider, model)
}

/// The `(provider, model)` an Azure OpenAI deployment path names (`deployment` percent-encoded,
/// as the SDK sends it): `provider/model` itself, or a deployment name (or its model) listed
/// in a provider's `deployments`, the first in the config's order; else 404
/// `deployment_not_found`.
pub fn deployment_model(providers: &[ProviderConfig], deployment: &str) -> Result<(String, String), GatewayError> {
    let name = percent_decode_segment(deployment).ok_or_else(|| {
        GatewayError::invalid("model", "the deployment in the path is not valid percent-encoded UTF-8")
    })?;
    if name.contains('/') {
        return crate::form::split_model(&name);
    }
    providers
        .iter()
        .find_map(|p| {
            let (model, _) = p.options.deployments.iter().find(|(m, d)| *d == name || *m == name)?;
            Some((p.name.clone(), model.clone()))
        })
        .ok_or_else(|| GatewayError::Refused {
            status: 404,
            code: "deployment_not_found",
            message: format!(
                "no deployment '{}': use a name from a provider's `deployments`, or `provider/model` (URL-encoded) as the deployment",
                name.chars().take(128).collect::<String>()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    fn config() -> crate::config::Config {
        let yaml = r#"
providers:
  - name: openai
    kind: openai
    base_url: http://127.0.0.1:9/v1
    model_rules:
      - { match: "gpt-image-*", fallbacks: [az/gpt-image-1] }
      - { match: dall-e-2 }
    keys:
      - { name: a, value: ka, models: ["gpt-image-1", "*"] }
  - name: az
    kind: azure
    base_url: https://res.example
    deployments: { gpt-image-1: prod-image, dall-e-2: old }
    keys:
      - { name: k, value: kz, models: ["gpt-image-1"] }
  - name: one
    kind: openai
    base_url: http://127.0.0.1:9/v1
    model_rules:
      - { match: m2 }
    keys:
      - { name: k1, value: k1, models: ["m1"] }
"#;
        from_yaml_str_with_env(yaml, &|_| None).expect("valid config")
    }

    fn providers() -> Vec<ProviderConfig> {
        config().providers
    }

    fn router() -> Router {
        Router::new(&config())
    }

    fn ids(list: &[(String, String)]) -> Vec<String> {
        list.iter().map(|(p, m)| format!("{p}/{m}")).collect()
    }

    #[test]
    fn lists_the_named_models_a_key_serves_once_each() {
        let all = usable_models(&providers(), &router(), &Identity::anonymous());
        // az/dall-e-2 is an alias, one/m2 a rule, that no key of theirs serves.
        assert_eq!(
            ids(&all),
            ["openai/gpt-image-1", "openai/dall-e-2", "az/gpt-image-1", "one/m1"]
        );
    }

    #[test]
    fn a_key_sees_only_what_it_may_use_and_adds_its_own_names() {
        let key = Identity {
            providers: Some(vec!["openai".into()]),
            models: Some(vec![
                "openai/*".into(),
                "openai/gpt-image-1.5".into(),
                "az/gpt-image-1".into(),
            ]),
            ..Identity::default()
        };
        let list = usable_models(&providers(), &router(), &key);
        assert_eq!(
            ids(&list),
            ["openai/gpt-image-1", "openai/dall-e-2", "openai/gpt-image-1.5"]
        );
        let narrowed = Identity {
            token_models: Some(vec!["openai/dall-e-2".into()]),
            ..key
        };
        assert_eq!(
            ids(&usable_models(&providers(), &router(), &narrowed)),
            ["openai/dall-e-2"]
        );
    }

    #[test]
    fn usable_decides_as_the_route_step() {
        let p = router();
        let anyone = Identity::anonymous();
        assert!(usable(&p, &anyone, "openai", "anything-else").is_ok());
        let code = |r: Result<(), GatewayError>| r.unwrap_err().code();
        assert_eq!(code(usable(&p, &anyone, "nope", "m")), "unknown_provider");
        assert_eq!(code(usable(&p, &anyone, "az", "dall-e-2")), "no_key_for_model");
        assert_eq!(code(usable(&p, &anyone, "one", "m2")), "no_key_for_model");
        assert_eq!(code(usable(&p, &anyone, "openai", "a/../b")), "invalid_request");
        let only_az = Identity {
            providers: Some(vec!["az".into()]),
            ..Identity::default()
        };
        assert_eq!(code(usable(&p, &only_az, "openai", "gpt-image-1")), "provider_blocked");
    }

    #[test]
    fn a_deployment_is_an_alias_or_a_provider_model() {
        let p = providers();
        let pair = |d: &str| deployment_model(&p, d).map_err(|e| (e.status(), e.code()));
        assert_eq!(pair("prod-image"), Ok(("az".into(), "gpt-image-1".into())));
        assert_eq!(pair("gpt-image-1"), Ok(("az".into(), "gpt-image-1".into())));
        assert_eq!(pair("old"), Ok(("az".into(), "dall-e-2".into())));
        assert_eq!(
            pair("openai%2Fgpt-image-1"),
            Ok(("openai".into(), "gpt-image-1".into()))
        );
        assert_eq!(pair("openai%2fdall-e-2"), Ok(("openai".into(), "dall-e-2".into())));
        assert_eq!(pair("unknown"), Err((404, "deployment_not_found")));
        assert_eq!(pair("bad%zz"), Err((400, "invalid_request")));
        assert_eq!(pair("%2Fm"), Err((400, "invalid_request")));
    }
}
