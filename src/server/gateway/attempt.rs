//! One attempt at one candidate: the chain's admit → translate → exchange → convert steps,
//! run by the candidate loop ([`super::fallback`]) for the primary's first attempt, each
//! retry and each fallback alike. In order: the candidate's checks ([`check_candidate`]: the
//! caller's key, the route, the capabilities), admission ([`crate::admission`]), the key
//! (by weight, avoiding a refused one, through the circuit breaker), credentials, the
//! translation for its own provider and the exchange (`repeat::send`: one call, or n), with a
//! stream answer going downstream as it comes, then follow-ups and the conversion. The
//! outcome is told to the key's circuit breaker and the admission's permit is settled, once.
//!
//! The primary's first attempt may have begun while the client was still uploading
//! ([`Start::Streamed`], see `super::upload`): its key, admission and exchange were started
//! there, and this function takes over from the exchange's end (sending from the spool with
//! the same key and permit when the streamed body never reached the provider whole).

use super::answer::{close_quietly, run_with_writer, write_event_stream, Client, DownSender, StreamSink, Written};
use super::upload::{StreamedAttempt, StreamedEnd};
use super::{follow, repeat, Reply, RequestCtx};
use crate::admission::{AdmissionRequest, AttemptIndex, Permit, Settlement, Usage};
use crate::auth::Identity;
use crate::config::ProviderConfig;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::pricing::{AnswerCost, PriceQuery, TokenUsage, UsageCounts, Usd};
use crate::providers::stream::{synthesize_stream, Framing, StreamContext};
use crate::providers::{adapter_for, capabilities, UnifiedAnswer};
use crate::route::Target;
use crate::server::exchange::Streamed;
use crate::server::AppState;
use crate::spool::Spool;
use bytes::Bytes;
use futures_util::future::Either;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What every attempt of a request shares, fixed once the form is complete.
pub(super) struct Scope<'a> {
    /// The gateway's state, as the request found it.
    pub(super) state: &'a AppState,
    /// The caller.
    pub(super) identity: &'a Identity,
    /// The client's form (the primary candidate's).
    pub(super) form: &'a EditForm,
    /// The spooled upload, sent again by every attempt from the spool.
    pub(super) spool: &'a Spool,
    /// The client's stream framing.
    pub(super) framing: Framing,
    pub(super) request_id: &'a str,
    /// When the request started (answers' latency).
    pub(super) start: Instant,
    /// When the upload began to be read: the first exchange's upstream time counts from here.
    pub(super) upstream_start: Instant,
    /// The origin of gateway URLs for rehosted images (`rehost::url_base`); `None` when the
    /// client wants no URL, or none could be made (path-only URLs then).
    pub(super) url_base: Option<&'a str>,
}

/// A candidate of the request: the primary (index 0) or a fallback.
pub(super) struct Candidate<'a> {
    /// 0 for the primary, i for the i-th fallback.
    pub(super) index: usize,
    /// The client's form, with the candidate's provider and model.
    pub(super) form: Cow<'a, EditForm>,
    /// Retries of this candidate so far (0 on its first attempt).
    pub(super) retries_done: u32,
}

/// How an attempt begins.
pub(super) enum Start<'a> {
    /// From the spool: the attempt asks admission (unless `decided` holds its answer
    /// already), then chooses its key, another than `avoid` when there is one (after a
    /// 401/403/429 with that key).
    FromSpool {
        /// The key to avoid.
        avoid: Option<usize>,
        /// Admission's answer, when it was asked already: the streamed upload's attempt that
        /// was refused, or admitted and then never started.
        decided: Option<Result<Admitted, GatewayError>>,
    },
    /// The streamed upload's attempt (the primary's first), begun while the client uploaded.
    Streamed(StreamedAttempt<'a>),
}

impl Start<'_> {
    /// The first attempt at a candidate from the spool.
    pub(super) fn from_spool() -> Self {
        Start::FromSpool {
            avoid: None,
            decided: None,
        }
    }
}

