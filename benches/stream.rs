//! Streaming benchmark: `stream=true` edits with 3 partial images of about 1 MB each at 20 ms
//! pacing from the simulator, straight to the simulator vs through refract, at concurrency 1
//! and 16: time to first event, and the arrival time of every event; then peak RSS of the
//! gateway while 32 clients read their streams slowly.
//!
//! The simulator runs in its own refract process and the gateway in another, so the RSS is the
//! gateway's alone.
//!
//! Run: `cargo bench --bench stream`. Environment: `REQUESTS` per concurrency level (default
//! 48), `PACING_MS` (default 20), `PARTIAL_BYTES` (default 1048576).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

fn stream_body(model: &str, image: &[u8]) -> Vec<u8> {
    let field = |name: &str, value: &str| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").into_bytes()
    };
    let mut body = Vec::new();
    body.extend(field("model", model));
    body.extend(field("prompt", "paint the sky"));
    body.extend(field("stream", "true"));
    body.extend(field("partial_images", "3"));
    body.extend(
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n")
            .bytes(),
    );
    body.extend_from_slice(image);
    body.extend(format!("\r\n--{BOUNDARY}--\r\n").bytes());
    body
}

/// Sends one streaming edit and returns the arrival time of each event (from the request
/// start), reading `read_size` bytes at a time with `pause` between reads.
fn one_stream(port: u16, body: &[u8], headers: &str, read_size: usize, pause: Duration) -> Vec<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let mut events = Vec::new();
    let mut buf = vec![0u8; read_size];
    let mut window: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        window.extend_from_slice(&buf[..n]);
        // count completed SSE events (blank-line separated); keep only a short tail
        let mut from = 0;
        while let Some(i) = window[from..].windows(2).position(|w| w == b"\n\n") {
            events.push(start.elapsed());
            from += i + 2;
        }
        window.drain(..from);
        if window.len() > 4 {
            let keep = window.len() - 4;
            window.drain(..keep);
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    events
}

