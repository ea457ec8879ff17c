//! Kind `replicate`: Replicate predictions (`api.replicate.com/v1`), synchronous when they finish
//! within `Prefer: wait`, polled otherwise.
//!
//! Submit: `POST {base_url}/models/{owner}/{name}/predictions` for a model `owner/name`; a model
//! with a version (`owner/name:version`, or a bare 64-hex version id) goes to
//! `POST {base_url}/predictions` with `{"version"}`. Bearer key, `Prefer: wait=60`, JSON
//! `{"input":{…}}`: `prompt`, the first image as a `data:` URL under the model's image key
//! (`image_key` of the matching config `model_rules` entry, default `input_image`; the key
//! `input_images` takes a list), `aspect_ratio` from `size`, `output_format` (`png`/`jpg`),
//! `seed`, `num_inference_steps`, `negative_prompt`. No mask (model-specific; Bifrost does not
//! map it either); `n` 1.
//!
//! The answer is a prediction ([`super::kernel::polling`] follow-ups): `succeeded` → `output` (a URL,
//! or a list of URLs) downloaded into `b64_json`, or returned as `data[].url` for
//! `response_format=url`; `starting` / `processing` → `GET urls.get` every `poll_interval_ms`;
//! `failed` / `canceled` → 400 `moderation_blocked` when the `error` text names a safety filter
//! (NSFW, sensitive, flagged), else 502 with the text. Error statuses (problem+json
//! `{"title","detail","status"}`) keep the status and the detail. URLs may be on
//! `*.replicate.com` and `*.replicate.delivery` only (SSRF guard).

use super::capabilities::{any_model, Capabilities, ModelFamily, Streaming};
use super::kernel::errors::no_image_error;
use super::kernel::percent::percent_encode_segment;
use super::kernel::polling::{self, Field, FollowContext, FollowState, FollowUp, Stage};
use super::kernel::post::{auth_header, json_post};
use super::model_id::{is_hex_version, plain};
use super::{
    BodySegment, BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::{json, Value};

/// The adapter for kind `replicate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplicateAdapter;

/// Where Replicate's prediction and delivery URLs live.
pub const REPLICATE_DOMAINS: &[&str] = &[".replicate.com", ".replicate.delivery"];

/// The image input key when config names none.
pub const DEFAULT_IMAGE_KEY: &str = "input_image";

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "Replicate models (owner/name[:version]; image key per model in model_rules)",
    matches: any_model,
    capabilities: Capabilities {
        mask: false,
        max_n: 1,
        n_by_calls: None,
        max_images: 1,
        max_image_bytes: 20 * 1024 * 1024,
        edit_types: &[],
        url_output: true,
        sizes: "`WxH` → nearest `aspect_ratio`, `auto`",
        streaming: Streaming::Synthesized,
        extra_fields: "seed, output_format, num_inference_steps, negative_prompt",
        max_prompt_chars: None,
        input_formats: &[],
        allowed_sizes: &[],
    },
}];

/// The path and the version (if the model names one) of a prediction for `model`.
fn route(base: &str, model: &str) -> (String, Option<String>) {
    let bare_version = model.len() == 64 && model.bytes().all(|b| b.is_ascii_hexdigit());
    match model.split_once(':') {
        Some((_, version)) => (format!("{base}/predictions"), Some(version.to_string())),
        None if bare_version => (format!("{base}/predictions"), Some(model.to_string())),
        None => {
            let segments: Vec<String> = model.split('/').map(percent_encode_segment).collect();
            (format!("{base}/models/{}/predictions", segments.join("/")), None)
        }
    }
}

