//! `Gateway`: the `ProxyHttp` implementation. Pingora decides when things run; this file only
//! calls the steps in order and writes what they decide.
//!
//! | phase | work |
//! |---|---|
//! | `early_request_filter` | request id, start timer, in-flight gauge |
//! | `request_filter` | the whole request ([`image_edit`]): route by path → auth → parse (`upload`) → route → for each candidate (`fallback`): admit → translate → exchange → convert (`attempt`) → respond; returns `Ok(true)` |
//! | `logging` | account: metrics and the access log line, once per request, every outcome |
//!
//! `request_filter` reads the gateway's [`AppState`] once per request; every step below gets
//! it from there (a reload swaps it for new requests, never under one).
//!
//! `upstream_peer` is required by the trait but never reached: every request is answered in
//! `request_filter`, because Pingora's own proxy loop replays only 64 KiB of body and cannot
//! retry after a response head (see docs/architecture.md).

use super::AppState;
use crate::access;
use crate::error::{ErrorContext, GatewayError};
use crate::form::EditForm;
use crate::metrics::Metrics;
use crate::metrics::RequestRecord;
use crate::providers::stream::Framing;
use crate::providers::UnifiedAnswer;
use crate::spool::Spool;
use crate::telemetry::SPAN_TARGET;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

mod answer;
mod attempt;
mod bedrock;
mod fallback;
mod files;
mod follow;
mod genai;
mod image_urls;
pub mod jobs;
mod json_edit;
mod linger;
mod models;
mod policy;
pub use policy::retry_reason;
mod prepare;
mod rehost;
mod repeat;
mod upload;

use answer::write_stream_head;
use attempt::Scope;
use linger::{discard_rest, BodyRest};
use upload::drain_epilogue;

/// Per-request state, read by `logging`.
#[derive(Debug)]
pub struct RequestCtx {
    request_id: String,
    start: Instant,
    counted: bool,
    provider: Option<String>,
    model: Option<String>,
    status: u16,
    reason: Option<&'static str>,
    upstream: Option<Duration>,
    request_bytes: u64,
    response_bytes: u64,
    /// An event stream was sent (its status line said 200 whatever `status` records).
    streamed: bool,
    /// The failed fallback candidates, listed in the error answer when every candidate failed.
    fallback_errors: Vec<serde_json::Value>,
    /// When the request goes on after its answer was complete (lingering after an early
    /// answer): the time to the answer, reported as the request's duration.
    answered_after: Option<Duration>,
    /// The serving attempt's cost, once an answer was delivered (the serving candidate's).
    cost: Option<crate::pricing::AnswerCost>,
    /// The caller's virtual key id, once authenticated (for the access record).
    virtual_key: Option<String>,
    /// Upstream attempts made (each retry and fallback counts one).
    attempts: u32,
    /// The candidate that answered (0 = the primary), or the last one tried.
    fallback: usize,
    /// A health probe: logged at debug, not counted as a request.
    probe: bool,
    /// The request's trace span (disabled, and near-free, when no traces are exported).
    span: tracing::Span,
}

impl RequestCtx {
    /// The state of request `request_id` (a job's run has one too), starting now.
    fn new(request_id: String) -> RequestCtx {
        RequestCtx {
            request_id,
            start: Instant::now(),
            counted: false,
            provider: None,
            model: None,
            status: 0,
            reason: None,
            upstream: None,
            request_bytes: 0,
            response_bytes: 0,
            streamed: false,
            fallback_errors: Vec::new(),
            answered_after: None,
            cost: None,
            virtual_key: None,
            attempts: 0,
            fallback: 0,
            probe: false,
            span: tracing::Span::none(),
        }
    }
}

/// The gateway service: Pingora's app over the swappable state.
pub struct Gateway {
    /// The state a request starts on; a reload swaps it (see [`super::reload`]). Requests in
    /// flight keep the one they loaded.
    current: Arc<ArcSwap<AppState>>,
    /// The metrics, for the hooks around `request_filter` (every state shares them).
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// The app over `current`, when the server is built.
    pub fn new(current: Arc<ArcSwap<AppState>>) -> Self {
        let metrics = current.load().metrics.clone();
        Gateway { current, metrics }
    }
}