/// How an attempt ended.
pub(super) struct Attempted {
    /// The reply (an error means nothing was sent downstream).
    pub(super) result: Result<Reply, GatewayError>,
    /// The `Retry-After` of the provider's answer, for the retry policy.
    pub(super) retry_after: Option<Duration>,
    /// The key used; `None` when the attempt ended before one was chosen.
    pub(super) key: Option<usize>,
}

impl Attempted {
    fn failed(e: GatewayError) -> Attempted {
        Attempted {
            result: Err(e),
            retry_after: None,
            key: None,
        }
    }
}

/// The route's check of `provider`/`model` for the caller, the one place it is made: the
/// provider is configured (400 `unknown_provider`), the model is in its kind's id grammar (400
/// on `model`), and the caller's key may use both (403). Runs when `model` arrives (parse) and
/// for every attempt ([`check_candidate`]).
pub(super) fn route_candidate<'s>(
    state: &'s AppState,
    identity: &Identity,
    provider: &str,
    model: &str,
) -> Result<&'s Arc<ProviderConfig>, GatewayError> {
    let config = state.router.candidate(provider, model, "model")?;
    identity.check(provider, model)?;
    Ok(config)
}

/// The candidate's checks, before anything is chosen or sent: its route for the caller
/// ([`route_candidate`]) and its capabilities (400 `unsupported_operation`). Runs for every
/// attempt, and for the primary once more before a streamed upload's upstream body ends.
pub(super) fn check_candidate<'s>(
    state: &'s AppState,
    identity: &Identity,
    form: &EditForm,
) -> Result<&'s Arc<ProviderConfig>, GatewayError> {
    let provider = route_candidate(state, identity, &form.provider, &form.model)?;
    capabilities::check(
        form,
        adapter_for(provider.kind).capabilities(&form.model),
        provider.options.rules_for(&form.model),
        &form.provider,
    )?;
    Ok(provider)
}

/// The context of a stream request's events (`form.stream`) for `form`'s candidate, of
/// provider kind `kind`, in the client's `framing`.
pub(super) fn stream_context(
    form: &EditForm,
    kind: crate::config::ProviderKind,
    request_id: &str,
    start: Instant,
    framing: Framing,
) -> StreamContext {
    StreamContext {
        provider: form.provider.clone(),
        model_requested: form.model.clone(),
        model_deployment: form.model.clone(),
        request_id: request_id.to_string(),
        images: form.n.unwrap_or(1),
        start,
        created: crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()),
        framing,
        kind,
    }
}

/// What the admission is asked for an attempt at `form` (`index`).
pub(super) fn admission_request<'a>(
    request_id: &'a str,
    identity: &'a Identity,
    form: &'a EditForm,
    attempt: AttemptIndex,
) -> AdmissionRequest<'a> {
    AdmissionRequest {
        request_id,
        virtual_key: identity.key_id.as_deref(),
        provider: &form.provider,
        model: &form.model,
        n: form.n.unwrap_or(1),
        size: form.size.as_deref(),
        quality: form.quality.as_deref(),
        stream: form.stream,
        attempt,
        form_complete: true,
    }
}

/// The admission's permit, held by an attempt until it settles.
pub(super) struct Admitted {
    pub(super) permit: Permit,
    /// When it was admitted.
    pub(super) at: Instant,
}

impl Admitted {
    /// Asks the state's admission for `request`: the step that runs once per attempt,
    /// before anything goes upstream.
    pub(super) async fn ask(state: &AppState, request: &AdmissionRequest<'_>) -> Result<Admitted, GatewayError> {
        let permit = state.admission.admit(request).decide().await?;
        Ok(Admitted {
            permit,
            at: Instant::now(),
        })
    }
}

