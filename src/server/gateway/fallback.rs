//! Fallbacks: runs in `image_edit` after the primary attempt failed, trying the form's
//! `fallbacks` candidates (`provider/model`) in order until one answers.
//!
//! Each candidate is a request of its own, built from the spooled upload for ITS provider (never
//! re-sent to the primary, Bifrost's bug): its own virtual-key check, key selection,
//! credentials and capability check. A candidate the caller's key may not use, that is not
//! configured, has no key for the model, or whose capabilities refuse the request is skipped
//! and listed as a failure.
//!
//! What moves on to the next candidate ([`may_fall_back`]): connect errors, timeouts, garbage
//! answers, and provider answers 408, 429, 5xx, and 401/403 (the gateway's provider key was
//! rejected: the provider's side, not the client's), a provider whose keys' circuits are all
//! open (`provider_keys_disabled`), and a provider whose upstream slots stayed full for its
//! `queue_timeout_ms` (`provider_busy`; the queue wait was its wait: not retried). Before
//! moving on, a candidate is retried up to its provider's `retries` ([`retry`]). Any other
//! provider 4xx (400, 404, 413, 422…) is caused by the request itself and is returned at once.
//! A stream falls back only while nothing has been sent downstream: once the first event went
//! out, a failure is told in-band as before.
//!
//! The answer reports its server: `extra_fields.provider` / `model_requested` are the serving
//! candidate's, plus `fallback_index` (0 = primary) and `attempts` (candidates tried, skipped
//! ones included). When every candidate fails, the primary's error is returned (its status and
//! body) with `extra_fields.fallback_errors: [{provider, model, status, type, message}]`.

use super::answer::{close_quietly, run_with_writer, write_event_stream, StreamSink, EVENTS_AHEAD};
use super::{repeat, streamed_reply, Gateway, Reply, RequestCtx};
use crate::auth::Identity;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::stream::{Framing, StreamContext};
use crate::providers::{adapter_for, capabilities, UnifiedAnswer};
use crate::server::breaker::{backoff, MAX_RETRY_AFTER};
use crate::spool::Spool;
use pingora::proxy::Session;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// What a fallback attempt needs from the request.
pub(super) struct Attempt<'a> {
    pub(super) session: &'a mut Session,
    pub(super) ctx: &'a mut RequestCtx,
    /// The client's form (the primary's provider/model).
    pub(super) form: &'a EditForm,
    pub(super) spool: &'a Spool,
    pub(super) framing: Framing,
    pub(super) identity: &'a Identity,
}

/// True when `e`, from a candidate that sent nothing downstream, lets the next candidate try.
pub(super) fn may_fall_back(e: &GatewayError) -> bool {
    retry_reason(e).is_some() || matches!(e, GatewayError::KeysDisabled { .. } | GatewayError::ProviderBusy { .. })
}

/// Why a failed attempt (`e`, nothing of it sent downstream) may be retried at the same
/// candidate, as the `reason` label of `refract_retries_total`: `connect_error`, `timeout`
/// (also provider 408), `protocol_error`, `rate_limited` (429), `auth` (401/403: the next
/// attempt uses another key when there is one), `server_error` (5xx). `None`: not retryable
/// (the request's own fault, the client left, every key's circuit is open, or the provider's
/// slots stayed full for its queue timeout, already a wait of its own). Also decides
/// what counts as a failure for the circuit breaker.
pub fn retry_reason(e: &GatewayError) -> Option<&'static str> {
    match e {
        GatewayError::UpstreamConnect { .. } => Some("connect_error"),
        GatewayError::UpstreamTimeout { .. } => Some("timeout"),
        GatewayError::UpstreamProtocol { .. } => Some("protocol_error"),
        GatewayError::Provider { status, .. } => match *status {
            401 | 403 => Some("auth"),
            408 => Some("timeout"),
            429 => Some("rate_limited"),
            s if s >= 500 => Some("server_error"),
            _ => None,
        },
        _ => None,
    }
}

