//! Kind `fireworks`: FLUX Kontext on Fireworks (`api.fireworks.ai/inference/v1`), asynchronous.
//!
//! Submit: `POST {base_url}/workflows/accounts/fireworks/models/{model}` for a short model
//! name (`flux-kontext-pro`, `flux-kontext-max`); a model given in full
//! (`accounts/{account}/models/{name}`) is used as is after `workflows/`. Bearer key; JSON body
//! as BFL Kontext's: `prompt`, `input_image` as a `data:` URL (encoded on the fly), `seed`,
//! `aspect_ratio` from `size`, `output_format` (`png`/`jpeg`). No mask. One image per job:
//! `n > 1` is served by n jobs, job i with `seed + i`, as for BFL
//! ([`super::kernel::polling::FLUX_N_BY_CALLS`]; providers.md §9.3: mapping as BFL Kontext).
//!
//! Answer `{"request_id"}` → follow-ups ([`super::kernel::polling`]): `POST {model path}/get_result`
//! with `{"id"}` every `poll_interval_ms` until `status` is `Ready` (statuses as BFL's:
//! [`super::kernel::polling::job_status`]); `result.sample` is a URL (downloaded, or returned for
//! `response_format=url`) or raw base64 (used as is). Sample URLs may be on
//! `*.fireworks.ai`, on Fireworks' storage hosts (`*.fireworksusercontent.com`) or on BFL's
//! delivery hosts (`*.bfl.ai`, the model being BFL's); others are refused (SSRF guard).
//! Error statuses keep the status and the message (`detail`, `error` or `message`).

use super::capabilities::{any_model, Capabilities, ModelFamily, Streaming};
use super::kernel::percent::percent_encode_segment;
use super::kernel::polling::{
    self, job_status, Field, FollowContext, FollowState, FollowUp, Job, Stage, FLUX_N_BY_CALLS,
};
use super::kernel::post::{auth_header, json_post};
use super::model_id::plain;
use super::{
    BodySegment, BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::route::Target;
use bytes::Bytes;
use serde_json::{json, Value};

/// The adapter for kind `fireworks`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FireworksAdapter;

/// Hosts Fireworks' result samples may come from (see the module docs).
pub const FIREWORKS_DOMAINS: &[&str] = &[".fireworks.ai", ".fireworksusercontent.com", ".bfl.ai"];

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "FLUX Kontext (flux-kontext-pro, flux-kontext-max)",
    matches: any_model,
    capabilities: Capabilities {
        mask: false,
        max_n: 1,
        n_by_calls: Some(FLUX_N_BY_CALLS),
        max_images: 1,
        max_image_bytes: 20 * 1024 * 1024,
        edit_types: &[],
        url_output: true,
        sizes: "`WxH` → nearest `aspect_ratio`, `auto`",
        streaming: Streaming::Synthesized,
        extra_fields: "seed, output_format",
        max_prompt_chars: None,
        input_formats: &[],
        allowed_sizes: &[],
    },
}];

/// The workflow path of the target's model.
fn model_path(target: &Target) -> String {
    let model = if target.model.starts_with("accounts/") {
        target
            .model
            .split('/')
            .map(percent_encode_segment)
            .collect::<Vec<_>>()
            .join("/")
    } else {
        format!("accounts/fireworks/models/{}", percent_encode_segment(&target.model))
    };
    format!("{}/workflows/{model}", target.provider.base_url.path)
}

impl ProviderAdapter for FireworksAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// A short name, or `accounts/{account}/models/{name}`.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        let segments: Vec<&str> = model.split('/').collect();
        let ok = match segments.as_slice() {
            [name] => plain(name, b""),
            ["accounts", account, "models", name] => plain(account, b"") && plain(name, b""),
            _ => false,
        };
        ok.then_some(())
            .ok_or("expected a model name or accounts/<account>/models/<name>")
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        let provider = target.provider.name.as_str();
        let mut fields = Vec::new();
        if let Some(prompt) = &form.prompt {
            fields.push(("prompt", Field::Json(json!(prompt))));
        }
        fields.push(("input_image", polling::first_image(form, provider, true)?));
        fields.extend(polling::common_fields(form, provider, "jpeg")?);
        Ok(json_post(
            model_path(target),
            auth_header(target, "x-api-key")?,
            "application/json",
            request_id,
            polling::json_body(&fields)?,
        ))
    }

    /// Reached for error statuses only (successes are followed up).
    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        polling::unfollowed_answer(resp, cx)
    }

    fn follow_up(
        &self,
        resp: &UpstreamResponse,
        state: &mut FollowState,
        cx: &FollowContext<'_>,
    ) -> Result<FollowUp, GatewayError> {
        let body = match polling::follow_json(resp, state, cx)? {
            polling::Answer::Decided(next) => return Ok(next),
            polling::Answer::Json(v) => v,
        };
        if state.stage == Stage::Submitted {
            let id = body
                .get("request_id")
                .or_else(|| body.get("id"))
                .and_then(Value::as_str)
                .ok_or_else(|| polling::protocol(cx, "the submit answer has no request_id"))?;
            state.poll_url = Some(id.to_string());
            state.stage = Stage::Polling;
            return poll(state, cx);
        }
        match job_status(&body, cx.target.provider.name.as_str())? {
            Job::Pending => poll(state, cx),
            Job::Ready(samples) => polling::results(samples, state, cx),
        }
    }

    fn follow_domains(&self) -> &'static [&'static str] {
        FIREWORKS_DOMAINS
    }
}

/// The next `POST …/get_result` `{"id"}`, after the poll interval (`poll_url` holds the id).
fn poll(state: &mut FollowState, cx: &FollowContext<'_>) -> Result<FollowUp, GatewayError> {
    let id = state
        .poll_url
        .as_deref()
        .ok_or_else(|| polling::protocol(cx, "no request id"))?;
    state.polls += 1;
    let body = serde_json::to_vec(&json!({ "id": id })).map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(FollowUp::Request {
        request: json_post(
            format!("{}/get_result", model_path(cx.target)),
            auth_header(cx.target, "x-api-key")?,
            "application/json",
            cx.request_id,
            vec![BodySegment::Bytes(Bytes::from(body))],
        ),
        to: None,
        after: cx.poll_interval,
    })
}

#[cfg(test)]
mod tests;
