//! Kind `bedrock`: Amazon Bedrock `InvokeModel` (providers.md §6) for Titan Image Generator v2
//! and Nova Canvas ([`titan`]) and Stability AI image services ([`stability`]).
//!
//! - Request: `POST {base}/model/{model id, percent-encoded once}/invoke` (so
//!   `amazon.nova-canvas-v1:0` → `/model/amazon.nova-canvas-v1%3A0/invoke`), `Content-Type` and
//!   `Accept: application/json`, a JSON body whose images are base64 encoded on the fly from
//!   the spool. The model id is sent as configured (inference profiles such as `us.…` and ARNs
//!   included); families are recognised from the base id (after the last `/`, without a
//!   region prefix).
//! - Auth: AWS credentials sign each attempt with SigV4 ([`sigv4`], service `bedrock`, the
//!   provider's `region`, the `Host` the exchange sends, the SHA-256 of the body hashed from the
//!   spool); a Bedrock API key (`value`) is sent as `Authorization: Bearer`.
//! - Answer: `{"images":["<b64>"…],"error":null}` (Titan/Nova) or `{"images":[…],
//!   "finish_reasons":[…]}` (Stability) → `data[i].b64_json`, each base64 copied once. A
//!   non-null `error` or finish reason that reports a filter, or no image, is a 400
//!   `moderation_blocked`.
//! - Errors: `{"message":"…"}` with the status kept; the exception name comes from the body's
//!   `__type` when present, else from the status (the exchange does not keep response headers,
//!   so `x-amzn-ErrorType` is not read). A `ValidationException` about content filters is a 400
//!   `moderation_blocked`; 429 gets code `rate_limit_exceeded`.
//! - No streaming: `stream=true` is synthesized by the gateway from the complete answer.
//! - The request body is at most 25,000,000 bytes (Bedrock's limit): a larger one is refused
//!   before the call.

pub mod sigv4;
pub mod stability;
pub mod titan;

use super::capabilities::{Capabilities, ModelFamily, NByCalls, Streaming};
use super::kernel::errors::{no_image_error, provider_error};
use super::kernel::percent::percent_encode_segment;
use super::kernel::post::json_post;
use super::kernel::time::unix_seconds;
use super::kernel::unified::{write_images_response, AnswerImage};
use super::model_id::plain;
use super::{BuildScope, ProviderAdapter, ResponseContext, UpstreamRequest, UpstreamResponse};
use crate::config::Credential;
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::{ImageKind, MaskConvention};
use crate::providers::UnifiedAnswer;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// The adapter for kind `bedrock`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BedrockAdapter;

/// Bedrock's largest `InvokeModel` body.
pub const MAX_BODY_BYTES: u64 = 25_000_000;

/// SigV4 signing name of Bedrock.
pub const SIGNING_SERVICE: &str = "bedrock";

/// The base model id of `model`: the part after the last `/` (ARNs), without a cross-region
/// inference-profile prefix (`us.`, `eu.`, `apac.`, `global.`, …).
pub fn base_model(model: &str) -> &str {
    let id = model.rsplit('/').next().unwrap_or(model);
    if id.starts_with("amazon.") || id.starts_with("stability.") {
        return id;
    }
    match id.split_once('.') {
        Some((_, rest)) if rest.starts_with("amazon.") || rest.starts_with("stability.") => rest,
        _ => id,
    }
}

/// Titan Image Generator and Nova Canvas models.
pub fn is_titan_nova(model: &str) -> bool {
    let base = base_model(model);
    base.starts_with("amazon.titan-image") || base.starts_with("amazon.nova-canvas")
}

fn is_stability_inpaint(model: &str) -> bool {
    stability::service(base_model(model)) == Some(stability::Service::Inpaint)
}

fn is_stability_erase(model: &str) -> bool {
    stability::service(base_model(model)) == Some(stability::Service::EraseObject)
}

fn is_stability_remove_background(model: &str) -> bool {
    stability::service(base_model(model)) == Some(stability::Service::RemoveBackground)
}

fn is_other_model(_: &str) -> bool {
    true
}