/// A request id from the client is kept if it is short and printable; otherwise one is made.
fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What the request asked for, decided from method and path alone.
enum Endpoint<'p> {
    Health,
    /// Governance usage (`GET /api/governance/usage`), for admins.
    Usage,
    ImageEdit(Framing),
    /// Azure OpenAI's `POST …/openai/deployments/{deployment}/images/edits`: the deployment
    /// (percent-encoded, as the client sent it) names the model.
    DeploymentEdit(&'p str),
    /// `GET …/models`: the models the caller may use.
    Models,
    /// `GET …/models/{id}` (percent-encoded, as the client sent it).
    Model(&'p str),
    /// A stored image by its signed URL (`GET`, or `HEAD` when true).
    File(bool),
    /// `POST …/async/images/edits`.
    SubmitJob(Framing),
    /// `GET …/async/images/edits/{id}`.
    PollJob(&'p str),
    /// `DELETE …/async/images/edits/{id}`.
    CancelJob(&'p str),
    /// Google GenAI's `generateContent`, `streamGenerateContent` or Imagen `:predict` under
    /// `/genai` ([`crate::inbound::genai::route`]).
    Genai(crate::inbound::genai::GenaiRoute<'p>),
    /// Bedrock's `InvokeModel` under `/bedrock`: the model id segment, percent-encoded as
    /// sent ([`crate::inbound::bedrock::route`]).
    Bedrock(&'p str),
    /// A known path, a method it does not take; the methods it takes, for `Allow`.
    WrongMethod(&'static str),
    Unknown,
}

/// The route prefixes OpenAI-compatible clients are pointed at: Bifrost's OpenAI base
/// (`<gateway>/openai`, with or without `/v1`) and its framework integrations. Under each,
/// the OpenAI paths are served as at the root, streams in OpenAI's framing (errors as
/// `data:`-only JSON, a final `data: [DONE]`).
const OPENAI_BASES: [&str; 4] = ["/openai", "/litellm", "/langchain", "/pydanticai"];

/// The route of `method` and `path`. Under the root and under each of [`OPENAI_BASES`], with
/// or without `/v1`: `images/edits`, `models`, `models/{id}` (the id's `/` encoded or not); async jobs at the root and
/// under `/openai` only (as Bifrost, whose integration routes refuse async image edits); Azure
/// OpenAI's `openai/deployments/{deployment}/images/edits` under each base and at the root.
fn endpoint<'p>(method: &http::Method, path: &'p str) -> Endpoint<'p> {
    let is = |m: http::Method| *method == m;
    match path {
        "/health" if is(http::Method::GET) || is(http::Method::HEAD) => return Endpoint::Health,
        "/health" => return Endpoint::WrongMethod("GET, HEAD"),
        USAGE_PATH if is(http::Method::GET) => return Endpoint::Usage,
        USAGE_PATH => return Endpoint::WrongMethod("GET"),
        p if p.starts_with(crate::state::urls::FILES_PATH) => {
            return match *method {
                http::Method::GET => Endpoint::File(false),
                http::Method::HEAD => Endpoint::File(true),
                _ => Endpoint::WrongMethod("GET, HEAD"),
            }
        }
        p if p.starts_with("/genai/") => {
            return match crate::inbound::genai::route(p) {
                Some(route) if is(http::Method::POST) => Endpoint::Genai(route),
                Some(_) => Endpoint::WrongMethod("POST"),
                None => Endpoint::Unknown,
            }
        }
        p if p.starts_with("/bedrock/") => {
            return match crate::inbound::bedrock::route(p) {
                Some(model) if is(http::Method::POST) => Endpoint::Bedrock(model),
                Some(_) => Endpoint::WrongMethod("POST"),
                None => Endpoint::Unknown,
            }
        }
        _ => {}
    }
    let (base, rest) = OPENAI_BASES
        .iter()
        .find_map(|b| {
            path.strip_prefix(b)
                .filter(|r| r.starts_with('/'))
                .map(|r| (Some(*b), r))
        })
        .unwrap_or((None, path));
    let framing = if base.is_some() {
        Framing::OpenAi
    } else {
        Framing::Bifrost
    };
    if let Some(deployment) = deployment_of(base, rest) {
        return if is(http::Method::POST) {
            Endpoint::DeploymentEdit(deployment)
        } else {
            Endpoint::WrongMethod("POST")
        };
    }
    let jobs = matches!(base, None | Some("/openai"));
    let route = rest.strip_prefix("/v1").filter(|r| r.starts_with('/')).unwrap_or(rest);
    match route {
        "/images/edits" if is(http::Method::POST) => Endpoint::ImageEdit(framing),
        "/async/images/edits" if jobs && is(http::Method::POST) => Endpoint::SubmitJob(framing),
        "/images/edits" => Endpoint::WrongMethod("POST"),
        "/async/images/edits" if jobs => Endpoint::WrongMethod("POST"),
        "/models" if is(http::Method::GET) => Endpoint::Models,
        "/models" => Endpoint::WrongMethod("GET"),
        r => {
            let one = |prefix: &str| r.strip_prefix(prefix).filter(|id| !id.is_empty() && !id.contains('/'));
            if let Some(id) = one("/async/images/edits/").filter(|_| jobs) {
                match *method {
                    http::Method::GET => Endpoint::PollJob(id),
                    http::Method::DELETE => Endpoint::CancelJob(id),
                    _ => Endpoint::WrongMethod("GET, DELETE"),
                }
            } else if let Some(id) = r.strip_prefix("/models/").filter(|id| !id.is_empty()) {
                // The SDKs send `provider%2Fmodel`; curl users may leave the `/` as it is.
                if is(http::Method::GET) {
                    Endpoint::Model(id)
                } else {
                    Endpoint::WrongMethod("GET")
                }
            } else {
                Endpoint::Unknown
            }
        }
    }
}

/// The route family of `path`, for the `route` label of `refract_route_requests_total`
/// (bounded: the path itself is in the access record): `genai`, `bedrock`, `azure` (a
/// deployment path under any base), the base an OpenAI-style client was pointed at
/// (`openai`, `litellm`, `langchain`, `pydanticai`), `v1` (the root, with or without `/v1`),
/// or `other` (health, usage, files, unknown paths).
fn route_label(path: &str) -> &'static str {
    if path.starts_with("/genai/") {
        return "genai";
    }
    if path.starts_with("/bedrock/") {
        return "bedrock";
    }
    if path.contains("/deployments/") {
        return "azure";
    }
    let base = OPENAI_BASES
        .iter()
        .find(|b| path.strip_prefix(**b).is_some_and(|r| r.starts_with('/')));
    match base.map(|b| &b[1..]) {
        Some("openai") => "openai",
        Some("litellm") => "litellm",
        Some("langchain") => "langchain",
        Some("pydanticai") => "pydanticai",
        _ if path.starts_with("/v1/")
            || path.starts_with("/images/")
            || path.starts_with("/async/")
            || path.starts_with("/models") =>
        {
            "v1"
        }
        _ => "other",
    }
}

/// The deployment segment of Azure OpenAI's edit path, `…/openai/deployments/{d}/images/edits`:
/// under any base (Bifrost documents `azure_endpoint=<gateway>/openai`, so the SDK sends
/// `/openai/openai/deployments/…`), or at the root (`azure_endpoint=<gateway>`: the path
/// starts with `/openai`, which [`endpoint`] took as the base).
fn deployment_of<'p>(base: Option<&str>, rest: &'p str) -> Option<&'p str> {
    let tail = rest
        .strip_prefix("/openai/deployments/")
        .or_else(|| rest.strip_prefix("/deployments/").filter(|_| base == Some("/openai")))?;
    tail.strip_suffix("/images/edits")
        .filter(|d| !d.is_empty() && !d.contains('/'))
}

/// Writes a complete JSON answer: its head with the `Content-Length` (and an `Allow` header
/// when `allow` is set: a 405), then its pieces in order, each as it is (a converted answer's
/// images straight from the provider's buffer; see [`UnifiedAnswer`]).
async fn send_json(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: UnifiedAnswer,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(5 + extra.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    ctx.status = status;
    ctx.response_bytes = body.len() as u64;
    // The head and the pieces leave in full segments, not one per write (see `cork`); after an
    // error the connection is closed, corked or not.
    super::cork::cork(session.stream());
    write_json(session, resp, body).await?;
    super::cork::uncork(session.stream());
    Ok(())
}

/// The writes of [`send_json`]: its head, then its pieces.
async fn write_json(session: &mut Session, resp: ResponseHeader, body: UnifiedAnswer) -> Result<()> {
    session.write_response_header(Box::new(resp), false).await?;
    let mut pieces = body.into_pieces().into_iter().peekable();
    if pieces.peek().is_none() {
        session.write_response_body(Some(Bytes::new()), true).await?;
    }
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        session.write_response_body(Some(piece), last).await?;
    }
    Ok(())
}

/// Writes a gateway or provider error in Bifrost's shape. If the request body was not read
/// to its end, the answer says `Connection: close` and the rest of the body is then read and
/// discarded within `limits.linger_*` (see [`linger`]), so that a client still sending
/// gets the answer; a body that could not be read closes the connection at once.
async fn send_error(state: &AppState, session: &mut Session, ctx: &mut RequestCtx, err: &GatewayError) -> Result<()> {
    send_error_in(state, session, ctx, err, ErrorShape::Bifrost).await
}

/// The shape of an error answer: the route's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorShape {
    /// Bifrost's (every OpenAI-style route).
    Bifrost,
    /// Google's `{"error":{"code","message","status"}}` (the `/genai` routes).
    Google,
    /// Bedrock's `{"message"}` with `x-amzn-ErrorType` (the `/bedrock` route).
    Bedrock,
}

