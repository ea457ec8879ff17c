//! Lingering after an early answer, as nginx's lingering close does. An answer sent before the
//! request body was read to its end (401, 400 unknown provider, 403, 413…) goes out with
//! `Connection: close`; closing the socket right after it, with the rest of the body unread in
//! the kernel's buffer (or still arriving), makes the kernel reset the connection, and a client
//! still sending its body (Node's fetch) loses the answer. So the rest of the body is read and
//! discarded first, within `limits.linger_bytes` and `limits.linger_timeout_ms`: once its end
//! is read the close is a clean FIN and the client reads the answer; past either bound the
//! connection is closed as it is.
//!
//! Discarding holds one read at a time (at most Pingora's 64 KiB body buffer), whatever the
//! body's size. Only HTTP/1.x lingers: h2 ends the stream on its own.

use super::upload::client_went_away;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::metrics::LingerOutcome;
use pingora::proxy::Session;
use pingora::ErrorType;

/// What becomes of the rest of the request body when an error is answered: decided before the
/// answer is written, since the answer's `Connection` header depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyRest {
    /// The body was read to its end: the connection may serve the next request.
    Done,
    /// Some of the body is left: the answer says `Connection: close`, then the rest is read
    /// and discarded ([`discard_rest`]) before the connection closes.
    Linger,
    /// The body could not be read ([`GatewayError::BodyUnreadable`]: broken framing, a stalled
    /// or departed client; [`GatewayError::RequestTimeout`]: a client too slow to wait for any
    /// longer), or the rest cannot be discarded here (h2): the connection closes after the
    /// answer without reading any more. Where a broken body ends is unknown, so nothing after
    /// it may be parsed as a new request.
    Close,
}

impl BodyRest {
    /// Decides for `err`, answered on `session`, and turns keep-alive off unless `Done`.
    pub(super) fn decide(session: &mut Session, err: &GatewayError) -> BodyRest {
        let rest = if matches!(
            err,
            GatewayError::BodyUnreadable(_) | GatewayError::RequestTimeout { .. }
        ) {
            BodyRest::Close
        } else if session.is_body_done() {
            BodyRest::Done
        } else if session.as_downstream().is_http2() {
            BodyRest::Close
        } else {
            BodyRest::Linger
        };
        if rest != BodyRest::Done {
            session.set_keepalive(None);
        }
        rest
    }
}

/// What [`discard_rest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Lingered {
    /// How it ended.
    pub(super) outcome: LingerOutcome,
    /// Body bytes read and discarded.
    pub(super) bytes: u64,
}

/// Runs after an early answer was written with `Connection: close` ([`BodyRest::Linger`]):
/// reads and discards the rest of the request body until its end, more than
/// `limits.linger_bytes` of it (known at once from a `Content-Length`, or counted while
/// reading a chunked body; 0 never reads), `limits.linger_timeout_ms` in all, a read error,
/// or the client leaving. The connection is closed after it whatever the outcome.
pub(super) async fn discard_rest(session: &mut Session, limits: &Limits) -> Lingered {
    if limits.linger_bytes == 0 || declared_rest(session).is_some_and(|left| left > limits.linger_bytes) {
        return Lingered {
            outcome: LingerOutcome::BytesLimit,
            bytes: 0,
        };
    }
    let mut bytes = 0u64;
    let read_to_end = async {
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    bytes = bytes.saturating_add(chunk.len() as u64);
                    if bytes > limits.linger_bytes && !session.is_body_done() {
                        return LingerOutcome::BytesLimit;
                    }
                }
                Ok(None) => return LingerOutcome::Drained,
                Err(e) if *e.etype() == ErrorType::ReadTimedout => return LingerOutcome::Timeout,
                Err(e) if client_went_away(&e) => return LingerOutcome::ClientClosed,
                Err(_) => return LingerOutcome::FramingError,
            }
        }
    };
    let outcome = tokio::time::timeout(limits.linger_timeout, read_to_end)
        .await
        .unwrap_or(LingerOutcome::Timeout);
    Lingered { outcome, bytes }
}

/// The body bytes still to come by the request's `Content-Length`; `None` for a chunked body
/// (its length is unknown until its last chunk).
fn declared_rest(session: &Session) -> Option<u64> {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    let declared = headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(declared.saturating_sub(session.as_downstream().body_bytes_read() as u64))
}
