//! Hot reload: the `refract` binary, started with a config file on ephemeral ports, reloads the
//! file on SIGHUP (a new virtual key works at once, no request fails meanwhile), refuses an
//! invalid file and keeps serving with the old one, and names the settings a reload cannot
//! change; a circuit breaker keeps its state across a reload that reorders the keys.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The virtual key a reload adds.
const NEW_VK: &str = "sk-bf-added-on-reload-VIRTUALKEY-5";

/// A config for the mock upstream at `upstream`, with the virtual keys `vks` (`id`, key).
fn yaml(listen: SocketAddr, metrics: SocketAddr, upstream: &str, vks: &[(&str, &str)]) -> String {
    let keys: String = vks
        .iter()
        .map(|(id, key)| format!("  - id: {id}\n    key: {key}\n"))
        .collect();
    format!(
        "server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
listeners:
  - address: {listen}
metrics:
  address: {metrics}
providers:
  - name: openai
    kind: openai
    base_url: {upstream}
    keys:
      - name: primary
        value: {PROVIDER_KEY}
virtual_keys:
{keys}"
    )
}

/// A `refract -c FILE` process; killed when dropped.
struct Refract {
    child: Child,
    addr: SocketAddr,
    metrics: SocketAddr,
    path: PathBuf,
    /// Everything it logged so far.
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    /// The provider it sends to (counting only).
    upstream: MockUpstream,
}

impl Refract {
    /// A gateway with the virtual keys `vks`, in front of a mock provider that answers every
    /// request; returns once both listeners accept.
    fn start(vks: &[(&str, &str)]) -> Refract {
        Refract::start_with(vks, &[])
    }