/// [`send_error`] with the error body in `shape`.
async fn send_error_in(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    err: &GatewayError,
    shape: ErrorShape,
) -> Result<()> {
    if let GatewayError::Internal(detail) | GatewayError::StoreUnavailable(detail) = err {
        log::error!("request {}: {detail}", ctx.request_id);
    }
    let rest = BodyRest::decide(session, err);
    ctx.reason = Some(err.code());
    let json = error_json(err, ctx);
    let mut headers = error_headers(err);
    let body = match shape {
        ErrorShape::Bifrost => serde_json::to_vec(&json).unwrap_or_else(|_| b"{}".to_vec()),
        ErrorShape::Google => crate::inbound::genai::error_body(err.status(), &json),
        ErrorShape::Bedrock => {
            let (error_type, body) = crate::inbound::bedrock::error_answer(err.status(), &json);
            headers.push(("x-amzn-errortype", error_type));
            body
        }
    };
    send_json(session, ctx, err.status(), UnifiedAnswer::from(body), &headers).await?;
    if rest == BodyRest::Linger {
        ctx.answered_after = Some(ctx.start.elapsed());
        let lingered = discard_rest(session, &state.config.limits).await;
        ctx.request_bytes += lingered.bytes;
        state.metrics.linger(lingered.outcome);
    }
    Ok(())
}