/// A request admitted by the request-level admission ([`Admission::admit_request`]): handed
/// back ([`Admission::finish_request`]) when it is dropped, however the request ends.
///
/// [`Admission::admit_request`]: crate::admission::Admission::admit_request
/// [`Admission::finish_request`]: crate::admission::Admission::finish_request
pub(super) struct AdmittedRequest {
    admission: Arc<dyn crate::admission::Admission>,
    /// `None` once finished.
    permit: Option<Permit>,
}

impl AdmittedRequest {
    /// Asks the state's admission for the request `request_id` of `identity`: once per
    /// request, after authentication and before the body is read.
    pub(super) async fn ask(
        state: &AppState,
        request_id: &str,
        identity: &Identity,
    ) -> Result<AdmittedRequest, GatewayError> {
        let request = crate::admission::RequestAdmission {
            request_id,
            virtual_key: identity.key_id.as_deref(),
        };
        let permit = state.admission.admit_request(&request).decide().await?;
        Ok(AdmittedRequest {
            admission: state.admission.clone(),
            permit: Some(permit),
        })
    }

    /// Hands the request back, before its answer goes out: the caller's next request sees
    /// its slot free.
    pub(super) async fn finish(mut self) {
        if let Some(permit) = self.permit.take() {
            self.admission.finish_request(permit).wait().await;
        }
    }
}

impl Drop for AdmittedRequest {
    /// A request dropped before [`AdmittedRequest::finish`] (an early error, the client gone)
    /// is handed back all the same, without waiting.
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.admission.finish_request(permit).send_on();
        }
    }
}

