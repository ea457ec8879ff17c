//! The async jobs API (Bifrost's `/v1/async/images/edits`, `../shared/spec/bifrost-async-images-edits.txt`)
//! and the run of one job.
//!
//! | route | answer |
//! |---|---|
//! | `POST …/async/images/edits` ([`submit`]) | 202 `{id, status: "pending", created_at}` once the upload and the record are stored |
//! | `GET …/async/images/edits/{id}` ([`poll`]) | 202 while pending or processing; 200 when completed (`result`), failed (`status_code`, `error`) or cancelled |
//! | `DELETE …/async/images/edits/{id}` ([`cancel`]) | 200 with the cancelled job; 409 once it has finished |
//!
//! A submission goes through the same auth and parse steps as a synchronous edit (every
//! validation, key and capability error is answered then, never turned into a failed job),
//! but nothing goes upstream: its upload (the spool's bytes) is stored in `objects` and its
//! validated form in the job's record, both before the 202. A worker ([`crate::server::workers`])
//! claims the job later, possibly in another replica, and [`run`]s it: the upload back into a
//! spool, then the same candidate loop (fallbacks, retries, every provider kind) as a
//! synchronous request, with nobody to stream to ([`Client::Detached`]).
//!
//! A job belongs to its submitter's virtual key (the key itself or a JWT naming it): any other
//! caller gets the same 404 as for an unknown or expired id; an admin token reads every job. Its result stays readable for its TTL after it ends
//! (`x-bf-async-job-result-ttl`, else `jobs.result_ttl_seconds`).

use super::answer::Client;
use super::attempt::{Scope, Start};
use super::{check_head, configured_fallbacks, error_json, fallback, upload, Reply, RequestCtx};
use crate::auth::Identity;
use crate::config::JobsSettings;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::metrics::{JobEvent, StoredKind};
use crate::providers::stream::Framing;
use crate::providers::UnifiedAnswer;
use crate::server::AppState;
use crate::spool::Spool;
use crate::state::{now_ms, JobRecord, JobStatus, NewJob, ObjectKey, Outcome, StateError};
use bytes::Bytes;
use pingora::proxy::Session;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// The header that sets how long a job's result stays readable after it ends (seconds).
pub const RESULT_TTL_HEADER: &str = "x-bf-async-job-result-ttl";

/// Answers larger than this are stored as an object of their own; smaller ones (URLs, small
/// images) stay in the job's record.
const INLINE_RESULT_MAX: usize = 64 * 1024;

impl From<StateError> for GatewayError {
    fn from(e: StateError) -> Self {
        GatewayError::StoreUnavailable(e.to_string())
    }
}

/// What a job's record keeps of its request (JSON): what its run needs.
#[derive(Debug, Serialize, Deserialize)]
struct JobRequest {
    /// The validated form; its file parts are ranges of the upload.
    form: EditForm,
    /// The object holding the upload (the spool's bytes, in order).
    upload: String,
    /// The submission's request id (the run's log lines and error bodies carry it).
    request_id: String,
    /// The origin of gateway URLs for `response_format=url` (`rehost::url_base`), from the
    /// submission.
    #[serde(default)]
    url_base: Option<String>,
    /// The submitting token's own narrowing (its `models` claim), kept on top of the key's
    /// permissions when the job runs, so a narrowed token's job never widens (fallbacks
    /// included).
    #[serde(default)]
    token_models: Option<Vec<String>>,
}

/// The owner a job is bound to: the caller's virtual key (however presented: the key itself
/// or a JWT naming it), else `admin` for an admin token, else `anonymous`.
fn owner(identity: &Identity) -> String {
    match &identity.key_id {
        Some(id) => format!("vk:{id}"),
        None if identity.admin => "admin".to_string(),
        None => "anonymous".to_string(),
    }
}

/// The identity a job of `owner` runs as: its key as configured now (gone, disabled or
/// expired: 401); an admin token's job as admin.
fn identity_of(state: &AppState, owner: &str) -> Result<Identity, GatewayError> {
    match owner.strip_prefix("vk:") {
        Some(id) => state.keys.identity_of(id, now_ms() / 1000),
        None if owner == "admin" => Ok(Identity::admin()),
        None if state.config.auth.allow_anonymous => Ok(Identity::anonymous()),
        None => Err(GatewayError::VirtualKeyRequired),
    }
}

/// How long a job's result stays readable, from the submission's header `value`: whole
/// seconds, at most `jobs.max_result_ttl_seconds`; absent, zero, negative or not a number
/// means `jobs.result_ttl_seconds` (as Bifrost does).
pub(super) fn result_ttl(value: Option<&[u8]>, jobs: &JobsSettings) -> Duration {
    let seconds = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0);
    match seconds {
        Some(s) => Duration::from_secs(s).min(jobs.max_result_ttl),
        None => jobs.result_ttl,
    }
}