/// Sends what `image_edit` produced: its JSON answer, its synthesized event stream, nothing
/// more (streamed already), or its error. A stream that broke inside a half-sent event is an
/// error: returning it after the head was sent makes Pingora drop the connection (HTTP/1.1) or
/// reset the stream (HTTP/2) without ending the body.
async fn send_reply(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    reply: std::result::Result<Reply, GatewayError>,
) -> Result<()> {
    match reply {
        Ok(Reply::Json(body)) => {
            ctx.request_bytes += drain_epilogue(session).await;
            send_json(session, ctx, 200, body, &[]).await?;
        }
        Ok(Reply::Events(body)) => {
            ctx.request_bytes += drain_epilogue(session).await;
            write_stream_head(session, &ctx.request_id).await?;
            ctx.status = 200;
            ctx.streamed = true;
            ctx.response_bytes = body.len() as u64;
            session.write_response_body(Some(body), true).await?;
        }
        Ok(Reply::Streamed) => {}
        Ok(Reply::Aborted) => {
            return Err(Error::create(
                ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
                Some("upstream stream broke inside a half-sent event; response aborted".into()),
                None,
            ))
        }
        Err(e) => send_error(state, session, ctx, &e).await?,
    }
    Ok(())
}

/// Where admins read governance usage.
const USAGE_PATH: &str = "/api/governance/usage";

/// `GET /api/governance/usage`: every governed virtual key's and team's usage, remaining
/// budget and limits (read-only). For the `governance.admin_key` (as a bearer token) or an
/// admin JWT; anyone else gets 401 (no credential) or 403.
async fn usage(state: &AppState, session: &Session) -> std::result::Result<UnifiedAnswer, GatewayError> {
    let headers = &session.req_header().headers;
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let admin_key = match (bearer, &state.config.governance.admin_key_sha256) {
        (Some(token), Some(expected)) => {
            use sha2::Digest;
            use subtle::ConstantTimeEq;
            let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
            bool::from(digest.ct_eq(expected))
        }
        _ => false,
    };
    if !admin_key {
        let identity = crate::server::jwks::authenticate(state, headers).await?;
        if !identity.admin {
            return Err(GatewayError::Refused {
                status: 403,
                code: "admin_required",
                message: "the usage endpoint needs the governance admin key or an admin token".to_string(),
            });
        }
    }
    let usage = state.governance.usage().await?;
    Ok(UnifiedAnswer::from(serde_json::to_vec(&usage).unwrap_or_default()))
}

/// The headers an error answer carries besides the usual ones: `Allow` for a 405;
/// `Retry-After` and OpenAI's `x-ratelimit-*` for a rate limit.
fn error_headers(err: &GatewayError) -> Vec<(&'static str, String)> {
    match err {
        GatewayError::MethodNotAllowed { allow, .. } => vec![("allow", (*allow).to_string())],
        GatewayError::RateLimited { limits, .. } => {
            let (limit, remaining, reset) = match limits.what {
                "images" => (
                    "x-ratelimit-limit-images",
                    "x-ratelimit-remaining-images",
                    "x-ratelimit-reset-images",
                ),
                "concurrent" => (
                    "x-ratelimit-limit-concurrent",
                    "x-ratelimit-remaining-concurrent",
                    "x-ratelimit-reset-concurrent",
                ),
                _ => (
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ),
            };
            vec![
                ("retry-after", limits.retry_after_secs().to_string()),
                (limit, limits.limit.to_string()),
                (remaining, limits.remaining.to_string()),
                (reset, format!("{}s", limits.retry_after_secs())),
            ]
        }
        GatewayError::ProviderQuota { .. }
        | GatewayError::GovernanceUnavailable
        | GatewayError::BodyMemoryBusy { .. } => {
            vec![("retry-after", "1".to_string())]
        }
        _ => Vec::new(),
    }
}

/// The error body of `err` for the request of `ctx`, in Bifrost's shape, with the failed
/// fallbacks listed (taken from `ctx`).
fn error_json(err: &GatewayError, ctx: &mut RequestCtx) -> serde_json::Value {
    let mut body = err.to_json(&ErrorContext {
        request_id: Some(&ctx.request_id),
        provider: ctx.provider.as_deref(),
        model_requested: ctx.model.as_deref(),
        request_type: None,
    });
    if !ctx.fallback_errors.is_empty() {
        body["extra_fields"]["fallback_errors"] = serde_json::Value::Array(std::mem::take(&mut ctx.fallback_errors));
    }
    body
}

/// The head of an image-edit request, checked before any body byte is read.
struct EditHead {
    /// The multipart boundary.
    boundary: String,
    /// The declared `Content-Length`, if any.
    declared_len: Option<u64>,
}

/// Checks the head of an image-edit request: a `multipart/form-data` body with a boundary,
/// not longer (by its `Content-Length`) than `limits.max_body_bytes`; answers
/// `Expect: 100-continue`.
async fn check_head(state: &AppState, session: &mut Session) -> std::result::Result<EditHead, GatewayError> {
    let headers = &session.req_header().headers;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        return Err(GatewayError::UnsupportedMediaType(
            "the body must be multipart/form-data (as the OpenAI SDKs send it)".into(),
        ));
    }
    let boundary = crate::form::multipart::parse_boundary(content_type)
        .ok_or_else(|| GatewayError::MalformedMultipart("the Content-Type has no multipart boundary".into()))?;
    let declared_len = check_length_and_continue(state, session).await?;
    Ok(EditHead { boundary, declared_len })
}

