//! Async jobs benchmark: submit latency, jobs per second through the worker pool, and stored
//! bytes per job, for 64 KB PNG edits against a fixed-answer mock upstream.
//!
//! Two release `refract` processes share the embedded store and fs objects in a temp dir.
//! `CONC` client threads submit `JOBS` jobs over keep-alive connections to the first, which
//! runs no jobs (`workers: 0`); each submission is timed (the upload is stored and the record
//! written before the 202). Then the second gateway starts with `WORKERS` workers and drains
//! the queue: jobs/s is `JOBS` over the time from its start until its
//! `refract_jobs_total{event="completed"}` reaches `JOBS` (including its startup, so a
//! little pessimistic). Also reported: the bytes written to the objects store per job and what
//! the two directories hold per job.
//!
//! Run: `cargo bench --bench jobs`. Environment: `JOBS` (default 400), `CONC` (default 8),
//! `WORKERS` (`jobs.workers`, default 8), `THREADS` per server (default 2), `IMAGE_KB` (64).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::*;

/// One HTTP/1.1 exchange on a keep-alive connection: the status and the body.
fn exchange(reader: &mut BufReader<TcpStream>, head: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let stream = reader.get_mut();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().unwrap();
            }
        }
    }
    let mut out = vec![0; len];
    reader.read_exact(&mut out).unwrap();
    (status, out)
}

/// The value of the sample `series` (name and labels as printed) in the metrics text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metrics_text(port: u16) -> String {
    let mut r = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
    let (_, body) = exchange(&mut r, "GET /metrics HTTP/1.1\r\nHost: b\r\n\r\n", b"");
    String::from_utf8(body).unwrap()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let jobs = env_or("JOBS", 400usize);
    let conc = env_or("CONC", 8).max(1);
    let workers = env_or("WORKERS", 8);
    let threads = env_or("THREADS", 2);
    let image = noise_png(env_or("IMAGE_KB", 64) * 1024);
    let upstream = start_mock(images_response(&image), threads);
    let dir = tempfile::tempdir().unwrap();
    // The submitting gateway runs no jobs; the worker gateway, started once every job is in,
    // shares its store and objects and drains the queue.
    let yaml = |port: u16, metrics: u16, workers: usize| {
        format!(
            r#"
server: {{ threads: {threads}, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
metrics: {{ address: "127.0.0.1:{metrics}" }}
providers:
  - name: bench
    kind: openai
    base_url: http://127.0.0.1:{upstream}/v1
    keys: [{{ name: k, value: bench-upstream-key }}]
virtual_keys:
  - {{ id: bench, key: sk-bf-bench }}
store: {{ kind: embedded, path: "{store}" }}
objects: {{ kind: fs, path: "{objects}" }}
jobs: {{ workers: {workers}, poll_interval_ms: 20 }}
"#,
            store = dir.path().join("store").display(),
            objects = dir.path().join("objects").display(),
        )
    };
    let (port, metrics) = (free_port(), free_port());
    let _submitter = spawn_refract(&yaml(port, metrics, 0), &format!("jobs-{port}.yaml"), port);
    wait_for_port(port);
    wait_for_port(metrics);

    let body = edit_body("bench/gpt-image-1", &image, false);
    let head = format!(
        "POST /v1/async/images/edits HTTP/1.1\r\nHost: bench\r\nx-bf-vk: sk-bf-bench\r\n\
         Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let start = Instant::now();
    let per_thread = jobs.div_ceil(conc);
    let handles: Vec<_> = (0..conc)
        .map(|t| {
            let (head, body) = (head.clone(), body.clone());
            let count = per_thread.min(jobs.saturating_sub(t * per_thread));
            std::thread::spawn(move || {
                let mut r = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
                (0..count)
                    .map(|_| {
                        let sent = Instant::now();
                        let (status, answer) = exchange(&mut r, &head, &body);
                        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&answer));
                        sent.elapsed().as_secs_f64() * 1000.0
                    })
                    .collect::<Vec<f64>>()
            })
        })
        .collect();
    let mut latencies: Vec<f64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let submitted = start.elapsed();
    let (worker_port, worker_metrics) = (free_port(), free_port());
    let _workers = spawn_refract(
        &yaml(worker_port, worker_metrics, workers),
        &format!("jobs-{worker_port}.yaml"),
        worker_port,
    );
    wait_for_port(worker_metrics);
    let drain = Instant::now();
    let deadline = drain + Duration::from_secs(600);
    let text = loop {
        let text = metrics_text(worker_metrics);
        let done = sample(&text, r#"refract_jobs_total{event="completed"}"#)
            + sample(&text, r#"refract_jobs_total{event="failed"}"#);
        if done >= jobs as f64 {
            break text;
        }
        assert!(Instant::now() < deadline, "jobs did not finish:\n{text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let drained = drain.elapsed();
    let submitted_text = metrics_text(metrics);
    let failed = sample(&text, r#"refract_jobs_total{event="failed"}"#);
    let uploads = sample(&submitted_text, r#"refract_objects_stored_bytes_total{kind="upload"}"#);
    let results = sample(&text, r#"refract_objects_stored_bytes_total{kind="result"}"#);
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let on_disk = dir_bytes(dir.path());
    println!(
        "jobs: {jobs} of {} KB edits, {conc} submitting connections, {workers} workers, {threads} threads",
        image.len() / 1024
    );
    println!(
        "submit latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} submissions/s",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        jobs as f64 / submitted.as_secs_f64()
    );
    println!(
        "throughput: {:.0} jobs/s through {workers} workers (a second gateway on the same store drained the {jobs} queued jobs in {:.2} s, from its start); {failed} failed",
        jobs as f64 / drained.as_secs_f64(),
        drained.as_secs_f64()
    );
    println!(
        "stored per job: {:.1} KB upload + {:.1} KB result object(s) written; store and objects directories hold {:.1} KB per job (results kept for their TTL)",
        uploads / jobs as f64 / 1024.0,
        results / jobs as f64 / 1024.0,
        on_disk as f64 / jobs as f64 / 1024.0
    );
}