impl ProviderAdapter for ReplicateAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// `owner/name`, `owner/name:<64-hex version>`, or a bare 64-hex version.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        let segments: Vec<&str> = model.split('/').collect();
        let ok = match segments.as_slice() {
            [version] => is_hex_version(version),
            [owner, name] => {
                let (name, version) = match name.split_once(':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (*name, None),
                };
                plain(owner, b"") && plain(name, b"") && version.is_none_or(is_hex_version)
            }
            _ => false,
        };
        ok.then_some(())
            .ok_or("expected owner/name, owner/name:<64-hex version> or a 64-hex version")
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        let provider = target.provider.name.as_str();
        let image_key = target
            .provider
            .options
            .rules_for(&target.model)
            .and_then(|r| r.image_key.as_deref())
            .unwrap_or(DEFAULT_IMAGE_KEY);
        let mut input = Vec::new();
        if let Some(prompt) = &form.prompt {
            input.push(("prompt", Field::Json(json!(prompt))));
        }
        let image = polling::first_image(form, provider, true)?;
        input.push((
            image_key,
            if image_key == "input_images" {
                Field::ImageList(Box::new(image))
            } else {
                image
            },
        ));
        input.extend(polling::common_fields(form, provider, "jpg")?);
        if let Some(steps) = form.num_inference_steps {
            input.push(("num_inference_steps", Field::Json(json!(steps))));
        }
        if let Some(negative) = &form.negative_prompt {
            input.push(("negative_prompt", Field::Json(json!(negative))));
        }
        let (path, version) = route(&target.provider.base_url.path, &target.model);
        let mut body = Vec::new();
        let head = match version {
            Some(v) => format!("{{\"version\":{},\"input\":", json!(v)),
            None => "{\"input\":".to_string(),
        };
        body.push(BodySegment::Bytes(Bytes::from(head)));
        body.extend(polling::json_body(&input)?);
        body.push(BodySegment::Bytes(Bytes::from_static(b"}")));
        let mut request = json_post(
            path,
            auth_header(target, "x-api-key")?,
            "application/json",
            request_id,
            body,
        );
        request
            .headers
            .push((http::HeaderName::from_static("prefer"), "wait=60".to_string()));
        Ok(request)
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
        let prediction = match polling::follow_json(resp, state, cx)? {
            polling::Answer::Decided(next) => return Ok(next),
            polling::Answer::Json(v) => v,
        };
        let provider = cx.target.provider.name.as_str();
        match prediction.get("status").and_then(Value::as_str).unwrap_or_default() {
            "succeeded" => {
                let outputs = match prediction.get("output") {
                    Some(Value::String(s)) => vec![s.clone()],
                    Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                    _ => Vec::new(),
                };
                polling::results(outputs, state, cx)
            }
            status @ ("failed" | "canceled" | "aborted") => {
                let why = prediction
                    .get("error")
                    .and_then(|e| {
                        e.as_str()
                            .map(str::to_string)
                            .or_else(|| (!e.is_null()).then(|| e.to_string()))
                    })
                    .unwrap_or_else(|| status.to_string());
                let lower = why.to_ascii_lowercase();
                if ["nsfw", "safety", "sensitive", "flagged", "moderat"]
                    .iter()
                    .any(|w| lower.contains(w))
                {
                    Err(no_image_error(provider, &why))
                } else {
                    Err(polling::job_failed(provider, &why))
                }
            }
            _ => {
                if let Some(url) = prediction.pointer("/urls/get").and_then(Value::as_str) {
                    state.poll_url = Some(url.to_string());
                }
                let url = state
                    .poll_url
                    .clone()
                    .ok_or_else(|| polling::protocol(cx, "an unfinished prediction without urls.get"))?;
                state.stage = Stage::Polling;
                state.polls += 1;
                Ok(polling::get(
                    &url,
                    vec![
                        auth_header(cx.target, "x-api-key")?,
                        (http::header::ACCEPT, "application/json".to_string()),
                    ],
                    cx.poll_interval,
                ))
            }
        }
    }

    fn follow_domains(&self) -> &'static [&'static str] {
        REPLICATE_DOMAINS
    }
}

#[cfg(test)]
mod tests;
