//! Connection memory benchmark: what a client connection costs the server while it is idle,
//! and what a request costs while its upload is in flight, for the bare Pingora hop (the
//! baseline, a process of its own) and for refract (the release binary), both in front of the
//! fixed-answer mock upstream.
//!
//! Each case runs on a fresh server process, warmed up first by `WARMUP` rounds of 32
//! concurrent 64 KB edits on connections then closed (so that one-time costs, the upstream
//! pool and the allocator's per-thread caches are not charged to the connections measured):
//!   * `idle, nothing sent`: `CONNS` (default 5,000) plain TCP connections opened and left idle
//!     before sending a byte;
//!   * `idle after one edit`: `CONNS` connections, each having completed one 64 KB edit with
//!     keep-alive (the answer read whole, checked to be a 200), then left open and idle;
//!   * `in flight`: `INFLIGHT` (default 200) connections each send the head of a 64 KB edit and
//!     half its body, then pause (the server holds them mid-upload); then each sends the rest
//!     and its answer is read and checked to be a 200.
//!
//! Reported: the server's RSS before and after (once its descriptors show every connection
//! accepted and its RSS has settled), the difference per connection or request in KiB, and
//! every answer that was not a 200 (a failure count, never silently measured). The gateway's
//! timeouts that could close these connections (`keepalive_timeout_ms` for an idle one,
//! `body_read_timeout_ms` for a paused upload) are printed; each case is measured well within
//! them (a warning says when it was not).
//!
//! The bench raises its soft descriptor limit (`RLIMIT_NOFILE`) to the hard one and caps
//! `CONNS` to what it leaves room for; the hop process inherits the raised limit, the gateway
//! raises its own (and derives its connection cap from it): both are printed.
//!
//! Every figure is measured `ROUNDS` times (default 3; targets interleaved in each round) and
//! the median reported at the end.
//!
//! Run: `cargo bench --bench connections`. Environment: `CONNS`, `INFLIGHT`, `THREADS` per
//! server (default 2), `WARMUP` (default 4), `ONLY=hop,gateway` (a subset), `COMPARE_BIN=path`
//! (another build of refract measured the same way as `gateway-b`: an A/B run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Edits sent at once while connections are opened and warmed up.
const EDIT_CONCURRENCY: usize = 32;
/// Descriptors of the bench process kept out of `CONNS`: the mock's side of upstream
/// connections, the runtimes, the spawned processes' pipes.
const RESERVED_DESCRIPTORS: u64 = 1024;

/// One server under test: its name, port, process id and the path its edits go to.
struct Target {
    name: &'static str,
    port: u16,
    pid: u32,
    body: Arc<Vec<u8>>,
    authorized: bool,
}

/// The head of a 64 KB edit (keep-alive) to `target`.
fn edit_head(target: &Target) -> String {
    let auth = if target.authorized {
        "x-bf-vk: sk-bf-bench\r\n"
    } else {
        ""
    };
    format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        target.body.len()
    )
}

/// Reads one HTTP/1.1 answer whole (Content-Length or chunked) from `stream`; returns its
/// status (0 when the connection closed or the answer could not be parsed).
async fn read_answer(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let (status, head_len, length, chunked) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let mut length = None;
            let mut chunked = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok());
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = h.value.eq_ignore_ascii_case(b"chunked");
                }
            }
            break (resp.code.unwrap_or(0), n, length, chunked);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let mut body = buf.split_off(head_len);
    loop {
        let complete = if chunked {
            body.ends_with(b"0\r\n\r\n")
        } else {
            body.len() >= length.unwrap_or(0)
        };
        if complete {
            return status;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends one whole edit on `stream` and reads its answer; returns the status (0 on a failure).
async fn edit(stream: &mut TcpStream, head: &str, body: &[u8]) -> u16 {
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(body).await.is_err() {
        return 0;
    }
    read_answer(stream).await
}

/// Opens `n` connections to `target`, `EDIT_CONCURRENCY` at a time; with `with_edit`, each
/// completes one edit before the next is opened. Returns the open connections and how many
/// could not be opened or got an answer other than a 200.
async fn open_connections(target: &Target, n: usize, with_edit: bool) -> (Vec<TcpStream>, usize) {
    let head = Arc::new(edit_head(target));
    let gate = Arc::new(tokio::sync::Semaphore::new(EDIT_CONCURRENCY));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (head, body, gate, port) = (head.clone(), target.body.clone(), gate.clone(), target.port);
            tokio::spawn(async move {
                let _turn = gate.acquire_owned().await.ok()?;
                let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                if with_edit && edit(&mut stream, &head, &body).await != 200 {
                    return None;
                }
                Some(stream)
            })
        })
        .collect();
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    for task in tasks {
        match task.await.ok().flatten() {
            Some(stream) => open.push(stream),
            None => failed += 1,
        }
    }
    (open, failed)
}

