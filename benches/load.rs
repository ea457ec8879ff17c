//! Load benchmark: 64 KB PNG edits at concurrency 1 and 32, measured with wrk in interleaved
//! rounds against
//!   * `direct`   — straight to a fixed-answer mock upstream,
//!   * `hop`      — a bare Pingora pass-through in front of the mock (the baseline),
//!   * `gateway`  — refract in front of the mock,
//!   * `sim`      — straight to refract's built-in simulator (which really decodes, edits and
//!     encodes the PNG),
//!   * `gw+sim`   — refract in front of its simulator,
//!   * `gw+gov`   — `gateway` with its key governed (a budget, requests and images per minute,
//!     requests in flight) on the embedded store.
//!
//! Reports p50/p99 latency and req/s per target (median over rounds), the latency each hop adds
//! over its direct target, the gateway's figures as a share of the bare hop's, and the CPU time
//! the gateway process spends per request (steadier from run to run than loopback latency).
//!
//! The hop runs in a process of its own, as the gateway does (in-process it would share the
//! mock's address space and pay cheaper thread switches than the gateway).
//!
//! Run: `cargo bench --bench load` (needs `wrk`; `.ci/deps` installs it). Environment:
//! `ROUNDS` (default 3), `SECS` per run (default 4), `THREADS` per server (default 2),
//! `MODEL_LAST=1` (send `model` after the image to the gateway), `ONLY=direct,hop,gateway`
//! (a subset of the targets), `COMPARE_BIN=path/to/refract` (another build as one more target,
//! `gateway-b`, measured in the same interleaved rounds: an A/B run), `IN_PROCESS_HOP=1` (the
//! hop as a thread of the bench process, as before 2026-12-04).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use support::*;

#[derive(Debug, Clone, Copy, Default)]
struct Run {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    errors: u64,
    /// CPU time the server process used per request (user + system), when it is a process
    /// of its own.
    cpu_us: f64,
}

