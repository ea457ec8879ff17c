//! `stream=true` end to end: a real gateway in this process in front of the built-in simulator
//! (or the scripted mock upstream), read as raw HTTP/1.1 so the event framing, the sequence
//! numbers, the in-band errors and the chunked end of the body are all visible.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::codec::sse::SseDecoder;
use refract::imaging::{decode_png, encode_png, Rgba};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SIM_MODEL: &str = "demo/sim-image-1";
const BIFROST_PATH: &str = "/v1/images/edits";
const OPENAI_PATH: &str = "/openai/v1/images/edits";
const PARTIAL: &str = "image_edit.partial_image";
const COMPLETED: &str = "image_edit.completed";

/// A gateway with the simulator (`simulator_settings` are extra `simulator:` lines); the
/// `openai` providers point at a port nothing listens on.
fn sim_gateway(simulator_settings: &str) -> Gateway {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.simulator_settings = simulator_settings.to_string();
    Gateway::start(&setup)
}

/// A `w`×`h` opaque gradient, every row different (so partial images show their progress).
fn gradient(w: u32, h: u32) -> Rgba {
    let mut pixels = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h {
        for x in 0..w {
            pixels.extend_from_slice(&[(x * 15) as u8, (y * 30) as u8, ((x + y) * 7) as u8, 255]);
        }
    }
    Rgba {
        width: w,
        height: h,
        pixels,
    }
}

/// An edit form for the simulator; `stream` adds `stream=true` and `partial_images`.
fn sim_form(prompt: &str, n: u32, stream: Option<u32>, input: &Rgba) -> Form {
    let mut f = Form::new()
        .text("model", SIM_MODEL)
        .text("prompt", prompt)
        .text("n", &n.to_string());
    if let Some(partials) = stream {
        f = f.text("stream", "true").text("partial_images", &partials.to_string());
    }
    f.file("image", "in.png", "image/png", &encode_png(input).unwrap())
}

/// POSTs `form` to `path` on a new connection and reads the whole answer (a chunked body must
/// end with its terminating chunk, or this panics).
fn post(gw: &Gateway, path: &str, form: &Form) -> Response {
    let mut c = gw.connect();
    c.send(&post_head(path, &[("x-bf-vk", VK)], form, None));
    c.send(&form.body());
    c.read_response()
}

/// The answer's events as (event name, data); the body must end on an event boundary.
fn events(r: &Response) -> Vec<(Option<String>, String)> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).expect("a well-formed event stream");
    assert_eq!(d.finish(), 0, "the stream must end on an event boundary");
    evs.into_iter().map(|e| (e.event, e.data)).collect()
}

fn json_of(data: &str) -> Value {
    serde_json::from_str(data).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {data}"))
}