/// `POST …/async/images/edits`: auth and parse as a synchronous edit, then the upload and the
/// record are stored and the 202's body returned. Stream requests are refused (400).
pub(super) async fn submit(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    framing: Framing,
) -> Result<UnifiedAnswer, GatewayError> {
    let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
    let accepted = async {
        // The request-level limits are the submission's: the job's run is charged its cost
        // and images, not another request.
        let admitted = super::attempt::AdmittedRequest::ask(state, &ctx.request_id, &identity).await?;
        let accepted = accept(state, session, ctx, &identity, framing).await;
        // The submission is handed back before its answer (or error) goes out.
        admitted.finish().await;
        accepted
    }
    .await;
    // The key id goes to the access record (moved: no copy).
    ctx.virtual_key = identity.key_id;
    accepted
}

/// A submission once admitted: the upload stored, then the job's record (see [`submit`]).
async fn accept(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &crate::auth::Identity,
    framing: Framing,
) -> Result<UnifiedAnswer, GatewayError> {
    let ttl = result_ttl(
        session
            .req_header()
            .headers
            .get(RESULT_TTL_HEADER)
            .map(|v| v.as_bytes()),
        &state.config.jobs,
    );
    let request_id = ctx.request_id.clone();
    let mut spool = Spool::for_request(&state.config.spool);
    let form = if super::json_edit::is_json(session) {
        super::json_edit::check_head(state, session).await?;
        super::json_edit::read_form(state, session, ctx, identity, (None, &mut spool)).await?
    } else {
        let head = check_head(state, session).await?;
        let upload = upload::Upload {
            state,
            identity,
            request_id: &request_id,
            framing,
            boundary: &head.boundary,
            declared_len: head.declared_len,
            store_only: true,
            preset_model: None,
        };
        let uploaded = upload::read(&upload, session, ctx, &mut spool).await?;
        uploaded.form
    };
    ctx.provider = Some(form.provider.clone());
    ctx.model = Some(form.model.clone());
    if form.stream {
        return Err(GatewayError::invalid(
            "stream",
            "stream is not supported for async image edits",
        ));
    }
    // The upload first: a record is never there without it.
    let key = ObjectKey::new(&format!("uploads/{}", crate::state::new_id()?))?;
    let stored = state.store.objects.put_spool(&key, &spool).await?;
    state.metrics.jobs.stored(StoredKind::Upload, stored);
    let request = JobRequest {
        url_base: super::rehost::url_base(state, session, &form),
        token_models: identity.token_models.clone(),
        form,
        upload: key.as_str().to_string(),
        request_id: request_id.clone(),
    };
    let request = serde_json::to_string(&request).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let job = NewJob {
        owner: owner(identity),
        request,
        objects: vec![key.as_str().to_string()],
        result_ttl: ttl,
    };
    let record = match state.store.jobs.create(job, now_ms()).await {
        Ok(record) => record,
        Err(e) => {
            let _ = state.store.objects.delete(&key).await;
            return Err(e.into());
        }
    };
    state.store.wake.notify_one();
    state.metrics.jobs.event(JobEvent::Submitted);
    log::info!(
        "job {} (request {request_id}): accepted, {stored} bytes stored, result ttl {} s",
        record.id,
        ttl.as_secs()
    );
    let body = serde_json::json!({
        "id": record.id,
        "status": "pending",
        "created_at": rfc3339(record.created_at),
    });
    Ok(UnifiedAnswer::from(serde_json::to_vec(&body).unwrap_or_default()))
}

