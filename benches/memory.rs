//! Memory benchmark: peak RSS of the gateway process during 16 concurrent 20 MB image edits
//! with `model` sent last (the order that forces a gateway to keep the whole image before it
//! can route), against a fixed-answer mock upstream; then the same with a provider of kind
//! gemini (the image re-sent as base64 inside JSON) against a mock answering a small Gemini
//! response. Target: under 100 MB. Last, the demo's process (`cargo run --release -- -c
//! conf/demo.yaml` runs the gateway and the built-in simulator in one process) with the same
//! uploads to `demo/sim-image-1` (OpenAI's multipart wire) and to
//! `demo-gemini/gemini-2.5-flash-image` (Gemini's JSON wire, the image as base64): the
//! simulator really edits each image and answers it whole, as large as its input. Each answer
//! is checked (a 200 whose edited image has the input's size). Target: under 150 MB.
//!
//! Run: `cargo bench --bench memory`. Environment: `UPLOADS` (default 16), `MB` (default 20),
//! `ONLY=demo` (the demo cases alone), `DEMO=demo` or `DEMO=demo-gemini` (one demo case),
//! `SPLIT=1` (the demo's gateway and simulator in two processes, each peak reported), `SPOOL=N`
//! (the demo's `spool.memory_bytes`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;
use support::*;

/// Sends one edit over a fresh connection and returns the status line.
fn upload(port: u16, body: &[u8]) -> String {
    status_line(&exchange(port, body))
}

