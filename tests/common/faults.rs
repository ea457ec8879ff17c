//! The faults a provider can have, scripted on the mock upstream, and the rig the fault tests
//! and the soak share: a gateway whose primary fails, with healthy fallbacks and a spool
//! directory of its own.

use super::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

pub const PARTIAL: &str = "image_edit.partial_image";

/// Every way the primary fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing listens: the connection is refused.
    Refused,
    /// The provider resets the connection while a 2 MiB upload is being sent to it.
    ResetMidRequest,
    /// The provider resets the connection inside its answer's body.
    ResetMidAnswer,
    /// The provider takes the request and never answers.
    StallBeforeHead,
    /// A stream's head and a keep-alive comment, then silence before the first event.
    StallBetweenEvents,
    /// 429 with `Retry-After`.
    RateLimited,
    /// 500.
    ServerError,
    /// 503.
    Unavailable,
    /// 200 whose JSON is cut off.
    MalformedJson,
    /// An event stream cut off inside its first event.
    TruncatedSse,
    /// 200 with an HTML page.
    WrongContentType,
}

pub const ALL: [Fault; 11] = [
    Fault::Refused,
    Fault::ResetMidRequest,
    Fault::ResetMidAnswer,
    Fault::StallBeforeHead,
    Fault::StallBetweenEvents,
    Fault::RateLimited,
    Fault::ServerError,
    Fault::Unavailable,
    Fault::MalformedJson,
    Fault::TruncatedSse,
    Fault::WrongContentType,
];

/// The image every request uploads for `fault` (a 2 MiB one where the fault needs an upload
/// in flight: streamed upstream as it arrives, and spooled to a file).
pub fn image_for(fault: Fault) -> Vec<u8> {
    match fault {
        Fault::ResetMidRequest => big_png_like(2 << 20, 7),
        _ => tiny_png(),
    }
}

/// HTTP/1.1 chunk framing of `data`.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

pub const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A complete OpenAI `partial_image` event.
pub fn partial_event() -> Vec<u8> {
    let data = json!({"type": PARTIAL, "b64_json": "aW1hZ2U=", "partial_image_index": 0, "created_at": 7,
        "size": "4x4", "quality": "low", "background": "opaque", "output_format": "png"});
    format!("event: {PARTIAL}\ndata: {data}\n\n").into_bytes()
}

impl Fault {
    /// Whether the request asks for a stream (the stream faults need one).
    pub fn stream(self) -> bool {
        matches!(self, Fault::StallBetweenEvents | Fault::TruncatedSse)
    }

    /// What the primary's mock answers (`None`: nothing listens).
    pub fn reply(self) -> Option<Reply> {
        let error = |status| {
            Reply::json(
                status,
                &json!({"error": {"message": "scripted", "type": "server_error"}}),
            )
        };
        Some(match self {
            Fault::Refused => return None,
            Fault::ResetMidRequest => Reply::ResetDuringBody { after: 64 * 1024 },
            Fault::ResetMidAnswer => Reply::Raw {
                pieces: vec![(
                    Duration::ZERO,
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"data\":[{\"b64_json\":\"aW1h"
                        .to_vec(),
                )],
                end: RawEnd::Reset,
            },
            Fault::StallBeforeHead => Reply::Stall,
            Fault::StallBetweenEvents => Reply::Raw {
                pieces: vec![(Duration::ZERO, [SSE_HEAD, &chunk(b": keep-alive\n\n")].concat())],
                end: RawEnd::Hold,
            },
            Fault::RateLimited => Reply::Raw {
                pieces: vec![(
                    Duration::ZERO,
                    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 0\r\nContent-Length: 58\r\n\r\n{\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_error\"}}"
                        .to_vec(),
                )],
                end: RawEnd::KeepAlive,
            },
            Fault::ServerError => error(500),
            Fault::Unavailable => error(503),
            Fault::MalformedJson => Reply::raw(200, "application/json", b"{\"data\":[{\"b64_json\":\"aW1h"),
            Fault::TruncatedSse => {
                let event = partial_event();
                Reply::Raw {
                    pieces: vec![(Duration::ZERO, [SSE_HEAD, &chunk(&event[..event.len() / 2])].concat())],
                    end: RawEnd::Close,
                }
            }
            Fault::WrongContentType => Reply::raw(200, "text/html", b"<html><body>502 Bad Gateway</body></html>"),
        })
    }

    /// The client's error without fallbacks: status, Bifrost `type` for the gateway's own
    /// errors (`None`: the provider's error, passed through), and the timeout kind counted.
    pub fn error(self) -> (u16, Option<&'static str>, Option<&'static str>) {
        match self {
            Fault::Refused => (502, Some("upstream_connect_error"), None),
            Fault::ResetMidRequest
            | Fault::ResetMidAnswer
            | Fault::MalformedJson
            | Fault::TruncatedSse
            | Fault::WrongContentType => (502, Some("upstream_protocol_error"), None),
            Fault::StallBeforeHead => (504, Some("upstream_timeout"), Some("first_byte")),
            Fault::StallBetweenEvents => (504, Some("upstream_timeout"), Some("idle")),
            Fault::RateLimited => (429, None, None),
            Fault::ServerError => (500, None, None),
            Fault::Unavailable => (503, None, None),
        }
    }
}

/// A gateway whose `openai` provider fails with `fault`, a healthy `backup` and `spare`, a
/// `dead` one (nothing listens), and a spool directory of its own. `settings` are extra lines for `openai` (and `other`).
pub struct Rig {
    pub primary: MockUpstream,
    pub backup: MockUpstream,
    pub spare: MockUpstream,
    pub gw: Gateway,
    pub spool: tempfile::TempDir,
}

impl Rig {
    pub fn new(fault: Fault, settings: &str) -> Rig {
        Rig::with_timeouts(fault, settings, 300)
    }