/// Decodes an event's (or a data item's) `b64_json` as a PNG.
fn image_of(v: &Value) -> Rgba {
    let b64 = v["b64_json"].as_str().unwrap_or_else(|| panic!("no b64_json: {v}"));
    let raw = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    assert!(raw.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    decode_png(&raw).expect("a valid PNG")
}

/// The simulator's non-streamed answer to the same edit.
fn whole_answer(gw: &Gateway, prompt: &str, n: u32, input: &Rgba) -> Vec<Rgba> {
    let r = post(gw, BIFROST_PATH, &sim_form(prompt, n, None, input));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["data"].as_array().unwrap().iter().map(image_of).collect()
}

/// Names of the events, `None` shown as `data`.
fn names(evs: &[(Option<String>, String)]) -> Vec<&str> {
    evs.iter().map(|(n, _)| n.as_deref().unwrap_or("data")).collect()
}

/// Asserts `sequence_number` is 0, 1, 2, … over the image events (and `chunk_index` with it).
fn assert_sequence(evs: &[Value]) {
    for (i, v) in evs.iter().enumerate() {
        assert_eq!(v["sequence_number"], i as u64, "{v}");
        assert_eq!(v["extra_fields"]["chunk_index"], i as u64, "{v}");
    }
}

/// Asserts a follow-up non-streamed request is served on a new connection.
fn assert_serves(gw: &Gateway) {
    let r = post(gw, BIFROST_PATH, &sim_form("still there", 1, None, &gradient(4, 4)));
    assert_eq!(r.status, 200, "follow-up request failed: {}", r.text());
}

/// Partials then the completed event, every field the spec lists, pixels equal to the
/// non-streamed answer, no `[DONE]`.
#[test]
fn partials_then_completed_with_every_field() {
    let gw = sim_gateway("");
    let input = gradient(16, 8);
    let prompt = "paint it while streaming";
    let r = post(&gw, BIFROST_PATH, &sim_form(prompt, 1, Some(2), &input));
    assert_eq!(r.header("cache-control").as_deref(), Some("no-cache"));
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, PARTIAL, COMPLETED]);
    let text = r.text();
    assert!(!text.contains("[DONE]"), "no [DONE] on /v1/images/edits: {text}");
    // Every event is an `event:` line, then `data:`.
    let blocks: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(blocks.len(), 3, "{text}");
    for (block, (name, _)) in blocks.iter().zip(&evs) {
        let mut lines = block.lines();
        assert_eq!(
            lines.next(),
            Some(format!("event: {}", name.as_deref().unwrap()).as_str())
        );
        assert!(lines.next().unwrap().starts_with("data: {"), "{block}");
    }

    let values: Vec<Value> = evs.iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    for (v, (name, _)) in values.iter().zip(&evs) {
        assert_eq!(v["type"], name.as_deref().unwrap());
        assert!(v["created_at"].as_u64().is_some_and(|t| t > 1_600_000_000), "{v}");
        assert_eq!(v["size"], "16x8");
        assert_eq!(v["quality"], "auto");
        assert_eq!(v["background"], "opaque");
        assert_eq!(v["output_format"], "png");
        let extra = &v["extra_fields"];
        assert_eq!(extra["request_type"], "image_edit_stream");
        assert_eq!(extra["provider"], "demo");
        assert_eq!(extra["model_requested"], "sim-image-1");
        assert!(extra["latency"].is_u64(), "{v}");
    }
    assert_eq!(values[0]["partial_image_index"], 0);
    assert_eq!(values[1]["partial_image_index"], 1);
    let usage = &values[2]["usage"];
    assert!(usage["total_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert!(
        usage["input_tokens_details"]["image_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );
    assert!(usage["input_tokens_details"]["text_tokens"].is_u64(), "{usage}");
    assert!(
        usage["output_tokens_details"]["image_tokens"].as_u64().unwrap() > 0,
        "{usage}"
    );

    // The completed image is exactly the non-streamed answer; partial k has its first
    // 8·(k+1)/3 rows from it and the rest from the input.
    let completed = image_of(&values[2]);
    let whole = whole_answer(&gw, prompt, 1, &input);
    assert_eq!(completed, whole[0], "streamed and non-streamed images differ");
    assert_ne!(completed, input);
    for (k, v) in values[..2].iter().enumerate() {
        let partial = image_of(v);
        assert_eq!((partial.width, partial.height), (16, 8));
        let cut = (8 * (k + 1) / 3) * 16 * 4;
        assert_eq!(partial.pixels[..cut], completed.pixels[..cut], "partial {k}");
        assert_eq!(partial.pixels[cut..], input.pixels[cut..], "partial {k}");
    }
}

/// n=2: every image's partials and `completed` event, sequence numbers increasing throughout.
#[test]
fn n_two_gives_two_completed_events() {
    let gw = sim_gateway("");
    let input = gradient(8, 8);
    let prompt = "two streamed images";
    let evs = events(&post(&gw, BIFROST_PATH, &sim_form(prompt, 2, Some(1), &input)));
    assert_eq!(names(&evs), [PARTIAL, COMPLETED, PARTIAL, COMPLETED]);
    let values: Vec<Value> = evs.iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    let whole = whole_answer(&gw, prompt, 2, &input);
    assert_eq!(image_of(&values[1]), whole[0]);
    assert_eq!(image_of(&values[3]), whole[1]);
    assert_ne!(whole[0], whole[1]);
}

/// An upstream error after an event is an in-band `event: error` (provider's, not Bifrost's),
/// then the body ends cleanly and the gateway serves on.
#[test]
fn mid_stream_error_is_an_error_event_then_a_clean_end() {
    let gw = sim_gateway("");
    let r = post(
        &gw,
        BIFROST_PATH,
        &sim_form("simulate-stream-error:1", 1, Some(2), &gradient(4, 4)),
    );
    // `read_response` de-chunked the body up to its terminating chunk.
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, "error"]);
    assert_eq!(json_of(&evs[0].1)["sequence_number"], 0);
    let err = json_of(&evs[1].1);
    assert_eq!(err["is_bifrost_error"], false, "{err}");
    assert_eq!(err["error"]["message"], "simulated mid-stream error", "{err}");
    assert_eq!(err["status_code"], 502, "{err}");
    assert_eq!(err["event_id"].as_str(), r.header("x-request-id").as_deref(), "{err}");
    assert!(!r.text().contains("[DONE]"));
    assert_serves(&gw);
}

