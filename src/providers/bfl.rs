//! Kind `bfl`: Black Forest Labs' API (`api.bfl.ai`), asynchronous.
//!
//! Submit: `POST {base_url}/{model}` (`flux-kontext-pro`, `flux-kontext-max`,
//! `flux-pro-1.0-fill`, `flux-pro-1.0-expand`, `flux-2-*`, …) with the key in `x-key` and a
//! JSON body: `prompt`, the first image as bare base64 (`input_image`; `image` for fill and
//! expand models; encoded on the fly from the spool), `seed`, `aspect_ratio` (from `size`, the
//! nearest common ratio; Kontext and FLUX.2 only: Fill and Expand keep the input's size and
//! their schemas have no such field), `output_format` (`png`/`jpeg`; `webp` → `png`). Fill models
//! (`*-fill*`) also take `mask`, converted from the unified convention (transparent = edit) to
//! BFL's (white = edit), and `steps` from `num_inference_steps`; expand models take `top`,
//! `bottom`, `left`, `right` (pixels) from same-named extra form fields. One image per job:
//! `n > 1` is served by n jobs ([`super::kernel::polling::FLUX_N_BY_CALLS`], providers.md §8.4: "`n` → loop"), job i
//! with `seed + i`. Dropped: `quality`, `background`, `negative_prompt`.
//!
//! Answer `{"id","polling_url"}` → follow-ups ([`super::kernel::polling`]): `GET polling_url` with
//! `x-key` every `poll_interval_ms` (the URL may be on another `*.bfl.ai` host), until `status`:
//! `Ready` → `result.sample` (a signed URL, e.g. on `delivery-eu1.bfl.ai`) is downloaded into
//! `b64_json`, or returned as `data[].url` for `response_format=url`; `Pending` → poll again;
//! `Content Moderated` / `Request Moderated` → 400 `moderation_blocked`; `Error`, `Failed`,
//! `Task not found` → 502. Error statuses keep BFL's status and `detail` message.

use super::capabilities::{any_model, Capabilities, ModelFamily, Streaming};
use super::kernel::percent::percent_encode_segment;
use super::kernel::polling::{
    self, job_status, Field, FollowContext, FollowState, FollowUp, Job, Stage, FLUX_N_BY_CALLS,
};
use super::kernel::post::json_post;
use super::{BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse};
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::MaskConvention;
use crate::route::Target;
use serde_json::{json, Value};

/// The adapter for kind `bfl`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BflAdapter;

/// Where BFL's polling and delivery URLs live.
pub const BFL_DOMAINS: &[&str] = &[".bfl.ai"];

const FLUX: Capabilities = Capabilities {
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
};

/// Whether `model` is a fill (inpainting) model, which takes a mask.
pub fn is_fill(model: &str) -> bool {
    model.contains("-fill")
}

fn is_expand(model: &str) -> bool {
    model.contains("-expand")
}

/// Whether the model's endpoint takes `aspect_ratio` (Kontext and FLUX.2 do; Fill and Expand,
/// whose output keeps the input's size, do not).
fn takes_aspect_ratio(model: &str) -> bool {
    !is_fill(model) && !is_expand(model)
}

static FAMILIES: [ModelFamily; 3] = [
    ModelFamily {
        name: "FLUX.1 Fill (flux-pro-1.0-fill*)",
        matches: is_fill,
        capabilities: Capabilities {
            mask: true,
            // A fill model inpaints the mask's area.
            edit_types: &[EditType::Inpainting],
            sizes: "ignored (the output keeps the input's size)",
            extra_fields: "seed, output_format, num_inference_steps → steps",
            ..FLUX
        },
    },
    ModelFamily {
        name: "FLUX.1 Expand (flux-pro-1.0-expand*)",
        matches: is_expand,
        capabilities: Capabilities {
            sizes: "ignored (the output is the input plus the top, bottom, left, right borders)",
            extra_fields: "seed, output_format; top, bottom, left, right",
            ..FLUX
        },
    },
    ModelFamily {
        name: "FLUX Kontext, FLUX.2 (flux-kontext-*, flux-2-*, …)",
        matches: any_model,
        capabilities: FLUX,
    },
];

