//! The parser and the contract, replayed as a hostile or careless client would: model ids that
//! try to climb out of a provider's path, amplification in the form (fallbacks kept until the
//! end, a huge part header, a huge field name), empty fields as form builders send them, a
//! 405 without `Allow`, `"param": null` in error bodies, and a stream that ends in an `error`
//! event counted as a success.

use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// One provider of every kind, each in front of the mock (`{up}` is its `host:port`).
fn every_kind(up: &str) -> String {
    let key = |name: &str| format!("    keys:\n      - {{name: {name}, value: upstream-secret-{name}}}\n");
    [
        format!("  - name: cap-hf\n    kind: huggingface\n    base_url: http://{up}\n{}", key("hf")),
        format!("  - name: cap-fw\n    kind: fireworks\n    base_url: http://{up}/inference/v1\n{}", key("fw")),
        format!("  - name: cap-rep\n    kind: replicate\n    base_url: http://{up}/v1\n{}", key("rep")),
        format!("  - name: cap-az\n    kind: azure\n    base_url: http://{up}\n{}", key("az")),
        format!("  - name: cap-gem\n    kind: gemini\n    base_url: http://{up}/v1beta\n{}", key("gem")),
        format!(
            "  - name: cap-vx\n    kind: vertex\n    project: p\n    location: us-central1\n    base_url: http://{up}/v1\n{}",
            key("vx")
        ),
        format!(
            "  - name: cap-br\n    kind: bedrock\n    region: us-east-1\n    base_url: http://{up}\n    keys:\n      - {{name: br, aws_access_key_id: AKIDTEST, aws_secret_access_key: upstream-secret-br}}\n"
        ),
        format!("  - name: cap-st\n    kind: stability\n    base_url: http://{up}\n{}", key("st")),
        format!("  - name: cap-bfl\n    kind: bfl\n    base_url: http://{up}/v1\n{}", key("bfl")),
        format!("  - name: cap-xai\n    kind: xai\n    base_url: http://{up}/v1\n{}", key("xai")),
    ]
    .concat()
}

fn gateway_with_every_kind(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = every_kind(&mock.addr.to_string());
    Gateway::start(&setup)
}

/// A small edit request for `model`, with `more` fields before the image.
fn edit_form(model: &str, more: &[(&str, &str)]) -> Form {
    let mut f = Form::new().text("model", model).text("prompt", "make it blue");
    for (k, v) in more {
        f = f.text(k, v);
    }
    f.file("image", "in.png", "image/png", &tiny_png())
}

/// Ids outside each kind's grammar: dot segments (the path traversal of the finding), empty
/// segments, percent signs, query and fragment characters, backslashes, white space, control
/// characters, too many segments for the kind, and an over-long id.
fn bad_ids() -> Vec<(&'static str, String)> {
    let mut ids: Vec<(&str, String)> = Vec::new();
    for p in [
        "cap-hf", "cap-fw", "cap-rep", "cap-az", "cap-gem", "cap-vx", "cap-br", "cap-st", "cap-bfl", "cap-xai",
        "openai",
    ] {
        for id in [
            "../../../api/whoami-v2",
            "..",
            ".",
            "a/../b",
            "./a",
            "a/.",
            "a//b",
            "/a",
            "a/",
            "%2e%2e/x",
            "x?y=1",
            "x#y",
            "x\\..\\y",
            "x y",
            "x\u{1}y",
        ] {
            ids.push((p, id.to_string()));
        }
        ids.push((p, "m".repeat(300)));
    }
    // Too many segments for kinds whose ids are one name, or owner/name.
    for p in ["cap-az", "cap-gem", "cap-vx", "cap-st", "cap-bfl", "cap-xai", "cap-br"] {
        ids.push((p, "owner/name".into()));
    }
    for p in ["cap-hf", "cap-rep"] {
        ids.push((p, "owner/name/more".into()));
    }
    ids.push(("cap-fw", "accounts/a/models/m/x".into()));
    ids.push(("cap-fw", "accounts/../models/m".into()));
    ids.push(("cap-rep", "owner/name:not-a-version".into()));
    ids
}

