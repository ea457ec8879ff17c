//! The walk from the parsed YAML tree to [`Config`]: one function per
//! section, then the cross-checks (clashing addresses here; unique names,
//! references and duplicate virtual keys in `providers.rs`).
//!
//! Each function reads every key of its section even after a problem, so a
//! single run reports everything; a value with a problem is replaced by a
//! fallback (or dropped) and the whole result is discarded when any problem
//! was found.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_yaml::Value;

use super::fields::{Fields, Problems};
use super::url::parse_socket_addr;
use super::{
    providers, Config, ConfigProblem, ImageUrlFetch, Limits, Listener, MetricsSettings, ServerSettings,
    SimulatorSettings, SpoolSettings, TlsFiles, MAX_HEAD_BYTES_LIMIT, MIB,
};

/// Resolves an environment variable (`None` = not set).
pub(super) type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// Builds the configuration from the YAML document, or returns every problem.
pub(super) fn build(root: &Value, env: Env<'_>) -> Result<Config, Vec<ConfigProblem>> {
    let problems = Problems::new();
    let config = {
        let mut top = Fields::new(root, "", &problems);
        let server = server(top.section("server"));
        let listeners = listeners(&mut top);
        let metrics = top.opt_obj("metrics").and_then(address_only);
        let auth = super::auth::auth(top.section("auth"), env);
        let limits = limits(top.section("limits"));
        let spool = spool(top.section("spool"));
        let simulator = top.opt_obj("simulator").and_then(simulator);
        let (providers, provider_names) = providers::providers(&mut top, env);
        let governance = super::governance::governance(&mut top, env);
        let virtual_keys = providers::virtual_keys(&mut top, env, provider_names.as_deref(), &governance.teams);
        let store = super::state::store(top.opt_obj("store"), env);
        let (objects, object_urls) = super::state::objects(top.opt_obj("objects"), env);
        let jobs = super::state::jobs(top.section("jobs"));
        let (pricing, pricing_source) = super::pricing::pricing(top.section("pricing"));
        let log = super::telemetry::log(top.section("log"));
        let tracing = super::telemetry::tracing(top.section("tracing"));
        top.finish();
        let simulator_address = simulator.as_ref().map(|(path, s)| (path.clone(), s.address));
        check_addresses(&listeners, metrics.clone(), simulator_address, &problems);
        Config {
            server,
            listeners: listeners.into_iter().map(|(_, l)| l).collect(),
            metrics: metrics.map(|(_, address)| MetricsSettings { address }),
            auth,
            limits,
            spool,
            simulator: simulator.map(|(_, settings)| settings),
            providers,
            virtual_keys,
            store,
            objects,
            object_urls,
            jobs,
            pricing: std::sync::Arc::new(pricing),
            pricing_source,
            governance,
            log,
            tracing,
        }
    };
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems.into_vec())
    }
}

fn server(mut f: Fields<'_>) -> ServerSettings {
    let d = ServerSettings::default();
    let settings = ServerSettings {
        threads: f.opt_usize("threads", d.threads, 1..=256),
        grace_period_seconds: f.opt_u64("grace_period_seconds", d.grace_period_seconds, 0..=u64::MAX),
        graceful_shutdown_timeout_seconds: f.opt_u64(
            "graceful_shutdown_timeout_seconds",
            d.graceful_shutdown_timeout_seconds,
            0..=u64::MAX,
        ),
        pid_file: f.opt_str("pid_file").map(str::to_string),
        upgrade_sock: f.opt_str("upgrade_sock").map(str::to_string),
        ca_file: if f.has("ca_file") {
            existing_file(&mut f, "ca_file")
        } else {
            None
        },
    };
    f.finish();
    settings
}

/// A required socket address under `key`.
fn socket_addr(f: &mut Fields<'_>, key: &'static str) -> Option<SocketAddr> {
    let text = f.req_str(key)?;
    parse_socket_addr(text).map_err(|e| f.report(key, e)).ok()
}

/// A section whose only key is `address` (metrics): the address with the
/// path it was written at.
fn address_only(mut f: Fields<'_>) -> Option<(String, SocketAddr)> {
    let address = socket_addr(&mut f, "address").map(|a| (f.path_of("address"), a));
    f.finish();
    address
}

/// The `simulator` section, with the path its address was written at.
fn simulator(mut f: Fields<'_>) -> Option<(String, SimulatorSettings)> {
    let address = socket_addr(&mut f, "address").map(|a| (f.path_of("address"), a));
    let stream_interval_ms = f.opt_u64(
        "stream_interval_ms",
        SimulatorSettings::DEFAULT_STREAM_INTERVAL_MS,
        0..=SimulatorSettings::MAX_STREAM_INTERVAL_MS,
    );
    let partial_image_bytes = f.opt_usize(
        "partial_image_bytes",
        SimulatorSettings::DEFAULT_PARTIAL_IMAGE_BYTES,
        0..=SimulatorSettings::MAX_PARTIAL_IMAGE_BYTES,
    );
    f.finish();
    let (path, address) = address?;
    Some((
        path,
        SimulatorSettings {
            stream_interval: Duration::from_millis(stream_interval_ms),
            partial_image_bytes,
            ..SimulatorSettings::new(address)
        },
    ))
}

