//! Kind `huggingface`: the Hugging Face inference router, image-to-image through two of its
//! providers (providers.md §11). The model id names the router provider:
//!
//! | model id | router provider | example |
//! |---|---|---|
//! | `fal-ai/{endpoint…}` | `fal-ai`: fal's queue API ([`fal`]); the id is fal's endpoint id | `fal-ai/flux-kontext/dev` |
//! | `hf-inference/{name or owner/name}` | `hf-inference` | `hf-inference/timbrooks/instruct-pix2pix` |
//! | `{name or owner/name}` | `hf-inference` (as before `fal-ai` was added) | `timbrooks/instruct-pix2pix` |
//!
//! hf-inference request: `POST {base}/hf-inference/models/{model_id}` (the model id's `/`
//! kept, every other unsafe byte percent-encoded) with `Authorization: Bearer`, `Accept:
//! image/png` and JSON `{"inputs":"<base64 of the first image>","parameters":{"prompt",
//! "negative_prompt","num_inference_steps","target_size":{"width","height"}}}` (`target_size`
//! from `size`, omitted for `auto`); the image is base64-encoded on the fly from the spool.
//! `seed`, `quality`, `background`, `output_format` and the like are dropped.
//!
//! The router caps request bodies at 2 MB: the capabilities allow images up to
//! [`MAX_IMAGE_BYTES`] (their base64 plus the parameters stay under the cap), so a larger image
//! is a 400 `unsupported_operation` on `image` before any upstream call; a body still over
//! [`ROUTER_MAX_BODY`] (a huge prompt, several images for fal) is a 413 when the request is
//! built, before any upstream call.
//!
//! hf-inference answer: the raw image bytes; they are base64-encoded (SIMD, straight into the
//! answer) into `data[0].b64_json`, `output_format` sniffed from the bytes. A 2xx that is not an
//! image is a 502. Errors `{"error":"…"}` (or a list of messages; 503 while the model loads,
//! with `estimated_time`) keep the provider's status.

pub mod fal;

