//! The Google GenAI routes (`/genai/…`: Gemini's `generateContent` and
//! `streamGenerateContent`, Vertex Imagen's `:predict`): auth (the virtual key from
//! `x-goog-api-key`, `?key=` or a bearer token) → read the JSON body (within the body limits)
//! → convert it to the unified edit ([`crate::inbound::genai`]) → the same route, admit,
//! fallbacks, translate, exchange and convert as `/v1/images/edits` → the answer converted
//! back to Google's shape; errors in Google's envelope.

use super::answer::{write_stream_head, Client};
use super::attempt::{check_candidate, AdmittedRequest, Scope, Start};
use super::upload::SessionBody;
use super::{configured_fallbacks, fallback, send_error_in, send_json, ErrorShape, Reply, RequestCtx};
use crate::auth::Identity;
use crate::error::GatewayError;
use crate::inbound::genai::{self, GenaiCall, GenaiRoute};
use crate::metrics::ClientPhase;
use crate::providers::stream::Framing;
use crate::providers::UnifiedAnswer;
use crate::server::AppState;
use crate::spool::Spool;
use bytes::Bytes;
use pingora::proxy::Session;
use std::time::Instant;

/// Serves a GenAI route: the edit, answered in Google's shape (a `streamGenerateContent` as
/// one Gemini SSE event holding the whole answer), or its error in Google's envelope.
pub(super) async fn serve(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: GenaiRoute<'_>,
) -> pingora::Result<()> {
    match edit(state, session, ctx, route).await {
        Ok(body) if route.call == GenaiCall::StreamGenerate => {
            let event = Bytes::from(genai::stream_event(&body));
            write_stream_head(session, &ctx.request_id).await?;
            ctx.status = 200;
            ctx.streamed = true;
            ctx.response_bytes = event.len() as u64;
            session.write_response_body(Some(event), true).await?;
        }
        Ok(body) => send_json(session, ctx, 200, UnifiedAnswer::from(body), &[]).await?,
        Err(e) => send_error_in(state, session, ctx, &e, ErrorShape::Google).await?,
    }
    Ok(())
}

/// The `key` query parameter (percent-decoded), as google-genai's REST clients may send the key.
fn query_key(query: Option<&str>) -> Option<String> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("key="))
        .filter(|k| !k.is_empty())
        .and_then(crate::providers::kernel::percent::percent_decode_segment)
}

/// The caller: the usual credentials of the head, or the `?key=` parameter when the head has
/// none (taken as an `x-goog-api-key`).
async fn authenticate(state: &AppState, session: &Session) -> Result<Identity, GatewayError> {
    let head = session.req_header();
    if crate::auth::presented_key(&head.headers).is_none() {
        if let Some(key) = query_key(head.uri.query()) {
            let mut headers = head.headers.clone();
            let value = http::HeaderValue::from_str(&key).map_err(|_| GatewayError::VirtualKeyNotFound)?;
            headers.insert("x-goog-api-key", value);
            return crate::server::jwks::authenticate(state, &headers).await;
        }
    }
    crate::server::jwks::authenticate(state, &head.headers).await
}

/// The `(provider, model)` the route names: Vertex's publisher when it is not `google` (the
/// SDK's Vertex mode sends `provider/model` as `publishers/{provider}/models/{model}`), else
/// the model segment as the Azure deployment path reads it (`provider/model`, its `/` raw or
/// percent-encoded, or a configured deployment name).
fn route_model(state: &AppState, route: &GenaiRoute<'_>) -> Result<(String, String), GatewayError> {
    match route.publisher.filter(|p| *p != "google") {
        Some(publisher) => {
            let provider = crate::providers::kernel::percent::percent_decode_segment(publisher);
            let model = crate::providers::kernel::percent::percent_decode_segment(route.model);
            match (provider, model) {
                (Some(p), Some(m)) => crate::form::split_model(&format!("{p}/{m}")),
                _ => Err(GatewayError::invalid(
                    "model",
                    "the model in the path is not valid percent-encoded UTF-8",
                )),
            }
        }
        None => super::models::deployment_model(&state.config.providers, route.model),
    }
}

/// The edit: auth, the request's admission, then [`admitted`]; the Google body of the answer.
async fn edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: GenaiRoute<'_>,
) -> Result<Vec<u8>, GatewayError> {
    let identity = authenticate(state, session).await?;
    let reply = async {
        let model = route_model(state, &route)?;
        check_head(state, session).await?;
        let admitted = AdmittedRequest::ask(state, &ctx.request_id, &identity).await?;
        let reply = admitted_edit(state, session, ctx, &identity, (route, model)).await;
        admitted.finish().await;
        reply
    }
    .await;
    ctx.virtual_key = identity.key_id;
    reply
}

/// The head's checks: a JSON body (or none declared), not longer than `limits.max_body_bytes`;
/// answers `Expect: 100-continue` (curl sends it for bodies over 1 KiB).
pub(super) async fn check_head(state: &AppState, session: &mut Session) -> Result<(), GatewayError> {
    let headers = &session.req_header().headers;
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if !content_type.to_ascii_lowercase().starts_with("application/json") {
        return Err(GatewayError::UnsupportedMediaType(
            "the body must be application/json (as the SDK sends it)".into(),
        ));
    }
    super::check_length_and_continue(state, session).await?;
    Ok(())
}