/// Runs one attempt (see the module docs).
pub(super) async fn attempt(
    scope: &Scope<'_>,
    client: &mut Client<'_>,
    ctx: &mut RequestCtx,
    candidate: &Candidate<'_>,
    start: Start<'_>,
) -> Attempted {
    let state = scope.state;
    let form = &*candidate.form;
    let checked = check_candidate(state, scope.identity, form);
    // Where the gateway makes the URLs, the provider is asked for base64.
    let asked = checked.as_ref().ok().map(|p| super::rehost::provider_form(form, p));
    let form = asked.as_deref().unwrap_or(form);
    let provider = match checked {
        Ok(provider) => provider,
        Err(e) => {
            let tried = Tried {
                virtual_key: scope.identity.key_id.as_deref(),
                provider: &form.provider,
                model: &form.model,
                key: None,
            };
            match start {
                Start::Streamed(s) => settle(state, &s.permit, tried, ended(Err(&e), None)).await,
                Start::FromSpool {
                    decided: Some(Ok(admitted)),
                    ..
                } => settle(state, &admitted, tried, ended(Err(&e), None)).await,
                Start::FromSpool { .. } => {}
            }
            return Attempted::failed(e);
        }
    };
    let config = Arc::new(OnceLock::new());
    if form.stream {
        let _ = config.set(stream_context(
            form,
            provider.kind,
            scope.request_id,
            scope.start,
            scope.framing,
        ));
    }
    let mut used_key = None;
    let used_key_ref = &mut used_key;
    let (admitted, mut down, upstream) = match start {
        Start::FromSpool { avoid, decided } => {
            let decided = match decided {
                Some(decided) => decided,
                None => {
                    let index = AttemptIndex {
                        candidate: candidate.index,
                        retry: candidate.retries_done,
                    };
                    let request = admission_request(scope.request_id, scope.identity, form, index);
                    Admitted::ask(state, &request).await
                }
            };
            let admitted = match decided {
                Ok(admitted) => admitted,
                Err(e) => return Attempted::failed(e),
            };
            let target = match state
                .pick_within_quota(&form.provider, &form.model, avoid, form.n.unwrap_or(1))
                .await
            {
                Ok(target) => target,
                Err(e) => {
                    let tried = Tried {
                        virtual_key: scope.identity.key_id.as_deref(),
                        provider: &form.provider,
                        model: &form.model,
                        key: None,
                    };
                    settle(state, &admitted, tried, ended(Err(&e), None)).await;
                    return Attempted::failed(e);
                }
            };
            *used_key_ref = Some(target.key_index);
            let (sink, down) = StreamSink::new(config.clone());
            (
                admitted,
                down,
                Either::Left(upstream_from_spool(scope, form, target, sink)),
            )
        }
        Start::Streamed(streamed) => {
            let StreamedAttempt { permit, end, down } = streamed;
            (
                permit,
                down,
                Either::Right(upstream_streamed(scope, form, end, used_key_ref)),
            )
        }
    };
    let writer = write_event_stream(client, &mut down, scope.request_id);
    let (result, written, idle) = run_with_writer(&state.metrics, upstream, writer).await;
    close_quietly(&mut down, idle);
    ctx.upstream.get_or_insert_with(|| scope.upstream_start.elapsed());
    if let Some(reply) = streamed_reply(ctx, result.as_ref().err(), &written) {
        ctx.provider = Some(form.provider.clone());
        ctx.model = Some(form.model.clone());
        let outcome = result.as_ref().map(|_| ());
        if let Some(key) = used_key {
            state.record(&form.provider, key, outcome);
        }
        let images = if ctx.status == 200 { form.n.unwrap_or(1) } else { 0 };
        if images > 0 {
            // The images delivered, at the per-image price (events carry no usage).
            ctx.cost = Some(answer_cost(state, provider.kind, form, None));
        }
        let tried = Tried {
            virtual_key: scope.identity.key_id.as_deref(),
            provider: &form.provider,
            model: &form.model,
            key: key_name(provider, used_key),
        };
        let ended = Ended {
            status: ctx.status,
            reason: ctx.reason,
            images,
            usage: None,
            cost: ctx.cost.as_ref().filter(|_| images > 0).map(|c| c.micros),
        };
        settle(state, &admitted, tried, ended).await;
        return Attempted {
            result: Ok(reply),
            retry_after: None,
            key: used_key,
        };
    }
    let Converted {
        result,
        retry_after,
        usage,
        cost,
    } = match result {
        Ok((target, answered)) => convert(scope, client, form, &target, answered, config.get()).await,
        Err(e) => Converted {
            result: Err(e),
            retry_after: None,
            usage: None,
            cost: None,
        },
    };
    let cost_micros = cost.as_ref().filter(|_| result.is_ok()).map(|c| c.micros);
    if cost.is_some() {
        ctx.cost = cost;
    }
    if let Some(key) = used_key {
        state.record(&form.provider, key, result.as_ref().map(|_| ()));
    }
    let tried = Tried {
        virtual_key: scope.identity.key_id.as_deref(),
        provider: &form.provider,
        model: &form.model,
        key: key_name(provider, used_key),
    };
    let ended = Ended {
        usage,
        cost: cost_micros,
        ..ended(result.as_ref().map(|_| ()), form.n)
    };
    settle(state, &admitted, tried, ended).await;
    Attempted {
        result,
        retry_after,
        key: used_key,
    }
}

/// The name of key `key` of `provider`.
fn key_name(provider: &ProviderConfig, key: Option<usize>) -> Option<&str> {
    provider.keys.get(key?).map(|k| k.name.as_str())
}

/// What an attempt tried, for its settlement.
#[derive(Clone, Copy)]
pub(super) struct Tried<'a> {
    /// The caller's virtual key id.
    pub(super) virtual_key: Option<&'a str>,
    pub(super) provider: &'a str,
    pub(super) model: &'a str,
    /// The provider key's name, once one was chosen.
    pub(super) key: Option<&'a str>,
}

/// How an attempt ended, for its settlement.
#[derive(Clone, Copy)]
pub(super) struct Ended {
    pub(super) status: u16,
    /// The error's code; `None` for an answer.
    pub(super) reason: Option<&'static str>,
    /// Images delivered: the `n` asked for, when it answered.
    pub(super) images: u32,
    /// Token usage, when the answer reports it and the admission wants it.
    pub(super) usage: Option<Usage>,
    /// The answer's cost (micro-dollars), when it delivered images.
    pub(super) cost: Option<u64>,
}

