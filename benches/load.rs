//! Load benchmark: PNG edits (64 KiB and 2 MiB by default) at 1, 32 and 128 connections,
//! measured with wrk in interleaved rounds against
//!   * `direct`   — straight to a fixed-answer mock upstream,
//!   * `hop`      — a bare Pingora pass-through in front of the mock (the baseline),
//!   * `gateway`  — refract in front of the mock,
//!   * `sim`      — straight to refract's built-in simulator (which really decodes, edits and
//!     encodes the PNG; 64 KiB only),
//!   * `gw+sim`   — refract in front of its simulator (64 KiB only),
//!   * `gw+gov`   — `gateway` with its key governed (a budget, requests and images per minute,
//!     requests in flight) on the embedded store (64 KiB only).
//!
//! Reports, per size, p50/p99 latency at one connection, req/s and the server process's CPU
//! time per request at each connection count (medians over rounds), then the gateway as a
//! ratio to the bare hop: its added p50 and p99 at one connection (over `direct`) against the
//! hop's, its throughput as a share of the hop's and its CPU per request as a multiple of the
//! hop's at each connection count. Loopback latency at one connection is noisy from run to
//! run (a whole run can land in a slower scheduling mode); CPU per request is the steadier
//! figure.
//!
//! The hop runs in a process of its own, as the gateway does (in-process it would share the
//! mock's address space and pay cheaper thread switches than the gateway).
//!
//! Run: `cargo bench --bench load` (needs `wrk`; `.ci/deps` installs it). Environment:
//! `ROUNDS` (default 3), `SECS` per run (default 3), `THREADS` per server (default 2),
//! `SIZES` in KiB (default `64,2048`), `CONNS` (default `1,32,128`; 1 is always measured),
//! `PIN=1` (then also the one-connection latency with the mock, wrk and the server pinned in
//! each of their four placements on CPUs 0 and 1, see [`pinned`]; needs `taskset`),
//! `MODEL_LAST=1` (send `model` after the image to the gateway), `ONLY=direct,hop,gateway`
//! (a subset of the targets), `COMPARE_BIN=path/to/refract` (another build as one more target,
//! `gateway-b`, measured in the same interleaved rounds: an A/B run), `IN_PROCESS_HOP=1` (the
//! hop as a thread of the bench process, as before 2026-12-04), `SERVE_ONLY=1` (start every
//! server, print their ports, pids and wrk scripts, and keep them up for `SERVE_SECS`, default
//! an hour: for strace, perf and wrk by hand).

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
    wrk_on(None, port, script, conns, secs)
}

/// As [`wrk`], with wrk pinned to `cpu` when one is given.
fn wrk_on(cpu: Option<u32>, port: u16, script: &std::path::Path, conns: u32, secs: u32) -> Run {
    let mut command = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    let out = command
        // A request slower than wrk's default 2 s would be left out of the latencies and counted
        // as an error: 2 MiB edits at 128 connections take about a second each.
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--timeout",
            "30s",
            "--latency",
            "-s",
        ])
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

