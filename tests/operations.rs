//! Operations: what an SRE alerts and graphs on. A fresh gateway (before any request) exports a
//! zero series for every configured provider, key, fallback and budget an alert reads, its build
//! info and the process metrics; a reload adds the series of what it adds; every metric that the
//! shipped Grafana dashboard (conf/grafana) and alert rules (conf/prometheus) query is one the
//! gateway exports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;

/// Both providers with a circuit breaker; a third, `spare`, whose models fall back to openai then
/// other; the key [`VK`] with a budget.
fn setup(upstream: &str) -> Setup {
    let mut setup = Setup::new(upstream);
    setup
        .provider_settings
        .push_str("    circuit_breaker: {failures: 3, open_ms: 60000}\n");
    setup.extra_providers = format!(
        "  - name: spare\n    kind: openai\n    base_url: {upstream}\n    keys:\n      - {{name: k, value: spare-key}}\n    model_rules:\n      - {{match: '*', fallbacks: [openai/gpt-image-1, other/gpt-image-1]}}\n"
    );
    setup.key_settings = "    budget: {max_usd: 10, period: 1d}\n".into();
    setup
}

fn assert_line(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "{line} missing from /metrics:\n{text}");
}

#[test]
fn a_fresh_gateway_exports_zero_series_build_info_and_process_metrics() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&setup(&mock.base_url()));
    let text = gw.metrics_text();

    for provider in ["openai", "other", "spare"] {
        for reason in refract::metrics::RETRY_REASONS {
            assert_line(
                &text,
                &format!(r#"refract_retries_total{{provider="{provider}",reason="{reason}"}} 0"#),
            );
        }
        for kind in ["connect", "first_byte", "idle", "total"] {
            assert_line(
                &text,
                &format!(r#"refract_upstream_timeouts_total{{kind="{kind}",provider="{provider}"}} 0"#),
            );
        }
        for line in [
            format!(r#"refract_upstream_queue_rejected_total{{provider="{provider}"}} 0"#),
            format!(r#"refract_upstream_in_flight{{provider="{provider}"}} 0"#),
            format!(r#"refract_request_duration_seconds_count{{provider="{provider}"}} 0"#),
            format!(r#"refract_request_duration_seconds_bucket{{provider="{provider}",le="900"}} 0"#),
            format!(r#"refract_upstream_duration_seconds_bucket{{provider="{provider}",le="600"}} 0"#),
            format!(r#"refract_cost_usd_total{{provider="{provider}"}} 0"#),
        ] {
            assert_line(&text, &line);
        }
    }
    // Circuits of the keys of providers with a breaker.
    assert_line(&text, r#"refract_circuit_open{key="primary",provider="openai"} 0"#);
    assert_line(&text, r#"refract_circuit_open{key="main",provider="other"} 0"#);
    // The configured fallback chain spare → openai → other.
    for (from, to) in [("spare", "openai"), ("spare", "other"), ("openai", "other")] {
        assert_line(
            &text,
            &format!(r#"refract_fallbacks_total{{from="{from}",to="{to}"}} 0"#),
        );
    }
    assert_line(&text, r#"refract_budget_limit_usd{id="team-a",scope="virtual_key"} 10"#);
    for (scope, limit) in refract::metrics::REFUSALS {
        assert_line(
            &text,
            &format!(r#"refract_governance_refusals_total{{limit="{limit}",scope="{scope}"}} 0"#),
        );
    }
    assert_line(&text, r#"refract_config_reloads_total{result="error"} 0"#);
    assert_line(&text, r#"refract_config_reloads_total{result="ok"} 0"#);

    let build_info = text
        .lines()
        .find(|l| l.starts_with("refract_build_info{"))
        .unwrap_or_else(|| panic!("no refract_build_info in:\n{text}"));
    assert!(build_info.ends_with("} 1"), "{build_info}");
    let version = format!(r#"version="{}""#, env!("CARGO_PKG_VERSION"));
    assert!(build_info.contains(&version), "{build_info}");
    assert!(
        build_info.contains("commit=\"") && build_info.contains("profile=\""),
        "{build_info}"
    );

    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
        assert!(value.parse::<f64>().unwrap() >= 0.0, "{name} {value}");
    }
    assert!(metric_in(&text, "process_resident_memory_bytes") > 0.0);
    assert!(metric_in(&text, "process_open_fds") > 0.0);
}

#[test]
fn a_reload_adds_the_series_of_what_it_adds() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&setup(&mock.base_url()));
    assert!(!gw.metrics_text().contains(r#"provider="late""#));
    let late = format!(
        "  - name: late\n    kind: bfl\n    base_url: {}\n    circuit_breaker: {{failures: 2, open_ms: 1000}}\n    keys:\n      - {{name: first, value: late-key}}\nvirtual_keys:\n",
        mock.base_url()
    );
    let yaml = gw.yaml.replacen("virtual_keys:\n", &late, 1).replace(
        "    budget: {max_usd: 10, period: 1d}\n",
        "    budget: {max_usd: 2.5, period: 1d}\n",
    );
    gw.reload(&yaml);
    let text = gw.metrics_text();
    assert_line(&text, r#"refract_circuit_open{key="first",provider="late"} 0"#);
    assert_line(
        &text,
        r#"refract_retries_total{provider="late",reason="rate_limited"} 0"#,
    );
    // bfl is asynchronous: it polls, so its poll timeouts are counted too.
    assert_line(
        &text,
        r#"refract_upstream_timeouts_total{kind="poll",provider="late"} 0"#,
    );
    assert_line(&text, r#"refract_upstream_queue_rejected_total{provider="late"} 0"#);
    assert_line(
        &text,
        r#"refract_budget_limit_usd{id="team-a",scope="virtual_key"} 2.5"#,
    );
    assert!(!text.contains(r#"refract_upstream_timeouts_total{kind="poll",provider="openai"}"#));
}

/// The metric names a PromQL expression reads (Grafana's `$variables` and `label_values(m, l)`
/// template queries allowed): identifiers outside strings, label matchers `{…}`, ranges `[…]`
/// and label lists (`by (…)`, `on (…)`…), that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 9] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
    ];
    // Aggregations may put `by (…)` between their name and their `(`.
    const OTHER_WORDS: [&str; 16] = [
        "bool",
        "offset",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let expr = match expr.trim().strip_prefix("label_values(") {
        // label_values(selector, label): the selector.
        Some(args) => args.rsplit_once(',').map_or(args, |(selector, _)| selector).to_string(),
        None => expr.to_string(),
    };
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening `open` at i to just past its matching `close` (strings inside skipped).
    let skip_group = |mut i: usize, open: char, close: char| {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    let q = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != q {
                        i += usize::from(chars[i] == '\\') + 1;
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += usize::from(chars[i] == '\\') + 1;
            }
            i += 1;
        } else if c == '$' {
            // A Grafana variable: $name or ${name}.
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(i, '{', '}');
            }
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (5m, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if KEYWORDS.contains(&word.as_str()) {
                if call {
                    i = skip_group(next, '(', ')'); // a label list
                }
            } else if !call && !OTHER_WORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn the_promql_reader_finds_metric_names_only() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (provider, le) (rate(refract_request_duration_seconds_bucket{job=~"$job",provider!="none"}[$__rate_interval]))) > 120"#
        ),
        ["refract_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names("refract_budget_remaining_usd / on (scope, id) group_left refract_budget_limit_usd < 0.1"),
        ["refract_budget_limit_usd", "refract_budget_remaining_usd"]
    );
    assert_eq!(
        names(r#"label_values(refract_build_info{job="a,b"}, job)"#),
        ["refract_build_info"]
    );
    assert_eq!(
        names("time() - max(process_start_time_seconds offset 5m) * 1e3"),
        ["process_start_time_seconds"]
    );
    assert_eq!(names(r#"sum(x{a="{b}"}) or vector(0)"#), ["x"]);
}

/// The metric names the gateway's metrics text exports: those of its `# TYPE` lines, with a
/// histogram's (or summary's) `_bucket`, `_sum` and `_count` series.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name.to_string());
    }
    names
}

/// Every `expr` string anywhere in `value` (panel targets), and every templating query.
fn queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dashboard_and_the_alerts_query_only_exported_metrics() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &default_success()));
    let gw = Gateway::start(&setup(&mock.base_url()));
    // An answer (images, cost, the budget's remaining) and a refusal (an error reason): the
    // series that exist only once something happened.
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let r = gw.edit(&valid_form(), &[("x-bf-vk", "sk-bf-not-a-key")]);
    assert_eq!(r.status, 401, "{}", r.text());
    gw.metric_settled("refract_requests_in_flight");
    let exported = exported_names(&gw.metrics_text());

    let dashboard: Value = serde_json::from_str(&read("conf/grafana/refract-dashboard.json")).unwrap();
    let mut dashboard_queries = Vec::new();
    queries(&dashboard, &mut dashboard_queries);
    let alerts: serde_yaml::Value = serde_yaml::from_str(&read("conf/prometheus/alerts.yaml")).unwrap();
    let rules = alerts["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter());
    let alert_queries: Vec<String> = rules.map(|r| r["expr"].as_str().unwrap().to_string()).collect();
    assert!(alert_queries.len() >= 6, "{alert_queries:?}");

    let mut read_names = BTreeSet::new();
    for (file, list) in [("dashboard", &dashboard_queries), ("alerts", &alert_queries)] {
        for query in list {
            let names = metric_names(query);
            assert!(!names.is_empty(), "{file}: no metric in {query}");
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{file}: {name} (in {query}) is not exported; exported: {exported:?}"
                );
                read_names.insert(name);
            }
        }
    }
    // The check covers what the issue asks the dashboard for.
    for name in [
        "refract_requests_total",
        "refract_request_duration_seconds_bucket",
        "refract_upstream_duration_seconds_bucket",
        "refract_requests_in_flight",
        "refract_fallbacks_total",
        "refract_retries_total",
        "refract_upstream_timeouts_total",
        "refract_circuit_open",
        "refract_cost_usd_total",
        "refract_images_total",
        "refract_budget_remaining_usd",
        "refract_budget_limit_usd",
        "refract_jobs",
        "refract_config_reloads_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "refract_build_info",
    ] {
        assert!(read_names.contains(name), "nothing queries {name}");
    }
}

#[test]
fn the_dashboard_imports_unchanged() {
    let dashboard: Value = serde_json::from_str(&read("conf/grafana/refract-dashboard.json")).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    // Every datasource reference is the variable, never a uid of the machine it was made on.
    fn datasources(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    if key == "datasource" && v.is_object() {
                        out.push(v.clone());
                    } else {
                        datasources(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&dashboard["panels"], &mut refs);
    datasources(&dashboard["templating"], &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for r in refs {
        assert_eq!(r["uid"], "${datasource}", "{r}");
    }
    // Panel ids are unique, and every panel but the rows has a query.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id {}",
            panel["id"]
        );
        if panel["type"] != "row" {
            assert!(!panel["targets"].as_array().unwrap().is_empty(), "{}", panel["title"]);
        }
    }
}