/// An upstream error before any event, or an upstream HTTP error, is an ordinary JSON answer.
#[test]
fn errors_before_the_first_event_are_http_errors() {
    let gw = sim_gateway("");
    for path in [BIFROST_PATH, OPENAI_PATH] {
        let r = post(
            &gw,
            path,
            &sim_form("simulate-stream-error:0", 1, Some(2), &gradient(4, 4)),
        );
        assert_eq!(r.status, 502, "{path}: {}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        let v = r.json();
        assert_eq!(v["is_bifrost_error"], false, "{v}");
        assert_eq!(v["status_code"], 502, "{v}");
        assert_eq!(v["error"]["message"], "simulated mid-stream error", "{v}");
    }
    let r = post(
        &gw,
        BIFROST_PATH,
        &sim_form("simulate-error:429", 1, Some(2), &gradient(4, 4)),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["is_bifrost_error"], false, "{v}");
    assert_eq!(v["status_code"], 429, "{v}");
    assert_eq!(v["error"]["message"], "simulated error 429", "{v}");
    assert_serves(&gw);
}

/// A stream cut inside an event ends with an `error` event and a clean end of body.
#[test]
fn truncated_upstream_stream_ends_with_an_error_event() {
    let gw = sim_gateway("");
    let r = post(
        &gw,
        BIFROST_PATH,
        &sim_form("simulate-stream-truncate:1", 1, Some(2), &gradient(4, 4)),
    );
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, "error"]);
    let err = json_of(&evs[1].1);
    assert_eq!(err["is_bifrost_error"], true, "{err}");
    assert_eq!(err["type"], "upstream_protocol_error", "{err}");
    assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    assert_serves(&gw);
}

/// A stream cut inside a large event that is already being forwarded (passed through while it
/// arrives) cannot be ended cleanly: the response is aborted (no final chunk, connection
/// closed), so an SSE client never dispatches the half event, and the gateway serves on.
#[test]
fn truncated_upstream_inside_a_forwarded_event_aborts_the_response() {
    let gw = sim_gateway("  partial_image_bytes: 400000\n");
    let mut s = send_stream_request(
        &gw,
        &sim_form("simulate-stream-truncate:1", 1, Some(2), &gradient(8, 8)),
    );
    let (status, head, mut raw) = read_head(&mut s);
    assert_eq!(status, 200, "{head}");
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = s
            .read(&mut tmp)
            .expect("the gateway closes the connection, it does not stall");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&tmp[..n]);
    }
    assert!(dechunk(&raw).is_none(), "the body must not end with its final chunk");
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(
        text.matches("event: image_edit.partial_image").count(),
        2,
        "the first event whole, the second begun"
    );
    assert!(
        raw.len() > 600_000,
        "both events were forwarded as they came: {} bytes",
        raw.len()
    );
    assert!(
        !text.contains("event: error"),
        "no error event can follow a half-sent event"
    );
    assert_serves(&gw);
}

/// An upstream event of an unknown type is dropped; the rest arrive intact and numbered.
#[test]
fn unknown_upstream_event_is_dropped() {
    let gw = sim_gateway("");
    let input = gradient(4, 4);
    let r = post(
        &gw,
        BIFROST_PATH,
        &sim_form("simulate-stream-unknown", 1, Some(2), &input),
    );
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, PARTIAL, COMPLETED]);
    assert!(!r.text().contains("image_edit.debug"));
    let values: Vec<Value> = evs.iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    assert_eq!(
        image_of(&values[2]),
        whole_answer(&gw, "simulate-stream-unknown", 1, &input)[0]
    );
}

