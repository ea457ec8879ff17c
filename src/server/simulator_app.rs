//! The built-in provider simulator's listener: reads the whole request (it is a test double,
//! bounded to 256 MiB) and answers with [`crate::simulator::handle`].

use crate::simulator;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// Largest request the simulator reads.
const MAX_SIM_BODY: usize = 256 * 1024 * 1024;

/// The simulator service.
pub struct SimulatorApp;

async fn respond(session: &mut Session, status: u16, content_type: &str, body: Vec<u8>) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await?;
    Ok(true)
}

#[async_trait]
impl ProxyHttp for SimulatorApp {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Answers every request: `POST …/images/edits` with an edit, anything else with a 404.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let req = session.req_header();
        if req.method != http::Method::POST || !req.uri.path().ends_with("/images/edits") {
            session.set_keepalive(None);
            return respond(
                session,
                404,
                "application/json",
                br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}"#
                    .to_vec(),
            )
            .await;
        }
        let header = |name: http::HeaderName| req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header(http::header::CONTENT_TYPE);
        let authorization = header(http::header::AUTHORIZATION);
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_SIM_BODY {
                session.set_keepalive(None);
                return respond(session, 413, "application/json", br#"{"error":{"message":"request too large","type":"invalid_request_error","param":null,"code":"too_large"}}"#.to_vec()).await;
            }
            body.extend_from_slice(&chunk);
        }
        let answer = simulator::handle(content_type.as_deref(), authorization.as_deref(), body.freeze()).await;
        respond(session, answer.status, answer.content_type, answer.body).await
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "the simulator has no upstream",
        ))
    }
}