/// Titan/Nova: `numberOfImages` 1–5; up to 5 images (`IMAGE_VARIATION`; the other tasks take
/// one, refused by the adapter otherwise); 10 MB per image (a 25 MB body holds about 18 MB of
/// raw image); prompts up to 1024 characters (Nova; Titan's 512 belongs in `model_rules`);
/// PNG or JPEG. Sizes go to `width`/`height` unchecked: Nova and Titan accept specific
/// values, which `model_rules.sizes` can list.
pub static TITAN_NOVA_CAPABILITIES: Capabilities = Capabilities {
    mask: true,
    max_n: 5,
    n_by_calls: None,
    max_images: 5,
    max_image_bytes: 10_000_000,
    edit_types: &[EditType::Inpainting, EditType::Outpainting, EditType::BackgroundRemoval],
    url_output: false,
    sizes: "WxH → width, height (accepted values per model: `model_rules.sizes`)",
    streaming: Streaming::Synthesized,
    extra_fields: "seed, negative_prompt, quality (standard, premium), cfg_scale",
    max_prompt_chars: Some(1024),
    input_formats: &[ImageKind::Png, ImageKind::Jpeg],
    allowed_sizes: &[],
};

/// A Stability service on Bedrock: one image in and out per call, so `n > 1` is served by n
/// calls (providers.md §6.3: "loop for `n`"), call i with `seed + i` within 1–4294967294 (0
/// means random and stays 0).
const fn stability_capabilities(mask: bool, edit_types: &'static [EditType], extra: &'static str) -> Capabilities {
    Capabilities {
        mask,
        max_n: 1,
        n_by_calls: Some(NByCalls {
            seeds: (1, stability::MAX_SEED),
        }),
        max_images: 1,
        max_image_bytes: 10_000_000,
        edit_types,
        url_output: false,
        sizes: "ignored (edits keep the input size)",
        streaming: Streaming::Synthesized,
        extra_fields: extra,
        max_prompt_chars: None,
        input_formats: &[],
        allowed_sizes: &[],
    }
}

static FAMILIES: [ModelFamily; 5] = [
    ModelFamily {
        name: "Titan Image Generator v2, Nova Canvas (amazon.titan-image-*, amazon.nova-canvas-*, also with inference-profile prefixes)",
        matches: is_titan_nova,
        capabilities: TITAN_NOVA_CAPABILITIES,
    },
    ModelFamily {
        name: "Stability inpaint (stability.stable-image-inpaint-*)",
        matches: is_stability_inpaint,
        capabilities: stability_capabilities(
            true,
            &[EditType::Inpainting],
            "seed, negative_prompt, output_format (png, jpeg, webp)",
        ),
    },
    ModelFamily {
        name: "Stability erase object (stability.stable-image-erase-object-*)",
        matches: is_stability_erase,
        capabilities: stability_capabilities(true, &[EditType::Inpainting], "seed, output_format (png, jpeg, webp)"),
    },
    ModelFamily {
        name: "Stability remove background (stability.stable-image-remove-background-*)",
        matches: is_stability_remove_background,
        capabilities: stability_capabilities(false, &[EditType::BackgroundRemoval], "output_format (png, webp)"),
    },
    ModelFamily {
        name: "other models (other Stability services need fields the unified request lacks: refused)",
        matches: is_other_model,
        capabilities: Capabilities {
            n_by_calls: None,
            ..stability_capabilities(false, &[], "")
        },
    },
];

/// The mask convention `model` takes for `form`: Titan/Nova's task decides (inpainting black
/// = edit, outpainting white = edit, RGB); the Stability services take greyscale, white = edit.
fn mask_convention(form: &EditForm, model: &str) -> Option<MaskConvention> {
    form.mask.as_ref()?;
    if is_titan_nova(model) {
        return Some(titan::Task::of(form).mask_convention());
    }
    stability::service(base_model(model)).map(|_| MaskConvention::GrayWhiteEdit)
}

