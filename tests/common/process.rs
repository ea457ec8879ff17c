//! The `refract` binary as a process of its own (`refract -c FILE`) on ephemeral ports: for
//! tests of replicas, restarts and signals. Killed when dropped.

use super::{metric_in, spawn_logging, Gateway};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `refract -c FILE`.
pub struct Refract {
    /// The process.
    pub child: Child,
    /// The client listener.
    pub addr: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// Everything it logged so far.
    log: Arc<Mutex<String>>,
    /// Holds the config file (and whatever the config puts there).
    pub dir: tempfile::TempDir,
}

impl Refract {
    /// Writes the config `yaml(listen, metrics, dir)` makes (two fresh loopback addresses and
    /// a fresh directory) and starts `refract -c` on it with `RUST_LOG=info` and the
    /// environment `envs`; returns once both listeners accept.
    pub fn start(yaml: impl FnOnce(SocketAddr, SocketAddr, &Path) -> String, envs: &[(&str, &str)]) -> Refract {
        let (listen, metrics) = (super::free_addr(), super::free_addr());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refract.yaml");
        std::fs::write(&path, yaml(listen, metrics, dir.path())).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_refract"));
        command
            .args(["-c", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null());
        for (name, value) in envs {
            command.env(name, value);
        }
        let (child, log) = spawn_logging(&mut command);
        let mut process = Refract {
            child,
            addr: listen,
            metrics,
            log,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in [listen, metrics] {
            while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = process.child.try_wait().unwrap() {
                    panic!("refract exited ({status}) at startup:\n{}", process.log());
                }
                assert!(Instant::now() < deadline, "refract did not listen:\n{}", process.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        process
    }

    /// The value of one metrics series (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let r = Gateway::get(self.metrics, "/metrics");
        assert_eq!(r.status, 200);
        metric_in(&String::from_utf8(r.body).unwrap(), series)
    }

    /// Kills it with SIGKILL (no chance to hand anything back) and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits until it exits, at most `limit`.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Refract {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
