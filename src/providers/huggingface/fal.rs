//! The router provider `fal-ai`: fal's queue API through the Hugging Face router
//! (providers.md §11.2; the wire of huggingface_hub's `FalAIQueueTask` with an `hf_` token).
//!
//! Submit: `POST {base}/fal-ai/{endpoint}?_subdomain=queue`, where `{endpoint}` is fal's
//! endpoint id, which is the model id itself (`fal-ai/flux-kontext/dev`, each segment
//! percent-encoded), with `Authorization: Bearer` (the HF token), `Accept: application/json` and
//! JSON `{"prompt", "image_url" | "image_urls", "mask_url", "num_images", "image_size":
//! {"width","height"}, "seed", "num_inference_steps", "output_format", "sync_mode"}` (only the
//! fields the form carries): images and mask as `data:` URLs encoded on the fly from the spool;
//! `image_urls` (every image) for the multi-image endpoints whose id ends in `/edit`
//! (`fal-ai/flux-2/edit`, `fal-ai/nano-banana/edit`), `image_url` (the first) otherwise;
//! `mask_url` (white = edit) for the fill and inpainting endpoints; `n` → `num_images`; `size`
//! `WxH` → `image_size` (`auto` dropped); `output_format` `png`/`jpeg` (`webp` → `png`);
//! `response_format=b64_json` → `sync_mode: true` (fal then answers `data:` URLs).
//!
//! Answer `{"request_id","status","response_url"}` → follow-ups on the router, never on fal's
//! own queue host (which the HF token does not open): the request's path is `response_url`'s
//! (`/fal-ai/flux-kontext/requests/{id}`: fal drops an endpoint's sub-path), or
//! `{first two segments of the endpoint}/requests/{id}` without one; `GET {base}/fal-ai{path}/
//! status?_subdomain=queue` every `poll_interval_ms` while `IN_QUEUE` / `IN_PROGRESS`; at
//! `COMPLETED`, `GET {base}/fal-ai{path}?_subdomain=queue` for the result `{"images":[{"url"}…]}`,
//! whose URLs are downloaded (without the token) or returned for `response_format=url`, and whose
//! `data:` URLs are used as they are. A `COMPLETED` status with an `error`, or any other status,
//! is a failed job (502); a result whose every image is flagged `has_nsfw_concepts` is a 400
//! `moderation_blocked`; an error status at any step (the result's 422 for a job fal refused)
//! keeps the status and fal's `detail`. Result URLs may be on the router's host or on fal's
//! delivery hosts ([`FAL_DOMAINS`]) only (SSRF guard).

use super::{model_path, ROUTER_MAX_BODY};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{self, ConvertedMask};
use crate::providers::kernel::errors::no_image_error;
use crate::providers::kernel::polling::{self, Field, FollowContext, FollowState, FollowUp, Stage};
use crate::providers::kernel::post::{auth_header, json_post};
use crate::providers::kernel::size::size_wxh;
use crate::providers::model_id::plain;
use crate::providers::{UpstreamRequest, UpstreamResponse};
use crate::route::Target;
use serde_json::{json, Value};
use std::time::Duration;

/// The model-id prefix that names the router provider `fal-ai`; fal's own endpoint ids start
/// with it too, so the model id is the endpoint id.
pub const PREFIX: &str = "fal-ai/";

/// Where fal delivers result images (`fal.media`, `v3.fal.media`, …) besides the router's host.
pub const FAL_DOMAINS: &[&str] = &["fal.media", ".fal.media"];

/// The query every router request to fal's queue carries.
const QUEUE: &str = "?_subdomain=queue";

/// Whether `model` names a fal endpoint through the router.
pub fn is_fal(model: &str) -> bool {
    model.starts_with(PREFIX)
}

/// Whether the fal endpoint takes several images (`image_urls`): an id ending in `/edit`.
pub fn takes_image_list(model: &str) -> bool {
    is_fal(model) && model.ends_with("/edit")
}