/// A job id as the gateway makes them (22 base64url characters); anything else is unknown.
fn plausible_id(id: &str) -> bool {
    id.len() == 22 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The caller's job `id`, if it has one by that id that has not expired.
async fn find(state: &AppState, session: &Session, id: &str) -> Result<JobRecord, GatewayError> {
    let identity = crate::server::jwks::authenticate(state, &session.req_header().headers).await?;
    if !plausible_id(id) {
        return Err(GatewayError::JobNotFound);
    }
    let jobs = &state.store.jobs;
    let job = if identity.admin {
        // An admin token reads (and cancels) every job.
        jobs.get_any_owner(id, now_ms()).await?
    } else {
        jobs.get(id, &owner(&identity), now_ms()).await?
    };
    job.ok_or(GatewayError::JobNotFound)
}

/// `GET …/async/images/edits/{id}`: the job as Bifrost shows it, with its status code (202
/// until it ends, then 200).
pub(super) async fn poll(state: &AppState, session: &Session, id: &str) -> Result<(u16, UnifiedAnswer), GatewayError> {
    let job = find(state, session, id).await?;
    let status = if job.status.is_final() { 200 } else { 202 };
    Ok((status, view(state, &job).await?))
}

/// `DELETE …/async/images/edits/{id}`: cancels the caller's pending or running job (a worker
/// running it stops at its next lease renewal); 409 when it has ended already.
pub(super) async fn cancel(
    state: &AppState,
    session: &Session,
    id: &str,
) -> Result<(u16, UnifiedAnswer), GatewayError> {
    let job = find(state, session, id).await?;
    if job.status.is_final() {
        return Err(GatewayError::JobFinished {
            status: job.status.as_str(),
        });
    }
    let now = now_ms();
    if !state.store.jobs.cancel(&job.id, &job.owner, now).await? {
        // It ended between the read and the cancel.
        let ended = state.store.jobs.get(&job.id, &job.owner, now).await?;
        let status = ended.map_or(JobStatus::Completed, |j| j.status);
        return Err(GatewayError::JobFinished {
            status: status.as_str(),
        });
    }
    state.metrics.jobs.event(JobEvent::Cancelled);
    log::info!("job {}: cancelled by its owner", job.id);
    let cancelled = state
        .store
        .jobs
        .get(&job.id, &job.owner, now)
        .await?
        .ok_or(GatewayError::JobNotFound)?;
    Ok((200, view(state, &cancelled).await?))
}

/// A job as the API shows it (`AsyncJobResponse`), less `result` and `error`: those are the
/// stored JSON, appended as they are ([`view`]).
#[derive(Serialize)]
struct JobView<'a> {
    id: &'a str,
    status: &'static str,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<u16>,
}

/// The body showing `job`; a result stored as an object is read back. The stored `result` and
/// `error` are JSON the gateway wrote: they are copied into the body once, not parsed again.
async fn view(state: &AppState, job: &JobRecord) -> Result<UnifiedAnswer, GatewayError> {
    let result: Option<Bytes> = match &job.result {
        Some(inline) if inline.starts_with('{') => Some(Bytes::copy_from_slice(inline.as_bytes())),
        Some(key) => Some(
            state
                .store
                .objects
                .get(&ObjectKey::new(key)?)
                .await?
                .ok_or_else(|| GatewayError::Internal(format!("job {}: its result object is missing", job.id)))?,
        ),
        None => None,
    };
    let head = JobView {
        id: &job.id,
        status: job.status.as_str(),
        created_at: rfc3339(job.created_at),
        completed_at: job.completed_at.map(rfc3339),
        expires_at: job.expires_at.map(rfc3339),
        status_code: job.status_code,
    };
    let mut out = serde_json::to_vec(&head).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let stored = [
        ("result", result.as_deref()),
        ("error", job.error.as_deref().map(str::as_bytes)),
    ];
    out.reserve(stored.iter().map(|(_, v)| v.map_or(0, <[u8]>::len) + 12).sum());
    // Reopen the object (`{…}` without its `}`) and append the stored members.
    out.pop();
    for (name, value) in stored {
        if let Some(value) = value {
            out.extend_from_slice(format!(",\"{name}\":").as_bytes());
            out.extend_from_slice(value);
        }
    }
    out.push(b'}');
    Ok(UnifiedAnswer::from(out))
}

/// Unix milliseconds as RFC 3339 (UTC, whole seconds), as Bifrost writes times.
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How a run ended: the outcome to record, and whether it is an answer.
pub struct Ran {
    /// What the store records.
    pub outcome: Outcome,
    /// The submission's request id (for log lines).
    pub request_id: String,
}

/// Runs `job` (claimed by a worker of this process): its upload back into a spool, its form
/// routed by the config as it is now, then the candidate loop as for a synchronous request.
/// A failure of the run itself (the key gone, the upload missing, the store down) fails the
/// job like a provider error would.
pub async fn run(state: &AppState, job: &JobRecord) -> Ran {
    let request: JobRequest = match serde_json::from_str(&job.request) {
        Ok(r) => r,
        Err(e) => {
            let e = GatewayError::Internal(format!("job {}: unreadable request: {e}", job.id));
            return Ran {
                outcome: failed(&e, &mut RequestCtx::new(String::new())),
                request_id: String::new(),
            };
        }
    };
    let mut ctx = RequestCtx::new(request.request_id.clone());
    ctx.provider = Some(request.form.provider.clone());
    ctx.model = Some(request.form.model.clone());
    let outcome = match answer(state, job, &request, &mut ctx).await {
        Ok(answer) => match stored_result(state, job, answer).await {
            Ok(outcome) => outcome,
            Err(e) => failed(&e, &mut ctx),
        },
        Err(e) => failed(&e, &mut ctx),
    };
    Ran {
        outcome,
        request_id: request.request_id,
    }
}

