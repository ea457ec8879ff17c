//! Memory benchmark: peak RSS of the gateway process during 16 concurrent 20 MB image edits
//! with `model` sent last (the order that forces a gateway to keep the whole image before it
//! can route), against a fixed-answer mock upstream; then the same with a provider of kind
//! gemini (the image re-sent as base64 inside JSON) against a mock answering a small Gemini
//! response. Target: under 100 MB. Last, the demo's process (`cargo run --release -- -c
//! conf/demo.yaml` runs the gateway and the built-in simulator in one process) with the same
//! uploads to `demo/sim-image-1`: the simulator really edits each image and answers it whole.
//! Target: under 150 MB.
//!
//! Run: `cargo bench --bench memory`. Environment: `UPLOADS` (default 16), `MB` (default 20),
//! `ONLY=demo` (the demo case alone).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;
use support::*;

/// Sends one edit over a fresh connection and returns the status line.
fn upload(port: u16, body: &[u8]) -> String {
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
    String::from_utf8_lossy(&resp)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries too: only `cargo bench` measures.
        println!("benchmark skipped: run it with `cargo bench --bench NAME`");
        return;
    }
    let uploads: usize = std::env::var("UPLOADS").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mb: usize = std::env::var("MB").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
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
/// runs them (default spool, limits and decode pool), provider `demo` at the simulator.
fn demo(uploads: usize, image: &[u8]) {
    let (port, sim) = (free_port(), free_port());
    let yaml = format!(
        r#"
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
simulator: {{ address: "127.0.0.1:{sim}" }}
providers:
  - name: demo
    kind: openai
    base_url: http://127.0.0.1:{sim}/v1
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
    let body = std::sync::Arc::new(edit_body("demo/sim-image-1", image, false));
    let start = Instant::now();
    let handles: Vec<_> = (0..uploads)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || upload(port, &body))
        })
        .collect();
    let statuses: Vec<String> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    let ok = statuses.iter().filter(|s| s.contains(" 200 ")).count();
    println!(
        "demo (gateway + simulator, one process): {uploads} x {:.1} MB concurrent edits, {ok}/{uploads} answered 200, {:.2} s, RSS idle {:.1} MiB, peak {:.1} MiB",
        body.len() as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        idle as f64 / 1024.0,
        peak_rss_kib(pid) as f64 / 1024.0
    );
    if ok != uploads {
        println!("  statuses: {statuses:?}");
    }
}
