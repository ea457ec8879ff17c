//! The `providers` and `virtual_keys` sections, and their cross-checks:
//! unique provider, key and virtual-key names, virtual-key references to
//! providers and models, and virtual keys that are the same key.

use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::fields::{did_you_mean, Fields, Problems};
use super::parse::Env;
use super::url::parse_base_url;
use super::{
    AwsCredentials, CircuitBreaker, ConnectionLimit, Credential, KeyAuth, ModelRules, ProviderConfig, ProviderKey,
    ProviderKind, ProviderOptions, ServiceAccountKey, Timeouts, VirtualKeyConfig, DEFAULT_REPEAT_CONCURRENCY,
};
use crate::kind::Placement;
use crate::spec::Fallback;
use base64::Engine;
use std::sync::Arc;

/// SHA-256 of a virtual key, as stored in [`VirtualKeyConfig::key_sha256`].
pub(super) fn sha256(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Reports later entries whose `key` repeats an earlier entry's.
/// `entries` are (entry path, value).
fn check_unique(problems: &Problems, what: &str, key: &str, entries: &[(String, String)]) {
    for (i, (path, value)) in entries.iter().enumerate() {
        if let Some((first, _)) = entries[..i].iter().find(|(_, v)| v == value) {
            problems.add(
                &format!("{path}.{key}"),
                format!("duplicate {what} '{value}' (same as {first})"),
            );
        }
    }
}

/// The providers, and the names every provider entry declares (even broken
/// ones, so references to them do not cascade into more problems); the
/// names are `None` when the list itself is unusable.
pub(super) fn providers(top: &mut Fields<'_>, env: Env<'_>) -> (Vec<ProviderConfig>, Option<Vec<String>>) {
    let problems = top.problems();
    let Some(items) = top.req_list("providers") else {
        return (Vec::new(), None);
    };
    let names: Vec<(String, String)> = items
        .iter()
        .filter_map(|(path, v)| Some((path.clone(), v.get("name")?.as_str()?.to_string())))
        .collect();
    check_unique(problems, "provider name", "name", &names);
    let names: Vec<String> = names.into_iter().map(|(_, n)| n).collect();
    let built = items
        .into_iter()
        .filter_map(|(path, value)| provider(Fields::new(value, path, problems), env, &names))
        .collect();
    (built, Some(names))
}

/// One provider entry; `names` are every provider's names, for references to them.
fn provider(mut f: Fields<'_>, env: Env<'_>, names: &[String]) -> Option<ProviderConfig> {
    let name = f.req_str("name");
    if let Some(name) = name {
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if !name.chars().all(valid) {
            f.report(
                "name",
                format!("invalid provider name '{name}': use only lowercase letters, digits, '_' and '-'"),
            );
        }
    }
    let kind = f.req_str("kind").and_then(|text| {
        let kind = ProviderKind::from_name(text);
        if kind.is_none() {
            let allowed: Vec<&str> = ProviderKind::ALL.iter().map(|k| k.as_str()).collect();
            let hint = did_you_mean(text, allowed.iter().copied());
            f.report(
                "kind",
                format!("unknown provider kind '{text}' (allowed: {}){hint}", allowed.join(", ")),
            );
        }
        kind
    });
    let mut options = options(&mut f, kind, names);
    let base_url = match (f.opt_str("base_url"), kind) {
        (Some(text), _) => parse_base_url(text).map_err(|e| f.report("base_url", e)).ok(),
        (None, Some(kind)) => match kind.default_base_url(Placement {
            region: options.region.as_deref(),
            location: options.location.as_deref(),
        }) {
            Some(text) => parse_base_url(&text).map_err(|e| f.report("base_url", e)).ok(),
            None => {
                f.missing("base_url");
                None
            }
        },
        (None, None) => None,
    };
    let timeouts = timeouts(&mut f);
    options.connections = connection_limit(&mut f);
    options.repeat_concurrency = repeat_concurrency(&mut f, kind);
    options.rehost_urls = f.opt_bool("rehost_urls", false);
    let problems = f.problems();
    let items = f.req_list("keys").unwrap_or_default();
    let key_names: Vec<(String, String)> = items
        .iter()
        .filter_map(|(path, v)| Some((path.clone(), v.get("name")?.as_str()?.to_string())))
        .collect();
    check_unique(problems, "key name", "name", &key_names);
    let keys: Vec<ProviderKey> = items
        .into_iter()
        .filter_map(|(path, value)| provider_key(Fields::new(value, path, problems), env, kind))
        .collect();
    f.finish();
    Some(ProviderConfig {
        options,
        name: name?.to_string(),
        kind: kind?,
        base_url: base_url?,
        timeouts,
        keys,
    })
}

/// The upstream timeouts (`connect_timeout_ms`, `first_byte_timeout_ms`, `idle_timeout_ms`,
/// `total_timeout_ms`, `pool_idle_timeout_ms`), each defaulting to [`Timeouts::default`].
fn timeouts(f: &mut Fields<'_>) -> Timeouts {
    let d = Timeouts::default();
    Timeouts {
        connect: f.opt_millis("connect_timeout_ms", d.connect, 1..=600_000),
        first_byte: f.opt_millis("first_byte_timeout_ms", d.first_byte, 1..=3_600_000),
        idle: f.opt_millis("idle_timeout_ms", d.idle, 1..=3_600_000),
        total: f.opt_millis("total_timeout_ms", d.total, 1..=21_600_000),
        pool_idle: f.opt_millis("pool_idle_timeout_ms", d.pool_idle, 1..=3_600_000),
    }
}

/// The bound on upstream exchanges in flight (`max_connections`, `queue_timeout_ms`), each
/// defaulting to [`ConnectionLimit::default`].
fn connection_limit(f: &mut Fields<'_>) -> ConnectionLimit {
    let d = ConnectionLimit::default();
    ConnectionLimit {
        max: f.opt_usize("max_connections", d.max, 1..=65_536),
        queue_timeout: f.opt_millis("queue_timeout_ms", d.queue_timeout, 0..=600_000),
    }
}

/// The kinds whose row in the kind table has `flag`, named in a problem: "a, b and c", in the
/// table's order.
fn kinds_with(flag: fn(ProviderKind) -> bool) -> String {
    let names: Vec<&str> = ProviderKind::ALL
        .iter()
        .copied()
        .filter(|k| flag(*k))
        .map(|k| k.as_str())
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => (*last).to_string(),
        None => String::new(),
    }
}