/// The body checks every edit route's head shares, once its content type passed: the declared
/// `Content-Length` (returned) not over `limits.max_body_bytes`, and `Expect: 100-continue`
/// answered (curl sends it for bodies over 1 KiB).
async fn check_length_and_continue(
    state: &AppState,
    session: &mut Session,
) -> std::result::Result<Option<u64>, GatewayError> {
    let headers = &session.req_header().headers;
    let declared_len = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > state.config.limits.max_body_bytes) {
        return Err(GatewayError::PayloadTooLarge {
            param: None,
            what: "request body".into(),
            limit: state.config.limits.max_body_bytes,
        });
    }
    let expects_continue = headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|e| GatewayError::BodyUnreadable(format!("cannot answer Expect: {}", e.etype().as_str())))?;
    }
    Ok(declared_len)
}

/// The image-edit request, as the chain docs/architecture.md names: auth → parse → route → (per
/// candidate) admit → translate → exchange → convert; account runs in `logging`.
async fn image_edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    framing: Framing,
    deployment: Option<&str>,
) -> std::result::Result<Reply, GatewayError> {
    // auth: the caller's virtual key, from the head alone; then the head's own checks.
    let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
    let reply = async {
        // The model an Azure deployment path names, if this is one.
        let preset = deployment
            .map(|d| models::deployment_model(&state.config.providers, d))
            .transpose()?;
        let preset = preset.as_ref().map(|(p, m)| (p.as_str(), m.as_str()));
        // The JSON form (`Content-Type: application/json`; no multipart head) or the multipart one.
        let head = if json_edit::is_json(session) {
            json_edit::check_head(state, session).await?;
            None
        } else {
            Some(check_head(state, session).await?)
        };
        // admit (the request): its key's request-level limits, before the body is read.
        let admitted = attempt::AdmittedRequest::ask(state, &ctx.request_id, &identity).await?;
        let reply = admitted_edit(state, session, ctx, &identity, (framing, head.as_ref(), preset)).await;
        // The request is handed back before its answer (or error) goes out.
        admitted.finish().await;
        reply
    }
    .await;
    // The key id goes to the access record (moved: no copy).
    ctx.virtual_key = identity.key_id;
    reply
}

/// The image-edit request once admitted: parse → route → (per candidate) admit → translate →
/// exchange → convert (see [`image_edit`]); the model is the path's when it names one. The
/// multipart form has its `head`; the JSON form (none) is parsed by [`json_edit::read_form`].
async fn admitted_edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &crate::auth::Identity,
    (framing, head, preset_model): (Framing, Option<&EditHead>, Option<(&str, &str)>),
) -> std::result::Result<Reply, GatewayError> {
    // parse: the body into the spool, every field checked as it arrives, `model` routed at
    // once; a large upload's first attempt starts meanwhile.
    let request_id = ctx.request_id.clone();
    let upstream_start = Instant::now();
    let mut spool = Spool::for_request(&state.config.spool);
    let parse = tracing::info_span!(target: SPAN_TARGET, "parse");
    let upload::Uploaded { mut form, first } = match head {
        Some(head) => {
            let upload = upload::Upload {
                state,
                identity,
                request_id: &request_id,
                framing,
                boundary: &head.boundary,
                declared_len: head.declared_len,
                store_only: false,
                preset_model,
            };
            upload::read(&upload, session, ctx, &mut spool)
                .instrument(parse)
                .await?
        }
        None => upload::Uploaded {
            form: json_edit::read_form(state, session, ctx, identity, (preset_model, &mut spool))
                .instrument(parse)
                .await?,
            first: attempt::Start::FromSpool {
                avoid: None,
                decided: None,
            },
        },
    };
    // route: the primary is the form's model; the model's configured fallback chain follows
    // when the request names none.
    ctx.provider = Some(form.provider.clone());
    ctx.model = Some(form.model.clone());
    configured_fallbacks(state, &mut form);
    // The origin of gateway URLs, when the client wants URLs (response_format=url).
    let url_base = rehost::url_base(state, session, &form);
    // admit → translate → exchange → convert, candidate after candidate.
    let scope = Scope {
        url_base: url_base.as_deref(),
        state,
        identity,
        form: &form,
        spool: &spool,
        framing,
        request_id: &request_id,
        start: ctx.start,
        upstream_start,
    };
    fallback::run(&scope, &mut answer::Client::Session(session), ctx, first).await
}

/// The route step's fallbacks: a form that names none gets its model's configured chain.
fn configured_fallbacks(state: &AppState, form: &mut EditForm) {
    if form.fallbacks.is_empty() {
        // (The provider passed its check in the parse step.)
        let provider = state.router.provider(&form.provider).ok();
        if let Some(rules) = provider.and_then(|p| p.options.rules_for(&form.model)) {
            form.fallbacks.clone_from(&rules.fallbacks);
        }
    }
}