fn too_large(state: &AppState) -> GatewayError {
    GatewayError::PayloadTooLarge {
        param: None,
        what: "request body".into(),
        limit: state.config.limits.max_body_bytes,
    }
}

/// A JSON request body read whole, holding its share of `limits.json_body_memory_bytes`
/// until it is dropped.
pub(super) struct JsonBody {
    bytes: Vec<u8>,
    /// One permit per KiB held (none for an empty body).
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for JsonBody {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::ops::Deref for JsonBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads the whole JSON body, within `limits.max_body_bytes`, the process's
/// `limits.json_body_memory_bytes` (taken as the body grows: a body that would pass it is a
/// 503 `body_memory_busy`) and the upload's timeouts (the multipart route's [`SessionBody`]).
pub(super) async fn read_body(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<JsonBody, GatewayError> {
    use crate::form::BodySource;
    let limits = &state.config.limits;
    let mut source = SessionBody::new(session, &mut ctx.request_bytes, ctx.start, limits);
    let mut body = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        match source.next_chunk().await {
            Ok(Some(chunk)) => {
                let len = body.len() as u64 + chunk.len() as u64;
                if len > limits.max_body_bytes {
                    return Err(too_large(state));
                }
                let need = usize::try_from(len.div_ceil(1024)).unwrap_or(usize::MAX);
                let have = held.as_ref().map_or(0, |p| p.num_permits());
                if need > have {
                    let more = u32::try_from(need - have).unwrap_or(u32::MAX);
                    let permit = state.json_bodies.clone().try_acquire_many_owned(more).map_err(|_| {
                        GatewayError::BodyMemoryBusy {
                            limit: limits.json_body_memory_bytes,
                        }
                    })?;
                    match &mut held {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => {
                return Ok(JsonBody {
                    bytes: body,
                    _held: held,
                })
            }
            Err(e) => {
                if source.client_gone {
                    state.metrics.client_disconnect(ClientPhase::Upload);
                }
                return Err(match source.timed_out {
                    Some(limit) => limit.error(limits),
                    None => GatewayError::BodyUnreadable(e.to_string()),
                });
            }
        }
    }
}

/// The edit once admitted: parse (the body, converted and checked as a form) → route → the
/// candidates (see `super::admitted_edit`, the multipart route's twin).
async fn admitted_edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &Identity,
    (route, (provider, model)): (GenaiRoute<'_>, (String, String)),
) -> Result<Vec<u8>, GatewayError> {
    let upstream_start = Instant::now();
    // The model is checked before the body is read (as the multipart route checks `model` as
    // it arrives), and only then reported (no metric series for an unknown provider).
    super::attempt::route_candidate(state, identity, &provider, &model)?;
    ctx.provider = Some(provider.clone());
    ctx.model = Some(model.clone());
    let body = read_body(state, session, ctx).await?;
    let mut spool = Spool::for_request(&state.config.spool);
    let form = {
        let source = match route.call {
            GenaiCall::Predict => genai::predict_request(&body)?,
            GenaiCall::Generate | GenaiCall::StreamGenerate => genai::generate_request(&body)?,
        };
        genai::build_form(&source, (&provider, &model), &state.config.limits, &mut spool)?
    };
    // The images are in the spool now: the body's memory goes before anything is sent.
    drop(body);
    let unified = run_converted(state, session, ctx, identity, (form, &spool), upstream_start).await?;
    match route.call {
        GenaiCall::Predict => genai::predict_answer(&unified),
        GenaiCall::Generate | GenaiCall::StreamGenerate => {
            genai::generate_answer(&unified, &format!("{provider}/{model}"))
        }
    }
}

/// The edit of a `form` converted from an inbound format (its images in `spool`), from the
/// route check on: its fallbacks checked, the caller's permissions, the configured fallbacks,
/// then each candidate in turn; the unified answer's bytes. Shared by the inbound routes that
/// answer JSON only (GenAI, Bedrock).
pub(super) async fn run_converted(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &Identity,
    (mut form, spool): (crate::form::EditForm, &Spool),
    upstream_start: Instant,
) -> Result<Bytes, GatewayError> {
    state.router.check_fallbacks(&form)?;
    check_candidate(state, identity, &form)?;
    configured_fallbacks(state, &mut form);
    let request_id = ctx.request_id.clone();
    let scope = Scope {
        url_base: None,
        state,
        identity,
        form: &form,
        spool,
        framing: Framing::Bifrost,
        request_id: &request_id,
        start: ctx.start,
        upstream_start,
    };
    let first = Start::FromSpool {
        avoid: None,
        decided: None,
    };
    match fallback::run(&scope, &mut Client::Session(session), ctx, first).await? {
        Reply::Json(answer) => Ok(answer.to_bytes()),
        Reply::Events(_) | Reply::Streamed | Reply::Aborted => Err(GatewayError::Internal(
            "an edit converted from an inbound format produced a stream".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_query_parameter() {
        assert_eq!(query_key(Some("key=sk-bf-demo")).as_deref(), Some("sk-bf-demo"));
        assert_eq!(query_key(Some("alt=sse&key=a%2Bb")).as_deref(), Some("a+b"));
        assert_eq!(query_key(Some("alt=sse")), None);
        assert_eq!(query_key(Some("key=")), None);
        assert_eq!(query_key(None), None);
        assert_eq!(query_key(Some("apikey=x")), None);
    }
}
