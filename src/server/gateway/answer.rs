//! The answer side of a streamed request: the convert plugin's [`AnswerSink`] that turns a
//! provider's event stream into the client's, and the downstream writer that sends it.

use super::super::exchange::AnswerSink;
use super::upload::{client_went_away, drain_epilogue};
use crate::error::GatewayError;
use crate::metrics::{ClientPhase, Metrics};
use crate::providers::stream::{StreamContext, StreamFailure, StreamPipeline};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::future::Future;
use std::sync::{Arc, OnceLock};

/// Converted stream chunks buffered for a slow client (each holds at most the events completed
/// by one upstream read, i.e. about one image): past that the provider is paused, so memory per
/// stream stays bounded however slowly the client reads.
pub(super) const EVENTS_AHEAD: usize = 2;

/// What the convert plugin hands the downstream writer.
pub(super) enum Down {
    /// Client bytes to send.
    Bytes(Bytes),
    /// The stream broke inside a half-sent event: abort the response instead of ending it.
    Abort,
    /// The stream ended in an `error` event (sent just before): the request is accounted as
    /// this failure, not as the 200 of its status line.
    Failed(StreamFailure),
}

/// The convert plugin's streaming side, as the exchange's [`AnswerSink`]: a `text/event-stream`
/// success answer to a `stream=true` request is converted event by event and handed to the
/// downstream writer; anything else is collected.
pub(super) struct StreamSink {
    /// Set by the upload once the form is valid and asks for a stream.
    pub(super) config: Arc<OnceLock<StreamContext>>,
    pub(super) pipeline: Option<StreamPipeline>,
    pub(super) down: Option<DownSender>,
    /// Whether anything was sent down the channel.
    pub(super) used: bool,
    /// Whether the stream's failure was handed to the writer.
    pub(super) failure_told: bool,
}

impl StreamSink {
    /// A sink for one attempt and the receiving end of its downstream channel (for
    /// [`write_event_stream`]). `config` is the stream request's context: set already (an
    /// attempt from the spool), or set by the upload before the upstream body ends (the
    /// streamed attempt); unset for a request that wants no stream.
    pub(super) fn new(config: Arc<OnceLock<StreamContext>>) -> (StreamSink, tokio::sync::mpsc::Receiver<Down>) {
        let (down, rx) = tokio::sync::mpsc::channel(EVENTS_AHEAD);
        let sink = StreamSink {
            config,
            pipeline: None,
            down: Some(down),
            used: false,
            failure_told: false,
        };
        (sink, rx)
    }

    pub(super) async fn send(&mut self, out: Vec<u8>) -> std::result::Result<(), GatewayError> {
        if !out.is_empty() {
            self.send_down(Down::Bytes(Bytes::from(out))).await?;
        }
        self.tell_failure().await
    }

    /// Once the converted stream has ended in an `error` event (or broke), tells the writer
    /// how it failed, once, for the request's accounting.
    async fn tell_failure(&mut self) -> std::result::Result<(), GatewayError> {
        let failure = self.pipeline.as_ref().and_then(StreamPipeline::failure);
        match failure {
            Some(f) if !self.failure_told && self.used => {
                self.failure_told = true;
                self.send_down(Down::Failed(f)).await
            }
            _ => Ok(()),
        }
    }

    async fn send_down(&mut self, item: Down) -> std::result::Result<(), GatewayError> {
        let down = self.down.as_ref().ok_or(GatewayError::ClientClosed)?;
        self.used = true;
        down.send(item).await.map_err(|_| GatewayError::ClientClosed)
    }

    /// Ends the sink once the upstream side is done. When anything went down, the channel is
    /// closed, which ends the downstream writer after its last item. When nothing did, the
    /// writer is not needed and the sender is handed back unclosed, for [`close_quietly`] once
    /// the writer is dropped: closing it now would wake this very task (the writer's receiver
    /// holds its waker), and tokio answers a task waking itself with a yield that rouses a
    /// parked worker thread, a cross-thread hand-off on every request.
    pub(super) fn finish(&mut self) -> Option<DownSender> {
        let down = self.down.take();
        if self.used {
            None
        } else {
            down
        }
    }