/// The body plan for `scope.form` sent to `scope.target`'s model (the mask converted by the
/// gateway, in `scope.mask`).
fn body(scope: &BuildScope<'_>) -> Result<Vec<super::BodySegment>, GatewayError> {
    let BuildScope { form, target, .. } = *scope;
    let provider = &target.provider.name;
    if form.images.is_empty() {
        return Err(GatewayError::InvalidRequest {
            param: Some("image".into()),
            message: "an image is required".into(),
        });
    }
    let mask = scope.mask.map(|m| m.png.as_slice());
    if form.mask.is_some() && mask.is_none() && mask_convention(form, &target.model).is_some() {
        return Err(GatewayError::Internal(
            "kind bedrock needs the mask converted by the gateway".into(),
        ));
    }
    let base = base_model(&target.model);
    if is_titan_nova(&target.model) {
        return titan::body(form, titan::Task::of(form), mask, provider);
    }
    match stability::service(base) {
        Some(service) => stability::body(form, service, mask, provider),
        None => Err(GatewayError::Unsupported {
            provider: provider.to_string(),
            param: "model".into(),
            message: format!(
                "model '{}' (kind bedrock translates to Titan Image Generator, Nova Canvas and the Stability inpaint, erase-object and remove-background services)",
                target.model
            ),
        }),
    }
}

/// The request for `scope.form` to `scope.target`: path, body, and SigV4 or Bearer auth (see
/// the module docs), signed at `scope.now`. Runs once per attempt, just before it is sent (a
/// signature is valid for minutes).
fn build(scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
    let BuildScope { target, request_id, .. } = *scope;
    let body = body(scope)?;
    let length: u64 = body.iter().map(super::BodySegment::len).sum();
    if length > MAX_BODY_BYTES {
        return Err(GatewayError::Unsupported {
            provider: target.provider.name.clone(),
            param: "image".into(),
            message: format!("a {length}-byte request body (Bedrock takes at most {MAX_BODY_BYTES} bytes)"),
        });
    }
    let base_url = &target.provider.base_url;
    let path = format!(
        "{}/model/{}/invoke",
        base_url.path,
        percent_encode_segment(&target.model)
    );
    let creds = match &target.key().credential {
        Credential::Aws(creds) => creds.clone(),
        Credential::Static(_) | Credential::ServiceAccount(_) => {
            let bearer = (http::header::AUTHORIZATION, format!("Bearer {}", target.credential()?));
            return Ok(json_post(path, bearer, "application/json", request_id, body));
        }
    };
    let region = target
        .provider
        .options
        .region
        .as_deref()
        .ok_or_else(|| GatewayError::Internal(format!("provider '{}' has no region", target.provider.name)))?;
    let payload = sigv4::payload_sha256(&body, scope.spool)
        .map_err(|e| GatewayError::Internal(format!("spool read failed: {e}")))?;
    let host = base_url.authority();
    let signed = sigv4::sign(&sigv4::SigningInput {
        access_key_id: creds.access_key_id.expose(),
        secret_access_key: creds.secret_access_key.expose(),
        session_token: creds.session_token.as_ref().map(|t| t.expose()),
        region,
        service: SIGNING_SERVICE,
        method: "POST",
        host: &host,
        path: &path,
        headers: &[("accept", "application/json"), ("content-type", "application/json")],
        payload_sha256: &payload,
        unix_time: unix_seconds(scope.now),
    });
    let mut req = json_post(
        path,
        (http::header::AUTHORIZATION, signed.authorization),
        "application/json",
        request_id,
        body,
    );
    req.headers
        .push((http::HeaderName::from_static("x-amz-date"), signed.amz_date));
    if let Some(token) = &creds.session_token {
        req.headers.push((
            http::HeaderName::from_static("x-amz-security-token"),
            token.expose().to_string(),
        ));
    }
    Ok(req)
}

impl ProviderAdapter for BedrockAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// A model id or inference profile, or an ARN `arn:…:type/id`; `:` allowed.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        let segments: Vec<&str> = model.split('/').collect();
        let ok = match segments.as_slice() {
            [id] => plain(id, b":") && !id.starts_with("arn:"),
            [arn, id] => arn.starts_with("arn:") && plain(arn, b":") && plain(id, b":"),
            _ => false,
        };
        ok.then_some(())
            .ok_or("expected a Bedrock model id, inference profile or ARN")
    }

    fn mask_convention(&self, form: &EditForm, model: &str) -> Option<MaskConvention> {
        mask_convention(form, model)
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        build(scope)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        if !(200..300).contains(&resp.status) {
            return Err(bedrock_error(cx.provider, resp));
        }
        convert_images(&resp.body, cx)
    }
}

