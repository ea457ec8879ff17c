//! Findings 1 and 6: answers sent before the request body was read to its end reach the client
//! (the gateway reads and discards the rest of the body, within `limits.linger_bytes` and
//! `limits.linger_timeout_ms`, before it closes), and a body whose framing is broken closes the
//! connection after its 400.

use crate::common::{big_png_like, chunked, post_head, Form, Gateway, MockUpstream, Setup, VK, VK_RESTRICTED};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Tries of each early answer.
const TRIES: usize = 50;
/// The image sizes tried: a small one and 2 MB.
const SIZES: [(&str, usize); 2] = [("small", 200), ("2MB", 2_000_000)];
/// The body limit of the gateway that answers 413: below even the small image's form.
const SMALL_MAX_BODY: usize = 400;
/// Generous bound on any wait for the gateway (CI machines are slow).
const PATIENCE: Duration = Duration::from_secs(20);

fn form(model: &str, image_len: usize) -> Form {
    Form::new().text("model", model).text("prompt", "early answer").file(
        "image",
        "in.png",
        "image/png",
        &big_png_like(image_len, 7),
    )
}

/// A POST head for `form` with `Transfer-Encoding: chunked` instead of a Content-Length.
fn chunked_head(form: &Form, headers: &[(&str, &str)]) -> Vec<u8> {
    let head = String::from_utf8(post_head("/v1/images/edits", headers, form, None)).unwrap();
    let length = format!("Content-Length: {}\r\n", form.body().len());
    assert!(head.contains(&length));
    head.replacen(&length, "Transfer-Encoding: chunked\r\n", 1).into_bytes()
}

/// One request as a client sends it: the head, then the whole body (two writes, as Node's fetch
/// does), then the answer; the connection must then end with a clean close, not a reset.
struct Request {
    head: Vec<u8>,
    body: Vec<u8>,
}

impl Request {
    fn declared(form: &Form, headers: &[(&str, &str)]) -> Request {
        Request {
            head: post_head("/v1/images/edits", headers, form, None),
            body: form.body(),
        }
    }

    fn chunked(form: &Form, headers: &[(&str, &str)]) -> Request {
        Request {
            head: chunked_head(form, headers),
            body: chunked(&form.body()),
        }
    }
}

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until the head and a `Content-Length` body are in; returns (head text, body).
fn read_answer(s: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("no Content-Length: {head}")))?;
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                return Ok((head, body));
            }
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed before the whole answer",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// How the client sends its body.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// The head, then the whole body, then it reads the answer (curl, Python's httpx).
    WholeThenRead,
    /// The head and the start of the body, then it reads the answer that arrives meanwhile,
    /// then sends the rest of the body in two writes (Node's fetch, which keeps writing the
    /// body while the answer comes in): a gateway that closed after its answer resets the
    /// connection, and the client's write of the rest fails.
    AnswerMidway,
}

/// Sends `req` on a new connection at `pace` and checks that the answer `status` arrives whole,
/// that the whole body could be sent, and that a `Connection: close` answer is followed by a
/// FIN (not a reset). Returns what went wrong.
fn try_once(addr: std::net::SocketAddr, req: &Request, status: u16, pace: Pace) -> Result<(), String> {
    let mut s = connect(addr);
    s.write_all(&req.head).map_err(|e| format!("sending the head: {e}"))?;
    let (head, body) = match pace {
        Pace::WholeThenRead => {
            s.write_all(&req.body)
                .map_err(|e| format!("sending the body: {:?}", e.kind()))?;
            read_answer(&mut s).map_err(|e| format!("reading the answer: {:?}", e.kind()))?
        }
        Pace::AnswerMidway => {
            let first = (req.body.len() - 32).min(64 * 1024);
            s.write_all(&req.body[..first])
                .map_err(|e| format!("sending the body's start: {:?}", e.kind()))?;
            let answer = read_answer(&mut s).map_err(|e| format!("reading the answer: {:?}", e.kind()))?;
            let (rest, last) = req.body[first..].split_at(req.body.len() - first - 16);
            for piece in [rest, last] {
                s.write_all(piece)
                    .map_err(|e| format!("sending the body's rest after the answer: {:?}", e.kind()))?;
            }
            answer
        }
    };
    if !head.starts_with(&format!("http/1.1 {status} ")) {
        return Err(format!("answer {}", head.lines().next().unwrap_or_default()));
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("answer body: {e}"))?;
    if doc["status_code"] != status {
        return Err(format!("answer body {doc}"));
    }
    if !head.contains("\r\nconnection: close") {
        // Only when the body had been read to its end before the answer (a small body that came
        // with the head): the connection stays usable.
        return match pace {
            Pace::WholeThenRead => Ok(()),
            Pace::AnswerMidway => Err("answer without Connection: close before the body's end".into()),
        };
    }
    match s.read(&mut [0u8; 1024]) {
        // A reset that came right after the FIN is not reported by the read: the socket keeps it.
        Ok(0) => match s.take_error() {
            Ok(None) => Ok(()),
            Ok(Some(e)) | Err(e) => Err(format!("reset after the FIN: {:?}", e.kind())),
        },
        Ok(n) => Err(format!("{n} bytes after the answer")),
        Err(e) => Err(format!("after the answer: {:?}", e.kind())),
    }
}