/// Whether the fal endpoint takes a mask (`mask_url`): a fill or inpainting endpoint.
pub fn takes_mask(model: &str) -> bool {
    is_fal(model) && (model.contains("fill") || model.contains("inpaint"))
}

/// `fal-ai/` and one to five more segments of `A-Za-z0-9._-`.
pub fn model_id_shape(model: &str) -> Result<(), &'static str> {
    let segments: Vec<&str> = model.split('/').collect();
    (segments.len() >= 2 && segments.len() <= 6 && segments.iter().all(|s| plain(s, b"")))
        .then_some(())
        .ok_or("expected fal-ai/<endpoint>[/<sub-path>…] of letters, digits, '.', '_', '-'")
}

/// The submit request of an edit of `form` for `target` (a fal endpoint), with the converted
/// `mask` for the endpoints that take one.
pub fn build(
    form: &EditForm,
    mask: Option<&ConvertedMask>,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let provider = target.provider.name.as_str();
    let mut fields = Vec::new();
    if let Some(prompt) = &form.prompt {
        fields.push(("prompt", Field::Json(json!(prompt))));
    }
    let first = polling::first_image(form, provider, true)?;
    if takes_image_list(&target.model) {
        let images = form
            .images
            .iter()
            .map(|image| Field::Image {
                range: image.range,
                data_url: Some(image.kind.map_or("image/png", imaging::ImageKind::mime)),
            })
            .collect();
        fields.push(("image_urls", Field::Images(images)));
    } else {
        fields.push(("image_url", first));
    }
    if let Some(mask) = mask {
        let data_url = format!(
            "data:image/png;base64,{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &mask.png)
        );
        fields.push(("mask_url", Field::Json(json!(data_url))));
    }
    if let Some(n) = form.n {
        fields.push(("num_images", Field::Json(json!(n))));
    }
    if let Some((width, height)) = size_wxh(form.size.as_deref()) {
        fields.push(("image_size", Field::Json(json!({"width": width, "height": height}))));
    }
    fields.extend(polling::common_fields_keeping_size(form, "jpeg"));
    if let Some(steps) = form.num_inference_steps {
        fields.push(("num_inference_steps", Field::Json(json!(steps))));
    }
    if form.response_format.as_deref() == Some("b64_json") {
        fields.push(("sync_mode", Field::Json(json!(true))));
    }
    let req = json_post(
        format!(
            "{}/fal-ai/{}{QUEUE}",
            target.provider.base_url.path,
            model_path(&target.model)
        ),
        auth_header(target, "authorization")?,
        "application/json",
        request_id,
        polling::json_body(&fields)?,
    );
    if req.content_length() > ROUTER_MAX_BODY {
        return Err(GatewayError::PayloadTooLarge {
            param: None,
            what: "the Hugging Face router request body (images as data URLs plus parameters)".into(),
            limit: ROUTER_MAX_BODY,
        });
    }
    Ok(req)
}

/// What happens after each answer of fal's queue (see the module docs).
pub fn follow_up(
    resp: &UpstreamResponse,
    state: &mut FollowState,
    cx: &FollowContext<'_>,
) -> Result<FollowUp, GatewayError> {
    let body = match polling::follow_json(resp, state, cx)? {
        polling::Answer::Decided(next) => return Ok(next),
        polling::Answer::Json(v) => v,
    };
    match state.stage {
        Stage::Submitted => {
            let path = request_path(&body, cx)?;
            state.poll_url = Some(format!("{}/fal-ai{path}", cx.target.provider.base_url.path));
            state.stage = Stage::Polling;
            status_poll(state, cx, cx.poll_interval)
        }
        Stage::Fetching => result(&body, state, cx),
        Stage::Polling | Stage::Downloading => {
            let provider = cx.target.provider.name.as_str();
            match body.get("status").and_then(Value::as_str).unwrap_or_default() {
                "IN_QUEUE" | "IN_PROGRESS" => status_poll(state, cx, cx.poll_interval),
                "COMPLETED" => match body.get("error").filter(|e| !e.is_null()) {
                    Some(error) => Err(polling::job_failed(
                        provider,
                        &error.as_str().map_or_else(|| error.to_string(), str::to_string),
                    )),
                    None => {
                        state.stage = Stage::Fetching;
                        router_get(state, cx, "", Duration::ZERO)
                    }
                },
                "" => Err(polling::protocol(cx, "the status answer has no status")),
                other => Err(polling::job_failed(provider, other)),
            }
        }
    }
}