/// The JSON fields of a submit, in order; `mask` is the converted mask's PNG (fill models).
fn build(
    form: &EditForm,
    mask: Option<&[u8]>,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let provider = target.provider.name.as_str();
    let image_key = if is_fill(&target.model) || is_expand(&target.model) {
        "image"
    } else {
        "input_image"
    };
    let mut fields = Vec::new();
    if let Some(prompt) = &form.prompt {
        fields.push(("prompt", Field::Json(json!(prompt))));
    }
    fields.push((image_key, polling::first_image(form, provider, false)?));
    if let Some(mask) = mask {
        fields.push((
            "mask",
            Field::Json(json!(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                mask
            ))),
        ));
    }
    if is_fill(&target.model) {
        if let Some(steps) = form.num_inference_steps {
            fields.push(("steps", Field::Json(json!(steps))));
        }
    }
    if is_expand(&target.model) {
        for side in ["top", "bottom", "left", "right"] {
            if let Some(px) = form
                .extra_text
                .iter()
                .find(|(k, _)| k == side)
                .and_then(|(_, v)| v.trim().parse::<u32>().ok())
            {
                fields.push((side, Field::Json(json!(px))));
            }
        }
    }
    if takes_aspect_ratio(&target.model) {
        fields.extend(polling::common_fields(form, provider, "jpeg")?);
    } else {
        // Fill and Expand keep the input's size (Expand adds its borders): their published
        // schemas have no aspect_ratio, and `size` is ignored.
        fields.extend(polling::common_fields_keeping_size(form, "jpeg"));
    }
    let path = format!(
        "{}/{}",
        target.provider.base_url.path,
        percent_encode_segment(&target.model)
    );
    let key = (http::HeaderName::from_static("x-key"), target.credential()?.to_string());
    Ok(json_post(
        path,
        key,
        "application/json",
        request_id,
        polling::json_body(&fields)?,
    ))
}

impl ProviderAdapter for BflAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// A form with a mask needs it converted (by the gateway, in `scope.mask`).
    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        if scope.form.mask.is_some() && scope.mask.is_none() {
            return Err(GatewayError::Internal("a BFL mask is converted from the spool".into()));
        }
        build(
            scope.form,
            scope.mask.map(|m| m.png.as_slice()),
            scope.target,
            scope.request_id,
        )
    }

    /// The mask as FLUX Fill takes it: opaque greyscale, white = edit.
    fn mask_convention(&self, form: &EditForm, _model: &str) -> Option<MaskConvention> {
        form.mask.is_some().then_some(MaskConvention::GrayWhiteEdit)
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
            let url = body
                .get("polling_url")
                .and_then(Value::as_str)
                .ok_or_else(|| polling::protocol(cx, "the submit answer has no polling_url"))?;
            state.poll_url = Some(url.to_string());
            state.stage = Stage::Polling;
            return poll(state, cx);
        }
        match job_status(&body, cx.target.provider.name.as_str())? {
            Job::Pending => poll(state, cx),
            Job::Ready(samples) => polling::results(samples, state, cx),
        }
    }

    fn follow_domains(&self) -> &'static [&'static str] {
        BFL_DOMAINS
    }
}

/// The next `GET polling_url`, after the poll interval.
fn poll(state: &mut FollowState, cx: &FollowContext<'_>) -> Result<FollowUp, GatewayError> {
    let url = state
        .poll_url
        .as_deref()
        .ok_or_else(|| polling::protocol(cx, "no polling_url"))?;
    state.polls += 1;
    let key = (
        http::HeaderName::from_static("x-key"),
        cx.target.credential()?.to_string(),
    );
    Ok(polling::get(
        url,
        vec![key, (http::header::ACCEPT, "application/json".to_string())],
        cx.poll_interval,
    ))
}

#[cfg(test)]
mod tests;
