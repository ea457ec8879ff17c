//! The effective config (`refract check -c FILE --print`): a checked [`Config`] written back as
//! YAML in the file's own keys, every default filled in, so that an operator sees what will run.
//!
//! No secret is printed: an upstream key's `value` and AWS credentials, and a virtual key's
//! `key` or `key_sha256`, are printed as `<redacted: env.NAME>` when the file takes them from
//! the environment, `<redacted>` otherwise. Paths (TLS files, service-account files) are
//! printed as given: they are not secrets.

use super::{
    Config, Credential, JwtKeySource, KeyAuth, ModelRules, ObjectsSettings, ProviderConfig, ResponseFormat,
    StoreSettings, VirtualKeyConfig,
};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The YAML text of `config`, loaded from the file text `source` (read again only to say
/// which environment variable each secret came from). Runs once, for `--print`.
pub fn effective_yaml(config: &Config, source: &str) -> Result<String, String> {
    let raw: serde_yaml::Value = serde_yaml::from_str(source).unwrap_or(serde_yaml::Value::Null);
    let doc = json!({
        "server": server(config),
        "listeners": config.listeners.iter().map(|l| {
            let mut m = json!({ "address": l.address.to_string() });
            if let Some(tls) = &l.tls {
                m["tls"] = json!({ "cert": tls.cert.display().to_string(), "key": tls.key.display().to_string() });
            }
            m
        }).collect::<Vec<_>>(),
        "metrics": config.metrics.as_ref().map(|m| json!({ "address": m.address.to_string() })),
        "auth": auth(config, raw.get("auth").and_then(|a| a.get("jwt")).and_then(|j| j.get("issuers"))),
        "limits": limits(config),
        "spool": {
            "memory_bytes": config.spool.memory_bytes,
            "directory": config.spool.directory.as_ref().map(|d| d.display().to_string()),
        },
        "simulator": config.simulator.as_ref().map(|s| json!({
            "address": s.address.to_string(),
            "stream_interval_ms": ms(s.stream_interval),
            "partial_image_bytes": s.partial_image_bytes,
        })),
        "providers": config.providers.iter().enumerate().map(|(i, p)| provider(p, raw_at(&raw, "providers", i))).collect::<Vec<_>>(),
        "virtual_keys": config.virtual_keys.iter().enumerate().map(|(i, v)| virtual_key(v, raw_at(&raw, "virtual_keys", i))).collect::<Vec<_>>(),
        "store": store(&config.store, raw.get("store").unwrap_or(&serde_yaml::Value::Null)),
        "objects": objects(config, raw.get("objects").unwrap_or(&serde_yaml::Value::Null)),
        "jobs": {
            "workers": config.jobs.workers,
            "lease_ms": ms(config.jobs.lease),
            "max_attempts": config.jobs.max_attempts,
            "result_ttl_seconds": config.jobs.result_ttl.as_secs(),
            "max_result_ttl_seconds": config.jobs.max_result_ttl.as_secs(),
            "poll_interval_ms": ms(config.jobs.poll_interval),
            "cleanup_interval_ms": ms(config.jobs.cleanup_interval),
        },
        "pricing": pricing(&config.pricing, &config.pricing_source),
        "log": {
            "level": config.log.level.as_str(),
            "format": config.log.format.as_str(),
            "filters": config.log.filters.iter().map(|(t, l)| (t.clone(), Value::from(l.as_str()))).collect::<Map<String, Value>>(),
        },
        "tracing": config.tracing.as_ref().map(|t| json!({
            "otlp_endpoint": t.otlp_endpoint,
            "sample_ratio": t.sample_ratio,
            "service_name": t.service_name,
        })),
        "governance": governance(config, raw.get("governance").unwrap_or(&serde_yaml::Value::Null)),
        "teams": config.governance.teams.iter().map(|t| {
            let mut m = json!({"id": t.id});
            if let Some(b) = &t.budget {
                m["budget"] = budget(b);
            }
            m
        }).collect::<Vec<_>>(),
    });
    serde_yaml::to_string(&doc).map_err(|e| e.to_string())
}

/// The `pricing` section: the effective default, the file (absent: the built-in table) and
/// the operator's own entries; amounts as exact USD strings.
fn pricing(table: &crate::pricing::PriceTable, source: &super::PricingSource) -> Value {
    use crate::pricing::{PerImage, Usd};
    let usd = |m| Value::String(Usd(m).to_string());
    let models = table
        .entries
        .iter()
        .take(source.own_entries)
        .map(|e| {
            let mut m = json!({ "match": e.pattern });
            if let Some(kind) = e.kind {
                m["kind"] = json!(kind.as_str());
            }
            match &e.price.per_image {
                Some(PerImage::Flat(p)) => m["per_image"] = usd(*p),
                Some(PerImage::By(rows)) => {
                    m["per_image_by"] = rows
                        .iter()
                        .map(|r| {
                            let mut row = json!({});
                            if let Some(size) = &r.size {
                                row["size"] = json!(size);
                            }
                            if let Some(quality) = &r.quality {
                                row["quality"] = json!(quality);
                            }
                            row["price"] = usd(r.price);
                            row
                        })
                        .collect();
                }
                None => {}
            }
            if let Some(t) = e.price.tokens {
                m["tokens"] = json!({
                    "text_input": usd(t.text_input),
                    "image_input": usd(t.image_input),
                    "image_output": usd(t.image_output),
                });
            }
            m
        })
        .collect::<Vec<_>>();
    json!({ "default": usd(table.default), "file": source.file, "models": models })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Entry `i` of the list `list` of the raw document (Null when absent).
fn raw_at<'a>(raw: &'a serde_yaml::Value, list: &str, i: usize) -> &'a serde_yaml::Value {
    raw.get(list).and_then(|l| l.get(i)).unwrap_or(&serde_yaml::Value::Null)
}