/// True when `e` means the candidate was not tried at all (skipped): the next one may try.
fn skipped(e: &GatewayError) -> bool {
    matches!(
        e,
        GatewayError::Unsupported { .. }
            | GatewayError::UnknownProvider(_)
            | GatewayError::NoKeyForModel { .. }
            | GatewayError::ProviderBlocked(_)
            | GatewayError::ModelBlocked(_)
    )
}

/// One failed candidate, as listed in `extra_fields.fallback_errors`.
fn describe(provider: &str, model: &str, e: &GatewayError) -> Value {
    let body = e.to_json(&Default::default());
    json!({
        "provider": provider,
        "model": model,
        "status": e.status(),
        "type": e.code(),
        "message": body["error"]["message"],
    })
}

/// Runs after the primary attempt (whose outcome is `primary`, nothing of it sent downstream
/// unless it is a streamed reply): returns the primary's success, the primary's error when it
/// may not fall back, else the first candidate's success or the primary's error with every
/// failure listed in `ctx.fallback_errors`.
pub(super) async fn run(
    gw: &Gateway,
    a: Attempt<'_>,
    primary: Result<Reply, GatewayError>,
) -> Result<Reply, GatewayError> {
    let Attempt {
        session,
        ctx,
        form,
        spool,
        framing,
        identity,
    } = a;
    let primary_err = match primary {
        Ok(reply) => return Ok(annotate(reply, 0, 1)),
        Err(e) if !may_fall_back(&e) => return Err(e),
        Err(e) => e,
    };
    let mut failures = Vec::new();
    let mut from = form.provider.clone();
    for (i, fb) in form.fallbacks.iter().enumerate() {
        let index = i + 1;
        let mut candidate = form.clone();
        candidate.provider = fb.provider.clone();
        candidate.model = fb.model.clone();
        log::debug!(
            "request {}: falling back to candidate {index} (provider {})",
            ctx.request_id,
            gw.state
                .router
                .provider(&fb.provider)
                .map_or("unknown", |p| p.name.as_str())
        );
        let mut key = None;
        ctx.retry_after = None;
        let first = attempt(
            gw,
            session,
            ctx,
            &candidate,
            spool,
            framing,
            identity,
            Some(&mut from),
            None,
            &mut key,
        )
        .await;
        let retried = retry(gw, session, ctx, &candidate, spool, framing, identity, first, key).await;
        match retried {
            Ok(reply) => {
                ctx.provider = Some(candidate.provider);
                ctx.model = Some(candidate.model);
                ctx.fallback_errors.clear();
                return Ok(annotate(reply, index, index + 1));
            }
            Err(e) => {
                failures.push(describe(&fb.provider, &fb.model, &e));
                if !may_fall_back(&e) && !skipped(&e) {
                    // The request itself is at fault (or the client left): stop here.
                    break;
                }
            }
        }
    }
    ctx.fallback_errors = failures;
    Err(primary_err)
}