/// `/openai/v1/images/edits`: the same image events, errors as `data:`-only JSON, then
/// `data: [DONE]`.
#[test]
fn openai_path_frames_errors_as_data_and_ends_with_done() {
    let gw = sim_gateway("");
    let input = gradient(8, 4);
    let r = post(&gw, OPENAI_PATH, &sim_form("openai framing", 1, Some(2), &input));
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, PARTIAL, COMPLETED, "data"]);
    assert_eq!(evs[3].1, "[DONE]");
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let values: Vec<Value> = evs[..3].iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    for (v, (name, _)) in values.iter().zip(&evs) {
        assert_eq!(v["type"], name.as_deref().unwrap());
        assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream");
    }
    assert_eq!(image_of(&values[2]), whole_answer(&gw, "openai framing", 1, &input)[0]);

    let r = post(
        &gw,
        OPENAI_PATH,
        &sim_form("simulate-stream-error:1", 1, Some(2), &input),
    );
    let evs = events(&r);
    assert_eq!(names(&evs), [PARTIAL, "data", "data"]);
    assert!(!r.text().contains("event: error"), "{}", r.text());
    let err = json_of(&evs[1].1);
    assert_eq!(err["is_bifrost_error"], false, "{err}");
    assert_eq!(err["error"]["message"], "simulated mid-stream error", "{err}");
    assert_eq!(evs[2].1, "[DONE]");
}

/// A provider answering a stream request with plain JSON: one `completed` event per image.
#[test]
fn plain_json_answer_becomes_completed_events() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    mock.push(Reply::json(200, &default_success()));
    let form = valid_form().text("stream", "true").text("n", "2");
    let r = post(&gw, BIFROST_PATH, &form);
    let evs = events(&r);
    assert_eq!(names(&evs), [COMPLETED, COMPLETED]);
    let values: Vec<Value> = evs.iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    assert_eq!(values[0]["b64_json"], "aW1hZ2UtMA==");
    assert_eq!(values[1]["b64_json"], "aW1hZ2UtMQ==");
    for v in &values {
        assert_eq!(v["type"], COMPLETED);
        assert_eq!(v["created_at"], 1_713_833_628);
        assert_eq!(v["size"], "1024x1024");
        assert_eq!(v["extra_fields"]["provider"], "openai");
        assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream");
    }
    // The provider's usage goes on the last event, zeros on the others.
    assert_eq!(values[1]["usage"]["total_tokens"], 30);
    assert_eq!(values[0]["usage"]["total_tokens"], 0);
    let parts = mock.only_request().parts();
    assert_eq!(parts_named(&parts, "stream")[0].text(), "true");
}

/// On the OpenAI route, a stream synthesized from a plain JSON answer ends with exactly one
/// `data: [DONE]`.
#[test]
fn plain_json_answer_on_the_openai_route_ends_with_one_done() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    mock.push(Reply::json(200, &default_success()));
    let form = valid_form().text("stream", "true").text("n", "2");
    let r = post(&gw, OPENAI_PATH, &form);
    let evs = events(&r);
    assert_eq!(evs.len(), 3, "two completed events and one [DONE]");
    assert_eq!(evs[0].0.as_deref(), Some(COMPLETED));
    assert_eq!(evs[1].0.as_deref(), Some(COMPLETED));
    assert_eq!(evs[2], (None, "[DONE]".to_string()));
}