/// What stands for the secret at `field` of the raw entry `raw`.
fn redacted(raw: &serde_yaml::Value, field: &str) -> Value {
    match raw.get(field).and_then(serde_yaml::Value::as_str) {
        Some(text) if text.starts_with("env.") => Value::String(format!("<redacted: {text}>")),
        _ => Value::String("<redacted>".to_string()),
    }
}

/// The `store` section; the Redis password redacted.
fn store(store: &StoreSettings, raw: &serde_yaml::Value) -> Value {
    match store {
        StoreSettings::Embedded { path } => json!({ "kind": "embedded", "path": path.display().to_string() }),
        StoreSettings::Redis(r) => json!({
            "kind": "redis",
            "url": r.url,
            "username": r.username,
            "password": r.password.as_ref().map(|_| redacted(raw, "password")),
        }),
    }
}

/// The `objects` section; the S3 credentials and the URL secret redacted.
fn objects(config: &Config, raw: &serde_yaml::Value) -> Value {
    let mut section = match &config.objects {
        ObjectsSettings::Fs { path } => json!({ "kind": "fs", "path": path.display().to_string() }),
        ObjectsSettings::S3(s) => json!({
            "kind": "s3",
            "bucket": s.bucket,
            "region": s.region,
            "endpoint": s.endpoint,
            "access_key_id": redacted(raw, "access_key_id"),
            "secret_access_key": redacted(raw, "secret_access_key"),
            "prefix": s.prefix,
        }),
    };
    let urls = &config.object_urls;
    let format = urls.default_response_format.map(|f| match f {
        ResponseFormat::Url => "url",
        ResponseFormat::B64Json => "b64_json",
    });
    if let Value::Object(m) = &mut section {
        m.insert("url_ttl".into(), json!(urls.ttl.as_secs()));
        m.insert(
            "url_secret".into(),
            json!(urls.secret.as_ref().map(|_| redacted(raw, "url_secret"))),
        );
        m.insert("public_url".into(), json!(urls.public_url));
        m.insert("default_response_format".into(), json!(format));
    }
    section
}

fn server(config: &Config) -> Value {
    let s = &config.server;
    json!({
        "threads": s.threads,
        "grace_period_seconds": s.grace_period_seconds,
        "graceful_shutdown_timeout_seconds": s.graceful_shutdown_timeout_seconds,
        "pid_file": s.pid_file,
        "upgrade_sock": s.upgrade_sock,
        "ca_file": s.ca_file.as_ref().map(|p| p.display().to_string()),
    })
}