use super::capabilities::{Capabilities, ModelFamily, Streaming};
use super::kernel::errors::provider_error;
use super::kernel::percent::percent_encode_segment;
use super::kernel::polling::{self, FollowContext, FollowState, FollowUp};
use super::kernel::post::{auth_header, json_post};
use super::kernel::size::size_wxh;
use super::kernel::unified::write_raw_image_response;
use super::model_id::plain;
use super::{
    BodySegment, BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{self, ImageKind, MaskConvention};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The adapter for kind `huggingface`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HuggingFaceAdapter;

/// The router's request body cap [impl Bifrost docs].
pub const ROUTER_MAX_BODY: u64 = 2_000_000;

/// Largest image: its base64 (4/3 larger, 1 866 668 bytes) leaves room for the parameters
/// under [`ROUTER_MAX_BODY`].
pub const MAX_IMAGE_BYTES: u64 = 1_400_000;

/// hf-inference image-to-image models.
pub static HUGGINGFACE_CAPABILITIES: Capabilities = Capabilities {
    mask: false,
    max_n: 1,
    n_by_calls: None,
    max_images: 1,
    max_image_bytes: MAX_IMAGE_BYTES,
    edit_types: &[],
    url_output: false,
    sizes: "`WxH` → `parameters.target_size`",
    streaming: Streaming::Synthesized,
    extra_fields: "negative_prompt, num_inference_steps",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

/// fal endpoints through the router (one image, `image_url`; the families below refine it).
const FAL_CAPABILITIES: Capabilities = Capabilities {
    mask: false,
    max_n: 4,
    n_by_calls: None,
    max_images: 1,
    max_image_bytes: MAX_IMAGE_BYTES,
    edit_types: &[],
    url_output: true,
    sizes: "`WxH` → `image_size{width,height}`",
    streaming: Streaming::Synthesized,
    extra_fields: "seed, num_inference_steps, output_format",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

fn hf_inference_model(model: &str) -> bool {
    !fal::is_fal(model)
}

static FAMILIES: [ModelFamily; 4] = [
    ModelFamily {
        name: "fal-ai fill and inpainting endpoints through the router (`fal-ai/…fill…`, `fal-ai/…inpaint…`)",
        matches: fal::takes_mask,
        capabilities: Capabilities {
            mask: true,
            ..FAL_CAPABILITIES
        },
    },
    ModelFamily {
        name: "fal-ai multi-image edit endpoints through the router (`fal-ai/…/edit`)",
        matches: fal::takes_image_list,
        capabilities: Capabilities {
            max_images: 4,
            ..FAL_CAPABILITIES
        },
    },
    ModelFamily {
        name: "fal-ai image-to-image endpoints through the router (`fal-ai/…`)",
        matches: fal::is_fal,
        capabilities: FAL_CAPABILITIES,
    },
    ModelFamily {
        name: "hf-inference image-to-image models (`owner/name`, `hf-inference/owner/name`)",
        matches: hf_inference_model,
        capabilities: HUGGINGFACE_CAPABILITIES,
    },
];

/// The prefix that names the router provider `hf-inference` explicitly.
const HF_INFERENCE_PREFIX: &str = "hf-inference/";

/// The model id as a path: each `/`-separated segment percent-encoded, the slashes kept.
fn model_path(model: &str) -> String {
    model
        .split('/')
        .map(percent_encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// `parameters` for `form` (only the fields it carries).
fn parameters(form: &EditForm) -> Map<String, Value> {
    let mut p = Map::new();
    if let Some(v) = &form.prompt {
        p.insert("prompt".into(), json!(v));
    }
    if let Some(v) = &form.negative_prompt {
        p.insert("negative_prompt".into(), json!(v));
    }
    if let Some(v) = form.num_inference_steps {
        p.insert("num_inference_steps".into(), json!(v));
    }
    if let Some((width, height)) = size_wxh(form.size.as_deref()) {
        p.insert("target_size".into(), json!({"width": width, "height": height}));
    }
    p
}

impl ProviderAdapter for HuggingFaceAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// `fal-ai/{endpoint…}`, or `name` or `owner/name` with an optional `hf-inference/`.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        if fal::is_fal(model) {
            return fal::model_id_shape(model);
        }
        let model = model.strip_prefix(HF_INFERENCE_PREFIX).unwrap_or(model);
        let segments: Vec<&str> = model.split('/').collect();
        (segments.len() <= 2 && segments.iter().all(|s| plain(s, b"")))
            .then_some(())
            .ok_or("expected [hf-inference/]name, [hf-inference/]owner/name or fal-ai/<endpoint> of letters, digits, '.', '_', '-'")
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        if fal::is_fal(&target.model) {
            if form.mask.is_some() && scope.mask.is_none() {
                return Err(GatewayError::Internal("a fal mask is converted from the spool".into()));
            }
            return fal::build(form, scope.mask, target, request_id);
        }
        let model = target.model.strip_prefix(HF_INFERENCE_PREFIX).unwrap_or(&target.model);
        let image = form.images.first().ok_or_else(|| GatewayError::InvalidRequest {
            param: Some("image".into()),
            message: "an image is required".into(),
        })?;
        let params = serde_json::to_string(&Value::Object(parameters(form)))
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let body = vec![
            BodySegment::Bytes(Bytes::from_static(b"{\"inputs\":\"")),
            BodySegment::Base64(image.range),
            BodySegment::Bytes(Bytes::from(format!("\",\"parameters\":{params}}}"))),
        ];
        let req = json_post(
            format!(
                "{}/hf-inference/models/{}",
                target.provider.base_url.path,
                model_path(model)
            ),
            auth_header(target, "authorization")?,
            "image/png",
            request_id,
            body,
        );
        if req.content_length() > ROUTER_MAX_BODY {
            return Err(GatewayError::PayloadTooLarge {
                param: None,
                what: "the Hugging Face request body (image as base64 plus parameters)".into(),
                limit: ROUTER_MAX_BODY,
            });
        }
        Ok(req)
    }

    /// The mask as fal's fill endpoints take it: white = edit.
    fn mask_convention(&self, form: &EditForm, model: &str) -> Option<MaskConvention> {
        (form.mask.is_some() && fal::takes_mask(model)).then_some(MaskConvention::GrayWhiteEdit)
    }

    /// hf-inference's answer; for fal, reached for error statuses only (successes are followed
    /// up).
    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        if fal::is_fal(cx.model_deployment) {
            return polling::unfollowed_answer(resp, cx);
        }
        if !(200..300).contains(&resp.status) {
            return Err(hf_error(cx.provider, resp));
        }
        let kind = imaging::sniff(&resp.body).ok_or_else(|| GatewayError::UpstreamProtocol {
            provider: cx.provider.to_string(),
            detail: format!(
                "the success body is not an image (content-type {})",
                resp.content_type.as_deref().unwrap_or("none")
            ),
        })?;
        write_raw_image_response(&resp.body, Some(ImageKind::mime(kind)), cx.created, cx)
    }

    /// fal's queue ([`fal::follow_up`]); hf-inference answers at once.
    fn follow_up(
        &self,
        resp: &UpstreamResponse,
        state: &mut FollowState,
        cx: &FollowContext<'_>,
    ) -> Result<FollowUp, GatewayError> {
        if fal::is_fal(&cx.target.model) {
            return fal::follow_up(resp, state, cx);
        }
        Ok(FollowUp::Done)
    }

    fn follow_domains(&self) -> &'static [&'static str] {
        fal::FAL_DOMAINS
    }
}