/// Finding 7: a model id outside its provider's grammar is a 400 naming the field, as primary
/// (`model`) and as fallback (`fallbacks`, in every encoding), and no upstream connection is
/// ever opened: the operator's provider key never goes to a path the client chose.
#[test]
fn model_ids_outside_the_grammar_never_reach_a_provider() {
    let mock = MockUpstream::start();
    let gw = gateway_with_every_kind(&mock);
    for (provider, id) in bad_ids() {
        let model = format!("{provider}/{id}");
        let r = gw.edit(&edit_form(&model, &[]), &[("x-bf-vk", VK)]);
        assert_invalid(&r, "model");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("model id"), "{msg}");
        assert!(!r.text().contains("upstream-secret"), "{}", r.text());

        let r = gw.edit(
            &edit_form("openai/gpt-image-1", &[("fallbacks", &model)]),
            &[("x-bf-vk", VK)],
        );
        assert_invalid(&r, "fallbacks");
        let as_object = json!([{"provider": provider, "model": id}]).to_string();
        let r = gw.edit(
            &edit_form("openai/gpt-image-1", &[("fallbacks", &as_object)]),
            &[("x-bf-vk", VK)],
        );
        assert_invalid(&r, "fallbacks");
        let r = gw.edit(
            &edit_form(
                "openai/gpt-image-1",
                &[("fallbacks[0][provider]", provider), ("fallbacks[0][model]", &id)],
            ),
            &[("x-bf-vk", VK)],
        );
        assert_invalid(&r, "fallbacks");
    }
    assert_eq!(
        mock.connections(),
        0,
        "no request may reach a provider: {:?}",
        mock.requests()
    );
    // Ids in each kind's grammar still pass the check (they reach the mock).
    for model in [
        "cap-hf/timbrooks/instruct-pix2pix",
        "cap-hf/gpt2",
        "cap-rep/black-forest-labs/flux-kontext-pro",
        "cap-fw/accounts/fireworks/models/flux-kontext-pro",
        "cap-br/amazon.nova-canvas-v1:0",
        "cap-vx/imagegeneration@006",
        "openai/ft:gpt-image-1:org:custom:abc123",
    ] {
        let r = gw.edit(&edit_form(model, &[]), &[("x-bf-vk", VK)]);
        let code = r.json()["error"]["code"].clone();
        assert_ne!(code, "invalid_request", "{model}: {}", r.text());
    }
    assert!(mock.connections() > 0);
}

/// The bytes the gateway read of requests routed to `openai`.
fn bytes_read(gw: &Gateway) -> f64 {
    gw.metric(r#"refract_request_bytes_total{provider="openai"}"#)
}

/// A gateway in front of `mock` that closes after an early answer instead of lingering, so that
/// the bytes it reports reading are the parser's alone (a lingering close would read and
/// discard the rest, and count it).
fn parser_only_gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = "  linger_bytes: 0\n".into();
    Gateway::start(&setup)
}