/// Runs `TRIES` of each case at each pace; fails listing every outcome that was not a delivered answer.
fn run_cases(cases: &[(String, std::net::SocketAddr, Request, u16)]) {
    let mut failures = Vec::new();
    for (name, addr, req, status) in cases {
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for pace in [Pace::WholeThenRead, Pace::AnswerMidway] {
            for _ in 0..TRIES {
                if let Err(e) = try_once(*addr, req, *status, pace) {
                    *outcomes.entry(format!("{pace:?}: {e}")).or_default() += 1;
                }
            }
        }
        if !outcomes.is_empty() {
            failures.push(format!("{name}: {outcomes:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "early answers not delivered over {TRIES} tries each:\n{}",
        failures.join("\n")
    );
}

fn gateway(mock: &MockUpstream, limits: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = limits.to_string();
    Gateway::start(&setup)
}

/// 401 (wrong key), 400 (unknown provider), 403 (model not allowed) and 413 (declared
/// Content-Length over the limit, and a chunked body crossing it): each is delivered whole, 50
/// times out of 50 at each pace, with small and 2 MB images; the client can send its whole body,
/// and the connection ends with a FIN.
#[test]
fn every_early_answer_reaches_a_client_that_sends_its_whole_body() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    let small_limit = gateway(&mock, &format!("  max_body_bytes: {SMALL_MAX_BODY}\n"));
    let mut cases = Vec::new();
    for (size, len) in SIZES {
        let ok = form("openai/gpt-image-1", len);
        assert!(ok.body().len() > SMALL_MAX_BODY);
        cases.push((
            format!("401 wrong key, {size}"),
            gw.addr,
            Request::declared(&ok, &[("x-bf-vk", "sk-bf-wrong")]),
            401,
        ));
        cases.push((
            format!("400 unknown provider, {size}"),
            gw.addr,
            Request::declared(&form("nope/gpt-image-1", len), &[("x-bf-vk", VK)]),
            400,
        ));
        cases.push((
            format!("403 model not allowed, {size}"),
            gw.addr,
            Request::declared(&form("other/gpt-image-1", len), &[("x-bf-vk", VK_RESTRICTED)]),
            403,
        ));
        cases.push((
            format!("413 declared length, {size}"),
            small_limit.addr,
            Request::declared(&ok, &[("x-bf-vk", VK)]),
            413,
        ));
        cases.push((
            format!("413 crossed while chunked, {size}"),
            small_limit.addr,
            Request::chunked(&ok, &[("x-bf-vk", VK)]),
            413,
        ));
    }
    run_cases(&cases);
    assert!(
        gw.metric(r#"refract_linger_total{outcome="drained"}"#) > 0.0,
        "{}",
        gw.metrics_text()
    );
    assert!(mock.requests().is_empty(), "nothing went upstream");
    gw.assert_still_serves();
}

/// Reads from `s` until the gateway closes (end of stream or reset); fails if it does not within
/// `PATIENCE`. Returns what was read.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the gateway kept the connection open for {:?}", start.elapsed())
            }
            Err(_) => return got,
        }
    }
}

/// Sends `head` + `body` from a thread of its own (ignoring write errors: the gateway may close
/// first) and returns the socket to read from.
fn send_in_background(
    addr: std::net::SocketAddr,
    head: Vec<u8>,
    body: Vec<u8>,
) -> (TcpStream, std::thread::JoinHandle<()>) {
    let s = connect(addr);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&head).and_then(|_| w.write_all(&body));
    });
    (s, writer)
}