/// Retries a candidate (the primary or a fallback) whose attempt ended in `result`, made with
/// key `key`: while the failure is retryable ([`retry_reason`]) and the provider's `retries`
/// are not used up, waits the jittered exponential backoff and tries again from the spool
/// (an attempt that streamed anything downstream succeeded and is never retried). After a
/// 401/403/429 the next attempt avoids the refused key when another key serves the model.
/// A client that went away ends in `client_closed`, which is not retried. A provider's
/// `Retry-After` lengthens the wait to what it asks; past [`MAX_RETRY_AFTER`] the candidate
/// is not retried (the next fallback, if any, answers instead).
#[allow(clippy::too_many_arguments)]
pub(super) async fn retry(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    form: &EditForm,
    spool: &Spool,
    framing: Framing,
    identity: &Identity,
    mut result: Result<Reply, GatewayError>,
    mut key: Option<usize>,
) -> Result<Reply, GatewayError> {
    let Ok(provider) = gw.state.router.provider(&form.provider) else {
        return result;
    };
    let (retries, base) = (provider.options.retries, provider.options.retry_backoff);
    for n in 0..retries {
        let reason = match &result {
            Err(e) => match retry_reason(e) {
                Some(reason) => reason,
                None => return result,
            },
            Ok(_) => return result,
        };
        let mut wait = backoff(base, n, fastrand::f64());
        if let Some(asked) = ctx.retry_after.take() {
            if asked > MAX_RETRY_AFTER {
                log::debug!(
                    "request {}: provider {} asks to retry after {} s: not retried",
                    ctx.request_id,
                    provider.name,
                    asked.as_secs()
                );
                return result;
            }
            wait = wait.max(asked);
        }
        gw.state.metrics.retry(&provider.name, reason);
        log::debug!(
            "request {}: retry {} of {} for provider {} ({reason}) in {} ms",
            ctx.request_id,
            n + 1,
            retries,
            provider.name,
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
        let avoid = if matches!(reason, "auth" | "rate_limited") {
            key
        } else {
            None
        };
        let mut used = None;
        result = attempt(gw, session, ctx, form, spool, framing, identity, None, avoid, &mut used).await;
        key = used;
    }
    result
}

/// One attempt at a candidate (see [`attempt_once`]); its outcome is told to the circuit
/// breaker of the key it used, which it leaves in `used`.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    form: &EditForm,
    spool: &Spool,
    framing: Framing,
    identity: &Identity,
    from: Option<&mut String>,
    avoid: Option<usize>,
    used: &mut Option<usize>,
) -> Result<Reply, GatewayError> {
    let result = attempt_once(gw, session, ctx, form, spool, framing, identity, from, avoid, used).await;
    if let Some(key) = *used {
        gw.state.record(&form.provider, key, result.as_ref().map(|_| ()));
    }
    result
}

/// One attempt at a candidate, from the spool: checks, key (avoiding `avoid` if possible),
/// credentials, translation for its own provider, exchange (a stream answer goes downstream as
/// it comes), then follow-ups and conversion. `from` is set for a fallback's first attempt
/// (the provider it falls back from, counted in the fallback metric). An error means nothing
/// was sent downstream.
#[allow(clippy::too_many_arguments)]
async fn attempt_once(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    form: &EditForm,
    spool: &Spool,
    framing: Framing,
    identity: &Identity,
    from: Option<&mut String>,
    avoid: Option<usize>,
    used: &mut Option<usize>,
) -> Result<Reply, GatewayError> {
    let state = &gw.state;
    identity.check(&form.provider, &form.model)?;
    let provider = state.router.provider(&form.provider)?;
    let kind = provider.kind;
    capabilities::check(
        form,
        adapter_for(kind).capabilities(&form.model),
        provider.options.rules_for(&form.model),
        &form.provider,
    )?;
    let target = state.pick(&form.provider, &form.model, avoid)?;
    *used = Some(target.key_index);
    if let Some(from) = from {
        state.metrics.fallback(from, &provider.name);
        *from = provider.name.clone();
    }
    let request_id = ctx.request_id.clone();
    let stream_cx = form.stream.then(|| StreamContext {
        provider: form.provider.clone(),
        model_requested: form.model.clone(),
        model_deployment: form.model.clone(),
        request_id: request_id.clone(),
        images: form.n.unwrap_or(1),
        start: ctx.start,
        created: crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()),
        framing,
        kind,
    });
    let start = ctx.start;
    let config = Arc::new(OnceLock::new());
    if let Some(cx) = &stream_cx {
        let _ = config.set(cx.clone());
    }
    let (down_tx, mut down_rx) = tokio::sync::mpsc::channel(EVENTS_AHEAD);
    let mut sink = StreamSink {
        config,
        pipeline: None,
        down: Some(down_tx),
        used: false,
        failure_told: false,
    };
    let sink_ref = &mut sink;
    let upstream = async move {
        let result = async {
            let target = state.credentials.prepare(&state.connector, target).await?;
            let call = repeat::Call {
                state,
                target: &target,
                form,
                spool,
                request_id: &request_id,
                start,
            };
            let answered = repeat::send(&call, &mut *sink_ref).await?;
            Ok((target, answered))
        }
        .await;
        if let Err(e) = &result {
            // Mid-stream failure: tell the client in-band (no-op if nothing was sent).
            sink_ref.abort(e).await;
        }
        let idle = sink_ref.finish();
        (result, idle)
    };
    let writer = write_event_stream(session, &mut down_rx, &ctx.request_id);
    let (result, written, idle): (Result<_, GatewayError>, _, _) =
        run_with_writer(&state.metrics, upstream, writer).await;
    close_quietly(&mut down_rx, idle);
    if let Some(reply) = streamed_reply(ctx, result.as_ref().err(), &written) {
        ctx.provider = Some(form.provider.clone());
        ctx.model = Some(form.model.clone());
        return Ok(reply);
    }
    let (target, response) = result?;
    gw.finish(session, ctx, form, spool, &target, response, stream_cx.as_ref())
        .await
}