/// Settles an attempt's permit with how it `ended`.
pub(super) async fn settle(state: &AppState, admitted: &Admitted, tried: Tried<'_>, ended: Ended) {
    let rest = state.admission.settle(
        admitted.permit,
        &Settlement {
            status: ended.status,
            reason: ended.reason,
            images: ended.images,
            usage: ended.usage,
            provider: tried.provider,
            model: tried.model,
            key: tried.key,
            elapsed: admitted.at.elapsed(),
            virtual_key: tried.virtual_key,
            cost: ended.cost,
        },
    );
    rest.wait().await;
}

/// How an attempt whose result is `result` ended: `n` images for an answer.
pub(super) fn ended(result: Result<(), &GatewayError>, n: Option<u32>) -> Ended {
    let (status, reason, images) = match result {
        Ok(()) => (200, None, n.unwrap_or(1)),
        Err(e) => (e.status(), Some(e.code()), 0),
    };
    Ended {
        status,
        reason,
        images,
        usage: None,
        cost: None,
    }
}

/// The top-level `usage` of a unified answer (OpenAI's shape: `input_tokens`,
/// `output_tokens`, `total_tokens`), read only when the admission wants it.
#[cfg(test)]
fn usage_of(answer: &UnifiedAnswer) -> Option<Usage> {
    usage_counts(&usage_value(answer)?)
}

/// The admission's [`Usage`] of an answer's `usage` object.
fn usage_counts(counts: &UsageCounts) -> Option<Usage> {
    Some(Usage {
        input_tokens: counts.input_tokens?,
        output_tokens: counts.output_tokens.unwrap_or(0),
        total_tokens: counts.total_tokens.unwrap_or(0),
    })
}

/// The top-level `usage` object of a unified answer, read only when the admission or the
/// price of the model wants it. The members around the images are small pieces of their own,
/// so only those are searched; the last `"usage":` key there is the top-level one (written
/// after `data`).
fn usage_value(answer: &UnifiedAnswer) -> Option<UsageCounts> {
    const KEY: &[u8] = b"\"usage\":";
    let piece = answer
        .pieces()
        .filter(|p| p.len() < 16 * 1024)
        .filter(|p| memchr::memmem::rfind(p, KEY).is_some())
        .last()?;
    let at = memchr::memmem::rfind(piece, KEY)? + KEY.len();
    let rest = piece.get(at..)?;
    // An object only (a struct would also take an array).
    if rest.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::Deserializer::from_slice(rest).into_iter().next()?.ok()
}

/// The cost of a successful answer of `form`'s candidate (its model, `n` images, size and
/// quality) from a provider of `kind`, with the answer's token counts when it had them.
fn answer_cost(
    state: &AppState,
    kind: crate::config::ProviderKind,
    form: &EditForm,
    usage: Option<TokenUsage>,
) -> AnswerCost {
    let images = form.n.unwrap_or(1);
    let cost = state.config.pricing.cost(&PriceQuery {
        kind,
        model: &form.model,
        images,
        size: form.size.as_deref(),
        quality: form.quality.as_deref(),
        usage,
    });
    AnswerCost {
        micros: cost.micros,
        images,
        unpriced: cost.unpriced,
    }
}

/// How the upstream side of an attempt ended: the provider's answer (handed to the sink,
/// which may have streamed it downstream) or the failure (told in-band if a stream had
/// begun), with the sink's idle sender (see [`StreamSink::finish`]).
type UpstreamEnd = (Result<(Target, repeat::Answered), GatewayError>, Option<DownSender>);

/// The upstream side of an attempt from the spool, with its key chosen already.
async fn upstream_from_spool(scope: &Scope<'_>, form: &EditForm, target: Target, mut sink: StreamSink) -> UpstreamEnd {
    let result = from_spool(scope, form, target, &mut sink).await;
    upstream_end(result, sink).await
}