/// Listeners with the path of their address, for the clash check.
fn listeners(top: &mut Fields<'_>) -> Vec<(String, Listener)> {
    if !top.has("listeners") {
        let address = SocketAddr::from(([127, 0, 0, 1], 8080));
        return vec![("listeners (default)".into(), Listener { address, tls: None })];
    }
    let problems = top.problems();
    let items = top.req_list("listeners").unwrap_or_default();
    items
        .into_iter()
        .filter_map(|(path, value)| {
            let mut f = Fields::new(value, path, problems);
            let address = socket_addr(&mut f, "address");
            let tls = f.opt_obj("tls").map(tls_files);
            let path = f.path_of("address");
            f.finish();
            let tls = match tls {
                Some(files) => Some(files?),
                None => None,
            };
            Some((path, Listener { address: address?, tls }))
        })
        .collect()
}

fn tls_files(mut f: Fields<'_>) -> Option<TlsFiles> {
    let cert = existing_file(&mut f, "cert");
    let key = existing_file(&mut f, "key");
    f.finish();
    Some(TlsFiles { cert: cert?, key: key? })
}

fn existing_file(f: &mut Fields<'_>, key: &'static str) -> Option<PathBuf> {
    let path = PathBuf::from(f.req_str(key)?);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => return Some(path),
        Ok(_) => f.report(key, format!("{} is not a regular file", path.display())),
        Err(e) => f.report(key, format!("cannot use file {}: {e}", path.display())),
    }
    None
}

/// The largest `limits.max_connections`.
const MAX_CONNECTIONS_LIMIT: u64 = 16_777_216;

fn limits(mut f: Fields<'_>) -> Limits {
    let d = Limits::default();
    let problems = f.problems();
    let before = problems.len();
    let max_body_bytes = f.opt_u64("max_body_bytes", d.max_body_bytes, 1..=1 << 40);
    let body_ok = problems.len() == before;
    let part_given = f.has("max_part_bytes");
    let max_part_bytes = f.opt_u64("max_part_bytes", d.max_part_bytes.min(max_body_bytes), 1..=1 << 40);
    if part_given && body_ok && max_part_bytes > max_body_bytes {
        f.report(
            "max_part_bytes",
            format!("must not exceed limits.max_body_bytes ({max_body_bytes}), found {max_part_bytes}"),
        );
    }
    let limits = Limits {
        max_body_bytes,
        max_images: f.opt_usize("max_images", d.max_images, 1..=64),
        max_part_bytes,
        max_field_bytes: f.opt_usize("max_field_bytes", d.max_field_bytes, 1..=16 * MIB),
        body_read_timeout: f.opt_millis("body_read_timeout_ms", d.body_read_timeout, 1..=3_600_000),
        upload_timeout: f.opt_millis("upload_timeout_ms", d.upload_timeout, 1..=21_600_000),
        max_part_header_bytes: f.opt_usize("max_part_header_bytes", d.max_part_header_bytes, 1024..=MIB),
        max_field_name_bytes: f.opt_usize("max_field_name_bytes", d.max_field_name_bytes, 16..=16 * 1024),
        linger_bytes: f.opt_u64(
            "linger_bytes",
            max_body_bytes.saturating_add(Limits::LINGER_BEYOND_MAX_BODY),
            0..=1 << 41,
        ),
        linger_timeout: f.opt_millis("linger_timeout_ms", d.linger_timeout, 0..=60_000),
        max_image_pixels: f.opt_u64("max_image_pixels", d.max_image_pixels, 1..=1 << 28),
        decode_concurrency: f.opt_usize("decode_concurrency", d.decode_concurrency, 1..=256),
        json_body_memory_bytes: json_body_memory_bytes(&mut f, max_body_bytes),
        head_timeout: f.opt_millis("head_timeout_ms", d.head_timeout, 100..=600_000),
        max_head_bytes: f.opt_usize("max_head_bytes", d.max_head_bytes, 1024..=MAX_HEAD_BYTES_LIMIT),
        keepalive_timeout: f.opt_millis("keepalive_timeout_ms", d.keepalive_timeout, 100..=3_600_000),
        max_connections: f
            .get("max_connections")
            .and_then(|v| f.int_in("max_connections", v, &(1..=MAX_CONNECTIONS_LIMIT)))
            .and_then(|n| usize::try_from(n).ok()),
        fetch_image_urls: fetch_image_urls(f.section("fetch_image_urls"), max_part_bytes),
    };
    f.finish();
    limits
}

/// `limits.json_body_memory_bytes`: at least `max_body_bytes` (a body of the largest size must
/// fit), by default 512 MiB or `max_body_bytes` when larger.
fn json_body_memory_bytes(f: &mut Fields<'_>, max_body_bytes: u64) -> u64 {
    let default = Limits::DEFAULT_JSON_BODY_MEMORY_BYTES.max(max_body_bytes);
    let given = f.opt_u64("json_body_memory_bytes", default, 1..=1 << 44);
    if given < max_body_bytes {
        f.report(
            "json_body_memory_bytes",
            format!("must be at least limits.max_body_bytes ({max_body_bytes}), found {given}"),
        );
    }
    given
}