fn run_level(port: u16, body: &[u8], headers: &str, conc: usize, requests: usize) -> Vec<Vec<Duration>> {
    let per = requests.div_ceil(conc);
    let body = std::sync::Arc::new(body.to_vec());
    let headers = std::sync::Arc::new(headers.to_string());
    let handles: Vec<_> = (0..conc)
        .map(|_| {
            let body = body.clone();
            let headers = headers.clone();
            std::thread::spawn(move || {
                (0..per)
                    .map(|_| one_stream(port, &body, &headers, 256 * 1024, Duration::ZERO))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
}

fn main() {
    if !measuring() {
        return;
    }
    let requests: usize = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let pacing: u64 = std::env::var("PACING_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let partial: u64 = std::env::var("PARTIAL_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);

    let sim_port = free_port();
    let sim_gw_port = free_port();
    let _sim = spawn_refract(
        &format!(
            "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}\nlisteners: [{{ address: \"127.0.0.1:{sim_gw_port}\" }}]\nsimulator: {{ address: \"127.0.0.1:{sim_port}\", stream_interval_ms: {pacing}, partial_image_bytes: {partial} }}\nproviders: [{{ name: sim, kind: openai, base_url: \"http://127.0.0.1:{sim_port}/v1\", keys: [{{ name: k, value: sim-key }}] }}]\nauth: {{ allow_anonymous: true }}\n"
        ),
        "stream-sim.yaml",
        sim_port,
    );
    let gw_port = free_port();
    let gw = spawn_refract(
        &format!(
            "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}\nlisteners: [{{ address: \"127.0.0.1:{gw_port}\" }}]\nproviders: [{{ name: sim, kind: openai, base_url: \"http://127.0.0.1:{sim_port}/v1\", keys: [{{ name: k, value: sim-key }}] }}]\nvirtual_keys: [{{ id: bench, key: sk-bf-bench }}]\n"
        ),
        "stream-gw.yaml",
        gw_port,
    );
    wait_for_port(sim_port);
    wait_for_port(gw_port);
    let image = noise_png(16 * 1024);
    let direct_body = stream_body("sim-image-1", &image);
    let gw_body = stream_body("sim/sim-image-1", &image);
    let direct_headers = "Authorization: Bearer sim-key\r\n";
    let gw_headers = "x-bf-vk: sk-bf-bench\r\n";
    // warm up both paths
    let probe = one_stream(gw_port, &gw_body, gw_headers, 256 * 1024, Duration::ZERO);
    assert_eq!(probe.len(), 4, "expected 3 partials and 1 completed event");
    one_stream(sim_port, &direct_body, direct_headers, 256 * 1024, Duration::ZERO);
    println!("3 partial images of ~{partial} bytes + 1 completed, {pacing} ms pacing, {requests} requests per level");
    println!("| target | conc | TTFE p50 ms | TTFE p99 ms | last event p50 ms | events/stream |");
    println!("|---|---|---|---|---|---|");
    let mut ttfe = [[0.0f64; 2]; 2];
    let mut per_event = [[0.0f64; 2]; 2];
    for (ci, conc) in [1usize, 16].into_iter().enumerate() {
        // interleave: direct, gateway, direct, gateway
        let mut runs: [Vec<Vec<Duration>>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..2 {
            runs[0].extend(run_level(sim_port, &direct_body, direct_headers, conc, requests / 2));
            runs[1].extend(run_level(gw_port, &gw_body, gw_headers, conc, requests / 2));
        }
        for (ti, name) in ["direct", "gateway"].into_iter().enumerate() {
            let firsts: Vec<f64> = runs[ti]
                .iter()
                .filter_map(|e| e.first())
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            let lasts: Vec<f64> = runs[ti]
                .iter()
                .filter_map(|e| e.last())
                .map(|d| d.as_secs_f64() * 1e3)
                .collect();
            let mut sorted = firsts.clone();
            sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            let p99 = sorted
                .get(((sorted.len() as f64) * 0.99) as usize)
                .or(sorted.last())
                .copied()
                .unwrap_or(f64::NAN);
            let events = runs[ti].iter().map(Vec::len).min().unwrap_or(0);
            ttfe[ti][ci] = median(firsts.clone());
            // mean event arrival time over all events, a per-event latency figure
            let all: Vec<f64> = runs[ti]
                .iter()
                .flat_map(|e| e.iter().map(|d| d.as_secs_f64() * 1e3))
                .collect();
            per_event[ti][ci] = all.iter().sum::<f64>() / all.len().max(1) as f64;
            println!(
                "| {name} | {conc} | {:.3} | {:.3} | {:.3} | {events} |",
                ttfe[ti][ci],
                p99,
                median(lasts)
            );
        }
    }
    for (ci, conc) in [1, 16].into_iter().enumerate() {
        println!(
            "concurrency {conc}: added time to first event {:.3} ms, added mean event arrival {:.3} ms",
            ttfe[1][ci] - ttfe[0][ci],
            per_event[1][ci] - per_event[0][ci]
        );
    }

    // 32 slow readers: 64 KiB every 20 ms (about 3 MB/s each), all at once, on a fresh gateway
    // process, then 32 fast readers on another fresh one for comparison.
    drop(gw);
    for (label, pause) in [("slow readers (64 KiB / 20 ms)", 20u64), ("fast readers", 0)] {
        let port = free_port();
        let gw = spawn_refract(
            &format!(
                "server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}\nlisteners: [{{ address: \"127.0.0.1:{port}\" }}]\nproviders: [{{ name: sim, kind: openai, base_url: \"http://127.0.0.1:{sim_port}/v1\", keys: [{{ name: k, value: sim-key }}] }}]\nvirtual_keys: [{{ id: bench, key: sk-bf-bench }}]\n"
            ),
            &format!("stream-gw-{port}.yaml"),
            port,
        );
        wait_for_port(port);
        readers(&gw, port, &gw_body, gw_headers, label, Duration::from_millis(pause));
    }
}

/// 32 concurrent streams through the gateway `gw`, each client reading 64 KiB at a time with
/// `pause` between reads; prints completeness, time and the gateway's peak RSS.
fn readers(gw: &GatewayProcess, gw_port: u16, gw_body: &[u8], gw_headers: &'static str, label: &str, pause: Duration) {
    let pid = gw.child.id();
    let before = peak_rss_kib(pid);
    let start = Instant::now();
    let handles: Vec<_> = (0..32)
        .map(|_| {
            let body = gw_body.to_vec();
            std::thread::spawn(move || one_stream(gw_port, &body, gw_headers, 64 * 1024, pause).len())
        })
        .collect();
    let complete = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(0))
        .filter(|&n| n == 4)
        .count();
    println!(
        "32 {label}: {complete}/32 streams complete in {:.1} s; gateway peak RSS {:.1} MiB (idle {:.1} MiB)",
        start.elapsed().as_secs_f64(),
        peak_rss_kib(pid) as f64 / 1024.0,
        before as f64 / 1024.0
    );
}