/// The first line of an HTTP answer.
fn status_line(resp: &[u8]) -> String {
    String::from_utf8_lossy(&resp[..resp.len().min(64)])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends one edit over a fresh connection and returns the whole answer.
fn exchange(port: u16, body: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nx-bf-vk: sk-bf-bench\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    for chunk in body.chunks(64 * 1024) {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp
}

fn main() {
    if !measuring() {
        return;
    }
    let uploads: usize = env_or("UPLOADS", 16);
    let mb: usize = env_or("MB", 20);
    let image = noise_png(mb * 1024 * 1024);
    let small = noise_png(16 * 1024);
    let mock = start_mock(images_response(&small), 1);
    let gemini_mock = start_mock(gemini_response(&small), 1);
    let only_demo = std::env::var("ONLY").is_ok_and(|v| v == "demo");
    let cases = if only_demo {
        Vec::new()
    } else {
        vec![
            ("model last", true, false),
            ("model first", false, false),
            ("gemini (JSON + base64 from the spool), model last", true, true),
        ]
    };
    for (label, model_last, gemini) in cases {
        let (gateway, model) = if gemini {
            (
                start_gateway_of_kind(gemini_mock, 2, 1 << 20, "gemini", "/v1beta"),
                "bench/gemini-2.5-flash-image",
            )
        } else {
            (start_gateway(mock, 2, 1 << 20), "bench/gpt-image-1")
        };
        let pid = gateway.child.id();
        let idle = rss_kib(pid);
        let body = std::sync::Arc::new(edit_body(model, &image, model_last));
        let start = Instant::now();
        let handles: Vec<_> = (0..uploads)
            .map(|_| {
                let body = body.clone();
                let port = gateway.port;
                std::thread::spawn(move || upload(port, &body))
            })
            .collect();
        let statuses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        let elapsed = start.elapsed();
        let ok = statuses.iter().filter(|s| s.contains(" 200 ")).count();
        let peak = peak_rss_kib(pid);
        println!(
            "{label}: {uploads} x {:.1} MB concurrent edits, {ok}/{uploads} answered 200, {:.2} s, gateway RSS idle {:.1} MiB, peak {:.1} MiB",
            body.len() as f64 / 1e6,
            elapsed.as_secs_f64(),
            idle as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        if ok != uploads {
            println!("  statuses: {statuses:?}");
        }
    }
    demo(uploads, &image);
}

/// The demo's process: the gateway and the simulator in one process, as `conf/demo.yaml`
/// runs them (default spool, limits and decode pool), one provider per wire at the simulator.
fn demo(uploads: usize, image: &[u8]) {
    let only = std::env::var("DEMO").ok();
    let cases = [
        (
            "demo (gateway + simulator, one process), OpenAI multipart wire",
            "demo",
            "demo/sim-image-1",
        ),
        (
            "demo (gateway + simulator, one process), Gemini JSON wire",
            "demo-gemini",
            "demo-gemini/gemini-2.5-flash-image",
        ),
    ];
    let (width, height) = refract::imaging::png_dimensions(image).expect("a PNG");
    for (label, provider, model) in cases {
        if only.as_deref().is_some_and(|o| o != provider) {
            continue;
        }
        let (port, sim) = (free_port(), free_port());
        // SPLIT: the simulator in a process of its own (its gateway listener unused), so the
        // two parts' peaks are measured apart.
        let split = std::env::var("SPLIT").is_ok_and(|v| v == "1");
        // SPOOL=N: `spool.memory_bytes` of both parts (default: the config's default).
        let spool = std::env::var("SPOOL")
            .ok()
            .map(|n| format!("spool: {{ memory_bytes: {n} }}"))
            .unwrap_or_default();
        let sim_process = split.then(|| {
            let unused = free_port();
            let yaml = format!(
                r#"
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{unused}" }}]
simulator: {{ address: "127.0.0.1:{sim}" }}
{spool}
providers: [{{ name: none, kind: openai, base_url: "http://127.0.0.1:{sim}/v1", keys: [{{ name: k, value: k }}] }}]
"#
            );
            let process = spawn_refract(&yaml, &format!("demo-sim-{sim}.yaml"), unused);
            wait_for_port(sim);
            process
        });
        let simulator_section = if split {
            String::new()
        } else {
            format!("simulator: {{ address: \"127.0.0.1:{sim}\" }}")
        };
        let yaml = format!(
            r#"
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
{simulator_section}
{spool}
providers:
  - name: demo
    kind: openai
    base_url: http://127.0.0.1:{sim}/v1
    keys: [{{ name: simulator, value: sim-key-not-secret }}]
  - name: demo-gemini
    kind: gemini
    base_url: http://127.0.0.1:{sim}/v1beta
    keys: [{{ name: simulator, value: sim-key-not-secret }}]
virtual_keys:
  - {{ id: bench, key: sk-bf-bench }}
"#
        );
        let process = spawn_refract(&yaml, &format!("demo-{port}.yaml"), port);
        wait_for_port(port);
        wait_for_port(sim);
        let pid = process.child.id();
        let idle = rss_kib(pid);
        let body = std::sync::Arc::new(edit_body(model, image, false));
        let start = Instant::now();
        let handles: Vec<_> = (0..uploads)
            .map(|_| {
                let body = body.clone();
                std::thread::spawn(move || edit_answer(port, &body))
            })
            .collect();
        let answers: Vec<(String, Option<(u32, u32)>)> =
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        let ok = answers
            .iter()
            .filter(|(status, size)| status.contains(" 200 ") && *size == Some((width, height)))
            .count();
        let label = if split {
            format!("{label}, SPLIT: gateway process")
        } else {
            label.to_string()
        };
        println!(
            "{label}: {uploads} x {:.1} MB concurrent edits, {ok}/{uploads} answered 200 with a {width}x{height} image, {:.2} s, RSS idle {:.1} MiB, peak {:.1} MiB",
            body.len() as f64 / 1e6,
            start.elapsed().as_secs_f64(),
            idle as f64 / 1024.0,
            peak_rss_kib(pid) as f64 / 1024.0
        );
        if let Some(sim) = &sim_process {
            println!(
                "  simulator process: RSS peak {:.1} MiB",
                peak_rss_kib(sim.child.id()) as f64 / 1024.0
            );
        }
        if ok != uploads {
            let statuses: Vec<&str> = answers.iter().map(|(s, _)| s.as_str()).collect();
            println!("  statuses: {statuses:?}");
        }
    }
}

/// Sends one edit over a fresh connection; returns the status line and the size of the
/// answer's first image (`data[0].b64_json`; its PNG header), if it has one.
fn edit_answer(port: u16, body: &[u8]) -> (String, Option<(u32, u32)>) {
    let resp = exchange(port, body);
    (status_line(&resp), first_image_size(&resp))
}

/// The size in the IHDR of the first `b64_json` image of an HTTP/1.1 answer (any framing: the
/// base64 of the PNG's first 24 bytes is found after the key).
fn first_image_size(resp: &[u8]) -> Option<(u32, u32)> {
    use base64::Engine;
    let key = b"\"b64_json\":\"";
    let at = resp.windows(key.len()).position(|w| w == key)? + key.len();
    let head = base64::engine::general_purpose::STANDARD
        .decode(resp.get(at..at + 32)?)
        .ok()?;
    refract::imaging::png_dimensions(&head)
}