/// A Hugging Face error as a provider error keeping the status: `{"error":"…"}` (like an
/// OpenAI error given as a string), `{"error":["…",…]}` (joined), with `estimated_time`
/// (seconds until a loading model is ready) added to the message and kept as a field.
pub fn hf_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let list = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "));
    let estimated = parsed
        .as_ref()
        .and_then(|v| v.get("estimated_time"))
        .and_then(Value::as_f64);
    let mut e = match list {
        Some(message) => GatewayError::Provider {
            provider: provider.to_string(),
            status: resp.status,
            error: Map::from_iter([("message".to_string(), json!(message))]),
        },
        None => provider_error(provider, resp),
    };
    if let (GatewayError::Provider { error, .. }, Some(secs)) = (&mut e, estimated) {
        let message = error.get("message").and_then(Value::as_str).unwrap_or_default();
        let message = format!("{message} (estimated_time {secs:.0} s)");
        error.insert("message".into(), json!(message));
        error.insert("estimated_time".into(), json!(secs));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;
    use crate::form::FilePart;
    use crate::imaging::{encode_png, solid};
    use crate::providers::test_support::build;
    use crate::route::Router;
    use crate::route::Target;
    use crate::spool::{Spool, SpoolRange};
    use base64::Engine;

    fn target(model: &str) -> Target {
        let yaml =
            "providers:\n  - name: hf\n    kind: huggingface\n    keys:\n      - { name: k, value: hf_secret }\n";
        let cfg = from_yaml_str_with_env(yaml, &|_| None).unwrap();
        Router::new(&cfg).select("hf", model, 0.0).unwrap()
    }

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "hf",
            model_requested: "m",
            model_deployment: "m",
            latency_ms: 3,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        }
    }

    fn resp(status: u16, ct: &str, body: &[u8]) -> UpstreamResponse {
        UpstreamResponse {
            retry_after: None,
            status,
            content_type: Some(ct.into()),
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn json_body_with_the_image_as_base64_and_parameters() {
        let png = encode_png(&solid(5, 3, [1, 2, 3, 255])).unwrap();
        let mut spool = Spool::new(1 << 16, None);
        spool.append(Bytes::from_static(b"junk")).unwrap();
        spool.append(Bytes::from(png.clone())).unwrap();
        let form = EditForm {
            model: "timbrooks/instruct-pix2pix".into(),
            prompt: Some("make it \"blue\"".into()),
            negative_prompt: Some("blurry".into()),
            num_inference_steps: Some(20),
            seed: Some(4),
            size: Some("512x256".into()),
            images: vec![FilePart {
                field: "image".into(),
                filename: None,
                kind: Some(ImageKind::Png),
                declared_type: None,
                range: SpoolRange {
                    start: 4,
                    len: png.len() as u64,
                },
            }],
            ..Default::default()
        };
        let t = target("timbrooks/instruct pix2pix");
        let req = build(&HuggingFaceAdapter, &form, &t, "rid").unwrap();
        assert_eq!(req.path, "/hf-inference/models/timbrooks/instruct%20pix2pix");
        assert_eq!(req.header("authorization"), Some("Bearer hf_secret"));
        assert_eq!(req.header("accept"), Some("image/png"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = req.render(&spool).unwrap();
        assert_eq!(body.len() as u64, req.content_length());
        let v: Value = serde_json::from_slice(&body).unwrap();
        let inputs = base64::engine::general_purpose::STANDARD
            .decode(v["inputs"].as_str().unwrap())
            .unwrap();
        assert_eq!(inputs, png);
        assert_eq!(
            v["parameters"],
            json!({"prompt": "make it \"blue\"", "negative_prompt": "blurry", "num_inference_steps": 20,
                "target_size": {"width": 512, "height": 256}})
        );
        // A body over the router's cap (a huge prompt) is a 413.
        let big = EditForm {
            prompt: Some("x".repeat(2_000_001)),
            ..form
        };
        assert_eq!(build(&HuggingFaceAdapter, &big, &t, "r").unwrap_err().status(), 413);
    }

    #[test]
    fn raw_image_answer_becomes_b64_json() {
        let png = encode_png(&solid(2, 2, [9, 8, 7, 255])).unwrap();
        let out = HuggingFaceAdapter
            .convert_response(&resp(200, "image/png", &png), &cx())
            .unwrap();
        let v: Value = serde_json::from_slice(&out.to_bytes()).unwrap();
        let got = base64::engine::general_purpose::STANDARD
            .decode(v["data"][0]["b64_json"].as_str().unwrap())
            .unwrap();
        assert_eq!(got, png);
        assert_eq!(v["data"][0]["index"], 0);
        assert_eq!(v["output_format"], "png");
        assert_eq!(v["extra_fields"]["provider"], "hf");
        let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 2];
        let v: Value = serde_json::from_slice(
            &HuggingFaceAdapter
                .convert_response(&resp(200, "image/jpeg", &jpeg), &cx())
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        assert_eq!(v["output_format"], "jpeg");
        let e = HuggingFaceAdapter
            .convert_response(&resp(200, "application/json", b"{\"x\":1}"), &cx())
            .unwrap_err();
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn errors_keep_status_and_loading_time() {
        let e = HuggingFaceAdapter
            .convert_response(
                &resp(
                    503,
                    "application/json",
                    br#"{"error":"Model x is currently loading","estimated_time":20.0}"#,
                ),
                &cx(),
            )
            .unwrap_err();
        assert_eq!(e.status(), 503);
        let j = e.to_json(&Default::default());
        assert_eq!(
            j["error"]["message"],
            "Model x is currently loading (estimated_time 20 s)"
        );
        assert_eq!(j["error"]["estimated_time"], 20.0);
        let e = HuggingFaceAdapter
            .convert_response(
                &resp(422, "application/json", br#"{"error":["bad size","bad steps"]}"#),
                &cx(),
            )
            .unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(
            e.to_json(&Default::default())["error"]["message"],
            "bad size; bad steps"
        );
        let e = HuggingFaceAdapter
            .convert_response(
                &resp(401, "application/json", br#"{"error":"Invalid credentials"}"#),
                &cx(),
            )
            .unwrap_err();
        assert_eq!(e.status(), 401);
        assert!(!e.to_json(&Default::default()).to_string().contains("hf_secret"));
    }

    #[test]
    fn capability_keeps_the_base64_body_under_the_router_cap() {
        let c = HuggingFaceAdapter.capabilities("any/model");
        assert!(crate::codec::base64::encoded_len(c.max_image_bytes) + 100_000 < ROUTER_MAX_BODY);
        assert!(!c.mask);
        assert_eq!((c.max_n, c.max_images), (1, 1));
    }
}
