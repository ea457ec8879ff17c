//! The candidate loop: runs in `image_edit` once the form is complete, trying the primary
//! (candidate 0) and then the form's `fallbacks` (`provider/model`) in order until one
//! answers, each through the same [`attempt`], and retrying each as the pure retry policy
//! ([`policy::decide`]) says.
//!
//! Each candidate is a request of its own, built from the spooled upload for ITS provider (never
//! re-sent to the primary, Bifrost's bug): its own virtual-key check, admission, key
//! selection, credentials and capability check. A fallback the caller's key may not use, that
//! is not configured, has no key for the model, or whose capabilities refuse the request is
//! skipped and listed as a failure.
//!
//! What moves on to the next candidate: connect errors, timeouts, garbage answers, and
//! provider answers 408, 429, 5xx, and 401/403 (the gateway's provider key was rejected: the
//! provider's side, not the client's), a provider whose keys' circuits are all open
//! (`provider_keys_disabled`), a provider whose upstream slots stayed full for its
//! `queue_timeout_ms` (`provider_busy`; the queue wait was its wait: not retried), and an
//! attempt the admission refused. Before moving on, a candidate is retried up to its
//! provider's `retries`. Any other provider 4xx (400, 404, 413, 422…) is caused by the request
//! itself and is returned at once. A stream falls back only while nothing has been sent
//! downstream: once the first event went out, a failure is told in-band as before.
//!
//! The answer reports its server: `extra_fields.provider` / `model_requested` are the serving
//! candidate's, plus (when the request has fallbacks) `fallback_index` (0 = primary) and
//! `attempts` (candidates tried, skipped ones included). When every candidate fails, the
//! primary's error is returned (its status and body) with
//! `extra_fields.fallback_errors: [{provider, model, status, type, message}]`.

use super::answer::Client;
use super::attempt::{attempt, Attempted, Candidate, Scope, Start};
use super::policy::{self, Decision, RetrySettings};
use super::{Reply, RequestCtx};
use crate::error::GatewayError;
use crate::providers::UnifiedAnswer;
use serde_json::{json, Value};
use std::borrow::Cow;
use tracing::Instrument;

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

/// Runs the candidates (see the module docs); `first` is how the primary's first attempt
/// begins (streamed while the client uploaded, or from the spool). Returns the first answer
/// (nothing of a failure was sent downstream unless it is a streamed reply), or the
/// primary's error, with every fallback's failure listed in `ctx.fallback_errors`.
pub(super) async fn run(
    scope: &Scope<'_>,
    client: &mut Client<'_>,
    ctx: &mut RequestCtx,
    first: Start<'_>,
) -> Result<Reply, GatewayError> {
    let state = scope.state;
    let form = scope.form;
    let has_fallbacks = !form.fallbacks.is_empty();
    let mut first = Some(first);
    let mut primary_err = None;
    let mut failures = Vec::new();
    // The provider the next fallback moves from (the primary's until a fallback was tried).
    let mut from: Option<String> = None;
    let candidates =
        (0..=form.fallbacks.len()).map(|index| match index.checked_sub(1).and_then(|i| form.fallbacks.get(i)) {
            None => Cow::Borrowed(form),
            Some(fb) => {
                let mut candidate = form.clone();
                candidate.provider.clone_from(&fb.provider);
                candidate.model.clone_from(&fb.model);
                Cow::Owned(candidate)
            }
        });
    for (index, candidate_form) in candidates.enumerate() {
        let mut candidate = Candidate {
            index,
            form: candidate_form,
            retries_done: 0,
        };
        let provider = state.router.provider(&candidate.form.provider).ok();
        if index > 0 {
            log::debug!(
                "request {}: falling back to candidate {index} (provider {})",
                scope.request_id,
                provider.map_or("unknown", |p| p.name.as_str())
            );
        }
        let settings = provider.map_or(RetrySettings::default(), |p| RetrySettings {
            retries: p.options.retries,
            backoff: p.options.retry_backoff,
        });
        let mut start = first.take().unwrap_or_else(Start::from_spool);
        let (result, decision) = loop {
            ctx.attempts += 1;
            ctx.fallback = index;
            let span = tracing::info_span!(
                target: crate::telemetry::SPAN_TARGET,
                "attempt",
                provider = %candidate.form.provider,
                model = %candidate.form.model,
                candidate = index,
                retry = candidate.retries_done,
            );
            let Attempted {
                result,
                retry_after,
                key,
            } = attempt(scope, client, ctx, &candidate, start).instrument(span).await;
            if index > 0 && candidate.retries_done == 0 && key.is_some() {
                if let Some(p) = provider {
                    state
                        .metrics
                        .fallback(from.as_deref().unwrap_or(&form.provider), &p.name);
                    from = Some(p.name.clone());
                }
            }
            let outcome = policy::Outcome {
                error: result.as_ref().err(),
                retry_after,
                candidate: index,
            };
            match policy::decide(&outcome, candidate.retries_done, fastrand::f64(), settings) {
                Decision::RetryAfter {
                    wait,
                    reason,
                    avoid_key,
                } => {
                    let name = provider.map_or("unknown", |p| p.name.as_str());
                    state.metrics.retry(name, reason);
                    log::debug!(
                        "request {}: retry {} of {} for provider {name} ({reason}) in {} ms",
                        scope.request_id,
                        candidate.retries_done + 1,
                        settings.retries,
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    candidate.retries_done += 1;
                    start = Start::FromSpool {
                        avoid: key.filter(|_| avoid_key),
                        decided: None,
                    };
                }
                decision => break (result, decision),
            }
        };
        let e = match result {
            Ok(reply) => {
                if index > 0 {
                    ctx.provider = Some(candidate.form.provider.clone());
                    ctx.model = Some(candidate.form.model.clone());
                    ctx.fallback_errors.clear();
                }
                return Ok(if has_fallbacks {
                    annotate(reply, index, index + 1)
                } else {
                    reply
                });
            }
            Err(e) => e,
        };
        if index == 0 {
            if decision == Decision::Stop || !has_fallbacks {
                return Err(e);
            }
            primary_err = Some(e);
            continue;
        }
        failures.push(describe(&candidate.form.provider, &candidate.form.model, &e));
        if decision == Decision::Stop {
            // The request itself is at fault (or the client left): stop here.
            break;
        }
    }
    ctx.fallback_errors = failures;
    Err(primary_err.unwrap_or_else(|| GatewayError::Internal("no candidate was tried".into())))
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
}