fn limits(config: &Config) -> Value {
    let l = &config.limits;
    json!({
        "max_body_bytes": l.max_body_bytes,
        "max_images": l.max_images,
        "max_part_bytes": l.max_part_bytes,
        "max_field_bytes": l.max_field_bytes,
        "body_read_timeout_ms": ms(l.body_read_timeout),
        "upload_timeout_ms": ms(l.upload_timeout),
        "max_part_header_bytes": l.max_part_header_bytes,
        "max_field_name_bytes": l.max_field_name_bytes,
        "linger_bytes": l.linger_bytes,
        "linger_timeout_ms": ms(l.linger_timeout),
        "max_image_pixels": l.max_image_pixels,
        "decode_concurrency": l.decode_concurrency,
        "json_body_memory_bytes": l.json_body_memory_bytes,
        "head_timeout_ms": ms(l.head_timeout),
        "max_head_bytes": l.max_head_bytes,
        "keepalive_timeout_ms": ms(l.keepalive_timeout),
        // null: derived from the descriptor limit when the server starts.
        "max_connections": l.max_connections,
        "fetch_image_urls": {
            "enabled": l.fetch_image_urls.enabled,
            "max_bytes": l.fetch_image_urls.max_bytes,
            "timeout_ms": ms(l.fetch_image_urls.timeout),
            "max_redirects": l.fetch_image_urls.max_redirects,
            "allow_hosts": l.fetch_image_urls.allow_hosts,
        },
    })
}

fn provider(p: &ProviderConfig, raw: &serde_yaml::Value) -> Value {
    let o = &p.options;
    let t = &p.timeouts;
    let mut m = Map::new();
    m.insert("name".into(), json!(p.name));
    m.insert("kind".into(), json!(p.kind.as_str()));
    m.insert("base_url".into(), json!(p.base_url.to_string()));
    for (key, value) in [
        ("api_version", &o.api_version),
        ("project", &o.project),
        ("location", &o.location),
        ("region", &o.region),
    ] {
        if let Some(v) = value {
            m.insert(key.into(), json!(v));
        }
    }
    if !o.deployments.is_empty() {
        let deployments: Map<String, Value> = o.deployments.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        m.insert("deployments".into(), Value::Object(deployments));
    }
    for (key, d) in [
        ("connect_timeout_ms", t.connect),
        ("first_byte_timeout_ms", t.first_byte),
        ("idle_timeout_ms", t.idle),
        ("total_timeout_ms", t.total),
        ("pool_idle_timeout_ms", t.pool_idle),
    ] {
        m.insert(key.into(), json!(ms(d)));
    }
    m.insert("max_connections".into(), json!(o.connections.max));
    m.insert("queue_timeout_ms".into(), json!(ms(o.connections.queue_timeout)));
    m.insert("retries".into(), json!(o.retries));
    m.insert("rehost_urls".into(), json!(o.rehost_urls));
    m.insert("retry_backoff_ms".into(), json!(ms(o.retry_backoff)));
    if !o.poll_interval.is_zero() {
        m.insert("poll_interval_ms".into(), json!(ms(o.poll_interval)));
        m.insert("poll_timeout_ms".into(), json!(ms(o.poll_timeout)));
    }
    if p.kind.repeats_calls() {
        m.insert("repeat_concurrency".into(), json!(o.repeat_concurrency));
    }
    if let Some(cb) = &o.circuit_breaker {
        m.insert(
            "circuit_breaker".into(),
            json!({ "failures": cb.failures, "open_ms": ms(cb.open) }),
        );
    }
    if !o.models.is_empty() {
        m.insert("model_rules".into(), o.models.iter().map(model_rules).collect());
    }
    let keys = p
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let raw = raw
                .get("keys")
                .and_then(|l| l.get(i))
                .unwrap_or(&serde_yaml::Value::Null);
            let mut key = Map::new();
            key.insert("name".into(), json!(k.name));
            match &k.credential {
                Credential::Static(_) => {
                    key.insert("value".into(), redacted(raw, "value"));
                }
                Credential::ServiceAccount(_) => {
                    let path = raw.get("service_account_file").and_then(serde_yaml::Value::as_str);
                    key.insert("service_account_file".into(), json!(path));
                }
                Credential::Aws(aws) => {
                    key.insert("aws_access_key_id".into(), redacted(raw, "aws_access_key_id"));
                    key.insert("aws_secret_access_key".into(), redacted(raw, "aws_secret_access_key"));
                    if aws.session_token.is_some() {
                        key.insert("aws_session_token".into(), redacted(raw, "aws_session_token"));
                    }
                }
            }
            if !matches!(k.credential, Credential::Aws(_)) {
                let auth = match k.auth {
                    KeyAuth::Bearer => "bearer",
                    KeyAuth::ApiKey => "api_key",
                };
                key.insert("auth".into(), json!(auth));
            }
            key.insert("weight".into(), json!(k.weight));
            key.insert("models".into(), json!(k.models));
            if let Some(q) = &k.quota {
                key.insert(
                    "quota".into(),
                    json!({"requests": q.requests, "images": q.images, "per": crate::governance::period_text(q.per)}),
                );
            }
            Value::Object(key)
        })
        .collect();
    m.insert("keys".into(), Value::Array(keys));
    Value::Object(m)
}