/// The number of open descriptors of a process.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Waits until process `pid` has at least `descriptors` open (every connection accepted), then
/// until its RSS stops moving; returns the RSS in KiB.
async fn settled_rss(pid: u32, descriptors: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_descriptors(pid) < descriptors && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if open_descriptors(pid) < descriptors {
        println!(
            "  warning: {} descriptors open, {descriptors} expected",
            open_descriptors(pid)
        );
    }
    let mut last = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

/// `WARMUP` rounds of `EDIT_CONCURRENCY` concurrent edits on connections then closed.
async fn warm_up(target: &Target, rounds: usize) {
    for _ in 0..rounds {
        let (open, failed) = open_connections(target, EDIT_CONCURRENCY, true).await;
        assert_eq!(failed, 0, "{}: warm-up edits failed", target.name);
        drop(open);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// One measured case: RSS before and after, per connection; returns the KiB per connection.
fn report(target: &Target, case: &str, n: usize, before: u64, after: u64, failed: usize, elapsed: Duration) -> f64 {
    let per = (after as f64 - before as f64) / n.max(1) as f64;
    println!(
        "{:9} {case:22} {n:>6} conns: RSS {:>7.1} -> {:>7.1} MiB, {per:>6.1} KiB each, {failed} failed, {:.1} s",
        target.name,
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        elapsed.as_secs_f64()
    );
    per
}

/// `CONNS` connections left idle, having sent nothing (`with_edit` false) or after one edit.
async fn idle_case(target: &Target, conns: usize, with_edit: bool, warmup: usize, keepalive: Duration) -> f64 {
    warm_up(target, warmup).await;
    let fds = open_descriptors(target.pid);
    let before = rss_kib(target.pid);
    let start = Instant::now();
    let (open, failed) = open_connections(target, conns, with_edit).await;
    let after = settled_rss(target.pid, fds + open.len()).await;
    let elapsed = start.elapsed();
    let case = if with_edit {
        "idle after one edit"
    } else {
        "idle, nothing sent"
    };
    let per = report(target, case, open.len(), before, after, failed, elapsed);
    if elapsed > keepalive {
        println!("  warning: measured after {elapsed:?}, past the keep-alive timeout ({keepalive:?})");
    }
    // still open when measured
    drop(open);
    per
}

/// `inflight` uploads paused at half their body, then completed.
async fn inflight_case(target: &Target, inflight: usize, warmup: usize, body_timeout: Duration) -> f64 {
    warm_up(target, warmup).await;
    let fds = open_descriptors(target.pid);
    let before = rss_kib(target.pid);
    let start = Instant::now();
    let head = Arc::new(edit_head(target));
    let half = target.body.len() / 2;
    let paused = Arc::new(AtomicUsize::new(0));
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (head, body, paused, port) = (head.clone(), target.body.clone(), paused.clone(), target.port);
            let mut go = go_rx.clone();
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok();
                if let Some(s) = stream.as_mut() {
                    if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&body[..half]).await.is_err() {
                        stream = None;
                    }
                }
                paused.fetch_add(1, Ordering::SeqCst);
                let _ = go.wait_for(|go| *go).await;
                let mut s = stream?;
                if s.write_all(&body[half..]).await.is_err() {
                    return None;
                }
                Some(read_answer(&mut s).await)
            })
        })
        .collect();
    while paused.load(Ordering::SeqCst) < inflight {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = settled_rss(target.pid, fds + inflight).await;
    let elapsed = start.elapsed();
    let _ = go_tx.send(true);
    let mut failed = 0;
    for task in tasks {
        if task.await.ok().flatten() != Some(200) {
            failed += 1;
        }
    }
    let per = report(
        target,
        "in flight (half body)",
        inflight,
        before,
        after,
        failed,
        elapsed,
    );
    println!(
        "{:9} {:22} peak RSS {:.1} MiB once the uploads completed",
        "",
        "",
        peak_rss_kib(target.pid) as f64 / 1024.0
    );
    if elapsed > body_timeout {
        println!("  warning: uploads paused {elapsed:?}, past the body read timeout ({body_timeout:?})");
    }
    per
}