/// The run's answer, or its failure (with the fallbacks' failures in `ctx`).
async fn answer(
    state: &AppState,
    job: &JobRecord,
    request: &JobRequest,
    ctx: &mut RequestCtx,
) -> Result<UnifiedAnswer, GatewayError> {
    let mut identity = identity_of(state, &job.owner)?;
    identity.token_models.clone_from(&request.token_models);
    let mut form = request.form.clone();
    let upload = request.upload.as_str();
    let mut spool = Spool::for_request(&state.config.spool);
    if !state
        .store
        .objects
        .get_into(&ObjectKey::new(upload)?, &mut spool)
        .await?
    {
        return Err(GatewayError::Internal(format!("job {}: its upload is missing", job.id)));
    }
    configured_fallbacks(state, &mut form);
    let start = Instant::now();
    let scope = Scope {
        state,
        identity: &identity,
        form: &form,
        spool: &spool,
        framing: Framing::Bifrost,
        request_id: &ctx.request_id.clone(),
        start,
        upstream_start: start,
        url_base: request.url_base.as_deref(),
    };
    match fallback::run(&scope, &mut Client::Detached, ctx, Start::from_spool()).await? {
        Reply::Json(answer) => {
            if let (Some(cost), Some(provider), Some(model)) = (&ctx.cost, &ctx.provider, &ctx.model) {
                state.metrics.job_answered(provider, model, cost);
            }
            Ok(answer)
        }
        _ => Err(GatewayError::Internal("a job's answer was a stream".into())),
    }
}

/// The completed outcome of `answer`: kept in the record when small, else stored as the
/// object `results/{job id}.json`, which the record names.
async fn stored_result(state: &AppState, job: &JobRecord, answer: UnifiedAnswer) -> Result<Outcome, GatewayError> {
    let bytes: Bytes = answer.to_bytes();
    if bytes.len() <= INLINE_RESULT_MAX {
        let result = String::from_utf8(bytes.to_vec()).map_err(|e| GatewayError::Internal(e.to_string()))?;
        return Ok(Outcome::Completed {
            result,
            objects: Vec::new(),
        });
    }
    let key = ObjectKey::new(&format!("results/{}.json", job.id))?;
    let len = bytes.len() as u64;
    state.store.objects.put(&key, bytes).await?;
    state.metrics.jobs.stored(StoredKind::Result, len);
    Ok(Outcome::Completed {
        result: key.as_str().to_string(),
        objects: vec![key.as_str().to_string()],
    })
}

/// The failed outcome of `e`: its status, and its body as a synchronous request would get it.
fn failed(e: &GatewayError, ctx: &mut RequestCtx) -> Outcome {
    if let GatewayError::Internal(detail) | GatewayError::StoreUnavailable(detail) = e {
        log::error!("request {}: {detail}", ctx.request_id);
    }
    let body = error_json(e, ctx);
    Outcome::Failed {
        status_code: e.status(),
        error: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_ttl_header_is_whole_seconds_within_the_cap() {
        let jobs = JobsSettings::default();
        let ttl = |v: Option<&str>| result_ttl(v.map(str::as_bytes), &jobs);
        assert_eq!(ttl(None), Duration::from_secs(3600));
        assert_eq!(ttl(Some("60")), Duration::from_secs(60));
        assert_eq!(ttl(Some(" 60 ")), Duration::from_secs(60));
        for default in ["0", "-5", "1.5", "soon", ""] {
            assert_eq!(ttl(Some(default)), Duration::from_secs(3600), "{default}");
        }
        assert_eq!(ttl(Some("99999999999")), jobs.max_result_ttl);
    }

    #[test]
    fn ids_that_the_gateway_cannot_have_made_are_unknown() {
        assert!(plausible_id(&crate::state::new_id().unwrap()));
        for bad in [
            "",
            "short",
            "../../../../etc/passwd",
            "AAAAAAAAAAAAAAAAAAAAA=",
            "AAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(!plausible_id(bad), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(1_775_383_200_000), "2026-04-05T10:00:00Z");
    }

    #[test]
    fn a_job_request_keeps_the_token_narrowing_and_reads_older_records() {
        let request = JobRequest {
            form: EditForm::default(),
            upload: "uploads/x".into(),
            request_id: "r".into(),
            url_base: None,
            token_models: Some(vec!["openai/dall-e-2".into()]),
        };
        let text = serde_json::to_string(&request).unwrap();
        let back: JobRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.token_models, request.token_models);
        // A record written before the field existed runs unnarrowed (as it was submitted).
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("token_models");
        let back: JobRequest = serde_json::from_value(old).unwrap();
        assert_eq!(back.token_models, None);
    }

    #[test]
    fn owners_are_the_key_ids() {
        let id = |key: Option<&str>| Identity {
            key_id: key.map(str::to_string),
            ..Identity::default()
        };
        assert_eq!(owner(&id(Some("team-a"))), "vk:team-a");
        assert_eq!(owner(&id(None)), "anonymous");
        assert_eq!(owner(&Identity::admin()), "admin");
    }
}