/// What `image_edit` produced.
enum Reply {
    /// A JSON body to send.
    Json(UnifiedAnswer),
    /// A complete event stream to send (synthesized from a complete answer).
    Events(Bytes),
    /// The answer was already streamed to the client.
    Streamed,
    /// The stream broke inside a half-sent event: the response must be aborted, not ended.
    Aborted,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(String::new())
    }

    /// Runs first for every request: assigns the request id and starts the clock.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        ctx.request_id = request_id(session);
        ctx.start = Instant::now();
        ctx.counted = true;
        let head = session.req_header();
        ctx.probe = matches!(endpoint(&head.method, head.uri.path()), Endpoint::Health);
        if !ctx.probe {
            self.metrics.request_started();
            ctx.span = tracing::info_span!(
                target: SPAN_TARGET,
                "request",
                request_id = %ctx.request_id,
                route = %head.uri.path(),
                status = tracing::field::Empty,
                outcome = tracing::field::Empty,
            );
            crate::telemetry::adopt_parent(&ctx.span, &head.headers);
        }
        Ok(())
    }

    /// Answers every request here, within its span; always returns `Ok(true)` ("a response
    /// was written").
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let span = ctx.span.clone();
        self.serve(session, ctx).instrument(span).await
    }

    /// Never reached (see the module docs); refuses if it ever is.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "refract answers every request in request_filter",
        ))
    }

    /// Runs once per request, whatever happened: metrics, the access record and the span's
    /// status and outcome.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if !ctx.counted {
            return;
        }
        if ctx.status == 0 && e.is_some() {
            ctx.reason = Some("client_error");
        }
        let duration = ctx.answered_after.unwrap_or_else(|| ctx.start.elapsed());
        let outcome = access::outcome(&access::Ending {
            status: ctx.status,
            reason: ctx.reason,
            streamed: ctx.streamed,
            connection_failed: e.is_some(),
        });
        if !ctx.probe {
            self.metrics.request_finished(&RequestRecord {
                provider: ctx.provider.as_deref(),
                model: ctx.model.as_deref(),
                status: ctx.status,
                reason: ctx.reason,
                duration,
                upstream: ctx.upstream,
                request_bytes: ctx.request_bytes,
                response_bytes: ctx.response_bytes,
                cost: ctx.cost,
                route: route_label(session.req_header().uri.path()),
            });
            self.metrics.request_outcome(ctx.provider.as_deref(), outcome.as_str());
            ctx.span.record("status", ctx.status);
            ctx.span.record("outcome", outcome.as_str());
        }
        let head = session.req_header();
        access::AccessRecord {
            request_id: &ctx.request_id,
            virtual_key: ctx.virtual_key.as_deref(),
            method: head.method.as_str(),
            route: head.uri.path(),
            provider: ctx.provider.as_deref(),
            model: ctx.model.as_deref(),
            status: ctx.status,
            outcome,
            // A stream that failed after its head: `status` is the failure's, `stream=failed`
            // says the status line was a 200.
            stream: access::stream_field(ctx.streamed, ctx.status),
            attempts: ctx.attempts,
            fallback: ctx.fallback,
            upstream_ms: ctx.upstream.map_or(0, |d| d.as_millis() as u64),
            total_ms: duration.as_secs_f64() * 1000.0,
            bytes_in: ctx.request_bytes,
            bytes_out: ctx.response_bytes,
            images: ctx.cost.map_or(0, |c| c.images),
            cost_micros: ctx.cost.filter(|c| !c.unpriced).map(|c| c.micros),
            probe: ctx.probe,
        }
        .write();
    }
}