/// Raises this process's soft descriptor limit to the hard one; returns the soft limit after.
fn raise_descriptor_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let hard = before.maximum.unwrap_or(1 << 20).min(1 << 20);
    if before.current.is_some_and(|soft| soft < hard) {
        let raised = Rlimit {
            current: Some(hard),
            maximum: before.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            println!("descriptor limit: could not raise the soft limit to {hard}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(hard)
}

/// The "Max open files" line of a process's limits (soft and hard).
fn descriptor_limit_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" / "))
        .unwrap_or_else(|| "unknown".to_string())
}

fn main() {
    serve_hop_role();
    if !measuring() {
        return;
    }
    let threads = env_or("THREADS", 2usize);
    let warmup = env_or("WARMUP", 4usize);
    let rounds = env_or("ROUNDS", 3usize);
    let inflight = env_or("INFLIGHT", 200usize);
    let wanted = env_or("CONNS", 5000usize);
    let nofile = raise_descriptor_limit();
    let room = usize::try_from(nofile.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    let conns = wanted.min(room);
    if conns < wanted {
        println!("CONNS {wanted} capped to {conns}: the descriptor limit is {nofile} (hard limit reached)");
    }
    let limits = refract::config::Limits::default();
    println!(
        "gateway timeouts (defaults, not set by the bench): keepalive_timeout_ms {} (an idle connection, its first request included), head_timeout_ms {}, body_read_timeout_ms {}, upload_timeout_ms {}",
        limits.keepalive_timeout.as_millis(),
        limits.head_timeout.as_millis(),
        limits.body_read_timeout.as_millis(),
        limits.upload_timeout.as_millis()
    );
    println!("bare Pingora hop: 60 s per read of a first request's head, no timeout between kept-alive requests");

    let image = noise_png(64 * 1024);
    let mock = start_mock(images_response(&image), 1);
    let only = std::env::var("ONLY").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "bench descriptor limit (soft, raised to the hard one): {nofile}; CONNS {conns}, INFLIGHT {inflight}, {threads} server threads, body {} bytes",
        edit_body("bench/gpt-image-1", &image, false).len()
    );
    let compare = std::env::var_os("COMPARE_BIN").map(std::path::PathBuf::from);
    let names: &[&'static str] = if compare.is_some() {
        &["hop", "gateway", "gateway-b"]
    } else {
        &["hop", "gateway"]
    };
    let names: Vec<&'static str> = names
        .iter()
        .copied()
        .filter(|name| only.is_empty() || only.split(',').any(|o| o == *name))
        .collect();
    let cases = ["idle", "edited", "inflight"];
    // KiB per connection, by target and case, one figure a round.
    let mut figures = vec![vec![Vec::new(); cases.len()]; names.len()];
    for round in 0..rounds {
        println!("round {round}");
        for (n, &name) in names.iter().enumerate() {
            for (c, case) in cases.into_iter().enumerate() {
                let (process, body, authorized) = if name == "hop" {
                    let p = spawn_bare_hop_process(mock, threads);
                    (p, edit_body("gpt-image-1", &image, false), false)
                } else {
                    let p = match (&compare, name) {
                        (Some(bin), "gateway-b") => start_gateway_binary(bin, mock, threads, 1 << 20),
                        _ => start_gateway(mock, threads, 1 << 20),
                    };
                    (p, edit_body("bench/gpt-image-1", &image, false), true)
                };
                let target = Target {
                    name,
                    port: process.port,
                    pid: process.child.id(),
                    body: Arc::new(body),
                    authorized,
                };
                if case == "idle" && round == 0 {
                    println!(
                        "{name}: descriptor limit (soft / hard) {}",
                        descriptor_limit_of(target.pid)
                    );
                }
                let per = runtime.block_on(async {
                    match case {
                        "idle" => idle_case(&target, conns, false, warmup, limits.keepalive_timeout).await,
                        "edited" => idle_case(&target, conns, true, warmup, limits.keepalive_timeout).await,
                        _ => inflight_case(&target, inflight, warmup, limits.body_read_timeout).await,
                    }
                });
                figures[n][c].push(per);
                drop(process);
            }
        }
    }
    println!("\nKiB per connection (median of {rounds} rounds; each round's figures above):");
    println!("| target | idle, nothing sent | idle after one edit | in flight (half body) |");
    println!("|---|---|---|---|");
    for (name, per_case) in names.iter().zip(figures) {
        let medians: Vec<String> = per_case.into_iter().map(|v| format!("{:.1}", median(v))).collect();
        println!("| {name} | {} |", medians.join(" | "));
    }
}
