//! Real engines started by the tests: a `redis-server` on a unix socket in a temp dir, and
//! moto's standalone S3 server on a free loopback port (with bucket `refract-test`).
//!
//! An engine that is not installed skips its test with a message, except under CI (`CI` set),
//! where it fails: `.ci/deps` installs both.

use refract::config::{ObjectsSettings, S3Settings, Secret};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `None` (with a note) when `program` is missing outside CI; a failure under CI.
pub fn engine(program: &Path, install: &str) -> Option<PathBuf> {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some(program.to_path_buf());
    }
    let msg = format!("{} is not installed ({install}; .ci/deps does it)", program.display());
    assert!(std::env::var_os("CI").is_none(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// A child process killed (by its id) when dropped.
pub struct Engine {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 30 s until `ready` holds (an engine starting).
fn wait_started(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` on a unix socket in a temp dir (no port, no persistence), and its URL.
pub fn redis_server() -> Option<(Engine, String)> {
    redis_server_with(&[])
}

/// [`redis_server`] with more arguments.
pub fn redis_server_with(extra: &[&str]) -> Option<(Engine, String)> {
    let program = engine(Path::new("redis-server"), "apt-get install redis-server")?;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("r.sock");
    let child = Command::new(program)
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = format!("redis+unix://{}", sock.display());
    let engine = Engine { child, _dir: dir };
    wait_started("redis-server", || {
        std::os::unix::net::UnixStream::connect(&sock)
            .and_then(|mut s| {
                s.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf)?;
                Ok(&buf == b"+PONG\r\n" || &buf == b"-NOAUTH")
            })
            .unwrap_or(false)
    });
    Some((engine, url))
}

/// A loopback port nothing listens on now (for a server started by port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 request without a body to `127.0.0.1:port`; the status and body.
pub fn http(port: u16, method: &str, target: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| answer[i + 4..].to_vec())
        .unwrap_or_default();
    (status, body)
}

/// The bucket [`s3_server`] creates.
pub const S3_BUCKET: &str = "refract-test";

/// moto's S3 server on a free loopback port with bucket [`S3_BUCKET`] created.
pub fn s3_server() -> Option<(Engine, u16)> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    let program = engine(&venv, "pip install 'moto[server]' into .venv")?;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let engine = Engine { child, _dir: dir };
    wait_started("moto_server", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let (status, body) = http(port, "PUT", &format!("/{S3_BUCKET}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    Some((engine, port))
}

/// The `objects` settings for [`s3_server`] on `port` (prefix `gw`).
pub fn s3_settings(port: u16) -> ObjectsSettings {
    ObjectsSettings::S3(S3Settings {
        bucket: S3_BUCKET.to_string(),
        region: "us-east-1".to_string(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Secret::new("testing"),
        secret_access_key: Secret::new("testing"),
        prefix: Some("gw".to_string()),
    })
}

/// The keys of the objects in [`s3_server`] on `port` whose names start with `prefix` (a
/// `ListObjectsV2` call, parsed for its `<Key>` elements).
pub fn s3_keys(port: u16, prefix: &str) -> Vec<String> {
    let (status, body) = http(port, "GET", &format!("/{S3_BUCKET}?list-type=2&prefix={prefix}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let text = String::from_utf8_lossy(&body);
    text.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(str::to_string)
        .collect()
}
