//! Logs and traces of a `refract` process: its JSON log lines parsed field by field (the
//! startup summary, the access record of an ok edit, a provider error, a fallback, a stream and
//! a 401; health probes at debug; no secret or prompt anywhere), and its spans as an OTLP/HTTP
//! receiver in this test decodes them (the span tree, and the client's trace id carried to
//! the spans and to the provider's `traceparent`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::process::Refract;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The prompt of every edit here: it must never be logged.
const PROMPT: &str = "paint-the-PROMPT-TEXT-secretly";

/// The access record's fields, in order (the contract).
const ACCESS_FIELDS: [&str; 17] = [
    "request_id",
    "virtual_key",
    "method",
    "route",
    "provider",
    "model",
    "status",
    "outcome",
    "stream",
    "attempts",
    "fallback",
    "upstream_ms",
    "total_ms",
    "bytes_in",
    "bytes_out",
    "images",
    "cost_usd",
];

/// A config over `primary` (provider `openai`, no retries), `backup` (provider `backup`) and the
/// built-in simulator (provider `demo`), with JSON logs and the `extra` sections.
fn yaml(listen: SocketAddr, metrics: SocketAddr, dir: &std::path::Path, up: (&str, &str), extra: &str) -> String {
    let sim = free_addr();
    let (primary, backup) = up;
    let dir = dir.display();
    format!(
        "server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 0
listeners:
  - address: {listen}
metrics:
  address: {metrics}
simulator:
  address: {sim}
store: {{kind: embedded, path: {dir}/jobs.db}}
objects: {{kind: fs, path: {dir}/objects}}
{extra}providers:
  - name: openai
    kind: openai
    base_url: {primary}
    retries: 0
    keys:
      - {{name: primary, value: {PROVIDER_KEY}}}
  - name: backup
    kind: openai
    base_url: {backup}
    keys:
      - {{name: b, value: {OTHER_PROVIDER_KEY}}}
  - name: demo
    kind: openai
    base_url: http://{sim}/v1
    keys:
      - {{name: sim, value: sim-key}}
virtual_keys:
  - id: team-a
    key: {VK}
"
    )
}

/// The process's metrics text.
fn metrics_text(gw: &Refract) -> String {
    String::from_utf8(Gateway::get(gw.metrics, "/metrics").body).unwrap()
}

/// Posts `form` to the process and reads the answer.
fn edit(addr: SocketAddr, form: &Form, headers: &[(&str, &str)]) -> Response {
    let mut c = Conn::open(addr);
    c.send(&post_head("/v1/images/edits", headers, form, None));
    c.send(&form.body());
    c.read_response()
}

fn form(model: &str) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", PROMPT)
        .file("image", "in.png", "image/png", &tiny_png())
}

/// The JSON access records logged so far, by request id.
fn access_record(gw: &Refract, request_id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.log();
        let found = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["target"] == "refract::access" && v["request_id"] == request_id);
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no access record for {request_id}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks `record` has every field of the contract, in order, and the values of `expected`.
fn check_record(record: &Value, expected: &Value) {
    let keys: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
    let order: Vec<&str> = keys.iter().copied().filter(|k| ACCESS_FIELDS.contains(k)).collect();
    assert_eq!(order, ACCESS_FIELDS, "{record}");
    assert_eq!(record["level"], "INFO", "{record}");
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&record[k], v, "field {k} of {record}");
    }
    assert!(record["total_ms"].as_f64().unwrap() > 0.0, "{record}");
    assert!(record["bytes_in"].as_u64().unwrap() > 0, "{record}");
    assert!(record["bytes_out"].as_u64().unwrap() > 0, "{record}");
}