/// The upstream side of the streamed upload's attempt, from its exchange's end; `used` gets
/// its key once known.
async fn upstream_streamed(
    scope: &Scope<'_>,
    form: &EditForm,
    end: StreamedEnd<'_>,
    used: &mut Option<usize>,
) -> UpstreamEnd {
    let Some((target, outcome, mut sink)) = end.wait().await else {
        return (
            Err(GatewayError::Internal("the streamed attempt was lost".into())),
            None,
        );
    };
    *used = Some(target.key_index);
    scope
        .state
        .breakers
        .begin(&form.provider, target.key_index, Instant::now());
    let result = match outcome {
        Streamed::Answered(resp) => Ok((target, repeat::Answered::One(resp))),
        Streamed::Failed(e) => Err(e),
        Streamed::NotSent(e) => {
            // The streamed body never reached the provider whole (a pooled connection it had
            // closed): send it again from the spool.
            log::debug!(
                "request {}: streamed attempt not sent ({e}); sending from the spool",
                scope.request_id
            );
            from_spool(scope, form, target, &mut sink).await
        }
    };
    upstream_end(result, sink).await
}

/// Ends the upstream side: a failure is told in-band (a no-op if nothing was sent), and the
/// sink is finished.
async fn upstream_end(result: Result<(Target, repeat::Answered), GatewayError>, mut sink: StreamSink) -> UpstreamEnd {
    if let Err(e) = &result {
        sink.abort(e).await;
    }
    let idle = sink.finish();
    (result, idle)
}

/// Credentials, then the translation and exchange from the spool (`repeat::send`).
async fn from_spool(
    scope: &Scope<'_>,
    form: &EditForm,
    target: Target,
    sink: &mut StreamSink,
) -> Result<(Target, repeat::Answered), GatewayError> {
    let state = scope.state;
    let target = state.credentials.prepare(&state.connector, target).await?;
    let call = repeat::Call {
        state,
        target: &target,
        form,
        spool: scope.spool,
        request_id: scope.request_id,
        start: scope.start,
    };
    let answered = repeat::send(&call, sink).await?;
    Ok((target, answered))
}

/// The end of an attempt whose provider answered: follow-ups (asynchronous providers), then
/// the conversion into the unified answer (or, for a stream request the provider answered
/// whole, the synthesized event stream); with the answer's `Retry-After` and usage. `form` is the
/// candidate's (its provider/model). The n calls of a repeated attempt come followed up,
/// converted and merged already.
async fn convert(
    scope: &Scope<'_>,
    client: &mut Client<'_>,
    form: &EditForm,
    target: &Target,
    answered: repeat::Answered,
    stream_cx: Option<&StreamContext>,
) -> Converted {
    let (unified, retry_after) = match answered {
        repeat::Answered::One(response) => {
            let retry_after = response.retry_after;
            let call = repeat::Call {
                state: scope.state,
                target,
                form,
                spool: scope.spool,
                request_id: scope.request_id,
                start: scope.start,
            };
            // Asynchronous providers: poll and download until the adapter has the answer;
            // the adapter converts it: a success into the unified JSON, an error status
            // (stream request or not) into the provider's error.
            let adapter = adapter_for(target.provider.kind);
            let unified = follow::run(adapter, call.follow_request(form), response, client).await;
            (unified, retry_after)
        }
        repeat::Answered::Merged { result, retry_after } => (result, retry_after),
    };
    let kind = target.provider.kind;
    let admission_usage = scope.state.admission.wants_usage();
    let usage_json = match &unified {
        Ok(answer) if admission_usage || scope.state.config.pricing.wants_usage(kind, &form.model) => {
            usage_value(answer)
        }
        _ => None,
    };
    let usage = usage_json.as_ref().filter(|_| admission_usage).and_then(usage_counts);
    // response_format=url: base64 images stored and answered as URLs (the client's own form
    // says whether it wants them).
    let unified = match unified {
        Ok(answer) => super::rehost::rehost(scope.state, scope.form, scope.url_base, answer).await,
        Err(e) => Err(e),
    };
    let cost = unified.is_ok().then(|| {
        let tokens = usage_json.as_ref().and_then(UsageCounts::tokens);
        answer_cost(scope.state, kind, form, tokens)
    });
    let unified = unified.map(|mut answer| {
        if let Some(cost) = cost.filter(|_| stream_cx.is_none()) {
            answer.insert_members("extra_fields", &format!("\"cost\":{}", Usd(cost.micros)));
        }
        answer
    });
    Converted {
        result: unified.and_then(|unified| reply(unified, stream_cx)),
        retry_after,
        usage,
        cost,
    }
}