impl Gateway {
    /// The request's work (see [`ProxyHttp::request_filter`]).
    async fn serve(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        // The one read of the gateway's state for this request (one atomic load and one
        // reference count): everything below gets it from here, and a reload while it runs
        // does not change it.
        let state = self.current.load_full();
        let state = &*state;
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match endpoint(&method, &path) {
            Endpoint::Health => {
                let ok = UnifiedAnswer::from(Bytes::from_static(br#"{"status":"ok"}"#));
                send_json(session, ctx, 200, ok, &[]).await?;
            }
            Endpoint::ImageEdit(framing) => {
                let reply = image_edit(state, session, ctx, framing, None).await;
                let span = tracing::info_span!(target: SPAN_TARGET, "answer");
                send_reply(state, session, ctx, reply).instrument(span).await?;
            }
            Endpoint::DeploymentEdit(deployment) => {
                let reply = image_edit(state, session, ctx, Framing::OpenAi, Some(deployment)).await;
                let span = tracing::info_span!(target: SPAN_TARGET, "answer");
                send_reply(state, session, ctx, reply).instrument(span).await?;
            }
            Endpoint::Genai(route) => genai::serve(state, session, ctx, route).await?,
            Endpoint::Bedrock(model) => bedrock::serve(state, session, ctx, model).await?,
            Endpoint::Models => match models::list(state, session, ctx).await {
                Ok(body) => send_json(session, ctx, 200, body, &[]).await?,
                Err(e) => send_error(state, session, ctx, &e).await?,
            },
            Endpoint::Model(id) => match models::retrieve(state, session, ctx, id).await {
                Ok(body) => send_json(session, ctx, 200, body, &[]).await?,
                Err(e) => send_error(state, session, ctx, &e).await?,
            },
            Endpoint::File(head_only) => files::serve(state, session, ctx, head_only).await?,
            Endpoint::Usage => match usage(state, session).await {
                Ok(body) => send_json(session, ctx, 200, body, &[]).await?,
                Err(e) => send_error(state, session, ctx, &e).await?,
            },
            Endpoint::SubmitJob(framing) => match jobs::submit(state, session, ctx, framing).await {
                Ok(body) => {
                    ctx.request_bytes += drain_epilogue(session).await;
                    send_json(session, ctx, 202, body, &[]).await?;
                }
                Err(e) => send_error(state, session, ctx, &e).await?,
            },
            Endpoint::PollJob(id) | Endpoint::CancelJob(id) => {
                let answer = if method == http::Method::GET {
                    jobs::poll(state, session, id).await
                } else {
                    jobs::cancel(state, session, id).await
                };
                match answer {
                    Ok((status, body)) => send_json(session, ctx, status, body, &[]).await?,
                    Err(e) => send_error(state, session, ctx, &e).await?,
                }
            }
            Endpoint::WrongMethod(allow) => {
                let e = GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    allow,
                };
                send_error(state, session, ctx, &e).await?;
            }
            Endpoint::Unknown => {
                let e = GatewayError::NotFound {
                    method: method.to_string(),
                    path: path.chars().take(200).collect(),
                };
                send_error(state, session, ctx, &e).await?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels() {
        for (path, label) in [
            ("/v1/images/edits", "v1"),
            ("/images/edits", "v1"),
            ("/v1/async/images/edits/abc", "v1"),
            ("/async/images/edits", "v1"),
            ("/v1/models", "v1"),
            ("/openai/v1/images/edits", "openai"),
            ("/openai/images/edits", "openai"),
            ("/litellm/v1/images/edits", "litellm"),
            ("/langchain/images/edits", "langchain"),
            ("/pydanticai/v1/models", "pydanticai"),
            ("/openai/deployments/d/images/edits", "azure"),
            ("/openai/openai/deployments/d/images/edits", "azure"),
            ("/genai/v1beta/models/m:generateContent", "genai"),
            ("/bedrock/model/m/invoke", "bedrock"),
            ("/health", "other"),
            ("/api/governance/usage", "other"),
            ("/openaix/images/edits", "other"),
            ("/", "other"),
        ] {
            assert_eq!(route_label(path), label, "{path}");
        }
    }

    #[test]
    fn endpoints_by_method_and_path() {
        assert!(matches!(
            endpoint(&http::Method::POST, "/v1/images/edits"),
            Endpoint::ImageEdit(Framing::Bifrost)
        ));
        assert!(matches!(
            endpoint(&http::Method::POST, "/images/edits"),
            Endpoint::ImageEdit(Framing::Bifrost)
        ));
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/images/edits"),
            Endpoint::WrongMethod("POST")
        ));
        assert!(matches!(
            endpoint(&http::Method::POST, "/health"),
            Endpoint::WrongMethod("GET, HEAD")
        ));
        assert!(matches!(endpoint(&http::Method::GET, "/health"), Endpoint::Health));
        assert!(matches!(endpoint(&http::Method::POST, "/v1/chat"), Endpoint::Unknown));
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/images/files/1-a.png"),
            Endpoint::File(false)
        ));
        assert!(matches!(
            endpoint(&http::Method::HEAD, "/v1/images/files/1-a.png"),
            Endpoint::File(true)
        ));
        assert!(matches!(
            endpoint(&http::Method::DELETE, "/v1/images/files/1-a.png"),
            Endpoint::WrongMethod("GET, HEAD")
        ));
    }

    #[test]
    fn openai_bases_serve_the_openai_paths_in_openai_framing() {
        let post = http::Method::POST;
        for base in ["/openai", "/litellm", "/langchain", "/pydanticai"] {
            for path in [format!("{base}/v1/images/edits"), format!("{base}/images/edits")] {
                assert!(
                    matches!(endpoint(&post, &path), Endpoint::ImageEdit(Framing::OpenAi)),
                    "{path}"
                );
                assert!(matches!(
                    endpoint(&http::Method::GET, &path),
                    Endpoint::WrongMethod("POST")
                ));
            }
            for path in [format!("{base}/v1/models"), format!("{base}/models")] {
                assert!(
                    matches!(endpoint(&http::Method::GET, &path), Endpoint::Models),
                    "{path}"
                );
                assert!(matches!(endpoint(&post, &path), Endpoint::WrongMethod("GET")));
            }
            let one = format!("{base}/v1/models/demo%2Fsim-image-1");
            assert!(matches!(
                endpoint(&http::Method::GET, &one),
                Endpoint::Model("demo%2Fsim-image-1")
            ));
            assert!(matches!(
                endpoint(&http::Method::DELETE, &one),
                Endpoint::WrongMethod("GET")
            ));
            // Bifrost's Azure form under each base (`azure_endpoint=<gateway>/openai`).
            let azure = format!("{base}/openai/deployments/my-deploy/images/edits");
            assert!(
                matches!(endpoint(&post, &azure), Endpoint::DeploymentEdit("my-deploy")),
                "{azure}"
            );
            assert!(matches!(
                endpoint(&http::Method::GET, &azure),
                Endpoint::WrongMethod("POST")
            ));
            // Unknown sub-paths stay 404.
            for unknown in [
                format!("{base}/v1/chat/completions"),
                format!("{base}/v1/v1/images/edits"),
                format!("{base}/images/edits/x"),
                format!("{base}/v1/models/"),
                format!("{base}/openai/deployments//images/edits"),
                format!("{base}/openai/deployments/a/b/images/edits"),
                format!("{base}/openai/deployments/a/images/generations"),
                base.to_string(),
                format!("{base}/"),
            ] {
                assert!(matches!(endpoint(&post, &unknown), Endpoint::Unknown), "{unknown}");
            }
        }
        // A prefix only counts as a whole segment.
        assert!(matches!(endpoint(&post, "/openaiv1/images/edits"), Endpoint::Unknown));
        assert!(matches!(endpoint(&post, "/litellmx/images/edits"), Endpoint::Unknown));
    }