#[test]
fn json_access_records_field_by_field_and_no_secret() {
    let primary = MockUpstream::start();
    let backup = MockUpstream::start();
    backup.always(Reply::json(200, &default_success()));
    let extra = "log:\n  format: json\n  filters:\n    refract::access: debug\n    pingora_core: warn\n";
    let up = (primary.base_url(), backup.base_url());
    // RUST_LOG (set by the wrapper) would override the config's filters: unset it.
    let gw = Refract::start(|l, m, d| yaml(l, m, d, (&up.0, &up.1), extra), &[("RUST_LOG", "")]);

    // The startup summary.
    let log = gw.log();
    let summary = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "refract::startup")
        .unwrap_or_else(|| panic!("no startup summary:\n{log}"));
    assert_eq!(summary["level"], "INFO");
    assert_eq!(summary["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(summary["listeners"], gw.addr.to_string());
    assert_eq!(summary["metrics"], gw.metrics.to_string());
    assert_eq!(summary["providers"], "openai=3");
    assert_eq!(summary["virtual_keys"], 1);
    assert_eq!(summary["store"], "embedded");
    assert_eq!(summary["objects"], "fs");
    // Every outcome of every provider is a series from the start.
    assert!(metrics_text(&gw).contains(r#"refract_request_outcomes_total{outcome="timeout",provider="backup"} 0"#));

    // An ok edit.
    primary.push(Reply::json(200, &default_success()));
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[("x-bf-vk", VK), ("x-request-id", "req-ok")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = access_record(&gw, "req-ok");
    check_record(
        &rec,
        &json!({"virtual_key": "team-a", "method": "POST", "route": "/v1/images/edits", "provider": "openai",
                "model": "gpt-image-1", "status": 200, "outcome": "ok", "stream": "-", "attempts": 1,
                "fallback": 0, "images": 1}),
    );
    assert!(rec["cost_usd"].as_str().unwrap().parse::<f64>().unwrap() > 0.0, "{rec}");

    // A provider error (a 400 of the provider's: not retried, no fallback).
    primary.push(Reply::json(
        400,
        &json!({"error": {"message": "bad", "type": "invalid_request_error"}}),
    ));
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[("x-bf-vk", VK), ("x-request-id", "req-perr")],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    check_record(
        &access_record(&gw, "req-perr"),
        &json!({"virtual_key": "team-a", "provider": "openai", "status": 400, "outcome": "provider_error",
                "attempts": 1, "fallback": 0, "images": 0, "cost_usd": "-"}),
    );

    // A fallback: the primary's 503, then the backup answers.
    primary.push(Reply::json(
        503,
        &json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ));
    let f = form("openai/gpt-image-1").text("fallbacks", "backup/gpt-image-1");
    let r = edit(gw.addr, &f, &[("x-bf-vk", VK), ("x-request-id", "req-fb")]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = access_record(&gw, "req-fb");
    check_record(
        &rec,
        &json!({"provider": "backup", "model": "gpt-image-1", "status": 200, "outcome": "ok", "attempts": 2,
                "fallback": 1, "images": 1}),
    );
    assert!(rec["upstream_ms"].as_u64().is_some(), "{rec}");

    // A stream, from the simulator.
    let f = form("demo/sim-image-1")
        .text("stream", "true")
        .text("partial_images", "1");
    let r = edit(gw.addr, &f, &[("x-bf-vk", VK), ("x-request-id", "req-stream")]);
    assert_eq!(r.status, 200, "{}", r.text());
    check_record(
        &access_record(&gw, "req-stream"),
        &json!({"provider": "demo", "model": "sim-image-1", "status": 200, "outcome": "ok", "stream": "complete",
                "attempts": 1, "fallback": 0}),
    );

    // A 401: no key id, no provider.
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[("x-bf-vk", "sk-bf-not-a-key"), ("x-request-id", "req-401")],
    );
    assert_eq!(r.status, 401);
    check_record(
        &access_record(&gw, "req-401"),
        &json!({"virtual_key": "-", "provider": "-", "model": "-", "status": 401, "outcome": "client_error",
                "attempts": 0}),
    );

    // Health at debug (this config logs refract::access at debug), not counted as a request.
    let h = Gateway::call(gw.addr, "GET", "/health", &[("x-request-id", "req-health")]);
    assert_eq!(h.status, 200);
    let rec = access_record(&gw, "req-health");
    assert_eq!(rec["level"], "DEBUG", "{rec}");
    assert_eq!(rec["route"], "/health");
    let metrics = metrics_text(&gw);
    assert!(!metrics.contains(r#"provider="none",status="200""#), "{metrics}");
    assert_eq!(
        gw.metric(r#"refract_request_outcomes_total{outcome="ok",provider="openai"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"refract_request_outcomes_total{outcome="provider_error",provider="openai"}"#),
        1.0
    );
    assert_eq!(
        gw.metric(r#"refract_request_outcomes_total{outcome="client_error",provider="none"}"#),
        1.0
    );

    // An async job's submission: its key id too.
    let f = form("backup/gpt-image-1");
    let mut c = Conn::open(gw.addr);
    c.send(&post_head(
        "/v1/async/images/edits",
        &[("x-bf-vk", VK), ("x-request-id", "req-job")],
        &f,
        None,
    ));
    c.send(&f.body());
    let r = c.read_response();
    assert_eq!(r.status, 202, "{}", r.text());
    let rec = access_record(&gw, "req-job");
    assert_eq!(rec["virtual_key"], "team-a", "{rec}");
    assert_eq!(rec["status"], 202, "{rec}");
    assert_eq!(rec["outcome"], "ok", "{rec}");

    // Scrapes at debug too (the metrics text was read above).
    let log = gw.log();
    let scrape = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "refract::access" && v["message"] == "metrics scrape GET /metrics")
        .unwrap_or_else(|| panic!("no scrape record:\n{log}"));
    assert_eq!(scrape["level"], "DEBUG");

    // Every line is JSON; no secret and no prompt anywhere.
    for line in log.lines() {
        assert!(serde_json::from_str::<Value>(line).is_ok(), "not a JSON line: {line}");
    }
    for secret in [
        VK,
        PROVIDER_KEY,
        OTHER_PROVIDER_KEY,
        "sim-key",
        PROMPT,
        "sk-bf-not-a-key",
    ] {
        assert!(!log.contains(secret), "{secret} logged:\n{log}");
    }
}

#[test]
fn text_access_lines_and_health_hidden_at_info() {
    let primary = MockUpstream::start();
    primary.always(Reply::json(200, &default_success()));
    let up = (primary.base_url(), primary.base_url());
    let gw = Refract::start(|l, m, d| yaml(l, m, d, (&up.0, &up.1), ""), &[("RUST_LOG", "")]);
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[("x-bf-vk", VK), ("x-request-id", "req-text")],
    );
    assert_eq!(r.status, 200);
    let h = Gateway::call(gw.addr, "GET", "/health", &[("x-request-id", "req-health-text")]);
    assert_eq!(h.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = gw.log();
        if let Some(l) = log.lines().find(|l| l.contains("request_id=req-text ")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "no access line:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains(" INFO refract::access: "), "{line}");
    let fields = line.split("refract::access: ").nth(1).unwrap();
    let keys: Vec<&str> = fields.split(' ').map(|kv| kv.split('=').next().unwrap()).collect();
    assert_eq!(keys, ACCESS_FIELDS, "{line}");
    assert!(fields.starts_with("request_id=req-text virtual_key=team-a method=POST route=/v1/images/edits provider=openai model=gpt-image-1 status=200 outcome=ok stream=- attempts=1 fallback=0 "), "{line}");
    // The startup summary, in text too.
    assert!(gw.log().contains("refract starting"), "{}", gw.log());
    // Health at debug: absent at info.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!gw.log().contains("req-health-text"), "{}", gw.log());
}

/// An OTLP/HTTP receiver: decodes every `ExportTraceServiceRequest` POSTed to it.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let sink = sink.clone();
                std::thread::spawn(move || serve_otlp(stream, &sink));
            }
        });
        Receiver { addr, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// Reads requests on one connection (keep-alive) until it closes; each body decoded.
fn serve_otlp(mut stream: TcpStream, sink: &Mutex<Vec<Span>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        assert!(head.starts_with("post /v1/traces "), "{head}");
        assert!(head.contains("content-type: application/x-protobuf"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .expect("a Content-Length");
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request = ExportTraceServiceRequest::decode(&buf[head_end..head_end + len]).unwrap();
        buf.drain(..head_end + len);
        let mut spans = sink.lock().unwrap();
        for rs in request.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(service, Some(AnyValue::StringValue("edge-gw".into())));
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
    }
}

/// The value of attribute `key` of `span`, as text.
fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .clone()?;
    Some(match value {
        AnyValue::StringValue(s) => s,
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[test]
fn spans_follow_the_clients_traceparent_to_the_provider() {
    let receiver = Receiver::start();
    let primary = MockUpstream::start();
    primary.always(Reply::json(200, &default_success()));
    let up = (primary.base_url(), primary.base_url());
    let extra = format!(
        "tracing:\n  otlp_endpoint: http://{}/v1/traces\n  sample_ratio: 0.0\n  service_name: edge-gw\n",
        receiver.addr
    );
    let mut gw = Refract::start(|l, m, d| yaml(l, m, d, (&up.0, &up.1), &extra), &[]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    // The client's trace is sampled: honoured even at sample_ratio 0 (parent-based).
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[
            ("x-bf-vk", VK),
            ("x-request-id", "req-traced"),
            ("traceparent", &traceparent),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // Not sampled without a parent (ratio 0): no trace for this one.
    let r = edit(
        gw.addr,
        &form("openai/gpt-image-1"),
        &[("x-bf-vk", VK), ("x-request-id", "req-untraced")],
    );
    assert_eq!(r.status, 200);
    let upstream = primary.requests();
    assert_eq!(upstream.len(), 2);
    let sent = upstream[0]
        .header("traceparent")
        .expect("a traceparent to the provider");
    // SIGTERM: the spans still queued are flushed before the process exits.
    let status = gw.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", gw.log());
    let spans = receiver.spans();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let request = named("request");
    assert_eq!(
        request.len(),
        1,
        "one sampled request: {:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    let request = request[0];
    assert_eq!(hex(&request.trace_id), trace_id);
    assert_eq!(hex(&request.parent_span_id), client_span);
    assert_eq!(attr(request, "request_id").as_deref(), Some("req-traced"));
    assert_eq!(attr(request, "route").as_deref(), Some("/v1/images/edits"));
    assert_eq!(attr(request, "status").as_deref(), Some("200"));
    assert_eq!(attr(request, "outcome").as_deref(), Some("ok"));
    for s in &spans {
        assert_eq!(hex(&s.trace_id), trace_id, "span {} in another trace", s.name);
    }
    let child_of = |parent: &Span, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.parent_span_id == parent.span_id)
            .collect()
    };
    assert_eq!(child_of(request, "parse").len(), 1);
    assert_eq!(child_of(request, "answer").len(), 1);
    let attempt = child_of(request, "attempt");
    assert_eq!(attempt.len(), 1);
    let attempt = attempt[0];
    assert_eq!(attr(attempt, "provider").as_deref(), Some("openai"));
    assert_eq!(attr(attempt, "model").as_deref(), Some("gpt-image-1"));
    assert_eq!(attr(attempt, "candidate").as_deref(), Some("0"));
    assert_eq!(attr(attempt, "retry").as_deref(), Some("0"));
    let exchange = child_of(attempt, "exchange");
    assert_eq!(exchange.len(), 1);
    let exchange = exchange[0];
    assert_eq!(attr(exchange, "provider").as_deref(), Some("openai"));
    assert_eq!(attr(exchange, "status").as_deref(), Some("200"));
    // The provider's traceparent names the exchange span, in the client's trace.
    assert_eq!(sent, format!("00-{trace_id}-{}-01", hex(&exchange.span_id)));
    // The unsampled request's upstream call carries no sampled traceparent.
    let unsampled = upstream[1].header("traceparent");
    assert!(unsampled.as_deref().is_none_or(|t| t.ends_with("-00")), "{unsampled:?}");
}

#[test]
fn a_reload_applies_a_changed_log_filter() {
    let primary = MockUpstream::start();
    let up = (primary.base_url(), primary.base_url());
    let gw = Refract::start(|l, m, d| yaml(l, m, d, (&up.0, &up.1), ""), &[("RUST_LOG", "")]);
    let probe = |id: &str| {
        let h = Gateway::call(gw.addr, "GET", "/health", &[("x-request-id", id)]);
        assert_eq!(h.status, 200);
    };
    probe("probe-before");
    // The same config, with health probes shown: SIGHUP reloads it.
    let path = gw.dir.path().join("refract.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        "providers:\n",
        "log:\n  filters:\n    refract::access: debug\nproviders:\n",
    );
    std::fs::write(&path, text).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.log().contains("config reloaded from") {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    probe("probe-after");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = gw.log();
        if let Some(line) = log.lines().find(|l| l.contains("request_id=probe-after ")) {
            assert!(line.contains(" DEBUG refract::access: "), "{line}");
            break;
        }
        assert!(Instant::now() < deadline, "no debug record after the reload:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!gw.log().contains("probe-before"), "{}", gw.log());
}