/// What [`convert`] made of an answer.
struct Converted {
    /// The reply, or the failure.
    result: Result<Reply, GatewayError>,
    /// The answer's `Retry-After`, for the retry policy.
    retry_after: Option<Duration>,
    /// Its token usage, when the admission wants it.
    usage: Option<Usage>,
    /// Its cost, when it answered.
    cost: Option<AnswerCost>,
}

/// The reply for a unified answer: the JSON, or for a stream request (the provider cannot
/// stream, or answered whole) one `completed` event per image, in the client's framing.
fn reply(unified: UnifiedAnswer, stream_cx: Option<&StreamContext>) -> Result<Reply, GatewayError> {
    match stream_cx {
        Some(cx) => {
            let mut out = Vec::new();
            synthesize_stream(&unified.to_bytes(), cx.clone(), &mut out)?;
            Ok(Reply::Events(Bytes::from(out)))
        }
        None => Ok(Reply::Json(unified)),
    }
}

/// After an attempt's upstream side and downstream writer ended: when a stream was started
/// downstream (`written.sent`), records it in `ctx` and returns the reply that ends the
/// request; `None` when nothing was sent. The status line said 200, but a stream that ended in
/// an `error` event or was aborted (`err`, the attempt's failure, or the failure the stream
/// reported) is accounted with that error's status and code, and one the client left with 499
/// `client_closed`; only a complete stream counts as a 200.
fn streamed_reply(ctx: &mut RequestCtx, err: Option<&GatewayError>, written: &Written) -> Option<Reply> {
    let sent = written.sent?;
    ctx.response_bytes = sent;
    ctx.streamed = true;
    let failure = err
        .map(|e| (e.status(), e.code()))
        .or(written.failure.map(|f| (f.status, f.reason)));
    (ctx.status, ctx.reason) = match (written.client_gone, failure) {
        (true, _) => (
            GatewayError::ClientClosed.status(),
            Some(GatewayError::ClientClosed.code()),
        ),
        (false, Some((status, reason))) => (status, Some(reason)),
        (false, None) => (200, None),
    };
    Some(if written.broken {
        Reply::Aborted
    } else {
        Reply::Streamed
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> UnifiedAnswer {
        UnifiedAnswer::from(Bytes::copy_from_slice(json.as_bytes()))
    }

    #[test]
    fn usage_is_read_from_the_top_level_member() {
        let a = answer(
            r#"{"data":[{"b64_json":"QQ==","usage":{"input_tokens":1}}],"usage":{"input_tokens":10,"output_tokens":20,"total_tokens":30},"extra_fields":{}}"#,
        );
        assert_eq!(
            usage_of(&a),
            Some(Usage {
                input_tokens: 10,
                output_tokens: 20,
                total_tokens: 30
            })
        );
        assert_eq!(usage_of(&answer(r#"{"data":[],"extra_fields":{}}"#)), None);
        assert_eq!(usage_of(&answer(r#"{"usage":null}"#)), None);
        let revised = answer(r#"{"data":[{"revised_prompt":"say \"usage\": {}"}]}"#);
        assert_eq!(usage_of(&revised), None, "a key inside a string is not one");
    }
}