/// What `refract providers -c FILE --json` prints: one object per configured provider, in the
/// file's order, with what an operator checks before sending traffic: name, kind, base URL, the
/// models its keys serve, Azure's model → deployment aliases, how many keys (names and weights,
/// never a credential or where one comes from), the configured fallback chains, retries,
/// circuit breaker, timeouts and connection bound. Runs once, on the command line.
pub fn providers_summary(config: &Config) -> Value {
    let providers: Vec<Value> = config.providers.iter().map(provider_summary).collect();
    json!({ "providers": providers })
}

/// One provider of [`providers_summary`].
fn provider_summary(p: &ProviderConfig) -> Value {
    let o = &p.options;
    let t = &p.timeouts;
    let models = served_models(p);
    let deployments: Map<String, Value> = o.deployments.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let fallbacks: Vec<Value> = o
        .models
        .iter()
        .filter(|r| !r.fallbacks.is_empty())
        .map(|r| json!({ "match": r.pattern, "fallbacks": fallback_chain(r) }))
        .collect();
    json!({
        "name": p.name,
        "kind": p.kind.as_str(),
        "base_url": p.base_url.to_string(),
        "models": models,
        "deployments": deployments,
        "keys": p.keys.len(),
        "key_names": p.keys.iter().map(|k| json!({ "name": k.name, "weight": k.weight })).collect::<Vec<_>>(),
        "fallbacks": fallbacks,
        "retries": o.retries,
        "circuit_breaker": o.circuit_breaker.map(|cb| json!({ "failures": cb.failures, "open_ms": ms(cb.open) })),
        "timeouts_ms": {
            "connect": ms(t.connect),
            "first_byte": ms(t.first_byte),
            "idle": ms(t.idle),
            "total": ms(t.total),
        },
        "max_connections": o.connections.max,
        "polled": p.kind.is_polled(),
    })
}

/// What `refract providers -c FILE` prints without `--json`: [`providers_summary`] as a Markdown
/// table, one row per configured provider.
pub fn providers_table(config: &Config) -> String {
    let mut out = String::from(
        "| provider | kind | base_url | models | keys | fallbacks | retries | circuit breaker |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for p in &config.providers {
        let mut models: Vec<String> = served_models(p).into_iter().map(str::to_string).collect();
        for (model, deployment) in &p.options.deployments {
            models.push(format!("{model} → {deployment}"));
        }
        let fallbacks: Vec<String> = p
            .options
            .models
            .iter()
            .filter(|r| !r.fallbacks.is_empty())
            .map(|r| format!("{}: {}", r.pattern, fallback_chain(r).join(", ")))
            .collect();
        let breaker = p.options.circuit_breaker.map_or_else(
            || "—".to_string(),
            |cb| format!("{} failures, open {} ms", cb.failures, ms(cb.open)),
        );
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |\n",
            p.name,
            p.kind.as_str(),
            p.base_url,
            models.join(", "),
            p.keys.len(),
            if fallbacks.is_empty() {
                "—".to_string()
            } else {
                fallbacks.join("; ")
            },
            p.options.retries,
            breaker,
        ));
    }
    out
}