    /// After a failure: an in-band error event if the stream had begun, or the abort of the
    /// response if it broke inside a half-sent event.
    pub(super) async fn abort(&mut self, err: &GatewayError) {
        let mut out = Vec::new();
        match self.pipeline.as_mut() {
            _ if matches!(err, GatewayError::ClientClosed) => return,
            Some(p) if p.broken() => {
                let _ = self.tell_failure().await;
                let _ = self.send_down(Down::Abort).await;
                return;
            }
            Some(p) if p.emitted() => p.abort(err, &mut out),
            _ => return,
        }
        let _ = self.send(out).await;
    }
}

#[async_trait]
impl AnswerSink for StreamSink {
    fn wants_chunks(&mut self, status: u16, content_type: Option<&str>) -> bool {
        let sse = content_type.is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        match self.config.get() {
            Some(cx) if (200..300).contains(&status) && sse => {
                self.pipeline = Some(StreamPipeline::new(cx.clone()));
                true
            }
            _ => false,
        }
    }

    async fn chunk(&mut self, bytes: Bytes) -> std::result::Result<(), GatewayError> {
        // Converted events are about as long as the upstream's, plus a few hundred bytes.
        let mut out = Vec::with_capacity(bytes.len() + 1024);
        if let Some(p) = self.pipeline.as_mut() {
            p.feed(&bytes, &mut out)?;
        }
        self.send(out).await
    }

    async fn end(&mut self) -> std::result::Result<(), GatewayError> {
        let mut out = Vec::new();
        if let Some(p) = self.pipeline.as_mut() {
            p.finish(&mut out)?;
        }
        self.send(out).await
    }
}

/// Who an attempt's answer goes to.
pub(super) enum Client<'s> {
    /// The client's session: a stream is written to it as it comes, and its going away
    /// ends the attempt.
    Session(&'s mut Session),
    /// Nobody yet: an async job's run, whose answer is stored for its owner to poll.
    Detached,
}

/// How the downstream writer ended (the default: it was not needed, nothing was sent).
#[derive(Debug, Default)]
pub(super) struct Written {
    /// Bytes sent, if a stream was started.
    pub(super) sent: Option<u64>,
    /// The client went away mid-stream.
    pub(super) client_gone: bool,
    /// The stream broke inside a half-sent event; the response must be aborted.
    pub(super) broken: bool,
    /// How the stream failed, when it ended in an `error` event or broke.
    pub(super) failure: Option<StreamFailure>,
}

/// The downstream writer of streamed answers: sends the `text/event-stream` head with the first
/// event (so a failure before any event is still an ordinary HTTP error), then each chunk as it
/// comes; a slow client slows the provider down through the bounded channel. Ends when the
/// channel closes, or when the client goes away (dropping the receiver cancels the upstream).
/// Until something is sent it also watches the client, and ends with `client_gone` (and
/// nothing sent) as soon as the client closes its connection or stream.
pub(super) async fn write_event_stream(
    client: &mut Client<'_>,
    down: &mut tokio::sync::mpsc::Receiver<Down>,
    request_id: &str,
) -> Written {
    let Client::Session(session) = client else {
        // Nobody to stream to (an async job, whose requests never stream): what the sink
        // sends is dropped, and the writer ends with the channel.
        while down.recv().await.is_some() {}
        return Written::default();
    };
    let mut sent: Option<u64> = None;
    let mut failure = None;
    loop {
        let item = if sent.is_none() {
            tokio::select! {
                item = down.recv() => item,
                () = client_left(session) => {
                    log::debug!("request {request_id}: client gone while waiting for the provider");
                    down.close();
                    return Written {
                        sent: None,
                        client_gone: true,
                        ..Written::default()
                    };
                }
            }
        } else {
            down.recv().await
        };
        let Some(item) = item else { break };
        let bytes = match item {
            Down::Bytes(bytes) => bytes,
            Down::Failed(f) => {
                failure = Some(f);
                continue;
            }
            Down::Abort => {
                down.close();
                return Written {
                    sent,
                    broken: true,
                    failure,
                    ..Written::default()
                };
            }
        };
        if sent.is_none() {
            drain_epilogue(session).await;
            if let Err(e) = write_stream_head(session, request_id).await {
                log::debug!(
                    "request {request_id}: client gone before the stream head: {}",
                    e.etype().as_str()
                );
                return Written {
                    sent: Some(0),
                    client_gone: true,
                    failure,
                    ..Written::default()
                };
            }
            sent = Some(0);
        }
        let len = bytes.len() as u64;
        if session.write_response_body(Some(bytes), false).await.is_err() {
            down.close();
            return Written {
                sent,
                client_gone: true,
                failure,
                ..Written::default()
            };
        }
        sent = sent.map(|s| s + len);
    }
    if sent.is_some() && session.write_response_body(None, true).await.is_err() {
        return Written {
            sent,
            client_gone: true,
            failure,
            ..Written::default()
        };
    }
    Written {
        sent,
        failure,
        ..Written::default()
    }
}