/// One image size's servers and wrk scripts.
struct Case {
    kb: usize,
    body_len: usize,
    /// (name, port, script, pid of the server process when it is one of its own)
    targets: Vec<(&'static str, u16, std::path::PathBuf, Option<u32>)>,
    _keep: Vec<GatewayProcess>,
}

/// Starts, for an image of `kb` KiB, a mock answering it, the bare hop and the gateway in
/// front of it (and the build under `COMPARE_BIN`); at 64 KiB also the simulator targets.
fn start_case(kb: usize, threads: usize, with_sim: bool) -> Case {
    let image = noise_png(kb * 1024);
    let mock = start_mock(images_response(&image), 1);
    let mut keep = Vec::new();
    let mut targets = Vec::new();
    // MODEL_LAST=1 sends `model` after the image, so the gateway cannot stream the request
    // upstream while it arrives and sends it from the spool instead.
    let model_last = std::env::var("MODEL_LAST").is_ok_and(|v| v == "1");
    let direct_script = script(&format!("direct{kb}"), &edit_body("gpt-image-1", &image, false), false);
    let gw_script = script(
        &format!("gateway{kb}"),
        &edit_body("bench/gpt-image-1", &image, model_last),
        true,
    );
    targets.push(("direct", mock, direct_script.clone(), None));
    // In a process of its own, like the gateway (`IN_PROCESS_HOP=1`: a thread of this one).
    if std::env::var("IN_PROCESS_HOP").is_ok_and(|v| v == "1") {
        targets.push(("hop", start_bare_hop(mock, threads), direct_script.clone(), None));
    } else {
        let hop = spawn_bare_hop_process(mock, threads);
        targets.push(("hop", hop.port, direct_script.clone(), Some(hop.child.id())));
        keep.push(hop);
    }
    let gateway = start_gateway(mock, threads, 1 << 20);
    targets.push(("gateway", gateway.port, gw_script.clone(), Some(gateway.child.id())));
    keep.push(gateway);
    if with_sim {
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
        let sim_direct_script = script("simdirect", &edit_body("sim-image-1", &image, false), true);
        let gw_sim_script = script("gwsim", &edit_body("sim/sim-image-1", &image, false), true);
        // the simulator wants a bearer token
        let bearer = std::fs::read_to_string(&sim_direct_script).unwrap_or_default()
            + "wrk.headers[\"Authorization\"] = \"Bearer sim-key\"\n";
        std::fs::write(&sim_direct_script, bearer).expect("script");
        targets.push(("sim", sim_port, sim_direct_script, None));
        targets.push(("gw+sim", gw_sim_port, gw_sim_script, None));
        targets.push(("gw+gov", governed.port, gw_script.clone(), Some(governed.child.id())));
        keep.push(sim_process);
        keep.push(governed);
    }
    if let Some(bin) = std::env::var_os("COMPARE_BIN") {
        let b = start_gateway_binary(std::path::Path::new(&bin), mock, threads, 1 << 20);
        targets.push(("gateway-b", b.port, gw_script, Some(b.child.id())));
        keep.push(b);
    }
    Case {
        kb,
        body_len: edit_body("bench/gpt-image-1", &image, false).len(),
        targets,
        _keep: keep,
    }
}

fn env_list(name: &str, default: &str) -> Vec<u32> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

/// Pins every thread of process `pid` to `cpus` (a taskset list such as `0` or `0-1`).
fn pin(pid: u32, cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset (util-linux) is installed");
    assert!(status.success(), "taskset -a -p -c {cpus} {pid} failed");
}

/// `PIN=1`: the one-connection latency of each target in each placement of its three
/// processes on two CPUs, pinned so that the scheduler cannot move them: a run's placement
/// otherwise decides its c1 latency more than anything the server does (on a 2-core VM the
/// same build measures 0.12 ms with all three on one core and 0.29 ms when its thread
/// migrates). Placements, as (mock, wrk, server) CPUs: `all-on-0` (0,0,0), `mock-apart`
/// (1,0,0), `server-apart` (0,0,1), `wrk-apart` (0,1,0). `direct` is measured per placement
/// of its two processes, and each target's added p50 is over the `direct` of its placement.
fn pinned(case: &Case, rounds: u32, secs: u32, selected: &dyn Fn(&str) -> bool) {
    let me = std::process::id();
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let all = format!("0-{}", cpus.max(2) - 1);
    let placements: [(&str, u32, u32, u32); 4] = [
        ("all-on-0", 0, 0, 0),
        ("mock-apart", 1, 0, 0),
        ("server-apart", 0, 0, 1),
        ("wrk-apart", 0, 1, 0),
    ];
    println!(
        "\n### {} KiB, one connection, processes pinned (PIN=1): p50 ms, median of {rounds} rounds; added p50 over direct as a multiple of the hop's\n",
        case.kb
    );
    println!("| placement (mock, wrk, server) | direct | hop | gateway | gateway/hop added | others |\n|---|---|---|---|---|---|");
    for (label, mock_cpu, wrk_cpu, server_cpu) in placements {
        // The mock is a thread of this process: pin all of it (the main thread only waits).
        pin(me, &mock_cpu.to_string());
        let mut p50: Vec<(&str, Vec<f64>)> = Vec::new();
        for _ in 0..rounds {
            for (name, port, script, pid) in &case.targets {
                let known = *name == "direct" || pid.is_some();
                if !known || !selected(name) {
                    continue;
                }
                if let Some(pid) = pid {
                    pin(*pid, &server_cpu.to_string());
                }
                let run = wrk_on(Some(wrk_cpu), *port, script, 1, secs);
                if let Some(pid) = pid {
                    pin(*pid, &all);
                }
                match p50.iter_mut().find(|(n, _)| n == name) {
                    Some((_, v)) => v.push(run.p50_ms),
                    None => p50.push((name, vec![run.p50_ms])),
                }
            }
        }
        let get = |name: &str| p50.iter().find(|(n, _)| *n == name).map(|(_, v)| median(v.clone()));
        let (Some(direct), Some(hop), Some(gateway)) = (get("direct"), get("hop"), get("gateway")) else {
            continue;
        };
        let others: Vec<String> = p50
            .iter()
            .filter(|(n, _)| !["direct", "hop", "gateway"].contains(n))
            .map(|(n, v)| {
                let m = median(v.clone());
                format!("{n} {m:.3} ({:.2}x)", (m - direct) / (hop - direct))
            })
            .collect();
        println!(
            "| {label} ({mock_cpu},{wrk_cpu},{server_cpu}) | {direct:.3} | {hop:.3} | {gateway:.3} | {:.2}x | {} |",
            (gateway - direct) / (hop - direct),
            others.join(", ")
        );
    }
    pin(me, &all);
}

fn main() {
    serve_hop_role();
    if !measuring() {
        return;
    }
    let rounds = env_or("ROUNDS", 3u32);
    let secs = env_or("SECS", 3u32);
    let threads = env_or("THREADS", 2u32) as usize;
    let sizes = env_list("SIZES", "64,2048");
    let mut conns = env_list("CONNS", "1,32,128");
    if !conns.contains(&1) {
        conns.insert(0, 1);
    }
    let only = std::env::var("ONLY").unwrap_or_default();
    let selected = |name: &str| name == "gateway-b" || only.is_empty() || only.split(',').any(|o| o == name);
    let cases: Vec<Case> = sizes
        .iter()
        .map(|&kb| {
            start_case(
                kb as usize,
                threads,
                kb == 64 && ["sim", "gw+sim", "gw+gov"].iter().any(|t| selected(t)),
            )
        })
        .collect();

    if std::env::var("SERVE_ONLY").is_ok_and(|v| v == "1") {
        // Profiling: leave the servers up and say where they are (strace, perf, wrk by hand).
        for case in &cases {
            for (name, port, script, pid) in &case.targets {
                println!(
                    "{} KiB {name}: port {port} pid {pid:?} script {}",
                    case.kb,
                    script.display()
                );
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(u64::from(env_or("SERVE_SECS", 3600u32))));
        return;
    }

    println!(
        "sizes {sizes:?} KiB, connections {conns:?}, {rounds} interleaved rounds x {secs}s, {threads} server threads, wrk -t1"
    );
    // results[case][target][conns index] = one Run per round
    let mut results: Vec<Vec<Vec<Vec<Run>>>> = cases
        .iter()
        .map(|c| vec![vec![Vec::new(); conns.len()]; c.targets.len()])
        .collect();
    for round in 0..rounds {
        for (ci, case) in cases.iter().enumerate() {
            for (ti, (name, port, script, pid)) in case.targets.iter().enumerate() {
                if !selected(name) {
                    continue;
                }
                let mut line = format!("round {round} {:>5} KiB {name:9}", case.kb);
                for (ki, &c) in conns.iter().enumerate() {
                    let before = pid.map(cpu_seconds);
                    let mut run = wrk(*port, script, c, secs);
                    if let (Some(pid), Some(before)) = (pid, before) {
                        let requests = run.rps * f64::from(secs);
                        run.cpu_us = (cpu_seconds(*pid) - before) * 1e6 / requests.max(1.0);
                    }
                    line += &format!(
                        " | c{c} p50 {:.3} p99 {:.3} ms {:.0} req/s {:.0} us cpu",
                        run.p50_ms, run.p99_ms, run.rps, run.cpu_us
                    );
                    if run.errors > 0 {
                        line += &format!(" ERRORS {}", run.errors);
                    }
                    results[ci][ti][ki].push(run);
                }
                eprintln!("{line}");
            }
        }
    }

    let med = |runs: &[Run], f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
    for (ci, case) in cases.iter().enumerate() {
        let r = &results[ci];
        println!(
            "\n### {} KiB image ({} byte request), medians of {rounds} rounds\n",
            case.kb, case.body_len
        );
        let mut head = "| target | c1 p50 ms | c1 p99 ms |".to_string();
        let mut rule = "|---|---|---|".to_string();
        for c in &conns {
            head += &format!(" c{c} req/s |");
            rule += "---|";
        }
        for c in &conns {
            head += &format!(" c{c} CPU µs/req |");
            rule += "---|";
        }
        println!("{head} errors |\n{rule}---|");
        for (ti, (name, ..)) in case.targets.iter().enumerate() {
            if !selected(name) {
                continue;
            }
            let t = &r[ti];
            let mut row = format!(
                "| {name} | {:.3} | {:.3} |",
                med(&t[0], &|x| x.p50_ms),
                med(&t[0], &|x| x.p99_ms)
            );
            for runs in t {
                row += &format!(" {:.0} |", med(runs, &|x| x.rps));
            }
            for runs in t {
                row += &format!(" {:.0} |", med(runs, &|x| x.cpu_us));
            }
            let errors: u64 = t.iter().flatten().map(|x| x.errors).sum();
            println!("{row} {errors} |");
        }
        let index = |name: &str| case.targets.iter().position(|t| t.0 == name);
        let (Some(direct), Some(hop)) = (index("direct"), index("hop")) else {
            continue;
        };
        let p50 = |ti: usize| med(&r[ti][0], &|x| x.p50_ms);
        let p99 = |ti: usize| med(&r[ti][0], &|x| x.p99_ms);
        let hop_added = p50(hop) - p50(direct);
        let hop_added99 = p99(hop) - p99(direct);
        println!();
        for name in ["gateway", "gateway-b", "gw+gov"] {
            let Some(ti) = index(name).filter(|_| selected(name)) else {
                continue;
            };
            let added = p50(ti) - p50(direct);
            let mut line = format!(
                "{} KiB {name}/hop: added c1 p50 {:.3} vs {:.3} ms ({:.2}x, target <= 1.25x), added c1 p99 {:.3} vs {:.3} ms ({:.2}x)",
                case.kb,
                added,
                hop_added,
                added / hop_added,
                p99(ti) - p99(direct),
                hop_added99,
                (p99(ti) - p99(direct)) / hop_added99
            );
            for (k, c) in conns.iter().enumerate() {
                line += &format!(
                    "; c{c} throughput {:.0} %, CPU {:.2}x",
                    100.0 * med(&r[ti][k], &|x| x.rps) / med(&r[hop][k], &|x| x.rps),
                    med(&r[ti][k], &|x| x.cpu_us) / med(&r[hop][k], &|x| x.cpu_us)
                );
            }
            println!("{line}");
        }
        if let (Some(sim), Some(gw_sim)) = (index("sim"), index("gw+sim")) {
            if selected("sim") && selected("gw+sim") {
                let k = conns.len().min(2) - 1;
                println!(
                    "with the simulator: added c1 p50 {:.3} ms, c{} throughput gw+sim/sim {:.0} %",
                    p50(gw_sim) - p50(sim),
                    conns[k],
                    100.0 * med(&r[gw_sim][k], &|x| x.rps) / med(&r[sim][k], &|x| x.rps)
                );
            }
        }
        for (name, _, _, pid) in &case.targets {
            if let (Some(pid), true) = (pid, name.starts_with("gateway")) {
                println!("{} KiB {name} peak RSS {} KiB", case.kb, peak_rss_kib(*pid));
            }
        }
    }
    if std::env::var("PIN").is_ok_and(|v| v == "1") {
        for case in &cases {
            pinned(case, rounds, secs, &selected);
        }
    }
}