/// `repeat_concurrency` (default [`DEFAULT_REPEAT_CONCURRENCY`], up to the largest `n`):
/// refused on kinds that never repeat a call.
fn repeat_concurrency(f: &mut Fields<'_>, kind: Option<ProviderKind>) -> usize {
    const KEY: &str = "repeat_concurrency";
    if let Some(k) = kind.filter(|k| !k.repeats_calls() && f.has(KEY)) {
        f.report(
            KEY,
            format!(
                "only used by kinds {} (one image per call), not {k}",
                kinds_with(ProviderKind::repeats_calls)
            ),
        );
    }
    f.opt_usize(KEY, DEFAULT_REPEAT_CONCURRENCY, 1..=u64::from(crate::spec::MAX_N))
}

/// Most `retries` per candidate a provider may configure.
const MAX_RETRIES: u64 = 5;

/// The kind-specific settings; each is refused on kinds that do not use it.
fn options(f: &mut Fields<'_>, kind: Option<ProviderKind>, names: &[String]) -> ProviderOptions {
    let only = |f: &mut Fields<'_>, key: &'static str, wanted: ProviderKind| -> bool {
        match kind {
            Some(k) if k != wanted && f.has(key) => {
                f.report(key, format!("only used by kind {wanted}, not {k}"));
                false
            }
            _ => true,
        }
    };
    let mut o = ProviderOptions::default();
    if only(f, "api_version", ProviderKind::Azure) {
        o.api_version = f.opt_str("api_version").map(str::to_string);
    }
    if only(f, "deployments", ProviderKind::Azure) {
        o.deployments = f.opt_str_map("deployments").unwrap_or_default();
    }
    let token = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if only(f, "project", ProviderKind::Vertex) {
        o.project = f.opt_str("project").map(str::to_string);
        if kind == Some(ProviderKind::Vertex) && o.project.is_none() {
            f.missing("project");
        }
    }
    if only(f, "location", ProviderKind::Vertex) {
        o.location = f.opt_str("location").map(str::to_string);
        if kind == Some(ProviderKind::Vertex) && o.location.is_none() {
            f.missing("location");
        }
    }
    if only(f, "region", ProviderKind::Bedrock) {
        o.region = f.opt_str("region").map(str::to_string);
        if kind == Some(ProviderKind::Bedrock) && o.region.is_none() {
            f.missing("region");
        }
    }
    o.models = model_rules(f, kind, names);
    for key in ["poll_interval_ms", "poll_timeout_ms"] {
        if let Some(k) = kind.filter(|k| !k.is_polled() && f.has(key)) {
            f.report(
                key,
                format!("only used by kinds {}, not {k}", kinds_with(ProviderKind::is_polled)),
            );
        }
    }
    if kind.is_some_and(ProviderKind::is_polled) {
        o.poll_interval = f.opt_millis("poll_interval_ms", Duration::from_millis(500), 1..=60_000);
        o.poll_timeout = f.opt_millis("poll_timeout_ms", Duration::from_secs(120), 1..=3_600_000);
    }
    o.retries = f.opt_u64("retries", 0, 0..=MAX_RETRIES) as u32;
    o.retry_backoff = f.opt_millis("retry_backoff_ms", Duration::from_millis(200), 1..=60_000);
    o.circuit_breaker = f.opt_obj("circuit_breaker").map(|mut b| {
        let cb = CircuitBreaker {
            failures: b.opt_u64("failures", 5, 1..=1000) as u32,
            open: b.opt_millis("open_ms", Duration::from_secs(30), 1..=3_600_000),
        };
        b.finish();
        cb
    });
    for (key, value) in [
        ("project", &o.project),
        ("location", &o.location),
        ("api_version", &o.api_version),
        ("region", &o.region),
    ] {
        if value.as_deref().is_some_and(|v| !v.chars().all(token)) {
            f.report(key, "use only letters, digits, '-', '_' and '.'");
        }
    }
    o
}