/// Resolves when the client has closed its connection (HTTP/1.1: FIN or reset after its
/// request) or reset its stream (h2); pending otherwise, for as long as it stays. Reads only
/// what is left of the request body (the multipart epilogue), never a next request.
async fn client_left(session: &mut Session) {
    if !session.is_body_done() {
        drain_epilogue(session).await;
    }
    if !session.is_body_done() {
        // The epilogue was too long to drain: the answer will close the connection anyway.
        return std::future::pending().await;
    }
    match session.as_downstream_mut().read_body_or_idle(true).await {
        Err(e) if client_went_away(&e) => {}
        // Anything else (bytes of a pipelined request): the client is still there.
        _ => std::future::pending().await,
    }
}

/// Runs an attempt's upstream side and its downstream writer ([`write_event_stream`]) to their
/// ends. The upstream side ends with its result and what [`StreamSink::finish`] returned: an
/// unclosed sender means the writer is not needed, so it is dropped rather than awaited, and
/// the sender is returned for [`close_quietly`]. A client that leaves before anything was sent
/// ends the attempt at once: the upstream side is dropped (its connection closed, never pooled)
/// and the result is `ClientClosed`. Every departure is counted in
/// `refract_client_disconnects_total` (`wait` or `stream`).
pub(super) async fn run_with_writer<T>(
    metrics: &Metrics,
    upstream: impl Future<Output = (std::result::Result<T, GatewayError>, Option<DownSender>)>,
    writer: impl Future<Output = Written>,
) -> (std::result::Result<T, GatewayError>, Written, Option<DownSender>) {
    tokio::pin!(upstream);
    tokio::pin!(writer);
    let (result, written, idle) = tokio::select! {
        biased;
        (result, idle) = &mut upstream => match idle {
            Some(idle) => (result, Written::default(), Some(idle)),
            None => (result, writer.await, None),
        },
        written = &mut writer => {
            if written.client_gone && written.sent.is_none() {
                (Err(GatewayError::ClientClosed), written, None)
            } else {
                let (result, idle) = upstream.await;
                (result, written, idle)
            }
        }
    };
    if written.client_gone {
        metrics.client_disconnect(match written.sent {
            Some(_) => ClientPhase::Stream,
            None => ClientPhase::Wait,
        });
    }
    (result, written, idle)
}

/// The sender of the downstream channel.
pub(super) type DownSender = tokio::sync::mpsc::Sender<Down>;

/// Drops the unclosed sender [`run_with_writer`] returned, once the writer is gone, without
/// waking this task: the receiver is first polled with a no-op waker, which replaces the
/// task's own waker it still holds.
pub(super) fn close_quietly(down: &mut tokio::sync::mpsc::Receiver<Down>, idle: Option<DownSender>) {
    if let Some(sender) = idle {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let _ = down.poll_recv(&mut cx);
        drop(sender);
    }
}

/// The head of an event stream.
pub(super) async fn write_stream_head(session: &mut Session, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header("x-request-id", request_id)?;
    if !session.is_http2() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    session.write_response_header(Box::new(resp), false).await
}