    #[test]
    fn azure_deployments_at_the_root_and_models_everywhere() {
        let post = http::Method::POST;
        assert!(matches!(
            endpoint(&post, "/openai/deployments/demo%2Fsim-image-1/images/edits"),
            Endpoint::DeploymentEdit("demo%2Fsim-image-1")
        ));
        // `/deployments` without `/openai` before it is no route.
        assert!(matches!(
            endpoint(&post, "/deployments/d/images/edits"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            endpoint(&post, "/litellm/deployments/d/images/edits"),
            Endpoint::Unknown
        ));
        assert!(matches!(endpoint(&http::Method::GET, "/v1/models"), Endpoint::Models));
        assert!(matches!(endpoint(&http::Method::GET, "/models"), Endpoint::Models));
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/models/openai%2Fgpt-image-1"),
            Endpoint::Model("openai%2Fgpt-image-1")
        ));
        assert!(matches!(
            endpoint(&http::Method::HEAD, "/v1/models"),
            Endpoint::WrongMethod("GET")
        ));
    }

    #[test]
    fn bedrock_invoke_under_bedrock() {
        let post = http::Method::POST;
        assert!(matches!(
            endpoint(&post, "/bedrock/model/amazon.nova-canvas-v1%3A0/invoke"),
            Endpoint::Bedrock("amazon.nova-canvas-v1%3A0")
        ));
        assert!(matches!(
            endpoint(&http::Method::GET, "/bedrock/model/m/invoke"),
            Endpoint::WrongMethod("POST")
        ));
        assert!(matches!(
            endpoint(&post, "/bedrock/model/m/converse"),
            Endpoint::Unknown
        ));
    }

    #[test]
    fn genai_calls_under_genai() {
        let post = http::Method::POST;
        let path = "/genai/v1beta/models/demo/sim-image-1:generateContent";
        assert!(matches!(
            endpoint(&post, path),
            Endpoint::Genai(r) if r.model == "demo/sim-image-1"
        ));
        assert!(matches!(
            endpoint(&http::Method::GET, path),
            Endpoint::WrongMethod("POST")
        ));
        assert!(matches!(
            endpoint(
                &post,
                "/genai/v1beta1/projects/p/locations/l/publishers/google/models/m:predict"
            ),
            Endpoint::Genai(_)
        ));
        assert!(matches!(
            endpoint(&post, "/genai/v1beta/models/m:embedContent"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            endpoint(&post, "/genai/v1beta/images/edits"),
            Endpoint::Unknown
        ));
    }

    #[test]
    fn async_jobs_at_the_root_and_under_openai_only() {
        let post = http::Method::POST;
        for (path, framing) in [
            ("/v1/async/images/edits", Framing::Bifrost),
            ("/openai/v1/async/images/edits", Framing::OpenAi),
            ("/openai/async/images/edits", Framing::OpenAi),
        ] {
            assert!(
                matches!(endpoint(&post, path), Endpoint::SubmitJob(f) if f == framing),
                "{path}"
            );
            assert!(matches!(
                endpoint(&http::Method::GET, path),
                Endpoint::WrongMethod("POST")
            ));
            let job = format!("{path}/job-1");
            assert!(matches!(endpoint(&http::Method::GET, &job), Endpoint::PollJob("job-1")));
            assert!(matches!(
                endpoint(&http::Method::DELETE, &job),
                Endpoint::CancelJob("job-1")
            ));
            assert!(matches!(endpoint(&post, &job), Endpoint::WrongMethod("GET, DELETE")));
        }
        // Bifrost refuses async image edits on its framework routes: no such route here.
        for base in ["/litellm", "/langchain", "/pydanticai"] {
            let path = format!("{base}/v1/async/images/edits");
            assert!(matches!(endpoint(&post, &path), Endpoint::Unknown), "{path}");
            let job = format!("{path}/job-1");
            assert!(matches!(endpoint(&http::Method::GET, &job), Endpoint::Unknown), "{job}");
        }
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/async/images/edits/"),
            Endpoint::Unknown
        ));
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/async/images/edits/a/b"),
            Endpoint::Unknown
        ));
    }
}