/// `limits.fetch_image_urls` (see [`ImageUrlFetch`]); `max_bytes` defaults to 20 MiB or
/// `max_part_bytes` if smaller, and may not exceed it.
fn fetch_image_urls(mut f: Fields<'_>, max_part_bytes: u64) -> ImageUrlFetch {
    let d = ImageUrlFetch::default();
    let enabled = f.opt_bool("enabled", d.enabled);
    let given = f.has("max_bytes");
    let max_bytes = f.opt_u64("max_bytes", d.max_bytes.min(max_part_bytes), 1..=1 << 40);
    if given && max_bytes > max_part_bytes {
        f.report(
            "max_bytes",
            format!("must not exceed limits.max_part_bytes ({max_part_bytes}), found {max_bytes}"),
        );
    }
    let timeout = f.opt_millis("timeout_ms", d.timeout, 100..=600_000);
    let max_redirects = f.opt_usize("max_redirects", d.max_redirects as usize, 0..=10) as u32;
    // (An empty list is the default: the effective config prints it.)
    let problems = f.problems();
    let allow_hosts = f
        .opt_list("allow_hosts")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(path, value)| {
            let Value::String(host) = value else {
                problems.add(&path, super::fields::type_error("a host name or IP address", value));
                return None;
            };
            let normalized = crate::ssrf::normalize_host(host);
            if normalized.is_none() {
                problems.add(
                    &path,
                    format!("'{host}' is not a host name or IP address (no scheme, port or path)"),
                );
            }
            normalized
        })
        .collect();
    f.finish();
    ImageUrlFetch {
        enabled,
        max_bytes,
        timeout,
        max_redirects,
        allow_hosts,
    }
}

fn spool(mut f: Fields<'_>) -> SpoolSettings {
    let d = SpoolSettings::default();
    let memory_bytes = f.opt_usize("memory_bytes", d.memory_bytes, 0..=1024 * MIB);
    let directory = f.opt_str("directory").map(PathBuf::from).and_then(|dir| {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => return Some(dir),
            Ok(_) => f.report("directory", format!("{} is not a directory", dir.display())),
            Err(e) => f.report("directory", format!("cannot use directory {}: {e}", dir.display())),
        }
        None
    });
    f.finish();
    SpoolSettings {
        memory_bytes,
        directory,
    }
}