    /// A rig whose first-byte and idle timeouts are `timeout_ms`.
    pub fn with_timeouts(fault: Fault, settings: &str, timeout_ms: u64) -> Rig {
        let (primary, backup, spare) = (MockUpstream::start(), MockUpstream::start(), MockUpstream::start());
        let spool = tempfile::tempdir().unwrap();
        let url = match fault.reply() {
            Some(reply) => {
                primary.always(reply);
                primary.base_url()
            }
            None => format!("http://{}/v1", free_addr()),
        };
        let mut setup = Setup::new(&url);
        setup.spool_directory = Some(spool.path().to_path_buf());
        // Every upload goes to a spool file, so every fault shows whether its file is freed.
        setup.spool_memory_bytes = 0;
        setup.provider_settings = format!(
            "    first_byte_timeout_ms: {timeout_ms}\n    idle_timeout_ms: {timeout_ms}\n    total_timeout_ms: 20000\n    pool_idle_timeout_ms: 1000\n{settings}"
        );
        // `dead`: nothing listens there (the soak's connection refusals).
        // Healthy providers answer at once; short limits keep Pingora's timer buckets (held
        // until their deadline passes) from piling up over the soak.
        let limits = "    connect_timeout_ms: 2000\n    first_byte_timeout_ms: 3000\n    idle_timeout_ms: 3000\n    pool_idle_timeout_ms: 1000\n";
        let provider = |name: &str, url: &str| {
            format!("  - name: {name}\n    kind: openai\n    base_url: {url}\n{limits}    keys:\n      - {{name: k, value: sk-{name}-key}}\n")
        };
        setup.extra_providers = [
            provider("backup", &backup.base_url()),
            provider("spare", &spare.base_url()),
            provider("dead", &format!("http://{}/v1", free_addr())),
        ]
        .concat();
        let gw = Gateway::start(&setup);
        Rig {
            primary,
            backup,
            spare,
            gw,
            spool,
        }
    }

    /// The edit request for `fault`, with `fallbacks` when given.
    pub fn form(&self, fault: Fault, fallbacks: Option<&str>) -> Form {
        edit_form("openai/gpt-image-1", fault, fallbacks)
    }

    /// Asserts the spool directory is empty and the gateway still serves (through `backup`).
    pub fn assert_clean_and_serving(&self) {
        assert_spool_empty(self.spool.path());
        let r = self.gw.edit(
            &edit_form("backup/gpt-image-1", Fault::ServerError, None),
            &[("x-bf-vk", VK)],
        );
        assert_eq!(r.status, 200, "the gateway no longer serves: {}", r.text());
    }
}

/// An edit request of `model` for `fault`, with `fallbacks` when given.
pub fn edit_form(model: &str, fault: Fault, fallbacks: Option<&str>) -> Form {
    let mut form = Form::new().text("model", model).text("prompt", "make it blue").file(
        "image",
        "in.png",
        "image/png",
        &image_for(fault),
    );
    if fault.stream() {
        form = form.text("stream", "true");
    }
    if let Some(f) = fallbacks {
        form = form.text("fallbacks", f);
    }
    form
}

/// Spool files this process holds open in `dir`. The spool's files are anonymous (unlinked
/// from the start, so none can be left behind in the directory); what a leak would leave is an
/// open one, seen as a descriptor whose target lies in `dir`.
pub fn spool_files_open(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Waits (up to 5 s: a spool is freed when the request's last reference goes) until no spool
/// file in `dir` is open and the directory holds no file.
pub fn assert_spool_empty(dir: &Path) {
    wait_until("every spool file closed", || spool_files_open(dir) == 0);
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "files left in the spool directory: {left:?}");
}

/// Asserts an answer served by `provider` (JSON, or an event stream whose completed events
/// name it) and returns the JSON answer or the first completed event.
pub fn assert_served_by(r: &Response, provider: &str, stream: bool) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = if stream {
        let completed = completed_events(&r.body);
        assert_eq!(completed.len(), 2, "{}", r.text());
        completed.into_iter().next().unwrap()
    } else {
        r.json()
    };
    assert_eq!(v["extra_fields"]["provider"], provider, "{v}");
    v
}

/// The primary's attempts: complete requests plus requests cut off while they were sent.
pub fn attempts(mock: &MockUpstream) -> usize {
    mock.requests().len() + mock.incomplete().len()
}

/// Asserts `r` is the 504 of a `kind` timeout at `provider` whose message names `key` and its
/// limit `ms`, counted once in `refract_upstream_timeouts_total`.
pub fn assert_timeout(gw: &Gateway, r: &Response, provider: &str, kind: &str, key: &str, ms: u64) {
    let v = assert_gateway_error(r, 504, "upstream_timeout", "upstream_error", None);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("({kind})")) && message.contains(&format!("{key} ({ms} ms)")),
        "{message}"
    );
    assert_eq!(v["extra_fields"]["provider"], provider, "{v}");
    let series = format!(r#"refract_upstream_timeouts_total{{kind="{kind}",provider="{provider}"}}"#);
    assert_eq!(gw.metric(&series), 1.0, "{series}");
}