/// The model names a provider's keys serve (`*`: any), each once, in the file's order.
fn served_models(p: &ProviderConfig) -> Vec<&str> {
    let mut models: Vec<&str> = Vec::new();
    for model in p.keys.iter().flat_map(|k| k.models.iter()) {
        if !models.contains(&model.as_str()) {
            models.push(model);
        }
    }
    models
}

/// A rule's fallback chain as `provider/model` entries.
fn fallback_chain(r: &ModelRules) -> Vec<String> {
    r.fallbacks
        .iter()
        .map(|f| format!("{}/{}", f.provider, f.model))
        .collect()
}

fn model_rules(r: &ModelRules) -> Value {
    let mut m = Map::new();
    m.insert("match".into(), json!(r.pattern));
    let optional = [
        ("max_images", r.max_images.map(|v| json!(v))),
        ("max_image_bytes", r.max_image_bytes.map(|v| json!(v))),
        ("max_prompt_chars", r.max_prompt_chars.map(|v| json!(v))),
        ("sizes", r.sizes.as_ref().map(|v| json!(v))),
        ("formats", r.formats.as_ref().map(|v| json!(v))),
        ("image_key", r.image_key.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            m.insert(key.into(), v);
        }
    }
    if !r.fallbacks.is_empty() {
        m.insert("fallbacks".into(), json!(fallback_chain(r)));
    }
    Value::Object(m)
}

/// The `auth` section; an HS secret redacted (it is always `env.NAME`).
fn auth(config: &Config, raw_issuers: Option<&serde_yaml::Value>) -> Value {
    let mut m = Map::new();
    m.insert("allow_anonymous".into(), json!(config.auth.allow_anonymous));
    if config.auth.issuers.is_empty() {
        return Value::Object(m);
    }
    let issuers: Vec<Value> = config
        .auth
        .issuers
        .iter()
        .enumerate()
        .map(|(i, issuer)| {
            let raw = raw_issuers.and_then(|r| r.get(i)).unwrap_or(&serde_yaml::Value::Null);
            let mut e = Map::new();
            e.insert("issuer".into(), json!(issuer.issuer));
            if !issuer.audiences.is_empty() {
                e.insert("audiences".into(), json!(issuer.audiences));
            }
            match &issuer.keys {
                JwtKeySource::Url { text, .. } => e.insert("jwks_url".into(), json!(text)),
                JwtKeySource::File { path, .. } => e.insert("jwks_file".into(), json!(path)),
                JwtKeySource::Secret(_) => e.insert("secret".into(), redacted(raw, "secret")),
            };
            let algorithms: Vec<String> = issuer.algorithms.iter().map(|a| format!("{a:?}")).collect();
            e.insert("algorithms".into(), json!(algorithms));
            e.insert("leeway_seconds".into(), json!(issuer.leeway.as_secs()));
            e.insert("virtual_key_claim".into(), json!(issuer.virtual_key_claim));
            if let Some((claim, value)) = &issuer.admin {
                e.insert("admin_claim".into(), json!(claim));
                e.insert("admin_value".into(), json!(value));
            }
            e.insert("models_claim".into(), json!(issuer.models_claim));
            e.insert(
                "jwks_refresh_interval_ms".into(),
                json!(ms(issuer.jwks_refresh_interval)),
            );
            e.insert("jwks_max_age_ms".into(), json!(ms(issuer.jwks_max_age)));
            Value::Object(e)
        })
        .collect();
    m.insert("jwt".into(), json!({ "issuers": issuers }));
    Value::Object(m)
}