fn parse_latency(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

fn wrk(port: u16, script: &std::path::Path, conns: u32, secs: u32) -> Run {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/v1/images/edits"))
        .output()
        .expect("wrk is installed (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut run = Run::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("50%") {
            run.p50_ms = parse_latency(v.trim());
        } else if let Some(v) = t.strip_prefix("99%") {
            run.p99_ms = parse_latency(v.trim());
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if t.starts_with("Socket errors:") {
            run.errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    run
}

fn script(name: &str, body: &[u8], vk: bool) -> std::path::PathBuf {
    let body_path = temp_file(&format!("{name}.body"), body);
    let lua = format!(
        "local f = io.open(\"{}\", \"rb\")\nwrk.body = f:read(\"*a\")\nf:close()\nwrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"multipart/form-data; boundary={BOUNDARY}\"\n{}",
        body_path.display(),
        if vk { "wrk.headers[\"x-bf-vk\"] = \"sk-bf-bench\"\n" } else { "" }
    );
    temp_file(&format!("{name}.lua"), lua.as_bytes())
}

fn env_u32(name: &str, default: u32) -> u32 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    serve_hop_role();
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench binaries too: only `cargo bench` measures.
        println!("benchmark skipped: run it with `cargo bench --bench NAME`");
        return;
    }
    let rounds = env_u32("ROUNDS", 3);
    let secs = env_u32("SECS", 4);
    let threads = env_u32("THREADS", 2) as usize;

    let image = noise_png(64 * 1024);
    let answer = images_response(&image);
    let mock = start_mock(answer, 1);
    // In a process of its own, like the gateway (`IN_PROCESS_HOP=1`: a thread of this one).
    let hop_process =
        (!std::env::var("IN_PROCESS_HOP").is_ok_and(|v| v == "1")).then(|| spawn_bare_hop_process(mock, threads));
    let hop = match &hop_process {
        Some(p) => p.port,
        None => start_bare_hop(mock, threads),
    };
    let gateway = start_gateway(mock, threads, 1 << 20);
    // Limits it never reaches: what counting costs, not refusals.
    let governed = start_governed_gateway(
        mock,
        threads,
        "budget: { max_usd: 1000000, period: 1d }, rate_limit: { requests: 1000000000, images: 1000000000, per: 1m, concurrent: 10000 }",
    );

    // refract with its simulator as the upstream
    let sim_port = free_port();
    let gw_sim_port = free_port();
    let yaml = format!(
        "server: {{ threads: {threads}, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}\nlisteners: [{{ address: \"127.0.0.1:{gw_sim_port}\" }}]\nsimulator: {{ address: \"127.0.0.1:{sim_port}\" }}\nproviders:\n  - {{ name: sim, kind: openai, base_url: \"http://127.0.0.1:{sim_port}/v1\", keys: [{{ name: k, value: sim-key }}] }}\nvirtual_keys: [{{ id: bench, key: sk-bf-bench }}]\n"
    );
    let sim_process = spawn_refract(&yaml, "gw-sim.yaml", gw_sim_port);
    wait_for_port(gw_sim_port);
    wait_for_port(sim_port);

    let direct_script = script("direct", &edit_body("gpt-image-1", &image, false), false);
    // MODEL_LAST=1 sends `model` after the image, so the gateway cannot stream the request
    // upstream while it arrives and sends it from the spool instead.
    let model_last = std::env::var("MODEL_LAST").is_ok_and(|v| v == "1");
    let gw_script = script("gateway", &edit_body("bench/gpt-image-1", &image, model_last), true);
    let sim_direct_script = script("simdirect", &edit_body("sim-image-1", &image, false), true);
    let gw_sim_script = script("gwsim", &edit_body("sim/sim-image-1", &image, false), true);
    // the simulator wants a bearer token
    let bearer = std::fs::read_to_string(&sim_direct_script).unwrap_or_default()
        + "wrk.headers[\"Authorization\"] = \"Bearer sim-key\"\n";
    std::fs::write(&sim_direct_script, bearer).expect("script");

    let compare = std::env::var_os("COMPARE_BIN")
        .map(|bin| start_gateway_binary(std::path::Path::new(&bin), mock, threads, 1 << 20));
    let mut targets: Vec<(&str, u16, &std::path::Path)> = vec![
        ("direct", mock, &direct_script),
        ("hop", hop, &direct_script),
        ("gateway", gateway.port, &gw_script),
        ("sim", sim_port, &sim_direct_script),
        ("gw+sim", gw_sim_port, &gw_sim_script),
        ("gw+gov", governed.port, &gw_script),
    ];
    if let Some(b) = &compare {
        targets.push(("gateway-b", b.port, &gw_script));
    }
    println!(
        "image {} bytes, body {} bytes, {rounds} interleaved rounds x {secs}s, {threads} server threads, wrk -t1",
        image.len(),
        edit_body("bench/gpt-image-1", &image, false).len()
    );
    let only = std::env::var("ONLY").unwrap_or_default();
    let mut results: Vec<Vec<(Run, Run)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, port, s)) in targets.iter().enumerate() {
            if !only.is_empty() && *name != "gateway-b" && !only.split(',').any(|o| o == *name) {
                results[i].push((Run::default(), Run::default()));
                continue;
            }
            let pid = match *name {
                "gateway" => Some(gateway.child.id()),
                "gw+gov" => Some(governed.child.id()),
                "hop" => hop_process.as_ref().map(|h| h.child.id()),
                "gateway-b" => compare.as_ref().map(|b| b.child.id()),
                _ => None,
            };
            let measured = |conns: u32| {
                let before = pid.map(cpu_seconds);
                let mut run = wrk(*port, s, conns, secs);
                if let (Some(pid), Some(before)) = (pid, before) {
                    let requests = run.rps * f64::from(secs);
                    run.cpu_us = (cpu_seconds(pid) - before) * 1e6 / requests.max(1.0);
                }
                run
            };
            let c1 = measured(1);
            let c32 = measured(32);
            eprintln!(
                "round {round} {name:8} c1 p50 {:.3} ms p99 {:.3} ms {:.0} req/s {:.0} us cpu/req | c32 p50 {:.3} ms p99 {:.3} ms {:.0} req/s {:.0} us cpu/req | errors {}",
                c1.p50_ms,
                c1.p99_ms,
                c1.rps,
                c1.cpu_us,
                c32.p50_ms,
                c32.p99_ms,
                c32.rps,
                c32.cpu_us,
                c1.errors + c32.errors
            );
            results[i].push((c1, c32));
        }
    }
    let med = |i: usize, f: &dyn Fn(&(Run, Run)) -> f64| median(results[i].iter().map(f).collect());
    println!("\n| target | c1 p50 ms | c1 p99 ms | c1 req/s | c32 p50 ms | c32 p99 ms | c32 req/s | c32 cpu us/req | errors |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (name, _, _)) in targets.iter().enumerate() {
        let errors: u64 = results[i].iter().map(|(a, b)| a.errors + b.errors).sum();
        println!(
            "| {name} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.0} | {:.0} | {errors} |",
            med(i, &|r| r.0.p50_ms),
            med(i, &|r| r.0.p99_ms),
            med(i, &|r| r.0.rps),
            med(i, &|r| r.1.p50_ms),
            med(i, &|r| r.1.p99_ms),
            med(i, &|r| r.1.rps),
            med(i, &|r| r.1.cpu_us),
        );
    }
    let p50 = |i: usize| med(i, &|r| r.0.p50_ms);
    let p99 = |i: usize| med(i, &|r| r.0.p99_ms);
    let rps32 = |i: usize| med(i, &|r| r.1.rps);
    let hop_added = p50(1) - p50(0);
    let gw_added = p50(2) - p50(0);
    println!(
        "\nadded c1 p50: hop {:.3} ms, gateway {:.3} ms (gateway/hop {:.2}x)",
        hop_added,
        gw_added,
        gw_added / hop_added
    );
    println!(
        "added c1 p99: hop {:.3} ms, gateway {:.3} ms",
        p99(1) - p99(0),
        p99(2) - p99(0)
    );
    println!(
        "c32 throughput: gateway/hop {:.0}%, gateway/direct {:.0}%, hop/direct {:.0}%",
        100.0 * rps32(2) / rps32(1),
        100.0 * rps32(2) / rps32(0),
        100.0 * rps32(1) / rps32(0)
    );
    println!(
        "with the simulator: added c1 p50 {:.3} ms, c32 throughput gw+sim/sim {:.0}%",
        p50(4) - p50(3),
        100.0 * rps32(4) / rps32(3)
    );
    let index = |name: &str| targets.iter().position(|t| t.0 == name).unwrap_or(usize::MAX);
    let gov = index("gw+gov");
    if only.is_empty() || only.split(',').any(|o| o == "gw+gov") {
        println!(
            "governed key (embedded store): added c1 p50 {:.3} ms, c32 throughput gw+gov/gateway {:.0}%, CPU per request c1 {:.0} us, c32 {:.0} us",
            p50(gov) - p50(0),
            100.0 * rps32(gov) / rps32(2),
            med(gov, &|r| r.0.cpu_us),
            med(gov, &|r| r.1.cpu_us)
        );
    }
    if let Some(b) = &compare {
        let bi = index("gateway-b");
        let b_added = p50(bi) - p50(0);
        println!(
            "gateway-b ({}): added c1 p50 {:.3} ms (gateway-b/hop {:.2}x), c32 throughput gateway-b/hop {:.0}%, peak RSS {} KiB",
            std::env::var("COMPARE_BIN").unwrap_or_default(),
            b_added,
            b_added / hop_added,
            100.0 * rps32(bi) / rps32(1),
            peak_rss_kib(b.child.id())
        );
    }
    let cpu = |i: usize| (med(i, &|r| r.0.cpu_us), med(i, &|r| r.1.cpu_us));
    println!("gateway CPU per request: c1 {:.0} us, c32 {:.0} us", cpu(2).0, cpu(2).1);
    if hop_process.is_some() {
        println!("hop CPU per request: c1 {:.0} us, c32 {:.0} us", cpu(1).0, cpu(1).1);
    }
    if compare.is_some() {
        println!(
            "gateway-b CPU per request: c1 {:.0} us, c32 {:.0} us",
            cpu(index("gateway-b")).0,
            cpu(index("gateway-b")).1
        );
    }
    println!("gateway peak RSS {} KiB", peak_rss_kib(gateway.child.id()));
    drop(sim_process);
}