/// The gateway's events do not depend on how the upstream stream was split into chunks.
#[test]
fn events_do_not_depend_on_upstream_chunking() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let png = base64::engine::general_purpose::STANDARD.encode(encode_png(&gradient(4, 4)).unwrap());
    let partial = json!({"type": PARTIAL, "b64_json": png, "partial_image_index": 0, "created_at": 7,
        "size": "4x4", "quality": "low", "background": "opaque", "output_format": "png"});
    let completed = json!({"type": COMPLETED, "b64_json": png, "created_at": 8, "size": "4x4",
        "quality": "low", "background": "opaque", "output_format": "png",
        "usage": {"total_tokens": 3, "input_tokens": 1, "output_tokens": 2,
            "input_tokens_details": {"text_tokens": 1, "image_tokens": 0},
            "output_tokens_details": {"text_tokens": 0, "image_tokens": 2}}});
    // LF and CRLF line ends, a comment, an unknown event, a multi-line data field.
    let fixture = format!(
        ": keep-alive\r\n\r\nevent: {PARTIAL}\r\ndata: {partial}\r\n\r\nevent: image_edit.debug\ndata: {{\"type\":\n\
         data: \"image_edit.debug\"}}\n\nevent: {COMPLETED}\ndata: {completed}\n\n"
    );
    let normalized = |r: &Response| -> Vec<(Option<String>, Value)> {
        events(r)
            .into_iter()
            .map(|(name, data)| {
                let mut v = json_of(&data);
                v["extra_fields"].as_object_mut().unwrap().remove("latency");
                v.as_object_mut().unwrap().remove("created_at");
                (name, v)
            })
            .collect()
    };
    let mut runs = Vec::new();
    for (piece, pause) in [
        (1, Duration::from_micros(300)),
        (7, Duration::from_micros(300)),
        (4096, Duration::ZERO),
    ] {
        mock.push(Reply::Chunked {
            status: 200,
            content_type: "text/event-stream".into(),
            body: fixture.clone().into_bytes(),
            piece,
            pause,
        });
        let r = post(&gw, BIFROST_PATH, &valid_form().text("stream", "true"));
        runs.push((piece, normalized(&r)));
    }
    let (_, first) = &runs[0];
    let got: Vec<&str> = first.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(got, [PARTIAL, COMPLETED]);
    assert_eq!(first[1].1["b64_json"], png.as_str());
    assert_eq!(first[1].1["usage"]["output_tokens_details"]["image_tokens"], 2);
    assert_eq!(first[1].1["sequence_number"], 1);
    for (piece, evs) in &runs[1..] {
        assert_eq!(evs, first, "pieces of {piece} bytes");
    }
}

/// Reads the response head from `s`; returns (status, header block, bytes read past the head).
fn read_head(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status = head[9..12].parse().unwrap();
            return (status, head, buf[i + 4..].to_vec());
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before the response head");
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// De-chunks `buf` if it holds a complete chunked body (through the terminating chunk).
fn dechunk(buf: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&buf[at..at + line]).unwrap().trim(), 16).unwrap();
        at += line + 2;
        if size == 0 {
            return (buf.len() >= at + 2).then(|| {
                assert_eq!(&buf[at..at + 2], b"\r\n", "no trailers expected");
                body
            });
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        assert_eq!(&buf[at + size..at + size + 2], b"\r\n");
        at += size + 2;
    }
}

/// Opens a connection and sends a streamed edit request on it.
fn send_stream_request(gw: &Gateway, form: &Form) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&post_head(BIFROST_PATH, &[("x-bf-vk", VK)], form, None))
        .unwrap();
    s.write_all(&form.body()).unwrap();
    s
}

