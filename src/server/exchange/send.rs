//! Sending a complete request to a provider: its head, then its body plan.
//!
//! Runs in each attempt of an exchange whose body is all in the spool ([`super::exchange`]),
//! after the connection was taken and before the answer is read. The body plan's bytes come
//! out in order as pieces ([`BodyPieces`]): the adapter's literals as they are, spool ranges
//! as the spool's own chunks (slices of the upload in memory, reads of the temp file), base64
//! ranges encoded chunk by chunk.
//!
//! Over HTTP/1.1 the gateway writes the message itself: the head Pingora serializes and the
//! pieces are gathered into vectored writes of up to [`GATHER_BYTES`], so the 64 KiB edit's
//! request (head, part heads, two slices of the upload, the closing delimiter) leaves in one
//! `writev` instead of five writes, and nothing is copied to join them. The connection goes
//! back into a Pingora session only to read the answer. HTTP/2 (and any other session) is
//! written through the session, piece by piece.

use super::{upstream_error, AttemptError, Clock, Stage};
use crate::codec::base64::Base64Stream;
use crate::error::GatewayError;
use crate::providers::{BodySegment, UpstreamRequest};
use crate::route::Target;
use crate::spool::{Spool, SpoolChunks};
use bytes::{Buf, Bytes};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1Session};
use pingora::protocols::Stream;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::io::{self, IoSlice};
use tokio::io::AsyncWriteExt;

/// Most bytes gathered for one vectored write. Pieces read from a spilled spool or encoded
/// for it are held until written, so this also bounds what a request holds beyond its spool.
const GATHER_BYTES: usize = 256 * 1024;

/// Most pieces in one vectored write (far below the kernel's `IOV_MAX` of 1,024).
const GATHER_PIECES: usize = 64;

/// A request ready to be sent: its head as Pingora builds it and in its HTTP/1.1 wire form
/// (serialized once the head is known to be valid, so an invalid one fails before any byte
/// is sent).
pub(super) struct Prepared {
    pub(super) head: RequestHeader,
    pub(super) wire: Bytes,
}

/// The head of `req` for `target`: its method and path, `host`, `content-length`, the
/// adapter's headers and the current span's `traceparent`.
pub(super) fn prepare(target: &Target, clock: &Clock, req: &UpstreamRequest) -> Result<Prepared, AttemptError> {
    let invalid = |e: &Error| {
        let limit = clock.limit(target.provider.timeouts.idle);
        AttemptError::BeforeAnswer(upstream_error(target, Stage::Send, limit, e))
    };
    let mut head = RequestHeader::build(req.method.clone(), req.path.as_bytes(), None).map_err(|e| invalid(&e))?;
    let set = |head: &mut RequestHeader, name: http::HeaderName, value: String| {
        head.insert_header(name, value).map_err(|e| invalid(&e))
    };
    set(&mut head, http::header::HOST, target.provider.base_url.authority())?;
    set(
        &mut head,
        http::header::CONTENT_LENGTH,
        req.content_length().to_string(),
    )?;
    for (name, value) in &req.headers {
        set(&mut head, name.clone(), value.clone())?;
    }
    super::add_traceparent(&mut head).map_err(|e| invalid(&e))?;
    let wire = http_req_header_to_wire(&head)
        .ok_or_else(|| {
            invalid(&Error::explain(
                ErrorType::InvalidHTTPHeader,
                "request line with a forbidden byte",
            ))
        })?
        .freeze();
    Ok(Prepared { head, wire })
}

/// Sends `prepared` and the body of `req` on `session`; returns the session to read the
/// answer from (over HTTP/1.1 a new one on the same connection, after an error too, so that
/// an answer the provider sent early can still be read).
pub(super) async fn send(
    session: HttpSession,
    peer: &HttpPeer,
    prepared: Prepared,
    scope: SendScope<'_>,
) -> (HttpSession, Result<(), AttemptError>) {
    match session {
        HttpSession::H1(h1) => {
            let mut stream = h1.into_inner();
            let sent = write_whole(&mut stream, prepared.wire, scope).await;
            (HttpSession::H1(Http1Session::new_with_options(stream, peer)), sent)
        }
        mut other => {
            let sent = write_through(&mut other, prepared.head, scope).await;
            (other, sent)
        }
    }
}

/// What a send needs besides the connection and the head.
#[derive(Clone, Copy)]
pub(super) struct SendScope<'a> {
    pub(super) target: &'a Target,
    pub(super) clock: &'a Clock,
    pub(super) req: &'a UpstreamRequest,
    pub(super) spool: &'a Spool,
}