/// Adds `fallback_index` and `attempts` to the top-level `extra_fields` of a JSON answer
/// (other replies are left as they are: stream events name their provider already).
fn annotate(reply: Reply, index: usize, attempts: usize) -> Reply {
    match reply {
        Reply::Json(body) => Reply::Json(with_fallback_fields(body, index, attempts)),
        other => other,
    }
}

/// Inserts the fields at the start of the last `"extra_fields":{…}` of the answer: the
/// top-level one, which the unified answer writes after `data`. A body without it is returned
/// unchanged.
fn with_fallback_fields(mut body: UnifiedAnswer, index: usize, attempts: usize) -> UnifiedAnswer {
    body.insert_members(
        "extra_fields",
        &format!("\"fallback_index\":{index},\"attempts\":{attempts}"),
    );
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn fields_are_added_to_the_top_level_extra_fields() {
        let body = Bytes::from_static(br#"{"data":[{"b64_json":"QQ=="}],"extra_fields":{"provider":"p"}}"#);
        let out = with_fallback_fields(body.into(), 1, 2).to_bytes();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["extra_fields"]["fallback_index"], 1);
        assert_eq!(v["extra_fields"]["attempts"], 2);
        assert_eq!(v["extra_fields"]["provider"], "p");
        let empty = with_fallback_fields(Bytes::from_static(br#"{"extra_fields":{}}"#).into(), 0, 1).to_bytes();
        let v: Value = serde_json::from_slice(&empty).unwrap();
        assert_eq!(v["extra_fields"]["fallback_index"], 0);
        let none = with_fallback_fields(Bytes::from_static(br#"{"a":1}"#).into(), 0, 1).to_bytes();
        assert_eq!(&none[..], br#"{"a":1}"#);
    }

    #[test]
    fn request_faults_never_fall_back() {
        let provider = |status| GatewayError::Provider {
            provider: "p".into(),
            status,
            error: Default::default(),
        };
        for s in [429, 500, 502, 503, 401, 403, 408] {
            assert!(may_fall_back(&provider(s)), "{s}");
        }
        for s in [400, 404, 413, 422] {
            assert!(!may_fall_back(&provider(s)), "{s}");
        }
        assert!(!may_fall_back(&GatewayError::ClientClosed));
        assert!(may_fall_back(&GatewayError::KeysDisabled { provider: "p".into() }));
        assert_eq!(retry_reason(&GatewayError::KeysDisabled { provider: "p".into() }), None);
        let busy = GatewayError::ProviderBusy {
            provider: "p".into(),
            max_connections: 1,
            queue_timeout_ms: 1,
        };
        assert!(may_fall_back(&busy));
        assert_eq!(retry_reason(&busy), None);
        assert_eq!(retry_reason(&provider(429)), Some("rate_limited"));
        assert_eq!(retry_reason(&provider(401)), Some("auth"));
        assert_eq!(retry_reason(&provider(408)), Some("timeout"));
        assert_eq!(retry_reason(&provider(502)), Some("server_error"));
        assert!(may_fall_back(&GatewayError::UpstreamConnect {
            provider: "p".into(),
            detail: "d".into()
        }));
    }
}