/// Two sockets on the same address cannot both be bound (port 0 picks a
/// free port, so it never clashes).
fn check_addresses(
    listeners: &[(String, Listener)],
    metrics: Option<(String, SocketAddr)>,
    simulator: Option<(String, SocketAddr)>,
    problems: &Problems,
) {
    let all: Vec<(String, SocketAddr)> = listeners
        .iter()
        .map(|(path, l)| (path.clone(), l.address))
        .chain(metrics)
        .chain(simulator)
        .collect();
    for (i, (path, address)) in all.iter().enumerate() {
        if address.port() == 0 {
            continue;
        }
        if let Some((first, _)) = all[..i].iter().find(|(_, a)| a == address) {
            problems.add(path, format!("address {address} is already used by {first}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::ImageUrlFetch;
    use std::time::Duration;

    #[test]
    fn unknown_keys_with_and_without_suggestion() {
        one_problem(
            &format!("server:\n  thread: 4\n{PROVIDER}"),
            "server.thread",
            "unknown key 'thread'; did you mean 'threads'?",
        );
        one_problem(
            &format!("{PROVIDER}    colour: red\n"),
            "providers[0].colour",
            "unknown key 'colour' (known keys: name, kind, api_version, deployments, project, location, region, model_rules, poll_interval_ms, poll_timeout_ms, retries, retry_backoff_ms, circuit_breaker, base_url,",
        );
        one_problem(
            &format!("{PROVIDER}virtual_key: []\n"),
            "virtual_key",
            "did you mean 'virtual_keys'?",
        );
        one_problem(
            &format!("{PROVIDER}        wieght: 2\n"),
            "providers[0].keys[0].wieght",
            "did you mean 'weight'?",
        );
    }

    #[test]
    fn wrong_types() {
        one_problem(
            &format!("server:\n  threads: two\n{PROVIDER}"),
            "server.threads",
            "expected an integer, found a string",
        );
        one_problem(
            &format!("limits:\n  max_images: 2.5\n{PROVIDER}"),
            "limits.max_images",
            "expected an integer, found a floating-point number",
        );
        one_problem(
            &format!("auth:\n  allow_anonymous: yes\n{PROVIDER}"),
            "auth.allow_anonymous",
            "expected a boolean, found a string",
        );
        one_problem(
            &format!("limits: 5\n{PROVIDER}"),
            "limits",
            "expected a mapping, found an integer",
        );
        one_problem(
            &format!("listeners: 0.0.0.0:80\n{PROVIDER}"),
            "listeners",
            "expected a list, found a string",
        );
        one_problem(
            &format!("server:\n  pid_file: 7\n{PROVIDER}"),
            "server.pid_file",
            "expected a string, found an integer",
        );
        one_problem(
            &format!("{PROVIDER}        models: [1]\n"),
            "providers[0].keys[0].models[0]",
            "expected a string",
        );
    }

    #[test]
    fn missing_required_keys() {
        one_problem("server: {}\n", "providers", "missing required key");
        one_problem(
            &PROVIDER.replace("    kind: openai\n", ""),
            "providers[0].kind",
            "missing required key",
        );
        one_problem(
            &PROVIDER.replace("        value: env.KEY_A\n", ""),
            "providers[0].keys[0].value",
            "missing required key",
        );
        one_problem(
            &format!("metrics: {{}}\n{PROVIDER}"),
            "metrics.address",
            "missing required key",
        );
        one_problem(
            &format!("listeners:\n  - tls: ~\n{PROVIDER}"),
            "listeners[0].address",
            "missing required key",
        );
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - id: x\n"),
            "virtual_keys[0].key",
            "missing required key",
        );
        one_problem(
            &format!("{PROVIDER}virtual_keys:\n  - key: x\n"),
            "virtual_keys[0].id",
            "missing required key",
        );
    }

    #[test]
    fn empty_lists_where_entries_are_required() {
        one_problem("providers: []\n", "providers", "must have at least one entry");
        one_problem(
            &format!("listeners: []\n{PROVIDER}"),
            "listeners",
            "must have at least one entry",
        );
        one_problem(
            &PROVIDER.replace(
                "    keys:\n      - name: primary\n        value: env.KEY_A\n",
                "    keys: []\n",
            ),
            "providers[0].keys",
            "must have at least one entry",
        );
        one_problem(
            &format!("{PROVIDER}        models: []\n"),
            "providers[0].keys[0].models",
            "must not be empty",
        );
    }

    #[test]
    fn out_of_range_values() {
        one_problem(
            &format!("server:\n  threads: 0\n{PROVIDER}"),
            "server.threads",
            "must be between 1 and 256, found 0",
        );
        one_problem(
            &format!("server:\n  threads: -4\n{PROVIDER}"),
            "server.threads",
            "found -4",
        );
        one_problem(
            &format!("server:\n  grace_period_seconds: -1\n{PROVIDER}"),
            "server.grace_period_seconds",
            "found -1",
        );
        one_problem(
            &format!("limits:\n  max_images: 65\n{PROVIDER}"),
            "limits.max_images",
            "between 1 and 64",
        );
        one_problem(
            &format!("limits:\n  max_body_bytes: 1099511627777\n{PROVIDER}"),
            "limits.max_body_bytes",
            "between 1 and 1099511627776",
        );
        one_problem(
            &format!("limits:\n  max_body_bytes: 2097152\n  json_body_memory_bytes: 1048576\n{PROVIDER}"),
            "limits.json_body_memory_bytes",
            "must be at least limits.max_body_bytes (2097152), found 1048576",
        );
        one_problem(
            &format!("limits:\n  max_part_header_bytes: 100\n{PROVIDER}"),
            "limits.max_part_header_bytes",
            "between 1024 and 1048576",
        );
        one_problem(
            &format!("limits:\n  max_field_bytes: 16777217\n{PROVIDER}"),
            "limits.max_field_bytes",
            "between 1 and 16777216",
        );
        one_problem(
            &format!("limits:\n  max_image_pixels: 0\n{PROVIDER}"),
            "limits.max_image_pixels",
            "between 1 and 268435456",
        );
        one_problem(
            &format!("limits:\n  decode_concurrency: 257\n{PROVIDER}"),
            "limits.decode_concurrency",
            "between 1 and 256",
        );
        one_problem(
            &format!("limits:\n  head_timeout_ms: 99\n{PROVIDER}"),
            "limits.head_timeout_ms",
            "between 100 and 600000",
        );
        one_problem(
            &format!("limits:\n  max_head_bytes: 1048576\n{PROVIDER}"),
            "limits.max_head_bytes",
            "between 1024 and 1048575",
        );
        one_problem(
            &format!("limits:\n  keepalive_timeout_ms: 3600001\n{PROVIDER}"),
            "limits.keepalive_timeout_ms",
            "between 100 and 3600000",
        );
        one_problem(
            &format!("limits:\n  max_connections: 0\n{PROVIDER}"),
            "limits.max_connections",
            "between 1 and 16777216",
        );
        one_problem(
            &format!("spool:\n  memory_bytes: 1073741825\n{PROVIDER}"),
            "spool.memory_bytes",
            "between 0 and 1073741824",
        );
        one_problem(
            &format!("{PROVIDER}    connect_timeout_ms: 0\n"),
            "providers[0].connect_timeout_ms",
            "between 1 and 600000",
        );
        one_problem(
            &format!("{PROVIDER}    first_byte_timeout_ms: 3600001\n"),
            "providers[0].first_byte_timeout_ms",
            "between 1 and 3600000",
        );
        one_problem(
            &format!("{PROVIDER}    total_timeout_ms: 0\n"),
            "providers[0].total_timeout_ms",
            "between 1 and 21600000",
        );
        one_problem(
            &format!("{PROVIDER}    read_timeout_ms: 3000\n"),
            "providers[0].read_timeout_ms",
            "unknown key 'read_timeout_ms'",
        );
        one_problem(
            &format!("{PROVIDER}        weight: 0\n"),
            "providers[0].keys[0].weight",
            "greater than 0",
        );
        one_problem(
            &format!("{PROVIDER}        weight: .nan\n"),
            "providers[0].keys[0].weight",
            "finite number",
        );
    }

    #[test]
    fn fetching_image_urls_is_off_unless_enabled_and_checked() {
        let c = ok(PROVIDER);
        assert_eq!(c.limits.fetch_image_urls, ImageUrlFetch::default());
        assert!(!c.limits.fetch_image_urls.enabled);
        let c = ok(&format!(
            "limits:\n  max_part_bytes: 1000000\n  fetch_image_urls:\n    enabled: true\n    max_bytes: 5000\n    timeout_ms: 2500\n    max_redirects: 0\n    allow_hosts: [Images.Internal., '127.0.0.1', '[::1]']\n{PROVIDER}"
        ));
        let f = &c.limits.fetch_image_urls;
        assert!(f.enabled);
        assert_eq!(
            (f.max_bytes, f.timeout, f.max_redirects),
            (5000, Duration::from_millis(2500), 0)
        );
        assert_eq!(f.allow_hosts, ["images.internal", "127.0.0.1", "::1"]);
        // max_bytes follows a smaller max_part_bytes unless given.
        let c = ok(&format!("limits:\n  max_part_bytes: 1000\n{PROVIDER}"));
        assert_eq!(c.limits.fetch_image_urls.max_bytes, 1000);
        one_problem(
            &format!("limits:\n  max_part_bytes: 1000\n  fetch_image_urls:\n    max_bytes: 1001\n{PROVIDER}"),
            "limits.fetch_image_urls.max_bytes",
            "must not exceed limits.max_part_bytes (1000)",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls:\n    enabled: true\n    allow_private: true\n{PROVIDER}"),
            "limits.fetch_image_urls.allow_private",
            "unknown",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls:\n    allow_hosts: ['http://x:80/']\n{PROVIDER}"),
            "limits.fetch_image_urls.allow_hosts[0]",
            "not a host name or IP address",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls:\n    allow_hosts: [3]\n{PROVIDER}"),
            "limits.fetch_image_urls.allow_hosts[0]",
            "a host name or IP address",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls:\n    timeout_ms: 50\n{PROVIDER}"),
            "limits.fetch_image_urls.timeout_ms",
            "between 100 and 600000",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls:\n    max_redirects: 11\n{PROVIDER}"),
            "limits.fetch_image_urls.max_redirects",
            "between 0 and 10",
        );
        one_problem(
            &format!("limits:\n  fetch_image_urls: yes\n{PROVIDER}"),
            "limits.fetch_image_urls",
            "",
        );
    }

    #[test]
    fn linger_limits_follow_the_body_limit_unless_given() {
        let c = ok(&format!("limits:\n  max_body_bytes: 1000\n{PROVIDER}"));
        assert_eq!(c.limits.linger_bytes, 1000 + 16 * 1024 * 1024);
        let c = ok(&format!(
            "limits:\n  linger_bytes: 0\n  linger_timeout_ms: 250\n{PROVIDER}"
        ));
        assert_eq!(
            (c.limits.linger_bytes, c.limits.linger_timeout),
            (0, std::time::Duration::from_millis(250))
        );
        one_problem(
            &format!("limits:\n  linger_timeout_ms: 60001\n{PROVIDER}"),
            "limits.linger_timeout_ms",
            "60000",
        );
        one_problem(
            &format!("limits:\n  linger_bytes: -1\n{PROVIDER}"),
            "limits.linger_bytes",
            "",
        );
    }

    #[test]
    fn part_size_is_checked_against_body_size() {
        one_problem(
            &format!("limits:\n  max_body_bytes: 1000\n  max_part_bytes: 1001\n{PROVIDER}"),
            "limits.max_part_bytes",
            "must not exceed limits.max_body_bytes (1000), found 1001",
        );
        // Not given: the default shrinks to the body size instead.
        let c = ok(&format!("limits:\n  max_body_bytes: 1000\n{PROVIDER}"));
        assert_eq!((c.limits.max_body_bytes, c.limits.max_part_bytes), (1000, 1000));
        // A broken body size does not add a second, misleading problem.
        one_problem(
            &format!("limits:\n  max_body_bytes: x\n  max_part_bytes: 2000000000\n{PROVIDER}"),
            "limits.max_body_bytes",
            "expected an integer",
        );
    }

    #[test]
    fn upload_limits() {
        let c = ok(&format!(
            "limits:\n  body_read_timeout_ms: 500\n  upload_timeout_ms: 9000\n{PROVIDER}"
        ));
        assert_eq!(
            (c.limits.body_read_timeout, c.limits.upload_timeout),
            (
                std::time::Duration::from_millis(500),
                std::time::Duration::from_millis(9000)
            )
        );
        let d = ok(PROVIDER).limits;
        assert_eq!(
            (d.body_read_timeout, d.upload_timeout),
            (std::time::Duration::from_secs(60), std::time::Duration::from_secs(300))
        );
        one_problem(
            &format!("limits:\n  body_read_timeout_ms: 0\n{PROVIDER}"),
            "limits.body_read_timeout_ms",
            "",
        );
        one_problem(
            &format!("limits:\n  upload_timeout_ms: 21600001\n{PROVIDER}"),
            "limits.upload_timeout_ms",
            "",
        );
    }

    #[test]
    fn bad_socket_addresses() {
        one_problem(
            &format!("listeners:\n  - address: localhost:8080\n{PROVIDER}"),
            "listeners[0].address",
            "invalid socket address 'localhost:8080'",
        );
        one_problem(
            &format!("metrics:\n  address: 127.0.0.1\n{PROVIDER}"),
            "metrics.address",
            "expected IP:port",
        );
        one_problem(
            &format!("simulator:\n  address: '[::1]:99999'\n{PROVIDER}"),
            "simulator.address",
            "invalid socket address",
        );
        one_problem(
            &format!("simulator:\n  address: 8090\n{PROVIDER}"),
            "simulator.address",
            "expected a string, found an integer",
        );
    }

    #[test]
    fn simulator_stream_keys() {
        let c = ok(&format!("simulator:\n  address: 127.0.0.1:0\n{PROVIDER}"));
        let sim = c.simulator.unwrap();
        assert_eq!(sim.stream_interval, std::time::Duration::ZERO);
        assert_eq!(sim.partial_image_bytes, 0);

        let c = ok(&format!(
            "simulator:\n  address: 127.0.0.1:0\n  stream_interval_ms: 60000\n  partial_image_bytes: 1048576\n{PROVIDER}"
        ));
        let sim = c.simulator.unwrap();
        assert_eq!(sim.stream_interval, std::time::Duration::from_millis(60_000));
        assert_eq!(sim.partial_image_bytes, 1_048_576);

        one_problem(
            &format!("simulator:\n  address: 127.0.0.1:0\n  stream_interval_ms: 60001\n{PROVIDER}"),
            "simulator.stream_interval_ms",
            "must be between 0 and 60000, found 60001",
        );
        one_problem(
            &format!("simulator:\n  address: 127.0.0.1:0\n  stream_interval_ms: -5\n{PROVIDER}"),
            "simulator.stream_interval_ms",
            "found -5",
        );
        one_problem(
            &format!("simulator:\n  address: 127.0.0.1:0\n  partial_image_bytes: 67108865\n{PROVIDER}"),
            "simulator.partial_image_bytes",
            "must be between 0 and 67108864, found 67108865",
        );
        one_problem(
            &format!("simulator:\n  address: 127.0.0.1:0\n  partial_image_bytes: big\n{PROVIDER}"),
            "simulator.partial_image_bytes",
            "expected an integer",
        );
        one_problem(
            &format!("simulator:\n  address: 127.0.0.1:0\n  stream_interval: 5\n{PROVIDER}"),
            "simulator.stream_interval",
            "did you mean 'stream_interval_ms'?",
        );
    }

    #[test]
    fn clashing_addresses() {
        one_problem(
            &format!("listeners:\n  - address: 0.0.0.0:8080\n  - address: 0.0.0.0:8080\n{PROVIDER}"),
            "listeners[1].address",
            "address 0.0.0.0:8080 is already used by listeners[0].address",
        );
        one_problem(
            &format!("metrics:\n  address: 127.0.0.1:8080\n{PROVIDER}"),
            "metrics.address",
            "already used by listeners (default)",
        );
        // Port 0 means "any free port" and never clashes.
        ok(&format!(
            "listeners:\n  - address: 127.0.0.1:0\nmetrics:\n  address: 127.0.0.1:0\n{PROVIDER}"
        ));
    }

    #[test]
    fn tls_files_and_spool_directory_must_exist() {
        let dir = std::env::temp_dir().join(format!("refract-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, "c").unwrap();
        std::fs::write(&key, "k").unwrap();
        let good = format!(
            "listeners:\n  - address: '[::]:8443'\n    tls: {{cert: {}, key: {}}}\nspool:\n  directory: {}\n{PROVIDER}",
            cert.display(),
            key.display(),
            dir.display()
        );
        let result = load(&good);
        let missing = load(
            &good
                .replace("key.pem", "nope.pem")
                .replace("directory: ", "directory: /nonexistent"),
        );
        // The cert path names the directory, the spool directory names a file.
        let swapped = load(&good.replace("cert.pem", "").replace(
            &format!("directory: {}", dir.display()),
            &format!("directory: {}", cert.display()),
        ));
        std::fs::remove_dir_all(&dir).unwrap();

        let c = result.unwrap_or_else(|e| panic!("{e}"));
        let tls = c.listeners[0].tls.as_ref().unwrap();
        assert_eq!((tls.cert.as_path(), tls.key.as_path()), (cert.as_path(), key.as_path()));
        assert_eq!(c.spool.directory.as_deref(), Some(dir.as_path()));

        let missing = missing.unwrap_err();
        assert_eq!(missing.0.len(), 2, "{missing}");
        assert_eq!(missing.0[0].path, "listeners[0].tls.key");
        assert!(missing.0[0].message.starts_with("cannot use file "), "{missing}");
        assert_eq!(missing.0[1].path, "spool.directory");

        let swapped = swapped.unwrap_err();
        assert_eq!(swapped.0.len(), 2, "{swapped}");
        assert!(swapped.0[0].message.ends_with("is not a regular file"), "{swapped}");
        assert!(swapped.0[1].message.ends_with("is not a directory"), "{swapped}");
    }

    #[test]
    fn ca_file_is_optional_and_must_exist() {
        assert!(ok(PROVIDER).server.ca_file.is_none());
        assert!(ok(&format!("server:\n  ca_file: ~\n{PROVIDER}"))
            .server
            .ca_file
            .is_none());

        let ca = std::env::temp_dir().join(format!("refract-config-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let result = load(&format!("server:\n  ca_file: {}\n{PROVIDER}", ca.display()));
        std::fs::remove_file(&ca).unwrap();
        let c = result.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.server.ca_file.as_deref(), Some(ca.as_path()));

        one_problem(
            &format!("server:\n  ca_file: /nonexistent/ca.pem\n{PROVIDER}"),
            "server.ca_file",
            "cannot use file /nonexistent/ca.pem",
        );
        one_problem(
            &format!("server:\n  ca_file: {}\n{PROVIDER}", std::env::temp_dir().display()),
            "server.ca_file",
            "is not a regular file",
        );
        one_problem(
            &format!("server:\n  ca_file: ''\n{PROVIDER}"),
            "server.ca_file",
            "must not be empty",
        );
    }

    #[test]
    fn many_problems_are_all_reported() {
        let yaml = "
server:
  threads: 0
  thread: 1
listeners:
  - address: nowhere
limits:
  max_images: many
providers:
  - name: openai
    kind: grpc
    base_url: https://x/v1#f
    keys:
      - name: a
        value: env.MISSING
        weight: -2
  - name: openai
    kind: openai
    base_url: http://y
    keys: {}
virtual_keys:
  - id: v
    key: k
    providers: [nope]
";
        let all = problems(yaml);
        let expected = [
            "server.threads: must be between 1 and 256, found 0",
            "server.thread: unknown key 'thread'; did you mean 'threads'?",
            "listeners[0].address: invalid socket address 'nowhere'",
            "limits.max_images: expected an integer, found a string",
            "providers[1].name: duplicate provider name 'openai' (same as providers[0])",
            "providers[0].kind: unknown provider kind 'grpc' (allowed: openai, azure, gemini, vertex, bedrock, stability, bfl, fireworks, replicate, huggingface, xai)",
            "providers[0].base_url: invalid URL: a fragment",
            "providers[0].keys[0].value: environment variable MISSING is not set",
            "providers[0].keys[0].weight: must be a finite number greater than 0, found -2",
            "providers[1].keys: expected a list, found a mapping",
            "virtual_keys[0].providers[0]: unknown provider 'nope'",
        ];
        assert_eq!(all.len(), expected.len(), "{all:#?}");
        for (got, want) in all.iter().zip(expected) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}\nall: {all:#?}");
        }
    }

    #[test]
    fn odd_documents_never_panic() {
        let inputs = [
            "", "~", "null", "---", "[]", "- 1\n- 2", "42", "'text'", "true", ".inf", "{}", "!tag {}",
            "providers:", "providers: ~", "providers: [~]", "providers: [[]]", "providers: [1, 'a', true, 1.5]",
            "providers: {name: x}", "providers:\n  - name: ~\n    kind: ~\n    base_url: ~\n    keys: [~, 1, {}]",
            "providers:\n  - name: [a]\n    kind: {a: 1}\n    base_url: 5\n    keys: [{name: 1, value: 2, weight: x, models: 3}]",
            "server: [1]\nlisteners: [1, [2], {address: [3]}]\nmetrics: 1\nauth: 2\nlimits: [x]\nspool: yes\nsimulator: []\nvirtual_keys: 5",
            "server: {threads: 18446744073709551615, grace_period_seconds: -9223372036854775808}",
            "server: {threads: 99999999999999999999999}",
            "limits: {max_body_bytes: 1e300, max_images: -0.0, max_part_bytes: .nan, max_field_bytes: -.inf}",
            "virtual_keys: [~, {}, {id: ~, key: ~}, {key_sha256: 12}, {id: [], key: {}, providers: x, models: [[]]}]",
            "? [complex, key]\n: value\n1: 2\n~: 3",
            "a: &x [*x]",
            "a: *undefined",
            "a: 1\na: 2",
            "- &a [1]\n- *a",
            "\u{feff}providers: []",
            "\t",
            "%YAML 1.2\n---\nproviders: []\n",
            "--- 1\n--- 2\n",
        ];
        for input in inputs {
            let result = std::panic::catch_unwind(|| load(input));
            let result = result.unwrap_or_else(|_| panic!("panicked on {input:?}"));
            let errors = result.expect_err(input);
            assert!(!errors.0.is_empty(), "{input:?}");
            assert!(
                errors.0.iter().all(|p| !p.path.is_empty() && !p.message.is_empty()),
                "{input:?}: {errors}"
            );
        }
    }

    #[test]
    fn odd_documents_give_sensible_problems() {
        assert_eq!(problems(""), ["providers: missing required key"]);
        assert_eq!(problems("- 1\n- 2"), ["(root): expected a mapping, found a list"]);
        assert_eq!(problems("providers:"), ["providers: missing required key"]);
        assert_eq!(
            problems("providers: [~]"),
            [
                "providers[0].name: missing required key",
                "providers[0].kind: missing required key",
                "providers[0].keys: missing required key",
            ]
        );
        assert_eq!(
            problems("providers: [7]"),
            ["providers[0]: expected a mapping, found an integer"]
        );
        let huge = problems(&format!("server: {{threads: 99999999999999999999999}}\n{PROVIDER}"));
        assert_eq!(huge.len(), 1);
        assert!(
            huge[0].starts_with("(file): ") && huge[0].contains("line 1"),
            "{huge:?}"
        );
    }

    #[test]
    fn null_sections_and_values_take_defaults() {
        let c = ok(&format!(
            "server:\nauth: ~\nlimits:\n  max_images:\nspool: {{}}\nmetrics:\nsimulator: ~\nvirtual_keys:\n{PROVIDER}"
        ));
        assert_eq!(c.server.threads, 2);
        assert_eq!(c.limits.max_images, 16);
        assert!(c.metrics.is_none() && c.simulator.is_none() && c.virtual_keys.is_empty());
    }

    #[test]
    fn every_key_is_read_into_the_config() {
        let c = ok("
server: {threads: 8, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 30, pid_file: /run/r.pid, upgrade_sock: /run/u.sock}
listeners: [{address: '[::1]:80'}, {address: 127.0.0.1:81}]
metrics: {address: 127.0.0.1:9091}
auth: {allow_anonymous: true}
limits: {max_body_bytes: 1000, max_images: 1, max_part_bytes: 10, max_field_bytes: 20, head_timeout_ms: 500,
  max_head_bytes: 2048, keepalive_timeout_ms: 700, max_connections: 30}
spool: {memory_bytes: 0}
simulator: {address: 127.0.0.1:8090}
providers:
  - name: local
    kind: openai
    base_url: http://10.0.0.1:8000/
    connect_timeout_ms: 1
    first_byte_timeout_ms: 2
    idle_timeout_ms: 3
    total_timeout_ms: 4
    pool_idle_timeout_ms: 5
    keys:
      - {name: first, value: env.KEY_A}
      - {name: second, value: v2, weight: 3, models: [gpt-image-1]}
");
        let s = &c.server;
        assert_eq!(
            (s.threads, s.grace_period_seconds, s.graceful_shutdown_timeout_seconds),
            (8, 0, 30)
        );
        assert_eq!(
            (s.pid_file.as_deref(), s.upgrade_sock.as_deref()),
            (Some("/run/r.pid"), Some("/run/u.sock"))
        );
        assert_eq!(
            c.listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
            ["[::1]:80", "127.0.0.1:81"]
        );
        assert_eq!(c.metrics.unwrap().address.port(), 9091);
        assert!(c.auth.allow_anonymous);
        let l = &c.limits;
        assert_eq!(
            (l.max_body_bytes, l.max_images, l.max_part_bytes, l.max_field_bytes),
            (1000, 1, 10, 20)
        );
        assert_eq!(
            (
                l.head_timeout.as_millis(),
                l.max_head_bytes,
                l.keepalive_timeout.as_millis(),
                l.max_connections
            ),
            (500, 2048, 700, Some(30))
        );
        assert_eq!(c.spool.memory_bytes, 0);
        assert_eq!(c.simulator.unwrap().address.port(), 8090);
        let p = &c.providers[0];
        assert_eq!(p.base_url.authority(), "10.0.0.1:8000");
        assert_eq!(p.base_url.path, "");
        let t = &p.timeouts;
        assert_eq!(
            [t.connect, t.first_byte, t.idle, t.total, t.pool_idle].map(|d| d.as_millis()),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(p.keys.len(), 2);
        let k = &p.keys[1];
        assert_eq!((k.name.as_str(), k.secret().unwrap(), k.weight), ("second", "v2", 3.0));
        assert!(k.serves("gpt-image-1") && !k.serves("dall-e-2"));
    }
}