/// The request's path on fal's queue (`/{app}/requests/{id}`), from the submit answer.
fn request_path(body: &Value, cx: &FollowContext<'_>) -> Result<String, GatewayError> {
    let id = body
        .get("request_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && plain(id, b""))
        .ok_or_else(|| polling::protocol(cx, "the submit answer has no usable request_id"))?;
    let Some(url) = body.get("response_url").and_then(Value::as_str) else {
        let app: Vec<&str> = cx.target.model.split('/').take(2).collect();
        return Ok(format!("/{}/requests/{id}", model_path(&app.join("/"))));
    };
    // `https://queue.fal.run/fal-ai/flux-kontext/requests/{id}`: only its path is used.
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|at| &rest[at..]))
        .map(|p| p.split(['?', '#']).next().unwrap_or_default())
        .unwrap_or_default();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let well_formed = segments.len() >= 3
        && segments.ends_with(&["requests", id])
        && segments
            .iter()
            .all(|s| !s.is_empty() && plain(s, b"") && *s != "." && *s != "..");
    if !well_formed {
        return Err(polling::protocol(
            cx,
            "the submit answer's response_url is not a request of fal's queue",
        ));
    }
    Ok(path.to_string())
}

/// The next `GET …/status`, after `after`.
fn status_poll(state: &mut FollowState, cx: &FollowContext<'_>, after: Duration) -> Result<FollowUp, GatewayError> {
    state.polls += 1;
    router_get(state, cx, "/status", after)
}

/// A `GET` on the router of the request's path plus `suffix`, with the token.
fn router_get(
    state: &FollowState,
    cx: &FollowContext<'_>,
    suffix: &str,
    after: Duration,
) -> Result<FollowUp, GatewayError> {
    let path = state
        .poll_url
        .as_deref()
        .ok_or_else(|| polling::protocol(cx, "no request path"))?;
    Ok(FollowUp::Request {
        request: UpstreamRequest {
            method: http::Method::GET,
            path: format!("{path}{suffix}{QUEUE}"),
            headers: vec![
                auth_header(cx.target, "authorization")?,
                (http::header::ACCEPT, "application/json".to_string()),
                (http::header::ACCEPT_ENCODING, "identity".to_string()),
            ],
            body: Vec::new(),
        },
        to: None,
        after,
    })
}

/// The result document: its images downloaded (or their URLs answered).
fn result(body: &Value, state: &mut FollowState, cx: &FollowContext<'_>) -> Result<FollowUp, GatewayError> {
    let images = body
        .get("images")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let flagged = body
        .get("has_nsfw_concepts")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty() && f.iter().all(|v| v.as_bool() == Some(true)));
    if flagged {
        return Err(no_image_error(
            &cx.target.provider.name,
            "fal flagged every image (has_nsfw_concepts)",
        ));
    }
    let samples = images
        .iter()
        .filter_map(|i| i.get("url").and_then(Value::as_str))
        .map(|url| match url.strip_prefix("data:") {
            Some(data) => data.split_once(";base64,").map_or(data, |(_, b64)| b64).to_string(),
            None => url.to_string(),
        })
        .collect();
    polling::results(samples, state, cx)
}

#[cfg(test)]
mod tests;