impl SendScope<'_> {
    /// The error of a write that failed with `e` under `limit`: before any answer.
    fn write_failed(&self, limit: super::Limit, e: &Error) -> AttemptError {
        AttemptError::BeforeAnswer(upstream_error(self.target, Stage::Send, limit, e))
    }

    /// The outcome of one write (or flush) of the request on the stream, awaited within
    /// `limit`: its value, or the error Pingora's own write would have given.
    fn written<T, Elapsed>(
        &self,
        limit: super::Limit,
        outcome: Result<io::Result<T>, Elapsed>,
    ) -> Result<T, AttemptError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                Err(self.write_failed(limit, &Error::because(ErrorType::WriteError, "writing the request", e)))
            }
            Err(_) => Err(self.write_failed(limit, &Error::new(ErrorType::WriteTimedout))),
        }
    }
}

/// A spool that could not be read: the request cannot be completed (not retried).
fn spool_failed(e: io::Error) -> AttemptError {
    AttemptError::AfterAnswer(GatewayError::Internal(format!("spool read failed: {e}")))
}

/// HTTP/1.1: `wire` (the head) and the body pieces in vectored writes of up to
/// [`GATHER_BYTES`] or [`GATHER_PIECES`], then a flush (TLS holds its last record until then).
async fn write_whole(stream: &mut Stream, wire: Bytes, scope: SendScope<'_>) -> Result<(), AttemptError> {
    let mut batch = Vec::with_capacity(8);
    let mut gathered = wire.len();
    batch.push(wire);
    for piece in BodyPieces::new(scope.req, scope.spool) {
        let piece = piece.map_err(spool_failed)?;
        if piece.is_empty() {
            continue;
        }
        gathered += piece.len();
        batch.push(piece);
        if gathered >= GATHER_BYTES || batch.len() >= GATHER_PIECES {
            write_gathered(stream, &mut batch, scope).await?;
            gathered = 0;
        }
    }
    write_gathered(stream, &mut batch, scope).await?;
    let limit = scope.clock.limit(scope.target.provider.timeouts.idle);
    scope.written(limit, pingora::prelude::timeout(limit.wait, stream.flush()).await)
}