/// `model_rules`: per-model limits and settings; `names` are the configured provider names
/// that `fallbacks` entries may refer to.
fn model_rules(f: &mut Fields<'_>, kind: Option<ProviderKind>, names: &[String]) -> Vec<ModelRules> {
    let problems = f.problems();
    let Some(items) = f.opt_list("model_rules") else {
        return Vec::new();
    };
    let mut rules = Vec::new();
    for (path, value) in items {
        let mut r = Fields::new(value, path, problems);
        let pattern = r.req_str("match").map(str::to_string);
        let mut rule = ModelRules {
            pattern: pattern.clone().unwrap_or_default(),
            ..Default::default()
        };
        if r.has("max_images") {
            rule.max_images = Some(r.opt_usize("max_images", 1, 1..=64));
        }
        if r.has("max_image_bytes") {
            rule.max_image_bytes = Some(r.opt_u64("max_image_bytes", 1, 1..=1 << 40));
        }
        if r.has("max_prompt_chars") {
            rule.max_prompt_chars = Some(r.opt_usize("max_prompt_chars", 1, 1..=1_000_000));
        }
        rule.sizes = r
            .opt_str_list("sizes", "size")
            .map(|l| l.into_iter().map(|(_, s)| s).collect());
        if let Some(sizes) = &rule.sizes {
            for bad in sizes.iter().filter(|s| !is_size(s)) {
                r.report("sizes", format!("'{bad}' is not WxH (e.g. 1024x1024)"));
            }
        }
        rule.formats = r
            .opt_str_list("formats", "format")
            .map(|l| l.into_iter().map(|(_, s)| s).collect());
        if let Some(formats) = &rule.formats {
            for bad in formats
                .iter()
                .filter(|s| !["png", "jpeg", "webp"].contains(&s.as_str()))
            {
                r.report("formats", format!("unknown format '{bad}' (allowed: png, jpeg, webp)"));
            }
        }
        for (path, entry) in r.opt_str_list("fallbacks", "fallback").unwrap_or_default() {
            match entry.split_once('/') {
                Some((provider, model)) if !provider.is_empty() && !model.is_empty() => {
                    if !names.iter().any(|n| n == provider) {
                        let hint = did_you_mean(provider, names.iter().map(String::as_str));
                        problems.add(&path, format!("unknown provider '{provider}'{hint}"));
                    }
                    if let Err(why) = crate::providers::model_id::check_common(model) {
                        problems.add(&path, format!("'{entry}': invalid model id ({why})"));
                    }
                    rule.fallbacks.push(Fallback {
                        provider: provider.to_string(),
                        model: model.to_string(),
                    });
                }
                _ => problems.add(
                    &path,
                    format!("'{entry}' is not provider/model (e.g. openai/gpt-image-1)"),
                ),
            }
        }
        if r.has("image_key") {
            match kind {
                Some(k) if k != ProviderKind::Replicate => {
                    r.report("image_key", format!("only used by kind replicate, not {k}"));
                }
                _ => rule.image_key = r.opt_str("image_key").map(str::to_string),
            }
        }
        r.finish();
        if pattern.is_some() {
            rules.push(rule);
        }
    }
    rules
}

/// `WxH` with positive integers.
fn is_size(s: &str) -> bool {
    s.split_once('x').is_some_and(|(w, h)| {
        [w, h]
            .iter()
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok_and(|n| n > 0))
    })
}

fn provider_key(mut f: Fields<'_>, env: Env<'_>, kind: Option<ProviderKind>) -> Option<ProviderKey> {
    let name = f.req_str("name");
    let credential = if f.has("aws_access_key_id") || f.has("aws_secret_access_key") {
        if f.has("value") {
            f.report(
                "value",
                "give either value (a Bedrock API key) or AWS credentials, not both",
            );
        }
        if let Some(k) = kind.filter(|k| *k != ProviderKind::Bedrock) {
            f.report("aws_access_key_id", format!("only used by kind bedrock, not {k}"));
        }
        let id = f.req_secret("aws_access_key_id", env);
        let secret = f.req_secret("aws_secret_access_key", env);
        let token = if f.has("aws_session_token") {
            f.req_secret("aws_session_token", env)
        } else {
            None
        };
        match (id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(Credential::Aws(Arc::new(AwsCredentials {
                access_key_id,
                secret_access_key,
                session_token: token,
            }))),
            _ => None,
        }
    } else if f.has("service_account_file") {
        if f.has("value") {
            f.report("value", "give either value or service_account_file, not both");
        }
        if let Some(k) = kind.filter(|k| *k != ProviderKind::Vertex) {
            f.report("service_account_file", format!("only used by kind vertex, not {k}"));
        }
        f.opt_str("service_account_file").and_then(|path| {
            service_account(path)
                .map_err(|e| f.report("service_account_file", e))
                .ok()
                .map(|k| Credential::ServiceAccount(Arc::new(k)))
        })
    } else {
        f.req_secret("value", env).map(Credential::Static)
    };
    let auth = match (f.opt_str("auth"), kind) {
        (None, Some(ProviderKind::Azure | ProviderKind::Gemini)) => Some(KeyAuth::ApiKey),
        (None, _) => Some(KeyAuth::Bearer),
        (Some("bearer"), Some(ProviderKind::Gemini)) => {
            f.report("auth", "kind gemini takes only api_key");
            None
        }
        (Some("api_key"), Some(ProviderKind::OpenAi)) => {
            f.report("auth", "kind openai takes only bearer");
            None
        }
        (Some("api_key"), _) if matches!(credential, Some(Credential::ServiceAccount(_))) => {
            f.report("auth", "a service account authenticates with bearer tokens");
            None
        }
        (Some(_), _) if matches!(credential, Some(Credential::Aws(_))) => {
            f.report("auth", "AWS credentials sign requests with SigV4; auth does not apply");
            None
        }
        (Some("bearer"), _) => Some(KeyAuth::Bearer),
        (Some("api_key"), _) => Some(KeyAuth::ApiKey),
        (Some(other), _) => {
            f.report("auth", format!("unknown auth '{other}' (allowed: bearer, api_key)"));
            None
        }
    };
    let weight = f.opt_positive_f64("weight", 1.0);
    let models = match f.opt_str_list("models", "model") {
        Some(list) => list.into_iter().map(|(_, m)| m).collect(),
        None => vec!["*".to_string()],
    };
    let quota = f.opt_obj("quota").and_then(super::governance::key_quota);
    f.finish();
    Some(ProviderKey {
        name: name?.to_string(),
        credential: credential?,
        auth: auth?,
        weight,
        models,
        quota,
    })
}