/// Sends `form` (head first) while reading the answer, and returns it once the gateway has
/// accounted for the request.
fn send_and_account(gw: &Gateway, form: &Form) -> Response {
    let before = gw.metric(r#"refract_requests_total{model="gpt-image-1",provider="openai",status="400"}"#);
    let (r, _, _) = send_racing(
        gw.addr,
        post_head("/v1/images/edits", &[("x-bf-vk", VK)], form, None),
        form.body(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    wait_until("the request is accounted", || {
        gw.metric(r#"refract_requests_total{model="gpt-image-1",provider="openai",status="400"}"#) > before
    });
    r
}

/// Finding 8: 250 `fallbacks` fields of 60 KB are refused when the 11th arrives (the rest of
/// the body is not read); one field holding a JSON array of thousands of candidates is refused
/// without building them.
#[test]
fn fallbacks_past_the_limit_are_refused_as_they_arrive() {
    let mock = MockUpstream::start();
    let gw = parser_only_gateway(&mock);
    let padded = format!("{}other/gpt-image-1", " ".repeat(60_000));
    let mut form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
    for _ in 0..250 {
        form = form.text("fallbacks", &padded);
    }
    let form = form.file("image", "in.png", "image/png", &tiny_png());
    let total = form.body().len() as f64;
    let started = Instant::now();
    let r = send_and_account(&gw, &form);
    assert_invalid(&r, "fallbacks");
    assert!(r.text().contains("at most 10"), "{}", r.text());
    let read = bytes_read(&gw);
    assert!(
        read < 3_000_000.0,
        "the gateway read {read} of {total} bytes: the fields past the 11th must not be read"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // One field, a JSON array of 3,000 candidates (60 KB), then 10 MB more.
    let many = serde_json::to_string(&vec!["other/gpt-image-1"; 3_000]).unwrap();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .text("fallbacks", &many)
        .file("image", "in.png", "image/png", &big_png_like(10 << 20, 7));
    let before = bytes_read(&gw);
    let r = send_and_account(&gw, &form);
    assert_invalid(&r, "fallbacks");
    let read = bytes_read(&gw) - before;
    assert!(read < 3_000_000.0, "read {read} bytes of a refused 10 MB request");
    // A large upload starts streaming upstream once `model` passed; the refusal abandons it
    // unfinished, so the provider never receives a complete request.
    assert_eq!(mock.received(), 0, "{:?}", mock.requests());
    gw.assert_still_serves();
}

/// The CPU time this process (gateway and test) has used so far.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 after the name), in
    // clock ticks of 1/100 s on Linux.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Finding 8: a part header of 5 MB (one endless header line) is refused as soon as it passes
/// `limits.max_part_header_bytes`, without reading the rest or rescanning it chunk after chunk.
#[test]
fn a_huge_part_header_is_refused_quickly() {
    let mock = MockUpstream::start();
    let gw = parser_only_gateway(&mock);
    let base = Form::new();
    let header = format!(
        "--{}\r\nContent-Disposition: form-data; name=\"prompt\"\r\nX-Pad: {}\r\n\r\nmake it blue\r\n",
        base.boundary,
        "a".repeat(5 << 20)
    );
    let form = base.text("model", "openai/gpt-image-1").raw(header.as_bytes()).file(
        "image",
        "in.png",
        "image/png",
        &tiny_png(),
    );
    let (cpu, wall) = (process_cpu(), Instant::now());
    let r = send_and_account(&gw, &form);
    let (cpu, wall) = (process_cpu() - cpu, wall.elapsed());
    let v = assert_gateway_error(&r, 400, "malformed_multipart", "invalid_request_error", None);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_part_header_bytes"),
        "{v}"
    );
    let read = bytes_read(&gw);
    assert!(read < 1_000_000.0, "read {read} bytes of a 5 MB part header");
    assert!(
        cpu < Duration::from_secs(2) && wall < Duration::from_secs(10),
        "{cpu:?} CPU, {wall:?}"
    );
    // A large upload starts streaming upstream once `model` passed; the refusal abandons it
    // unfinished, so the provider never receives a complete request.
    assert_eq!(mock.received(), 0, "{:?}", mock.requests());
}

/// A part header of `name`, with a small text value.
fn raw_text(form: &Form, name: &str, value: &str) -> Vec<u8> {
    format!(
        "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
        form.boundary
    )
    .into_bytes()
}

/// Finding 8: a 1 MB field name is refused and never forwarded; a field name over 256 bytes
/// likewise; an unknown field whose name is not a plain ASCII token is not forwarded (while a
/// plain one still is), both on the spool path and on the streamed-upload path.
#[test]
fn long_and_odd_field_names_are_never_forwarded() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    for name in ["n".repeat(1 << 20), "n".repeat(257)] {
        let base = Form::new();
        let part = raw_text(&base, &name, "v");
        let form = base
            .text("model", "openai/gpt-image-1")
            .text("prompt", "p")
            .raw(&part)
            .file("image", "in.png", "image/png", &tiny_png());
        let (r, _, _) = send_racing(
            gw.addr,
            post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None),
            form.body(),
        );
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(!r.text().contains(&name[..64]), "the name is not echoed: {}", r.text());
    }
    // A large upload starts streaming upstream once `model` passed; the refusal abandons it
    // unfinished, so the provider never receives a complete request.
    assert_eq!(mock.received(), 0, "{:?}", mock.requests());

    for image in [tiny_png(), big_png_like(400 << 10, 3)] {
        let base = Form::new();
        let odd = raw_text(&base, "na me", "odd");
        let form = base
            .text("model", "openai/gpt-image-1")
            .text("prompt", "p")
            .raw(&odd)
            .text("safety_identifier", "plain")
            .file("image", "in.png", "image/png", &image);
        let r = gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for rec in mock.requests() {
        let parts = rec.parts();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert!(!names.contains(&"na me"), "{names:?}");
        assert!(names.contains(&"safety_identifier"), "{names:?}");
    }
    assert_eq!(mock.requests().len(), 2);
}

/// Finding 10: empty optional fields, as Postman and form builders send them, are absent (not
/// a 400, and not forwarded); an empty `model` or `prompt` is still the 400 it was.
#[test]
fn empty_optional_fields_are_absent() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let empty = [
        "type",
        "n",
        "size",
        "response_format",
        "stream",
        "background",
        "input_fidelity",
        "partial_images",
        "quality",
        "output_format",
        "num_inference_steps",
        "seed",
        "output_compression",
        "negative_prompt",
        "user",
        "fallbacks",
        "safety_identifier",
    ];
    let mut form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
    for name in empty {
        form = form.text(name, "");
    }
    let form = form
        .file("mask", "", "application/octet-stream", b"")
        .file("image", "in.png", "image/png", &tiny_png());
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = mock.only_request().parts();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["model", "prompt", "image"], "empty fields are not forwarded");

    let r = gw.edit(
        &Form::new()
            .text("model", "")
            .text("prompt", "p")
            .file("image", "in.png", "image/png", &tiny_png()),
        &[("x-bf-vk", VK)],
    );
    assert_invalid(&r, "model");
    let r = gw.edit(
        &Form::new().text("model", "openai/gpt-image-1").text("prompt", "").file(
            "image",
            "in.png",
            "image/png",
            &tiny_png(),
        ),
        &[("x-bf-vk", VK)],
    );
    assert_invalid(&r, "prompt");
}

/// Finding 10: a 405 says which methods the path takes, in `Allow` and in its message.
#[test]
fn method_not_allowed_carries_allow() {
    let gw = Gateway::start(&Setup::new("http://127.0.0.1:9/v1"));
    for (method, path, allow) in [
        ("GET", "/v1/images/edits", "POST"),
        ("PUT", "/openai/v1/images/edits", "POST"),
        ("POST", "/health", "GET, HEAD"),
        ("DELETE", "/health", "GET, HEAD"),
    ] {
        let mut c = gw.connect();
        c.send(format!("{method} {path} HTTP/1.1\r\nHost: g\r\nContent-Length: 0\r\n\r\n").as_bytes());
        let r = c.read_response();
        let v = assert_gateway_error(&r, 405, "method_not_allowed", "invalid_request_error", None);
        assert_eq!(r.header("allow").as_deref(), Some(allow), "{method} {path}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("use {allow}")), "{msg}");
    }
}

/// Every `param` in `v`, anywhere, is a string.
fn assert_no_null_param(v: &Value, what: &str) {
    match v {
        Value::Object(o) => {
            if let Some(p) = o.get("param") {
                assert!(p.is_string(), "{what}: param must be a string or absent: {v}");
            }
            o.values().for_each(|x| assert_no_null_param(x, what));
        }
        Value::Array(a) => a.iter().for_each(|x| assert_no_null_param(x, what)),
        _ => {}
    }
}

/// Finding 10: no error body carries `"param": null` (the seed schema's `param` is a string):
/// gateway errors without a field omit it, provider errors drop a null one.
#[test]
fn error_bodies_never_carry_a_null_param() {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = "  max_body_bytes: 100000\n".into();
    let gw = Gateway::start(&setup);
    let mut bodies: Vec<(String, Response)> = Vec::new();
    bodies.push(("401".into(), gw.edit(&valid_form(), &[])));
    bodies.push(("404".into(), Gateway::get(gw.addr, "/nothing")));
    bodies.push(("405".into(), Gateway::get(gw.addr, "/v1/images/edits")));
    let mut c = gw.connect();
    c.send(b"POST /v1/images/edits HTTP/1.1\r\nHost: g\r\nx-bf-vk: sk-bf-team-a-VIRTUALKEY-1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    bodies.push(("415".into(), c.read_response()));
    // The JSON form's own errors (issue 18 item 6).
    let mut c = gw.connect();
    c.send(b"POST /v1/images/edits HTTP/1.1\r\nHost: g\r\nx-bf-vk: sk-bf-team-a-VIRTUALKEY-1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    bodies.push(("json".into(), c.read_response()));
    let big = valid_form().file("image[]", "b.png", "image/png", &big_png_like(200_000, 1));
    let (r, _, _) = send_racing(
        gw.addr,
        post_head("/v1/images/edits", &[("x-bf-vk", VK)], &big, None),
        big.body(),
    );
    bodies.push(("413".into(), r));
    bodies.push((
        "malformed".into(),
        gw.edit(&Form::new().raw(b"garbage"), &[("x-bf-vk", VK)]),
    ));
    mock.push(Reply::json(
        500,
        &json!({"error": {"message": "boom", "type": null, "param": null, "code": null}}),
    ));
    bodies.push(("provider 500".into(), gw.edit(&valid_form(), &[("x-bf-vk", VK)])));
    mock.push(Reply::json(
        400,
        &json!({"error": {"message": "bad size", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}),
    ));
    bodies.push(("provider 400".into(), gw.edit(&valid_form(), &[("x-bf-vk", VK)])));
    for (what, r) in &bodies {
        assert!(r.status >= 400, "{what}: {}", r.text());
        let v = r.json();
        assert_no_null_param(&v, what);
        for key in ["type", "code"] {
            assert!(!v["error"].get(key).is_some_and(Value::is_null), "{what}: {v}");
        }
    }
    // A provider's string param is kept.
    assert_eq!(bodies.last().unwrap().1.json()["error"]["param"], "size");
}

/// Finding 9: a stream that ends in an `error` event (the provider's, or a cut-off stream) is
/// counted with the failure's status in `refract_requests_total`, not as a 200; a complete
/// stream stays a 200.
#[test]
fn a_stream_ending_in_an_error_event_counts_as_a_failure() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    let gw = Gateway::start(&setup);
    let series =
        |status: u16| format!(r#"refract_requests_total{{model="sim-image-1",provider="demo",status="{status}"}}"#);
    let stream_form = |prompt: &str| {
        Form::new()
            .text("model", "demo/sim-image-1")
            .text("prompt", prompt)
            .text("stream", "true")
            .text("partial_images", "2")
            .file("image", "in.png", "image/png", &tiny_png())
    };
    for (prompt, reason) in [
        ("simulate-stream-error:1", "provider_error"),
        ("simulate-stream-truncate:1", "upstream_protocol_error"),
    ] {
        let failed = gw.metric(&series(502));
        let r = gw.edit(&stream_form(prompt), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200);
        assert!(r.text().contains("event: error"), "{}", r.text());
        wait_until(&format!("{prompt}: counted as 502, not 200"), || {
            gw.metric(&series(502)) > failed
        });
        let rejected = format!(r#"refract_rejected_requests_total{{reason="{reason}"}}"#);
        wait_until("the stream is accounted", || gw.metric(&rejected) >= 1.0);
    }
    wait_until("both failed streams count as 502", || gw.metric(&series(502)) == 2.0);
    assert_eq!(gw.metric(&series(200)), 0.0, "{}", gw.metrics_text());
    let r = gw.edit(&stream_form("a fine edit"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200);
    assert!(!r.text().contains("event: error"));
    wait_until("a complete stream counts as 200", || gw.metric(&series(200)) == 1.0);
}