/// Writes every piece of `batch` (vectored, as many calls as the socket takes), each call
/// within `idle_timeout_ms` cut by the total; empties `batch`.
async fn write_gathered(stream: &mut Stream, batch: &mut Vec<Bytes>, scope: SendScope<'_>) -> Result<(), AttemptError> {
    let mut first = 0;
    while first < batch.len() {
        let limit = scope.clock.limit(scope.target.provider.timeouts.idle);
        // No allocation: a batch holds at most GATHER_PIECES pieces (more would wait a call).
        let mut slices = [IoSlice::new(&[]); GATHER_PIECES];
        let count = (batch.len() - first).min(GATHER_PIECES);
        for (slot, piece) in slices.iter_mut().zip(&batch[first..]) {
            *slot = IoSlice::new(piece);
        }
        let written = pingora::prelude::timeout(limit.wait, async {
            match stream.write_vectored(&slices[..count]).await {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                other => other,
            }
        })
        .await;
        let mut n = scope.written(limit, written)?;
        while n > 0 && first < batch.len() {
            let piece = &mut batch[first];
            if n >= piece.len() {
                n -= piece.len();
                first += 1;
            } else {
                piece.advance(n);
                n = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}

/// HTTP/2 and other sessions: the head, then each piece through the session, each write
/// within `idle_timeout_ms` cut by the total.
async fn write_through(
    session: &mut HttpSession,
    head: RequestHeader,
    scope: SendScope<'_>,
) -> Result<(), AttemptError> {
    let limit = super::arm_write(session, scope.target, scope.clock);
    session
        .write_request_header(Box::new(head))
        .await
        .map_err(|e| scope.write_failed(limit, &e))?;
    for piece in BodyPieces::new(scope.req, scope.spool) {
        let piece = piece.map_err(spool_failed)?;
        if piece.is_empty() {
            continue;
        }
        let limit = super::arm_write(session, scope.target, scope.clock);
        session
            .write_request_body(piece, false)
            .await
            .map_err(|e| scope.write_failed(limit, &e))?;
    }
    let limit = super::arm_write(session, scope.target, scope.clock);
    session
        .finish_request_body()
        .await
        .map_err(|e| scope.write_failed(limit, &e))
}

/// The bytes of a body plan in order, as pieces to write (see the module docs). A spool that
/// cannot be read ends it with the error.
struct BodyPieces<'a> {
    segments: std::slice::Iter<'a, BodySegment>,
    spool: &'a Spool,
    current: Current<'a>,
}

/// The segment being taken apart.
enum Current<'a> {
    /// Between segments.
    Between,
    /// A spool range, as is.
    Spool(SpoolChunks<'a>),
    /// A spool range, base64-encoded.
    Base64(SpoolChunks<'a>, Base64Stream),
}

impl<'a> BodyPieces<'a> {
    /// The pieces of `req`'s body, its spool ranges in `spool`.
    fn new(req: &'a UpstreamRequest, spool: &'a Spool) -> Self {
        BodyPieces {
            segments: req.body.iter(),
            spool,
            current: Current::Between,
        }
    }
}

impl BodyPieces<'_> {
    /// Ends the pieces with `e`: nothing of the plan follows a spool that could not be read.
    fn fail(&mut self, e: io::Error) -> Option<io::Result<Bytes>> {
        self.current = Current::Between;
        self.segments = [].iter();
        Some(Err(e))
    }
}

impl Iterator for BodyPieces<'_> {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            match &mut self.current {
                Current::Between => match self.segments.next()? {
                    BodySegment::Bytes(b) => return Some(Ok(b.clone())),
                    BodySegment::Spool(range) => self.current = Current::Spool(self.spool.chunks(*range)),
                    BodySegment::Base64(range) => {
                        self.current = Current::Base64(self.spool.chunks(*range), Base64Stream::new())
                    }
                },
                Current::Spool(chunks) => match chunks.next() {
                    Some(Err(e)) => return self.fail(e),
                    Some(chunk) => return Some(chunk),
                    None => self.current = Current::Between,
                },
                Current::Base64(chunks, encoder) => {
                    let chunk = match chunks.next().transpose() {
                        Ok(c) => c,
                        Err(e) => return self.fail(e),
                    };
                    let mut out = Vec::with_capacity(chunk.as_ref().map_or(4, |c| c.len() / 3 * 4 + 8));
                    match &chunk {
                        Some(c) => encoder.push(c, &mut out),
                        None => {
                            encoder.finish(&mut out);
                            self.current = Current::Between;
                        }
                    }
                    if !out.is_empty() {
                        return Some(Ok(Bytes::from(out)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolRange;

    /// A spool holding `bytes`, the first `memory` of them in memory and the rest in its file.
    fn spool_of(bytes: &[u8], memory: usize, chunk: usize) -> Spool {
        let mut spool = Spool::new(memory, None);
        for piece in bytes.chunks(chunk) {
            spool.append(Bytes::copy_from_slice(piece)).unwrap();
        }
        spool
    }

    fn request(body: Vec<BodySegment>) -> UpstreamRequest {
        UpstreamRequest {
            method: http::Method::POST,
            path: "/v1/images/edits".into(),
            headers: vec![],
            body,
        }
    }

    fn joined(pieces: BodyPieces<'_>) -> Vec<u8> {
        pieces.map(|p| p.unwrap()).fold(Vec::new(), |mut all, p| {
            all.extend_from_slice(&p);
            all
        })
    }

    #[test]
    fn the_pieces_are_the_plan_in_order_from_memory_and_from_the_file() {
        let upload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        // 100 KB in memory, the rest spilled; ranges across the boundary and inside each side.
        let spool = spool_of(&upload, 100_000, 30_000);
        assert!(spool.spilled());
        let range = |start: u64, len: u64| SpoolRange { start, len };
        let req = request(vec![
            BodySegment::Bytes(Bytes::from_static(b"--b\r\nhead\r\n\r\n")),
            BodySegment::Spool(range(10, 20)),
            BodySegment::Spool(range(90_000, 150_000)),
            BodySegment::Bytes(Bytes::new()),
            BodySegment::Base64(range(250_000, 50_000)),
            BodySegment::Base64(range(0, 4)),
            BodySegment::Bytes(Bytes::from_static(b"\r\n--b--\r\n")),
        ]);
        let mut expected = b"--b\r\nhead\r\n\r\n".to_vec();
        expected.extend_from_slice(&upload[10..30]);
        expected.extend_from_slice(&upload[90_000..240_000]);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        expected.extend_from_slice(b64.encode(&upload[250_000..300_000]).as_bytes());
        expected.extend_from_slice(b64.encode(&upload[0..4]).as_bytes());
        expected.extend_from_slice(b"\r\n--b--\r\n");
        let got = joined(BodyPieces::new(&req, &spool));
        assert_eq!(got.len() as u64, req.content_length());
        assert_eq!(got, expected);
    }

    /// A connected pair on loopback: the gateway's end as a Pingora stream with a small send
    /// buffer (so that writes are taken in part), and the provider's end.
    async fn connection() -> (Stream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let client = client.unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&client, 32 * 1024).unwrap();
        let (server, _) = accepted.unwrap();
        (Box::new(pingora::protocols::l4::stream::Stream::from(client)), server)
    }

    /// [`write_whole`] of `req` after the head `HEAD\r\n`, to a provider with the settings
    /// lines `extra`.
    async fn write_plan(
        stream: &mut Stream,
        req: &UpstreamRequest,
        spool: &Spool,
        extra: &str,
    ) -> Result<(), AttemptError> {
        let target = crate::providers::test_support::target("bfl", "m", extra);
        let clock = Clock::start(&target);
        let scope = SendScope {
            target: &target,
            clock: &clock,
            req,
            spool,
        };
        write_whole(stream, Bytes::from_static(b"HEAD\r\n"), scope).await
    }

    #[tokio::test]
    async fn a_plan_larger_than_a_write_arrives_whole_through_partial_writes() {
        let upload: Vec<u8> = (0..1_200_000u32).map(|i| (i % 253) as u8).collect();
        let spool = spool_of(&upload, 300_000, 65_536);
        let range = |start: u64, len: u64| SpoolRange { start, len };
        let req = request(vec![
            BodySegment::Bytes(Bytes::from_static(b"<part head>")),
            BodySegment::Spool(range(0, 1_200_000)),
            BodySegment::Base64(range(1000, 70_000)),
            BodySegment::Bytes(Bytes::from_static(b"<closing>")),
        ]);
        let (mut gateway, mut provider) = connection().await;
        let expected_len = 6 + req.content_length() as usize;
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            while got.len() < expected_len {
                let n = provider.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        let sent = write_plan(&mut gateway, &req, &spool, "").await;
        assert!(sent.is_ok());
        let got = reader.await.unwrap();
        let mut expected = b"HEAD\r\n<part head>".to_vec();
        expected.extend_from_slice(&upload);
        let mut encoded = Vec::new();
        crate::codec::base64::encode_append(&upload[1000..71_000], &mut encoded);
        expected.extend_from_slice(&encoded);
        expected.extend_from_slice(b"<closing>");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes differ");
    }

    #[tokio::test]
    async fn a_provider_that_takes_nothing_fails_the_write_within_the_idle_timeout() {
        let upload = vec![7u8; 4 << 20];
        let spool = spool_of(&upload, 8 << 20, 1 << 20);
        let req = request(vec![BodySegment::Spool(SpoolRange {
            start: 0,
            len: upload.len() as u64,
        })]);
        // The provider's end stays open and never reads.
        let (mut gateway, _provider) = connection().await;
        let started = std::time::Instant::now();
        let sent = write_plan(&mut gateway, &req, &spool, "    idle_timeout_ms: 300\n").await;
        let waited = started.elapsed();
        match sent {
            Err(AttemptError::BeforeAnswer(GatewayError::UpstreamTimeout { kind, .. })) => {
                assert_eq!(kind, crate::error::TimeoutKind::Idle)
            }
            Err(AttemptError::BeforeAnswer(e)) | Err(AttemptError::AfterAnswer(e)) => panic!("{e}"),
            Ok(()) => panic!("4 MiB went into a connection nobody reads"),
        }
        assert!(waited >= std::time::Duration::from_millis(300), "{waited:?}");
    }

    #[test]
    fn a_range_beyond_the_spool_ends_the_pieces_with_an_error() {
        let spool = spool_of(b"0123456789", 1 << 20, 4);
        let req = request(vec![
            BodySegment::Spool(SpoolRange { start: 8, len: 10 }),
            BodySegment::Bytes(Bytes::from_static(b"never")),
        ]);
        let pieces: Vec<io::Result<Bytes>> = BodyPieces::new(&req, &spool).collect();
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[0].as_ref().unwrap().as_ref(), b"89");
        assert_eq!(pieces[1].as_ref().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