fn virtual_key(v: &VirtualKeyConfig, raw: &serde_yaml::Value) -> Value {
    let secret = if raw.get("key_sha256").is_some() {
        ("key_sha256", Value::String("<redacted>".to_string()))
    } else {
        ("key", redacted(raw, "key"))
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(v.id));
    m.insert(secret.0.into(), secret.1);
    m.insert("enabled".into(), json!(v.enabled));
    m.insert("providers".into(), json!(v.providers));
    m.insert("models".into(), json!(v.models));
    if let Some(t) = v.expires_at {
        let at = std::time::UNIX_EPOCH + Duration::from_secs(t);
        m.insert(
            "expires_at".into(),
            json!(humantime::format_rfc3339_seconds(at).to_string()),
        );
    }
    if let Some(team) = &v.team {
        m.insert("team".into(), json!(team));
    }
    if let Some(b) = &v.budget {
        m.insert("budget".into(), budget(b));
    }
    if let Some(r) = &v.rate_limit {
        m.insert(
            "rate_limit".into(),
            json!({"requests": r.requests, "images": r.images, "per": crate::governance::period_text(r.per), "concurrent": r.concurrent}),
        );
    }
    Value::Object(m)
}

/// A budget as configured; the amount as an exact USD string.
fn budget(b: &super::Budget) -> Value {
    json!({"max_usd": crate::pricing::Usd(b.max).to_string(), "period": b.period_text, "calendar": b.calendar})
}