/// Reads and checks a Google service-account key file (JSON with `client_email`,
/// `private_key` as an RSA PKCS#8 PEM, `token_uri`). Messages never contain the key.
fn service_account(path: &str) -> Result<ServiceAccountKey, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{path} is not JSON (line {})", e.line()))?;
    let field = |name: &str| -> Result<String, String> {
        json.get(name)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| format!("{path}: missing string field {name}"))
    };
    let pem = field("private_key")?;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()
        .filter(|d| !d.is_empty())
        .ok_or_else(|| format!("{path}: private_key is not a PKCS#8 PEM ('BEGIN PRIVATE KEY')"))?;
    ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("{path}: private_key is not a usable RSA key ({e})"))?;
    let token_uri = field("token_uri")?;
    parse_base_url(&token_uri).map_err(|e| format!("{path}: token_uri: {e}"))?;
    Ok(ServiceAccountKey {
        client_email: field("client_email")?,
        private_key_id: field("private_key_id").ok(),
        private_key_der: der,
        token_uri,
    })
}

/// The virtual keys; references are checked against `provider_names` unless
/// it is `None` (the providers list itself was unusable).
pub(super) fn virtual_keys(
    top: &mut Fields<'_>,
    env: Env<'_>,
    provider_names: Option<&[String]>,
    teams: &[super::TeamConfig],
) -> Vec<VirtualKeyConfig> {
    let problems = top.problems();
    let items = top.opt_list("virtual_keys").unwrap_or_default();
    let ids: Vec<(String, String)> = items
        .iter()
        .filter_map(|(path, v)| Some((path.clone(), v.get("id")?.as_str()?.to_string())))
        .collect();
    check_unique(problems, "id", "id", &ids);
    // (entry path, hash) of the first entry with each key.
    let mut hashes: Vec<(String, [u8; 32])> = Vec::new();
    let mut built = Vec::new();
    for (path, value) in items {
        let f = Fields::new(value, path.clone(), problems);
        let (key_sha256, vk) = virtual_key(f, env, provider_names, teams);
        if let Some((field, hash)) = key_sha256 {
            match hashes.iter().find(|(_, h)| *h == hash) {
                Some((first, _)) => {
                    problems.add(&format!("{path}.{field}"), format!("duplicate key (same as {first})"))
                }
                None => hashes.push((path, hash)),
            }
        }
        built.extend(vk);
    }
    built
}