    /// [`Refract::start`] with more command-line arguments.
    fn start_with(vks: &[(&str, &str)], args: &[&str]) -> Refract {
        let upstream = MockUpstream::start();
        upstream.count_only();
        let (listen, metrics) = (free_addr(), free_addr());
        let yaml = yaml(listen, metrics, &upstream.base_url(), vks);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refract.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (child, log) = spawn_logging(
            Command::new(env!("CARGO_BIN_EXE_refract"))
                .args(["-c", path.to_str().unwrap()])
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null()),
        );
        let process = Refract {
            child,
            addr: listen,
            metrics,
            path,
            log,
            _dir: dir,
            upstream,
        };
        wait_listening(listen);
        wait_listening(metrics);
        process
    }

    /// Its config with the virtual keys `vks`.
    fn yaml(&self, vks: &[(&str, &str)]) -> String {
        yaml(self.addr, self.metrics, &self.upstream.base_url(), vks)
    }

    /// Replaces the config file and sends SIGHUP; returns once the reload counter `result`
    /// went up by one.
    fn reload(&mut self, yaml: &str, result: &str) {
        std::fs::write(&self.path, yaml).unwrap();
        let series = format!("refract_config_reloads_total{{result=\"{result}\"}}");
        let before = self.metric(&series);
        // The log arrives through a pipe read by another thread: the reload's last line (after
        // its warnings or its problems) is waited for before a test reads the log.
        let last = if result == "ok" {
            "config reloaded from"
        } else {
            "the running config is kept"
        };
        let logged = self.log().matches(last).count();
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until(&format!("{series} counts the reload"), || self.metric(&series) > before);
        wait_until("the reload's last log line", || {
            self.log().matches(last).count() > logged
        });
        assert!(self.child.try_wait().unwrap().is_none(), "SIGHUP ended the process");
    }

    fn metrics_text(&self) -> String {
        let r = Gateway::get(self.metrics, "/metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    /// One series' value (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        self.metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// One edit request with virtual key `vk`, on a new connection: its status.
    fn edit(&self, vk: &str) -> u16 {
        edit(self.addr, vk)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Refract {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn edit(addr: SocketAddr, vk: &str) -> u16 {
    let form = valid_form();
    let mut c = Conn::open(addr);
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", vk)], &form, None));
    c.send(&form.body());
    c.read_response().status
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A running gateway takes a new virtual key on SIGHUP (401 before, 200 after), while clients
/// on several connections keep sending requests through the reload: none of them fails. The
/// reload metrics count it and name the new file's hash.
#[test]
fn sighup_adds_a_virtual_key_without_a_failed_request() {
    let mut gw = Refract::start(&[("team-a", VK)]);
    let listen = gw.addr;
    assert_eq!(gw.metric(r#"refract_config_reloads_total{result="ok"}"#), 0.0);
    assert_eq!(gw.metric(r#"refract_config_reloads_total{result="error"}"#), 0.0);
    assert!(gw
        .metrics_text()
        .contains(r#"refract_config_reloads_total{result="error"} 0"#));
    let old_hash = sha256_hex(&gw.path);
    assert_eq!(gw.metric(&format!("refract_config_info{{hash=\"{old_hash}\"}}")), 1.0);
    let loaded_at = gw.metric("refract_config_loaded_timestamp_seconds");
    assert!(loaded_at > 1.7e9, "{loaded_at}");
    assert_eq!(gw.edit(NEW_VK), 401);
    assert_eq!(gw.edit(VK), 200);

    // Clients on 8 connections at a time, each request on a new connection, through the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(Vec::new())));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match edit(listen, VK) {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        status => {
                            failed.lock().unwrap().push(status);
                            0
                        }
                    };
                }
            })
        })
        .collect();
    wait_until("clients are running", || ok.load(Ordering::SeqCst) >= 20);
    let before = ok.load(Ordering::SeqCst);
    let started = Instant::now();
    gw.reload(&gw.yaml(&[("team-a", VK), ("added", NEW_VK)]), "ok");
    let reloaded_in = started.elapsed();
    assert_eq!(gw.edit(NEW_VK), 200, "the new key works after the reload");
    // Keep the load on a little after the swap, then stop.
    let after = ok.load(Ordering::SeqCst);
    wait_until("clients ran after the reload", || {
        ok.load(Ordering::SeqCst) >= after + 20
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.lock().unwrap().clone());
    eprintln!(
        "reload under load: {ok} requests succeeded ({} while the reload ran, {reloaded_in:?}), {} failed",
        after - before,
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed during the reload: {failed:?}");
    assert_eq!(gw.edit(VK), 200, "the old key still works");
    let new_hash = sha256_hex(&gw.path);
    assert_ne!(old_hash, new_hash);
    let text = gw.metrics_text();
    assert!(
        text.contains(&format!("refract_config_info{{hash=\"{new_hash}\"}} 1")),
        "{text}"
    );
    assert!(!text.contains(&old_hash), "the old hash is gone");
    assert!(gw.metric("refract_config_loaded_timestamp_seconds") >= loaded_at);
    assert_eq!(gw.metric(r#"refract_config_reloads_total{result="error"}"#), 0.0);
    wait_until("the reload logged", || gw.log().contains("config reloaded from"));
}

/// An invalid file on SIGHUP is refused: every problem is logged by path (and no secret), the
/// error counter counts it, and the process keeps serving with the config it had.
#[test]
fn sighup_with_an_invalid_file_keeps_the_running_config() {
    let mut gw = Refract::start(&[("team-a", VK)]);
    let hash = sha256_hex(&gw.path);
    // Two problems: an unknown provider kind, and a virtual key from an unset variable; the
    // new key itself must not be taken.
    let bad = gw
        .yaml(&[("team-a", VK), ("added", NEW_VK)])
        .replace("kind: openai", "kind: opneai")
        .replace(&format!("key: {VK}"), "key: env.REFRACT_TEST_UNSET_VK");
    gw.reload(&bad, "error");
    assert_eq!(gw.edit(VK), 200, "the old key still works");
    assert_eq!(gw.edit(NEW_VK), 401, "nothing of the refused file was taken");
    assert_eq!(gw.metric(r#"refract_config_reloads_total{result="ok"}"#), 0.0);
    assert_eq!(gw.metric(&format!("refract_config_info{{hash=\"{hash}\"}}")), 1.0);
    let log = gw.log();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(
        log.contains("providers[0].kind: unknown provider kind 'opneai'"),
        "{log}"
    );
    assert!(log.contains("virtual_keys[0].key"), "{log}");
    for secret in [PROVIDER_KEY, VK, NEW_VK] {
        assert!(!log.contains(secret), "a secret was logged:\n{log}");
    }
    // A valid file afterwards is taken.
    gw.reload(&gw.yaml(&[("team-a", VK), ("added", NEW_VK)]), "ok");
    assert_eq!(gw.edit(NEW_VK), 200);
    // Pingora's own signals still work: SIGTERM is a graceful exit.
    let status = Command::new("kill")
        .args(["-TERM", &gw.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = gw.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop the process");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}\n{}", gw.log());
    // The log reader thread may still be draining the pipe.
    wait_until("SIGTERM logged", || gw.log().contains("SIGTERM received"));
}

/// A listener address changed by a reload is named as taking effect only on restart or
/// upgrade; the rest of the reload applies and the old listener keeps serving.
#[test]
fn a_changed_listener_address_is_logged_as_needing_a_restart() {
    let mut gw = Refract::start(&[("team-a", VK)]);
    let other = free_addr();
    let moved = yaml(
        other,
        gw.metrics,
        &gw.upstream.base_url(),
        &[("team-a", VK), ("added", NEW_VK)],
    );
    gw.reload(&moved, "ok");
    let log = gw.log();
    assert!(
        log.contains(
            "listeners (addresses) changed; it takes effect only on a restart or upgrade (refract --upgrade, then SIGQUIT to this process)"
        ),
        "{log}"
    );
    assert!(!log.contains("server changed"), "only what changed is named:\n{log}");
    assert_eq!(gw.edit(NEW_VK), 200, "the rest of the reload applies");
    assert!(
        std::net::TcpStream::connect_timeout(&other, Duration::from_millis(200)).is_err(),
        "no listener was opened on the new address"
    );
}

/// End to end in-process: a key whose circuit opened stays skipped after a reload that moves
/// it to another position in its provider's list and adds a key before it.
#[test]
fn an_open_circuit_survives_a_reload_that_reorders_the_keys() {
    let mock = MockUpstream::start();
    mock.respond_with(|r| {
        if r.header("authorization").as_deref() == Some("Bearer sk-bad") {
            Reply::json(500, &serde_json::json!({"error": {"message": "down"}}))
        } else {
            Reply::json(200, &default_success())
        }
    });
    let (listen, metrics) = (free_addr(), free_addr());
    let config = |keys: &[(&str, &str, u32)]| {
        let keys: String = keys
            .iter()
            .map(|(name, value, weight)| format!("      - {{name: {name}, value: {value}, weight: {weight}}}\n"))
            .collect();
        let yaml = format!(
            "listeners:\n  - address: {listen}\nmetrics:\n  address: {metrics}\nproviders:\n  - name: openai\n    kind: openai\n    base_url: {}\n    circuit_breaker: {{failures: 1, open_ms: 600000}}\n    keys:\n{keys}virtual_keys:\n  - {{id: team-a, key: {VK}}}\n",
            mock.base_url()
        );
        refract::config::from_yaml_str_with_env(&yaml, &|_| None).unwrap()
    };
    // Only the bad key serves at first: one failure opens its circuit.
    let server = refract::server::spawn(config(&[("bad", "sk-bad", 1)])).unwrap();
    wait_listening(listen);
    wait_listening(metrics);
    assert_eq!(edit(listen, VK), 500);
    let open = r#"refract_circuit_open{key="bad",provider="openai"}"#;
    let metric = |series: &str| {
        let text = String::from_utf8(Gateway::get(metrics, "/metrics").body).unwrap();
        text.lines()
            .find_map(|l| Some(l.strip_prefix(series)?.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(metric(open), "1");
    // Reordered: a good key first, the bad one second with by far the larger weight.
    assert!(server
        .reload(config(&[("good", "sk-good", 1), ("bad", "sk-bad", 1000)]))
        .is_empty());
    let received = mock.received();
    for _ in 0..5 {
        assert_eq!(edit(listen, VK), 200, "the open key is skipped");
    }
    let sent: Vec<_> = mock.requests()[received..]
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    assert_eq!(sent, vec!["Bearer sk-good"; 5]);
    assert_eq!(metric(open), "1", "the gauge keeps the key's state");
    assert_eq!(metric(r#"refract_circuit_open{key="good",provider="openai"}"#), "0");
    assert_eq!(metric(r#"refract_config_reloads_total{result="ok"}"#), "1");
}

/// `refract check --print` prints the reference config as it will run: defaults filled in,
/// every secret redacted (by the variable it comes from), none of their values.
#[test]
fn check_print_shows_the_effective_config_without_secrets() {
    let vars = [
        "OPENAI_API_KEY",
        "REFRACT_VK_TEAM_A",
        "REFRACT_ADMIN_KEY",
        "VERTEX_ACCESS_TOKEN",
        "AZURE_OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "STABILITY_API_KEY",
        "BFL_API_KEY",
        "FIREWORKS_API_KEY",
        "REPLICATE_API_TOKEN",
        "HF_TOKEN",
        "XAI_API_KEY",
    ];
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/refract.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refract"));
    cmd.args(["check", "-c", conf.to_str().unwrap(), "--print"]);
    for v in vars {
        cmd.env(v, format!("secret-value-of-{v}"));
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("secret-value-of"), "a secret was printed:\n{text}");
    assert!(text.contains("value: '<redacted: env.OPENAI_API_KEY>'"), "{text}");
    assert!(text.contains("key: '<redacted: env.REFRACT_VK_TEAM_A>'"), "{text}");
    assert!(
        text.contains("admin_key: '<redacted: env.REFRACT_ADMIN_KEY>'"),
        "{text}"
    );
    assert!(text.contains("quota:"), "{text}");
    // Defaults the file leaves out are there, and the output is YAML.
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(doc["limits"]["max_part_header_bytes"], 16384);
    assert!(
        doc["providers"][0]["first_byte_timeout_ms"].as_u64().is_some(),
        "{text}"
    );
}

/// With `--watch`, a saved change is reloaded without a signal; a broken save is refused once
/// (not at every check) with the running config kept, and the fixed one is taken.
#[test]
fn a_watched_file_is_reloaded_when_it_changes() {
    let gw = Refract::start_with(&[("team-a", VK)], &["--watch=50"]);
    let (ok, error) = (
        r#"refract_config_reloads_total{result="ok"}"#,
        r#"refract_config_reloads_total{result="error"}"#,
    );
    assert_eq!(gw.edit(NEW_VK), 401);
    // Saved as editors do: a new file renamed over the old one.
    let save = |text: &str| {
        let tmp = gw.path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &gw.path).unwrap();
    };
    save(&gw.yaml(&[("team-a", VK), ("added", NEW_VK)]));
    wait_until("the change is loaded", || gw.metric(ok) == 1.0);
    assert_eq!(gw.edit(NEW_VK), 200);
    save("providers: [");
    wait_until("the broken save is refused", || gw.metric(error) == 1.0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.metric(error), 1.0, "refused once, not at every check");
    assert_eq!(gw.edit(NEW_VK), 200, "the running config is kept");
    save(&gw.yaml(&[("added", NEW_VK)]));
    wait_until("the fixed file is loaded", || gw.metric(ok) == 2.0);
    assert_eq!(gw.edit(VK), 401, "team-a was removed");
    assert_eq!(gw.metric(ok), 2.0);
}