/// The `governance` section; the admin key redacted.
fn governance(config: &Config, raw: &serde_yaml::Value) -> Value {
    let g = &config.governance;
    let mut m = json!({
        "on_store_error": match g.on_store_error {
            super::StorePolicy::FailOpen => "fail_open",
            super::StorePolicy::FailClosed => "fail_closed",
        },
        "slot_lease_ms": ms(g.slot_lease),
    });
    if g.admin_key_sha256.is_some() {
        m["admin_key"] = redacted(raw, "admin_key");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    const YAML: &str = "\
providers:
  - name: openai
    kind: openai
    circuit_breaker: {failures: 3}
    keys:
      - {name: env-key, value: env.OPENAI_KEY}
      - {name: literal-key, value: sk-literal-SECRET-7, weight: 2}
  - name: bedrock
    kind: bedrock
    region: us-east-1
    keys:
      - name: aws
        aws_access_key_id: env.AWS_ID
        aws_secret_access_key: aws-literal-SECRET-8
virtual_keys:
  - {id: team-a, key: env.VK_A}
  - {id: team-b, key: vk-literal-SECRET-9, models: [openai/*]}
  - {id: team-c, key_sha256: 0000000000000000000000000000000000000000000000000000000000000000}
";

    fn env(name: &str) -> Option<String> {
        Some(format!("{name}-value-SECRET"))
    }

    #[test]
    fn secrets_are_redacted_and_defaults_filled_in() {
        let config = from_yaml_str_with_env(YAML, &env).unwrap();
        let out = effective_yaml(&config, YAML).unwrap();
        assert!(!out.contains("SECRET"), "a secret leaked:\n{out}");
        assert!(!out.contains("0000000000"), "a digest leaked:\n{out}");
        for expected in [
            "value: '<redacted: env.OPENAI_KEY>'",
            "value: <redacted>",
            "aws_access_key_id: '<redacted: env.AWS_ID>'",
            "aws_secret_access_key: <redacted>",
            "key: '<redacted: env.VK_A>'",
            "key_sha256: <redacted>",
            // Defaults the file does not write.
            "base_url: https://api.openai.com/v1",
            "base_url: https://bedrock-runtime.us-east-1.amazonaws.com",
            "first_byte_timeout_ms: 180000",
            "max_connections: 256",
            "open_ms: 30000",
            "failures: 3",
            "address: 127.0.0.1:8080",
            "max_body_bytes: 104857600",
        ] {
            assert!(
                out.lines().any(|l| l.trim_start_matches(['-', ' ']) == expected),
                "{expected:?} missing:\n{out}"
            );
        }
        // The printed config is itself a valid config (with its secrets given back).
        let back = out
            .replace("'<redacted: env.OPENAI_KEY>'", "env.OPENAI_KEY")
            .replace("key_sha256: <redacted>", &format!("key_sha256: {}", "0".repeat(64)))
            .replace("<redacted>", "x")
            .replace("'<redacted: env.AWS_ID>'", "env.AWS_ID")
            .replace("'<redacted: env.VK_A>'", "env.VK_A");
        let again = from_yaml_str_with_env(&back, &env).unwrap_or_else(|e| panic!("{e}\n{back}"));
        assert_eq!(effective_yaml(&again, &back).unwrap(), out);
    }

    /// The JWT issuers: the HS secret redacted, the rest as given (defaults filled in), and the
    /// output loads again.
    #[test]
    fn issuers_are_printed_with_the_secret_redacted() {
        let yaml = "auth:\n  jwt:\n    issuers:\n      - {issuer: https://mpilot.example, secret: env.HS_KEY, audiences: [refract], admin_claim: role, admin_value: admin}\n      - {issuer: https://tfy.example, jwks_url: 'https://tfy.example/.well-known/jwks.json'}\n\
            providers: [{name: sim, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: env.K}]}]\n\
            virtual_keys: [{id: a, key: env.VK, expires_at: '2027-01-31T00:00:00Z'}]\n";
        let long_env = |name: &str| Some(format!("{name}-value-SECRET-0123456789abcdef0123456789"));
        let config = from_yaml_str_with_env(yaml, &long_env).unwrap();
        let out = effective_yaml(&config, yaml).unwrap();
        assert!(!out.contains("SECRET"), "a secret leaked:\n{out}");
        for expected in [
            "secret: '<redacted: env.HS_KEY>'",
            "jwks_url: https://tfy.example/.well-known/jwks.json",
            "admin_claim: role",
            "virtual_key_claim: vk",
            "leeway_seconds: 30",
            "expires_at: 2027-01-31T00:00:00Z",
        ] {
            assert!(
                out.lines().any(|l| l.trim_start_matches(['-', ' ']) == expected),
                "{expected:?} missing:\n{out}"
            );
        }
        let back = out.replace("'<redacted: env.", "env.").replace(">'", "");
        let again = from_yaml_str_with_env(&back, &long_env).unwrap_or_else(|e| panic!("{e}\n{back}"));
        assert_eq!(effective_yaml(&again, &back).unwrap(), out);
    }

    /// The state sections: their secrets redacted (from the environment only), the rest as
    /// given, and the output loads again.
    #[test]
    fn state_sections_are_printed_with_secrets_redacted() {
        let yaml = "store: {kind: redis, url: 'redis://127.0.0.1:6379', password: env.REDIS_PW}\n\
            objects: {kind: s3, bucket: b, region: us-east-1, endpoint: 'http://127.0.0.1:9000', \
            access_key_id: env.S3_ID, secret_access_key: env.S3_KEY, prefix: gw, url_secret: env.URL_KEY, \
            url_ttl: 60, public_url: 'https://img.example.com', default_response_format: url}\n\
            providers: [{name: sim, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{name: k, value: env.K}]}]\n";
        let config = from_yaml_str_with_env(yaml, &env).unwrap();
        let out = effective_yaml(&config, yaml).unwrap();
        assert!(!out.contains("SECRET"), "a secret leaked:\n{out}");
        for expected in [
            "password: '<redacted: env.REDIS_PW>'",
            "access_key_id: '<redacted: env.S3_ID>'",
            "secret_access_key: '<redacted: env.S3_KEY>'",
            "url: redis://127.0.0.1:6379",
            "bucket: b",
            "prefix: gw",
            "url_secret: '<redacted: env.URL_KEY>'",
            "url_ttl: 60",
            "public_url: https://img.example.com",
            "default_response_format: url",
        ] {
            assert!(
                out.lines().any(|l| l.trim() == expected),
                "{expected:?} missing:\n{out}"
            );
        }
        let back = out.replace("'<redacted: env.", "env.").replace(">'", "");
        let again = from_yaml_str_with_env(&back, &env).unwrap_or_else(|e| panic!("{e}\n{back}"));
        assert_eq!(again.store, config.store);
        assert_eq!(again.objects, config.objects);
        assert_eq!(again.object_urls, config.object_urls);
    }
}