/// One virtual key, plus which field gave its hash and the hash, which the
/// caller checks for duplicates even when the entry has other problems.
fn virtual_key(
    mut f: Fields<'_>,
    env: Env<'_>,
    provider_names: Option<&[String]>,
    teams: &[super::TeamConfig],
) -> (Option<(&'static str, [u8; 32])>, Option<VirtualKeyConfig>) {
    let id = f.req_str("id");
    let mut signing_secret = None;
    let hash = match (f.has("key"), f.has("key_sha256")) {
        (true, true) => {
            f.problems()
                .add(f.path(), "give either 'key' or 'key_sha256', not both");
            None
        }
        (false, false) => {
            f.missing("key");
            None
        }
        (true, false) => f.req_secret("key", env).map(|s| {
            let hash = sha256(s.expose());
            signing_secret = Some(s);
            ("key", hash)
        }),
        (false, true) => f.req_str("key_sha256").and_then(|text| {
            let mut hash = [0u8; 32];
            match hex::decode_to_slice(text, &mut hash) {
                Ok(()) => Some(("key_sha256", hash)),
                Err(_) => {
                    f.report(
                        "key_sha256",
                        "must be 64 hexadecimal characters (the SHA-256 of the key)",
                    );
                    None
                }
            }
        }),
    };
    let enabled = f.opt_bool("enabled", true);
    let expires_at = f.opt_str("expires_at").and_then(|text| {
        humantime::parse_rfc3339_weak(text)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .or_else(|| {
                f.report(
                    "expires_at",
                    "expected an RFC 3339 UTC time such as 2027-01-31T00:00:00Z",
                );
                None
            })
    });
    let providers = f.opt_str_list("providers", "provider");
    let models = f.opt_str_list("models", "model");
    let team = f.opt_str("team").map(str::to_string);
    if let Some(team) = team.as_deref().filter(|t| !teams.iter().any(|known| known.id == *t)) {
        let hint = did_you_mean(team, teams.iter().map(|t| t.id.as_str()));
        f.report("team", format!("unknown team '{team}'{hint}"));
    }
    let budget = f.opt_obj("budget").and_then(super::governance::budget);
    let rate_limit = f.opt_obj("rate_limit").and_then(super::governance::rate_limit);
    let problems = f.problems();
    if let Some(known) = provider_names {
        for (path, name) in providers.iter().flatten() {
            if !known.contains(name) {
                let hint = did_you_mean(name, known.iter().map(String::as_str));
                problems.add(path, format!("unknown provider '{name}'{hint}"));
            }
        }
    }
    let allowed: Option<HashSet<&str>> = providers.as_ref().map(|p| p.iter().map(|(_, n)| n.as_str()).collect());
    for (path, entry) in models.iter().flatten() {
        let Some((provider, _model)) = entry.split_once('/').filter(|(p, m)| !p.is_empty() && !m.is_empty()) else {
            problems.add(
                path,
                format!("expected 'provider/model' or 'provider/*', found '{entry}'"),
            );
            continue;
        };
        if provider_names.is_some_and(|known| !known.iter().any(|k| k == provider)) {
            let hint = did_you_mean(provider, provider_names.into_iter().flatten().map(String::as_str));
            problems.add(path, format!("unknown provider '{provider}' in '{entry}'{hint}"));
        } else if allowed.as_ref().is_some_and(|a| !a.contains(provider)) {
            problems.add(
                path,
                format!("provider '{provider}' is not in this key's providers list"),
            );
        }
    }
    f.finish();
    let strip = |list: Option<Vec<(String, String)>>| list.map(|l| l.into_iter().map(|(_, s)| s).collect());
    let vk = match (id, hash) {
        (Some(id), Some((_, key_sha256))) => Some(VirtualKeyConfig {
            id: id.to_string(),
            key_sha256,
            signing_secret,
            enabled,
            providers: strip(providers),
            models: strip(models),
            expires_at,
            team,
            budget,
            rate_limit,
        }),
        _ => None,
    };
    (hash, vk)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use crate::config::{Credential, KeyAuth};

    #[test]
    fn bad_urls() {
        one_problem(
            &PROVIDER.replace("https://api.openai.com/v1", "ftp://api.openai.com"),
            "providers[0].base_url",
            "invalid URL: the scheme must be http or https",
        );
        one_problem(
            &PROVIDER.replace("https://api.openai.com/v1", "https://api.openai.com/v1?x=1"),
            "providers[0].base_url",
            "query",
        );
        one_problem(
            &PROVIDER.replace("https://api.openai.com/v1", "https://u:p@host"),
            "providers[0].base_url",
            "user info",
        );
    }

    #[test]
    fn missing_environment_variable() {
        one_problem(
            &PROVIDER.replace("env.KEY_A", "env.OPENAI_KEY"),
            "providers[0].keys[0].value",
            "environment variable OPENAI_KEY is not set",
        );
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - id: a\n    key: env.NOPE\n"),
            "virtual_keys[0].key",
            "environment variable NOPE is not set",
        );
    }

    #[test]
    fn environment_variables_resolve() {
        let c = ok(&format!("{PROVIDER}virtual_keys:\n  - id: a\n    key: env.VK_1\n"));
        assert_eq!(c.providers[0].keys[0].secret().unwrap(), "sk-a-SECRET");
        assert_eq!(c.virtual_keys[0].key_sha256, super::sha256("vk-1-SECRET"));
        // Without the env. prefix the value is the literal secret.
        let c = ok(&PROVIDER.replace("env.KEY_A", "sk-literal"));
        assert_eq!(c.providers[0].keys[0].secret().unwrap(), "sk-literal");
    }

    #[test]
    fn duplicate_names() {
        let two = format!("{PROVIDER}{}", PROVIDER.replace("providers:\n", ""));
        one_problem(
            &two,
            "providers[1].name",
            "duplicate provider name 'openai' (same as providers[0])",
        );
        one_problem(
            &format!("{PROVIDER}      - name: primary\n        value: x\n"),
            "providers[0].keys[1].name",
            "duplicate key name 'primary' (same as providers[0].keys[0])",
        );
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - {{id: a, key: k1}}\n  - {{id: a, key: k2}}\n"),
            "virtual_keys[1].id",
            "duplicate id 'a' (same as virtual_keys[0])",
        );
    }

    #[test]
    fn duplicate_virtual_keys_are_found_across_key_and_hash() {
        let hash = hex::encode(super::sha256("vk-1-SECRET"));
        let yaml = format!("{PROVIDER}virtual_keys:\n  - {{id: a, key: env.VK_1}}\n  - {{id: b, key_sha256: '{}'}}\n  - {{id: c, key: vk-1-SECRET}}\n", hash.to_uppercase());
        let all = problems(&yaml);
        assert_eq!(
            all,
            [
                "virtual_keys[1].key_sha256: duplicate key (same as virtual_keys[0])",
                "virtual_keys[2].key: duplicate key (same as virtual_keys[0])",
            ]
        );
    }

    #[test]
    fn key_and_key_sha256_rules() {
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - {{id: a, key: x, key_sha256: y}}\n"),
            "virtual_keys[0]",
            "either 'key' or 'key_sha256', not both",
        );
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - {{id: a, key_sha256: abc}}\n"),
            "virtual_keys[0].key_sha256",
            "64 hexadecimal characters",
        );
        let c = ok(&format!(
            "{PROVIDER}virtual_keys:\n  - {{id: a, key_sha256: {}}}\n",
            "ab".repeat(32)
        ));
        assert_eq!(c.virtual_keys[0].key_sha256, [0xab; 32]);
    }

    #[test]
    fn unknown_provider_kind_lists_allowed_values() {
        one_problem(
            &PROVIDER.replace("kind: openai", "kind: opnai"),
            "providers[0].kind",
            "unknown provider kind 'opnai' (allowed: openai, azure, gemini, vertex, bedrock, stability, bfl, fireworks, replicate, huggingface, xai); did you mean 'openai'?",
        );
        one_problem(
            &PROVIDER.replace("name: openai", "name: Open AI"),
            "providers[0].name",
            "invalid provider name 'Open AI'",
        );
    }

    #[test]
    fn dangling_references() {
        let vk = |body: &str| format!("{PROVIDER}virtual_keys:\n  - id: a\n    key: k\n{body}");
        one_problem(
            &vk("    providers: [opnai]\n"),
            "virtual_keys[0].providers[0]",
            "unknown provider 'opnai'; did you mean 'openai'?",
        );
        one_problem(
            &vk("    models: [other/gpt-image-1]\n"),
            "virtual_keys[0].models[0]",
            "unknown provider 'other' in 'other/gpt-image-1'",
        );
        one_problem(
            &vk("    models: [gpt-image-1]\n"),
            "virtual_keys[0].models[0]",
            "expected 'provider/model' or 'provider/*'",
        );
        one_problem(
            &vk("    models: [openai/]\n"),
            "virtual_keys[0].models[0]",
            "expected 'provider/model'",
        );
        let two = format!(
            "{PROVIDER}{}",
            PROVIDER
                .replace("providers:\n", "")
                .replace("name: openai", "name: local")
        );
        one_problem(
            &format!("{two}virtual_keys:\n  - {{id: a, key: k, providers: [local], models: ['openai/*']}}\n"),
            "virtual_keys[0].models[0]",
            "provider 'openai' is not in this key's providers list",
        );
        let c = ok(&format!("{two}virtual_keys:\n  - {{id: a, key: k, enabled: false, providers: [local], models: ['local/*', local/m]}}\n"));
        let v = &c.virtual_keys[0];
        assert!(!v.enabled);
        assert_eq!(v.providers.as_deref(), Some(&["local".to_string()][..]));
        assert_eq!(v.models.as_ref().unwrap(), &["local/*", "local/m"]);
    }

    fn with(kind_lines: &str, key_lines: &str) -> String {
        format!("providers:\n  - name: p\n{kind_lines}    keys:\n      - name: k\n{key_lines}")
    }

    #[test]
    fn kind_specific_settings_and_defaults() {
        let c = ok(&with(
            "    kind: azure\n    base_url: https://res.openai.azure.com\n    api_version: 2024-02-01\n    deployments: { gpt-image-1: prod-image }\n",
            "        value: env.KEY_A\n",
        ));
        let p = &c.providers[0];
        assert_eq!(p.options.api_version.as_deref(), Some("2024-02-01"));
        assert_eq!(p.options.deployment("gpt-image-1"), "prod-image");
        assert_eq!(p.options.deployment("other"), "other");
        assert_eq!(p.keys[0].auth, KeyAuth::ApiKey, "azure keys go in api-key by default");
        // Google kinds default their base URL; vertex's follows the location.
        let c = ok(&with("    kind: gemini\n", "        value: env.KEY_A\n"));
        assert_eq!(
            c.providers[0].base_url.to_string(),
            "https://generativelanguage.googleapis.com/v1beta"
        );
        assert_eq!(c.providers[0].keys[0].auth, KeyAuth::ApiKey);
        let c = ok(&with(
            "    kind: vertex\n    project: my-proj\n    location: europe-west4\n",
            "        value: env.KEY_A\n",
        ));
        assert_eq!(
            c.providers[0].base_url.to_string(),
            "https://europe-west4-aiplatform.googleapis.com/v1"
        );
        assert_eq!(c.providers[0].options.project.as_deref(), Some("my-proj"));
        assert_eq!(c.providers[0].keys[0].auth, KeyAuth::Bearer);
        let c = ok(&with(
            "    kind: vertex\n    project: p\n    location: global\n",
            "        value: x\n        auth: api_key\n",
        ));
        assert_eq!(
            c.providers[0].base_url.to_string(),
            "https://aiplatform.googleapis.com/v1"
        );
        assert_eq!(c.providers[0].keys[0].auth, KeyAuth::ApiKey);
    }

    #[test]
    fn kind_specific_settings_are_checked() {
        one_problem(
            &with("    kind: azure\n", "        value: x\n"),
            "providers[0].base_url",
            "missing required key",
        );
        one_problem(
            &with("    kind: openai\n    project: p\n", "        value: x\n"),
            "providers[0].project",
            "only used by kind vertex, not openai",
        );
        one_problem(
            &with("    kind: gemini\n    deployments: { a: b }\n", "        value: x\n"),
            "providers[0].deployments",
            "only used by kind azure",
        );
        one_problem(
            &with("    kind: vertex\n    location: us-central1\n", "        value: x\n"),
            "providers[0].project",
            "missing",
        );
        one_problem(
            &with("    kind: vertex\n    project: p\n", "        value: x\n"),
            "providers[0].location",
            "missing",
        );
        one_problem(
            &with(
                "    kind: vertex\n    project: a/b\n    location: l\n",
                "        value: x\n",
            ),
            "providers[0].project",
            "use only letters",
        );
        one_problem(
            &with(
                "    kind: azure\n    base_url: https://a.example\n    deployments: { a: 3 }\n",
                "        value: x\n",
            ),
            "providers[0].deployments.a",
            "a non-empty string",
        );
        one_problem(
            &with("    kind: gemini\n", "        value: x\n        auth: bearer\n"),
            "providers[0].keys[0].auth",
            "only api_key",
        );
        one_problem(
            &with("    kind: openai\n", "        value: x\n        auth: api_key\n"),
            "providers[0].keys[0].auth",
            "only bearer",
        );
        one_problem(
            &with("    kind: openai\n", "        value: x\n        auth: basic\n"),
            "providers[0].keys[0].auth",
            "unknown auth",
        );
    }

    #[test]
    fn service_account_keys() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/service-account.json");
        let vertex = "    kind: vertex\n    project: p\n    location: l\n";
        let c = ok(&with(vertex, &format!("        service_account_file: {file}\n")));
        let Credential::ServiceAccount(sa) = &c.providers[0].keys[0].credential else {
            panic!("expected a service account")
        };
        assert_eq!(sa.client_email, "refract-test@refract-test.iam.gserviceaccount.com");
        assert_eq!(sa.private_key_id.as_deref(), Some("test-key-1"));
        assert!(!format!("{sa:?}").contains("PRIVATE"), "Debug does not show the key");
        assert_eq!(c.providers[0].keys[0].secret(), None);
        one_problem(
            &with(vertex, "        service_account_file: /nonexistent/key.json\n"),
            "providers[0].keys[0].service_account_file",
            "cannot read /nonexistent/key.json",
        );
        one_problem(
            &with("    kind: gemini\n", &format!("        service_account_file: {file}\n")),
            "providers[0].keys[0].service_account_file",
            "only used by kind vertex",
        );
        one_problem(
            &with(
                vertex,
                &format!("        service_account_file: {file}\n        value: x\n"),
            ),
            "providers[0].keys[0].value",
            "not both",
        );
        one_problem(
            &with(
                vertex,
                &format!("        service_account_file: {file}\n        auth: api_key\n"),
            ),
            "providers[0].keys[0].auth",
            "bearer tokens",
        );
        // A key file whose private key is not an RSA PKCS#8 key.
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.json");
        let mut doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        doc["private_key"] = serde_json::json!("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        std::fs::write(&bad, doc.to_string()).unwrap();
        let problems = problems(&with(
            vertex,
            &format!("        service_account_file: {}\n", bad.display()),
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("not a usable RSA key"), "{problems:?}");
        assert!(!problems[0].contains("AAAA"), "never the key itself");
    }

    #[test]
    fn bedrock_credentials_region_and_model_rules() {
        let c = ok(&with(
            "    kind: bedrock\n    region: eu-west-1\n    model_rules:\n      - match: amazon.nova-canvas-*\n        max_images: 1\n        max_image_bytes: 5000000\n        max_prompt_chars: 1024\n        sizes: [1024x1024, 512x512]\n        formats: [png, jpeg]\n",
            "        aws_access_key_id: AKIDEXAMPLE\n        aws_secret_access_key: env.KEY_A\n        aws_session_token: tok\n",
        ));
        let p = &c.providers[0];
        assert_eq!(
            p.base_url.to_string(),
            "https://bedrock-runtime.eu-west-1.amazonaws.com"
        );
        let Credential::Aws(aws) = &p.keys[0].credential else {
            panic!("expected AWS credentials")
        };
        assert_eq!(aws.access_key_id.expose(), "AKIDEXAMPLE");
        assert_eq!(aws.secret_access_key.expose(), "sk-a-SECRET");
        assert_eq!(aws.session_token.as_ref().map(|t| t.expose()), Some("tok"));
        assert!(!format!("{:?}", p.keys[0]).contains("SECRET"));
        let rules = p.options.rules_for("amazon.nova-canvas-v1:0").unwrap();
        assert_eq!(rules.max_images, Some(1));
        assert_eq!(rules.max_image_bytes, Some(5_000_000));
        assert_eq!(rules.max_prompt_chars, Some(1024));
        assert_eq!(
            rules.sizes.as_deref(),
            Some(&["1024x1024".to_string(), "512x512".to_string()][..])
        );
        assert!(p.options.rules_for("amazon.titan-image-generator-v2:0").is_none());
        // A Bedrock API key instead (Bearer).
        let c = ok(&with(
            "    kind: bedrock\n    region: us-east-1\n",
            "        value: env.KEY_A\n",
        ));
        assert_eq!(c.providers[0].keys[0].auth, KeyAuth::Bearer);
        // Replicate's per-model image key.
        let c = ok(&with(
            "    kind: replicate\n    model_rules:\n      - { match: \"black-forest-labs/flux-kontext-*\", image_key: input_image }\n",
            "        value: x\n",
        ));
        assert_eq!(
            c.providers[0]
                .options
                .rules_for("black-forest-labs/flux-kontext-pro")
                .unwrap()
                .image_key
                .as_deref(),
            Some("input_image")
        );
    }

    #[test]
    fn bedrock_and_model_rules_are_checked() {
        one_problem(
            &with("    kind: bedrock\n", "        value: x\n"),
            "providers[0].region",
            "missing",
        );
        one_problem(
            &with(
                "    kind: bedrock\n    region: us-east-1\n",
                "        aws_access_key_id: A\n",
            ),
            "providers[0].keys[0].aws_secret_access_key",
            "missing",
        );
        one_problem(
            &with(
                "    kind: openai\n",
                "        aws_access_key_id: A\n        aws_secret_access_key: B\n",
            ),
            "providers[0].keys[0].aws_access_key_id",
            "only used by kind bedrock",
        );
        one_problem(
            &with(
                "    kind: bedrock\n    region: r\n",
                "        aws_access_key_id: A\n        aws_secret_access_key: B\n        auth: bearer\n",
            ),
            "providers[0].keys[0].auth",
            "SigV4",
        );
        one_problem(
            &with("    kind: openai\n    region: r\n", "        value: x\n"),
            "providers[0].region",
            "only used by kind bedrock",
        );
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, sizes: [big] }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].sizes",
            "not WxH",
        );
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, formats: [gif] }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].formats",
            "unknown format 'gif'",
        );
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, image_key: image }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].image_key",
            "only used by kind replicate",
        );
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { max_images: 2 }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].match",
            "missing",
        );
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, colour: red }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].colour",
            "unknown key",
        );
    }

    #[test]
    fn model_fallback_chains() {
        let yaml = with(
            "    kind: openai\n    model_rules:\n      - { match: \"gpt-image-*\", fallbacks: [p/dall-e-2, p/gpt-image-1-mini] }\n",
            "        value: x\n",
        );
        let c = ok(&yaml);
        let rules = c.providers[0].options.rules_for("gpt-image-1").unwrap();
        let chain: Vec<(&str, &str)> = rules
            .fallbacks
            .iter()
            .map(|f| (f.provider.as_str(), f.model.as_str()))
            .collect();
        assert_eq!(chain, [("p", "dall-e-2"), ("p", "gpt-image-1-mini")]);
        assert!(c.providers[0].options.rules_for("dall-e-2").is_none());
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, fallbacks: [q/m] }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].fallbacks[0]",
            "unknown provider 'q'",
        );
        for bad in ["m", "p/", "/m"] {
            one_problem(
                &with(
                    &format!("    kind: openai\n    model_rules:\n      - {{ match: m, fallbacks: [\"{bad}\"] }}\n"),
                    "        value: x\n",
                ),
                "providers[0].model_rules[0].fallbacks[0]",
                "is not provider/model",
            );
        }
        for bad in ["p/../../x", "p/a b", "p/x%2e"] {
            one_problem(
                &with(
                    &format!("    kind: openai\n    model_rules:\n      - {{ match: m, fallbacks: [\"{bad}\"] }}\n"),
                    "        value: x\n",
                ),
                "providers[0].model_rules[0].fallbacks[0]",
                "invalid model id",
            );
        }
        one_problem(
            &with(
                "    kind: openai\n    model_rules:\n      - { match: m, fallbacks: [] }\n",
                "        value: x\n",
            ),
            "providers[0].model_rules[0].fallbacks",
            "must not be empty",
        );
    }

    #[test]
    fn retry_and_circuit_breaker_settings() {
        use crate::config::CircuitBreaker;
        use std::time::Duration;
        let c = ok(&with("    kind: openai\n", "        value: x\n"));
        let o = &c.providers[0].options;
        assert_eq!((o.retries, o.retry_backoff), (0, Duration::from_millis(200)));
        assert_eq!(o.circuit_breaker, None);
        let c = ok(&with(
            "    kind: openai\n    retries: 3\n    retry_backoff_ms: 50\n    circuit_breaker: {}\n",
            "        value: x\n",
        ));
        let o = &c.providers[0].options;
        assert_eq!((o.retries, o.retry_backoff), (3, Duration::from_millis(50)));
        assert_eq!(
            o.circuit_breaker,
            Some(CircuitBreaker {
                failures: 5,
                open: Duration::from_secs(30)
            })
        );
        let c = ok(&with(
            "    kind: bfl\n    circuit_breaker: {failures: 2, open_ms: 100}\n",
            "        value: x\n",
        ));
        assert_eq!(
            c.providers[0].options.circuit_breaker,
            Some(CircuitBreaker {
                failures: 2,
                open: Duration::from_millis(100)
            })
        );
        one_problem(
            &with("    kind: openai\n    retries: 6\n", "        value: x\n"),
            "providers[0].retries",
            "",
        );
        one_problem(
            &with("    kind: openai\n    retry_backoff_ms: 0\n", "        value: x\n"),
            "providers[0].retry_backoff_ms",
            "",
        );
        one_problem(
            &with(
                "    kind: openai\n    circuit_breaker: {failures: 0}\n",
                "        value: x\n",
            ),
            "providers[0].circuit_breaker.failures",
            "",
        );
        one_problem(
            &with(
                "    kind: openai\n    circuit_breaker: {open: 5}\n",
                "        value: x\n",
            ),
            "providers[0].circuit_breaker.open",
            "unknown key",
        );
    }

    #[test]
    fn connection_limit_settings() {
        use crate::config::ConnectionLimit;
        use std::time::Duration;
        let c = ok(&with("    kind: openai\n", "        value: x\n"));
        assert_eq!(
            c.providers[0].options.connections,
            ConnectionLimit {
                max: 256,
                queue_timeout: Duration::from_secs(1)
            }
        );
        let c = ok(&with(
            "    kind: bfl\n    max_connections: 2\n    queue_timeout_ms: 0\n",
            "        value: x\n",
        ));
        assert_eq!(
            c.providers[0].options.connections,
            ConnectionLimit {
                max: 2,
                queue_timeout: Duration::ZERO
            }
        );
        for (line, path) in [
            ("max_connections: 0", "providers[0].max_connections"),
            ("max_connections: 65537", "providers[0].max_connections"),
            ("queue_timeout_ms: 600001", "providers[0].queue_timeout_ms"),
            ("queue_timeout_ms: -1", "providers[0].queue_timeout_ms"),
        ] {
            one_problem(
                &with(&format!("    kind: openai\n    {line}\n"), "        value: x\n"),
                path,
                "",
            );
        }
    }

    #[test]
    fn repeat_concurrency_for_kinds_that_make_one_image_per_call() {
        for kind in ["stability", "bfl", "fireworks"] {
            let c = ok(&with(&format!("    kind: {kind}\n"), "        value: x\n"));
            assert_eq!(c.providers[0].options.repeat_concurrency, 4, "{kind}");
        }
        let c = ok(&with(
            "    kind: stability\n    repeat_concurrency: 1\n",
            "        value: x\n",
        ));
        assert_eq!(c.providers[0].options.repeat_concurrency, 1);
        for bad in ["0", "11"] {
            one_problem(
                &with(
                    &format!("    kind: stability\n    repeat_concurrency: {bad}\n"),
                    "        value: x\n",
                ),
                "providers[0].repeat_concurrency",
                "",
            );
        }
        one_problem(
            &with("    kind: openai\n    repeat_concurrency: 2\n", "        value: x\n"),
            "providers[0].repeat_concurrency",
            "only used by kinds bedrock, stability, bfl and fireworks",
        );
    }

    #[test]
    fn poll_settings_for_asynchronous_kinds() {
        use std::time::Duration;
        let c = ok(&with("    kind: bfl\n", "        value: x\n"));
        assert_eq!(c.providers[0].options.poll_interval, Duration::from_millis(500));
        assert_eq!(c.providers[0].options.poll_timeout, Duration::from_secs(120));
        assert_eq!(c.providers[0].base_url.to_string(), "https://api.bfl.ai/v1");
        let c = ok(&with(
            "    kind: replicate\n    poll_interval_ms: 50\n    poll_timeout_ms: 9000\n",
            "        value: x\n",
        ));
        assert_eq!(c.providers[0].options.poll_interval, Duration::from_millis(50));
        assert_eq!(c.providers[0].options.poll_timeout, Duration::from_millis(9000));
        let c = ok(&with(
            "    kind: fireworks\n    poll_timeout_ms: 1\n",
            "        value: x\n",
        ));
        assert_eq!(c.providers[0].options.poll_timeout, Duration::from_millis(1));
        one_problem(
            &with("    kind: openai\n    poll_interval_ms: 10\n", "        value: x\n"),
            "providers[0].poll_interval_ms",
            "only used by kinds bfl, fireworks, replicate and huggingface",
        );
        one_problem(
            &with("    kind: bfl\n    poll_timeout_ms: 0\n", "        value: x\n"),
            "providers[0].poll_timeout_ms",
            "",
        );
    }
}