/// Past `linger_bytes` the gateway closes: at once when the declared length says the rest is
/// larger, after reading `linger_bytes` of a chunked body; counted as `bytes_limit`.
#[test]
fn past_linger_bytes_the_connection_is_closed() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "  linger_bytes: 1048576\n");
    let big = form("openai/gpt-image-1", 3_000_000);
    let wrong_key = [("x-bf-vk", "sk-bf-wrong")];
    for req in [Request::declared(&big, &wrong_key), Request::chunked(&big, &wrong_key)] {
        let (mut s, writer) = send_in_background(gw.addr, req.head, req.body);
        read_until_closed(&mut s);
        drop(s);
        writer.join().unwrap();
    }
    crate::common::wait_until("two bytes_limit lingers counted", || {
        gw.metric(r#"refract_linger_total{outcome="bytes_limit"}"#) == 2.0
    });
    gw.assert_still_serves();
}

/// A client that stops sending after an early answer is given `linger_timeout_ms`, then closed
/// (`timeout`); one that closes its side is let go at once (`client_closed`); a chunk that
/// breaks the framing while the rest is discarded closes at once (`framing_error`).
#[test]
fn every_way_lingering_ends_is_counted() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "  linger_timeout_ms: 300\n");
    let f = form("openai/gpt-image-1", 200);
    let wrong_key = [("x-bf-vk", "sk-bf-wrong")];
    let head = post_head("/v1/images/edits", &wrong_key, &f, Some(100_000));
    // Sends the head and the body's first 100 bytes, and reads the 401.
    let answered = || {
        let mut s = connect(gw.addr);
        s.write_all(&head).unwrap();
        s.write_all(&f.body()[..100]).unwrap();
        let (status_line, _) = read_answer(&mut s).unwrap();
        assert!(status_line.starts_with("http/1.1 401 "), "{status_line}");
        s
    };

    // Stalls: the answer comes, then the close after the linger timeout.
    let mut s = answered();
    assert!(read_until_closed(&mut s).is_empty());
    crate::common::wait_until("a timeout linger counted", || {
        gw.metric(r#"refract_linger_total{outcome="timeout"}"#) == 1.0
    });

    // Closes its sending side: the gateway stops lingering at once.
    let mut s = answered();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_until_closed(&mut s).is_empty());
    crate::common::wait_until("a client_closed linger counted", || {
        gw.metric(r#"refract_linger_total{outcome="client_closed"}"#) == 1.0
    });

    // A chunked body that breaks after the answer.
    let mut s = connect(gw.addr);
    s.write_all(&chunked_head(&f, &wrong_key)).unwrap();
    let (status_line, _) = read_answer(&mut s).unwrap();
    assert!(status_line.starts_with("http/1.1 401 "), "{status_line}");
    s.write_all(b"5\r\nhello\r\nzz\r\n").unwrap();
    assert!(read_until_closed(&mut s).is_empty());
    crate::common::wait_until("a framing_error linger counted", || {
        gw.metric(r#"refract_linger_total{outcome="framing_error"}"#) == 1.0
    });
    assert_eq!(gw.metric(r#"refract_linger_total{outcome="drained"}"#), 0.0);
}

/// A chunked body with an invalid chunk size, or a chunk longer than its size says, is a 400
/// with `Connection: close`; bytes sent after it are never answered as a new request.
#[test]
fn a_broken_chunked_body_closes_the_connection() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    let f = form("openai/gpt-image-1", 200);
    let body = f.body();
    let valid_start = chunked(&body[..50]);
    let valid_start = &valid_start[..valid_start.len() - 5]; // without the last chunk
    for (name, broken) in [
        ("invalid chunk size", b"zz\r\nhello\r\n".to_vec()),
        ("chunk longer than its size", b"5\r\nhello, world\r\n".to_vec()),
    ] {
        let mut s = connect(gw.addr);
        s.write_all(&chunked_head(&f, &[("x-bf-vk", VK)])).unwrap();
        s.write_all(&[valid_start, &broken].concat()).unwrap();
        let (head, _) = read_answer(&mut s).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(head.starts_with("http/1.1 400 "), "{name}: {head}");
        assert!(head.contains("\r\nconnection: close"), "{name}: {head}");
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n");
        let after = read_until_closed(&mut s);
        assert!(
            after.is_empty(),
            "{name}: answered after the 400: {:?}",
            String::from_utf8_lossy(&after)
        );
    }
    assert!(mock.requests().is_empty());
}