/// Titan/Nova's and Stability's answer, borrowed from the body.
#[derive(Deserialize)]
struct InvokeAnswer<'a> {
    #[serde(borrow, default)]
    images: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    finish_reasons: Option<Vec<Option<Cow<'a, str>>>>,
}

/// The MIME type of base64 image data, from its first characters.
fn sniff_b64(b64: &RawValue) -> Option<&'static str> {
    let s = b64.get().trim_start_matches('"');
    if s.starts_with("iVBORw0KGgo") {
        Some("image/png")
    } else if s.starts_with("/9j/") {
        Some("image/jpeg")
    } else if s.starts_with("UklGR") {
        Some("image/webp")
    } else {
        None
    }
}

/// A 2xx answer → the unified answer; a reported filter or error, or no image, → an error;
/// 502 when the body is not Bedrock's JSON.
pub fn convert_images(body: &Bytes, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    let protocol = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let parsed: InvokeAnswer<'_> =
        serde_json::from_slice(body).map_err(|e| protocol(format!("not a Bedrock image answer: {e}")))?;
    if let Some(error) = parsed.error.as_deref().filter(|e| !e.is_empty()) {
        return Err(if is_filter_message(error) {
            no_image_error(cx.provider, error)
        } else {
            protocol(format!("Bedrock reported an error: {error}"))
        });
    }
    let reasons: Vec<&str> = parsed
        .finish_reasons
        .iter()
        .flatten()
        .filter_map(|r| r.as_deref())
        .collect();
    if !reasons.is_empty() {
        return Err(no_image_error(cx.provider, &reasons.join("; ")));
    }
    let raw = parsed.images.unwrap_or_default();
    let mut images = Vec::with_capacity(raw.len());
    for b64 in raw {
        if !b64.get().starts_with('"') {
            return Err(protocol("an image is not a base64 string".into()));
        }
        images.push(AnswerImage {
            b64: b64.get(),
            mime: sniff_b64(b64),
        });
    }
    if images.is_empty() {
        return Err(no_image_error(cx.provider, "the answer has no image"));
    }
    write_images_response(std::slice::from_ref(body), &images, None, cx.created, cx)
}

/// Whether an error text reports a content filter block.
fn is_filter_message(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("content filter") || m.contains("filter reason") || m.contains("blocked by") || m.contains("filtered")
}

/// The exception Bedrock raises with `status` (providers.md §6.1), for answers whose body does
/// not name it.
fn exception_for_status(status: u16) -> &'static str {
    match status {
        400 => "ValidationException",
        403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 => "ModelTimeoutException",
        424 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// A Bedrock error answer (`{"message":"…"}`, maybe `__type`) as a provider error in OpenAI's
/// shape: `message` kept, `type` the exception name, `code` `rate_limit_exceeded` for 429,
/// else the exception name; the status kept (408 → 504, 424 → 502). A content-filter `ValidationException` is a 400
/// `moderation_blocked`.
pub fn bedrock_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let field = |name: &str| parsed.as_ref().and_then(|v| v.get(name)).and_then(Value::as_str);
    let Some(message) = field("message").or_else(|| field("Message")) else {
        return provider_error(provider, resp);
    };
    // `__type` may be `com.amazon…#ValidationException` or `ValidationException:http://…`.
    let exception = field("__type")
        .map(|t| t.rsplit('#').next().unwrap_or(t))
        .map(|t| t.split(':').next().unwrap_or(t))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| exception_for_status(resp.status));
    if resp.status == 400 && is_filter_message(message) {
        return no_image_error(provider, message);
    }
    // A model timeout or failure is the gateway's upstream failing, not the client's request.
    let status = match resp.status {
        408 => 504,
        424 => 502,
        s => s,
    };
    let mut error = Map::new();
    error.insert("message".into(), json!(message));
    error.insert("type".into(), json!(exception));
    error.insert(
        "code".into(),
        json!(if status == 429 {
            "rate_limit_exceeded"
        } else {
            exception
        }),
    );
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status,
        error,
    }
}

#[cfg(test)]
mod tests;
