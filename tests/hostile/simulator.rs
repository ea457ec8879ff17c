//! Finding 11: the demo's simulator held whole uploads (and made each answer whole, several
//! copies of it). The simulator runs here as its own process, so that its resident memory is
//! its own, and takes concurrent large requests straight from the test: its peak RSS must stay
//! far below what holding them takes. Each upload is read as it arrives into a spool, and each
//! answer is rendered row by row into another one.

use crate::common::{free_addr, post_head, wait_listening, Form};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The simulator (and an idle gateway) as a process, killed on drop.
struct Simulator {
    child: std::process::Child,
    addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Simulator {
    /// Starts `refract` with the simulator on and default limits and spool (1 MiB in memory).
    fn start() -> Simulator {
        let (gateway, addr) = (free_addr(), free_addr());
        let yaml = format!(
            r#"
server: {{ threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "{gateway}" }}]
simulator: {{ address: "{addr}" }}
providers:
  - name: demo
    kind: openai
    base_url: http://{addr}/v1
    keys: [{{ name: simulator, value: sim-key-not-secret }}]
virtual_keys:
  - {{ id: test, key: sk-bf-simulator-test }}
"#
        );
        let mut config = tempfile::NamedTempFile::new().unwrap();
        config.write_all(yaml.as_bytes()).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_refract"))
            .arg("-c")
            .arg(config.path())
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start refract");
        wait_listening(addr);
        Simulator {
            child,
            addr,
            _config: config,
        }
    }

    /// A figure of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    fn kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Posts `form` to the simulator's OpenAI edits; returns the status and the JSON answer.
    fn edit(&self, form: &Form) -> (u16, serde_json::Value) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = post_head(
            "/v1/images/edits",
            &[("Authorization", "Bearer sim-key"), ("Connection", "close")],
            form,
            None,
        );
        s.write_all(&head).unwrap();
        for chunk in form.body().chunks(64 * 1024) {
            s.write_all(chunk).unwrap();
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        let at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let status = String::from_utf8_lossy(&answer[9..12]).parse().unwrap();
        (status, serde_json::from_slice(&answer[at..]).unwrap_or_default())
    }

    /// Sends `form` once (so that the code it runs is paged in and the pools are warm), then
    /// `times` times at once; every answer must be a 200 with `n` images of `width`×`height`.
    /// Returns the growth of the peak RSS during the concurrent requests over the RSS before
    /// them, in MiB.
    fn peak_growth(&self, form: &Form, times: usize, (n, width, height): (usize, u32, u32)) -> f64 {
        let check = |(status, v): (u16, serde_json::Value)| {
            assert_eq!(status, 200, "{v}");
            let data = v["data"].as_array().unwrap();
            assert_eq!(data.len(), n);
            for image in data {
                use base64::Engine;
                let png = base64::engine::general_purpose::STANDARD
                    .decode(image["b64_json"].as_str().unwrap())
                    .unwrap();
                assert_eq!(refract::imaging::png_dimensions(&png), Some((width, height)));
            }
        };
        check(self.edit(form));
        // Resets the peak (VmHWM) to the current RSS.
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
        let before = self.kib("VmRSS");
        std::thread::scope(|scope| {
            let answers: Vec<_> = (0..times).map(|_| scope.spawn(|| self.edit(form))).collect();
            for answer in answers {
                check(answer.join().unwrap());
            }
        });
        let growth = self.kib("VmHWM").saturating_sub(before) as f64 / 1024.0;
        eprintln!(
            "{times} concurrent requests: RSS before {:.1} MiB, peak growth {growth:.1} MiB",
            before as f64 / 1024.0
        );
        growth
    }
}

/// A PNG of random pixels (they do not compress: the PNG is about 4 bytes a pixel).
fn noise_png(side: u32) -> Vec<u8> {
    let mut img = refract::imaging::solid(side, side, [0, 0, 0, 255]);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in img.pixels.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    refract::imaging::encode_png(&img).unwrap()
}

/// Twelve uploads of 12 MB at once (a small first image, a large second one, which the
/// simulator only counts): each is spooled as it arrives (1 MiB of it in memory at most), not
/// held. Holding them takes over 140 MiB (the version that did grew by 159 to 188 MiB; this
/// one by 27 to 36 MiB, in a debug build).
#[test]
fn concurrent_large_uploads_are_spooled_not_held() {
    let sim = Simulator::start();
    let first = refract::imaging::encode_png(&refract::imaging::solid(16, 16, [9, 9, 9, 255])).unwrap();
    let second = noise_png(1700); // about 11.6 MB
    let form = Form::new()
        .text("model", "sim-image-1")
        .text("prompt", "paint")
        .file("image[]", "small.png", "image/png", &first)
        .file("image[]", "large.png", "image/png", &second);
    let growth = sim.peak_growth(&form, 12, (1, 16, 16));
    assert!(
        growth < 80.0,
        "12 concurrent 12 MB uploads grew the simulator's RSS by {growth:.1} MiB"
    );
}

/// Four edits at once of a 2 MB image, ten output images each (28 MB of answer each): each
/// image is rendered row by row into the answer's spool, never held whole (the version that
/// made each answer whole grew by about 150 MiB; this one by about 40 MiB, in a debug build).
#[test]
fn large_answers_are_rendered_into_a_spool_not_held() {
    let sim = Simulator::start();
    let form = Form::new()
        .text("model", "sim-image-1")
        .text("prompt", "paint")
        .text("n", "10")
        .file("image", "noise.png", "image/png", &noise_png(724));
    let growth = sim.peak_growth(&form, 4, (10, 724, 724));
    assert!(
        growth < 80.0,
        "4 concurrent edits with 28 MB answers grew the simulator's RSS by {growth:.1} MiB"
    );
}