fn client_closed_count(gw: &Gateway) -> u64 {
    gw.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(r#"refract_rejected_requests_total{reason="client_closed"} "#))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A client leaving mid-stream is counted as `client_closed` and the gateway serves on.
#[test]
fn client_disconnect_mid_stream_is_counted() {
    let gw = sim_gateway("  stream_interval_ms: 200\n");
    assert_eq!(client_closed_count(&gw), 0);
    let mut s = send_stream_request(&gw, &sim_form("leave early", 1, Some(3), &gradient(4, 4)));
    let (status, head, mut rest) = read_head(&mut s);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/event-stream"),
        "{head}"
    );
    let mut tmp = [0u8; 16 * 1024];
    while !rest.windows(2).any(|w| w == b"\n\n") {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before the first event");
        rest.extend_from_slice(&tmp[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).contains(&format!("event: {PARTIAL}")));
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client_closed_count(&gw) < 1 {
        assert!(
            Instant::now() < deadline,
            "no client_closed rejection counted within 5 s:\n{}",
            gw.metrics_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_serves(&gw);
}

/// A slow reader of ≈8 MB of events still gets every event intact (backpressure, no loss).
#[test]
fn slow_reader_gets_every_event_intact() {
    let gw = sim_gateway("  partial_image_bytes: 1048576\n");
    let input = gradient(8, 8);
    let mut s = send_stream_request(&gw, &sim_form("big partials", 2, Some(3), &input));
    let (status, head, mut raw) = read_head(&mut s);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );
    let mut tmp = vec![0u8; 64 * 1024];
    let started = Instant::now();
    let body = loop {
        if let Some(body) = dechunk(&raw) {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "closed after {} bytes", raw.len());
        raw.extend_from_slice(&tmp[..n]);
    };
    println!("read {} bytes slowly in {:?}", raw.len(), started.elapsed());
    assert!(body.len() > 8_000_000, "only {} bytes of events", body.len());
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&body, &mut evs).unwrap();
    assert_eq!(d.finish(), 0);
    let got: Vec<&str> = evs.iter().map(|e| e.event.as_deref().unwrap()).collect();
    assert_eq!(
        got,
        [PARTIAL, PARTIAL, PARTIAL, COMPLETED, PARTIAL, PARTIAL, PARTIAL, COMPLETED]
    );
    let values: Vec<Value> = evs.iter().map(|e| json_of(&e.data)).collect();
    assert_sequence(&values);
    for (i, v) in values.iter().enumerate() {
        let img = image_of(v);
        assert_eq!((img.width, img.height), (8, 8), "event {i}");
        if v["type"] == PARTIAL {
            assert!(v["b64_json"].as_str().unwrap().len() >= 1_048_576 * 4 / 3, "event {i}");
        }
    }
    let whole = whole_answer(&gw, "big partials", 2, &input);
    assert_eq!(image_of(&values[3]), whole[0]);
    assert_eq!(image_of(&values[7]), whole[1]);
    // The gateway runs in this process: only the whole test process's peak RSS is measurable.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for line in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("test process (gateway + simulator + client) {line}");
        }
    }
}

/// After a complete stream, an in-band error or a truncated upstream, the same client
/// connection carries the next request.
#[test]
fn connection_is_reused_after_streams() {
    let gw = sim_gateway("");
    let mut c = gw.connect();
    let prompts = ["first", "simulate-stream-error:1", "simulate-stream-truncate:1", "last"];
    let mut last = Vec::new();
    for prompt in prompts {
        let form = sim_form(prompt, 1, Some(1), &gradient(4, 4));
        c.send(&post_head(BIFROST_PATH, &[("x-bf-vk", VK)], &form, None));
        c.send(&form.body());
        let r = c.read_response();
        last = names(&events(&r)).into_iter().map(str::to_string).collect();
        let expected = if prompt.starts_with("simulate") {
            "error"
        } else {
            COMPLETED
        };
        assert_eq!(last.last().map(String::as_str), Some(expected), "{prompt}");
    }
    assert_eq!(last, [PARTIAL, COMPLETED]);
}

/// A large upload (streamed upstream while it arrives) still gets its answer as events.
#[test]
fn large_upload_still_streams_events() {
    let gw = sim_gateway("");
    let mut x: u32 = 1;
    let mut pixels = Vec::with_capacity(300 * 300 * 4);
    for _ in 0..300 * 300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pixels.extend_from_slice(&[x as u8, (x >> 8) as u8, (x >> 16) as u8, 255]);
    }
    let input = Rgba {
        width: 300,
        height: 300,
        pixels,
    };
    let form = sim_form("large upload", 1, Some(2), &input);
    assert!(
        form.body().len() >= 256 * 1024,
        "the upload must be large enough to be streamed"
    );
    let evs = events(&post(&gw, BIFROST_PATH, &form));
    assert_eq!(names(&evs), [PARTIAL, PARTIAL, COMPLETED]);
    let values: Vec<Value> = evs.iter().map(|(_, d)| json_of(d)).collect();
    assert_sequence(&values);
    assert_eq!(image_of(&values[2]), whole_answer(&gw, "large upload", 1, &input)[0]);
}
