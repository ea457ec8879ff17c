//! The Amazon Bedrock route (`POST /bedrock/model/{modelId}/invoke`, boto3's
//! `bedrock-runtime` `invoke_model` with `endpoint_url=<gateway>/bedrock`): auth (a SigV4
//! signature whose access key id is a virtual key's id and whose secret is that key, or the
//! usual credentials such as a bearer virtual key) → read the JSON body (within the body
//! limits; a signature is checked over it before anything else happens) → convert it to the
//! unified edit ([`crate::inbound::bedrock`]) → the same route, admit, fallbacks, translate,
//! exchange and convert as `/v1/images/edits` → the answer in the body's own Bedrock shape;
//! errors as Bedrock answers them (`x-amzn-ErrorType`, `{"message"}`).

use super::attempt::AdmittedRequest;
use super::genai::{check_head, read_body, run_converted, JsonBody};
use super::{send_error_in, send_json, ErrorShape, RequestCtx};
use crate::auth::Identity;
use crate::error::GatewayError;
use crate::inbound::bedrock;
use crate::providers::bedrock::sigv4::Received;
use crate::providers::UnifiedAnswer;
use crate::server::AppState;
use crate::spool::Spool;
use pingora::proxy::Session;
use sha2::{Digest, Sha256};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Serves `/bedrock/model/{model}/invoke`: the edit in the body's Bedrock shape, or its error
/// as Bedrock answers it.
pub(super) async fn serve(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    model: &str,
) -> pingora::Result<()> {
    match edit(state, session, ctx, model).await {
        Ok(body) => send_json(session, ctx, 200, UnifiedAnswer::from(body), &[]).await?,
        Err(e) => send_error_in(state, session, ctx, &e, ErrorShape::Bedrock).await?,
    }
    Ok(())
}

/// The `(provider, model)` the path's model id names: `provider/model` or a deployment name
/// as the Azure deployment path reads them, else a Bedrock model id (or ARN) served by a
/// configured `bedrock` provider.
fn route_model(state: &AppState, segment: &str) -> Result<(String, String), GatewayError> {
    let providers = &state.config.providers;
    let decoded = crate::providers::kernel::percent::percent_decode_segment(segment)
        .ok_or_else(|| GatewayError::invalid("model", "the model id in the path is not valid percent-encoded UTF-8"))?;
    let as_bedrock = || bedrock::bedrock_provider_for(providers, &decoded).map(|p| (p.name.clone(), decoded.clone()));
    if decoded.starts_with("arn:") {
        return as_bedrock()
            .ok_or_else(|| GatewayError::invalid("model", "no configured bedrock provider serves this ARN"));
    }
    match super::models::deployment_model(providers, segment) {
        Err(e @ GatewayError::Refused { status: 404, .. }) => as_bedrock().ok_or(e),
        other => other,
    }
}

/// The caller and the body: a signed request's signature checked over the body as it
/// arrived; else the usual credentials of the head, then the body.
async fn caller_and_body(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(Identity, JsonBody), GatewayError> {
    if !crate::auth::sigv4::is_signed(&session.req_header().headers) {
        let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
        ctx.virtual_key = identity.key_id.clone();
        check_head(state, session).await?;
        let body = read_body(state, session, ctx).await?;
        return Ok((identity, body));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let signer = state.keys.signer(&session.req_header().headers, now)?;
    check_head(state, session).await?;
    let body = read_body(state, session, ctx).await?;
    let payload = hex::encode(Sha256::digest(&body));
    let head = session.req_header();
    let amz_date = head
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let identity = signer.verify(&Received {
        method: head.method.as_str(),
        path: head.uri.path(),
        query: head.uri.query(),
        headers: &head.headers,
        amz_date,
        payload_sha256: &payload,
    })?;
    ctx.virtual_key = identity.key_id.clone();
    Ok((identity, body))
}

/// The edit: auth and body, the model, the request's admission, then [`admitted_edit`]; the
/// Bedrock body of the answer.
async fn edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    segment: &str,
) -> Result<Vec<u8>, GatewayError> {
    let (identity, body) = caller_and_body(state, session, ctx).await?;
    let (provider, model) = route_model(state, segment)?;
    super::attempt::route_candidate(state, &identity, &provider, &model)?;
    ctx.provider = Some(provider.clone());
    ctx.model = Some(model.clone());
    let admitted = AdmittedRequest::ask(state, &ctx.request_id, &identity).await?;
    let reply = admitted_edit(state, session, ctx, &identity, (body, (&provider, &model))).await;
    admitted.finish().await;
    reply
}

/// The edit once admitted: the body converted and checked as a form, then the candidates
/// (as on the GenAI routes).
async fn admitted_edit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &Identity,
    (body, model): (JsonBody, (&str, &str)),
) -> Result<Vec<u8>, GatewayError> {
    let upstream_start = Instant::now();
    let mut spool = Spool::for_request(&state.config.spool);
    let (shape, seed, form) = {
        let edit = bedrock::invoke_request(&body)?;
        let form = bedrock::build_form(&edit, model, &state.config.limits, &mut spool)?;
        (edit.shape, edit.seed, form)
    };
    // The images are in the spool now: the body's memory goes before anything is sent.
    drop(body);
    let unified = run_converted(state, session, ctx, identity, (form, &spool), upstream_start).await?;
    bedrock::answer(shape, seed, &unified)
}
