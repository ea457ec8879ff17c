//! Amazon Bedrock inbound: the `InvokeModel` bodies boto3's `bedrock-runtime` client sends for
//! image edits (Titan Image Generator / Nova Canvas tasks, the Stability image services)
//! become the unified edit, and the unified answer goes back in the body's own shape. Pure:
//! the server glue (`src/server/gateway/bedrock.rs`) authenticates (SigV4 or a bearer key),
//! reads the body, calls [`invoke_request`] then [`build_form`], runs the usual pipeline and
//! answers with [`answer`]; errors with [`error_answer`].
//!
//! Mapping (docs/api.md, "Amazon Bedrock clients"):
//!
//! | Bedrock | unified |
//! |---|---|
//! | `taskType` `INPAINTING` (`inPaintingParams`) | `type` inpainting; `maskImage` → `mask`, black = edit |
//! | `taskType` `OUTPAINTING` (`outPaintingParams`) | `type` outpainting; `maskImage` → `mask`, white = edit (black = keep) |
//! | `taskType` `IMAGE_VARIATION` (`imageVariationParams.images[]`) | `image[]`, no `type` |
//! | `taskType` `BACKGROUND_REMOVAL` (`backgroundRemovalParams.image`) | `type` background_removal |
//! | `…Params.image` / `text` / `negativeText` | `image[]` / `prompt` / `negative_prompt` |
//! | `imageGenerationConfig` `numberOfImages`, `width`+`height`, `seed`, `quality`, `cfgScale` | `n`, `size` `WxH`, `seed`, `quality` (premium → high), extra field `cfg_scale` |
//! | Stability `image`, `mask` (white = edit), `prompt`, `negative_prompt`, `seed`, `output_format` | the same names; `grow_mask`, `style_preset` as extra fields |
//! | Stability `image` alone (no prompt, no mask: remove-background's body) | `type` background_removal |
//!
//! A body with `taskType` is Titan/Nova's, any other Stability's. `maskPrompt` (Titan's
//! mask by description) is refused (400): send `maskImage`. Masks keep their convention: the
//! form's [`EditForm::mask_source`] names it, and the gateway converts it for the provider.
//!
//! Answers: Titan/Nova bodies get `{"images":["<b64>"…],"error":null}`, Stability bodies
//! `{"images":[…],"seeds":[…],"finish_reasons":[null…]}`. Errors: Bedrock's
//! `{"message":"…"}` with the exception name in `x-amzn-ErrorType` (what botocore reads as
//! the error code).

use super::genai::{EditSource, InlineImage};
use crate::config::{Limits, ProviderConfig};
use crate::error::GatewayError;
use crate::form::{EditForm, MaskSource};
use crate::kind::ProviderKind;
use crate::spool::Spool;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// Where boto3's `bedrock-runtime` client is pointed (`endpoint_url=<gateway>/bedrock`).
pub const BEDROCK_BASE: &str = "/bedrock";

/// The model segment of `/bedrock/model/{modelId}/invoke`, percent-encoded as sent (`None`:
/// not that path).
pub fn route(path: &str) -> Option<&str> {
    path.strip_prefix(BEDROCK_BASE)?
        .strip_prefix("/model/")?
        .strip_suffix("/invoke")
        .filter(|m| !m.is_empty() && !m.contains('/'))
}

/// The configured `bedrock` provider that serves the Bedrock model id `model`: the first
/// whose key lists it, else the first with a key that serves any model (`*`).
pub fn bedrock_provider_for<'c>(providers: &'c [ProviderConfig], model: &str) -> Option<&'c ProviderConfig> {
    let bedrock = || providers.iter().filter(|p| p.kind == ProviderKind::Bedrock);
    bedrock()
        .find(|p| p.keys.iter().any(|k| k.models.iter().any(|m| m == model)))
        .or_else(|| bedrock().find(|p| p.keys.iter().any(|k| k.serves(model))))
}

/// Which shape the request body had, and so the answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// Titan Image Generator / Nova Canvas (`taskType`).
    Titan,
    /// The Stability image services.
    Stability,
}

/// A Bedrock request, read: the unified edit's parts before they are validated.
#[derive(Debug, PartialEq, Eq)]
pub struct BedrockEdit<'a> {
    /// The body's shape.
    pub shape: BodyShape,
    /// Images, mask and fields.
    pub source: EditSource<'a>,
    /// The convention of the mask, if one was sent.
    pub mask_source: MaskSource,
    /// The `seed` asked for (echoed in a Stability answer's `seeds`).
    pub seed: Option<i64>,
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(param.to_string(), message)
}

fn json_error(e: serde_json::Error) -> GatewayError {
    invalid("body", format!("the body is not the expected JSON: {e}"))
}

/// Base64 text borrowed from the body where it needs no unescaping.
#[derive(Deserialize)]
struct B64<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'a> B64<'a> {
    fn image(self) -> InlineImage<'a> {
        InlineImage {
            data: self.0,
            mime_type: None,
        }
    }
}

#[derive(Deserialize)]
struct Probe {
    #[serde(default, rename = "taskType")]
    task_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TitanRequest<'a> {
    task_type: String,
    #[serde(borrow, default)]
    in_painting_params: Option<PaintParams<'a>>,
    #[serde(borrow, default)]
    out_painting_params: Option<PaintParams<'a>>,
    #[serde(borrow, default)]
    image_variation_params: Option<VariationParams<'a>>,
    #[serde(borrow, default)]
    background_removal_params: Option<RemovalParams<'a>>,
    #[serde(default)]
    image_generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PaintParams<'a> {
    #[serde(borrow, default)]
    image: Option<B64<'a>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    negative_text: Option<String>,
    #[serde(borrow, default)]
    mask_image: Option<B64<'a>>,
    #[serde(default)]
    mask_prompt: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariationParams<'a> {
    #[serde(borrow, default)]
    images: Vec<B64<'a>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    negative_text: Option<String>,
}

#[derive(Deserialize)]
struct RemovalParams<'a> {
    #[serde(borrow, default)]
    image: Option<B64<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default)]
    number_of_images: Option<u32>,
    #[serde(default)]
    width: Option<u32>,
    #[serde(default)]
    height: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    quality: Option<String>,
    #[serde(default)]
    cfg_scale: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StabilityRequest<'a> {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(borrow, default)]
    image: Option<B64<'a>>,
    #[serde(borrow, default)]
    mask: Option<B64<'a>>,
    #[serde(default)]
    negative_prompt: Option<String>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    output_format: Option<String>,
    #[serde(default)]
    grow_mask: Option<Value>,
    #[serde(default)]
    style_preset: Option<String>,
}

/// Reads an `InvokeModel` body (see the module docs): a Titan/Nova task when it has
/// `taskType`, else a Stability service's body.
pub fn invoke_request(body: &[u8]) -> Result<BedrockEdit<'_>, GatewayError> {
    let probe: Probe = serde_json::from_slice(body).map_err(json_error)?;
    match probe.task_type {
        Some(_) => titan_request(body),
        None => stability_request(body),
    }
}

fn push_text(fields: &mut Vec<(&'static str, String)>, name: &'static str, value: Option<String>) {
    if let Some(v) = value.filter(|v| !v.trim().is_empty()) {
        fields.push((name, v));
    }
}

fn titan_request(body: &[u8]) -> Result<BedrockEdit<'_>, GatewayError> {
    let request: TitanRequest<'_> = serde_json::from_slice(body).map_err(json_error)?;
    let mut source = EditSource::default();
    let mut mask_source = MaskSource::Detect;
    let missing = |params: &str| invalid(params, format!("taskType {} needs {params}", request.task_type));
    match request.task_type.as_str() {
        task @ ("INPAINTING" | "OUTPAINTING") => {
            let (name, params, edit_type, convention) = if task == "INPAINTING" {
                (
                    "inPaintingParams",
                    request.in_painting_params,
                    "inpainting",
                    MaskSource::BlackEdit,
                )
            } else {
                (
                    "outPaintingParams",
                    request.out_painting_params,
                    "outpainting",
                    MaskSource::WhiteEdit,
                )
            };
            let params = params.ok_or_else(|| missing(name))?;
            if params.mask_prompt.as_deref().is_some_and(|p| !p.trim().is_empty()) {
                return Err(invalid(
                    &format!("{name}.maskPrompt"),
                    "maskPrompt (a mask by description) is not supported: send the mask as maskImage",
                ));
            }
            let image = params.image.ok_or_else(|| missing(&format!("{name}.image")))?;
            let mask = params.mask_image.ok_or_else(|| missing(&format!("{name}.maskImage")))?;
            source.images.push(image.image());
            source.mask = Some(mask.image());
            mask_source = convention;
            source.fields.push(("type", edit_type.to_string()));
            push_text(&mut source.fields, "prompt", params.text);
            push_text(&mut source.fields, "negative_prompt", params.negative_text);
        }
        "IMAGE_VARIATION" => {
            let params = request
                .image_variation_params
                .ok_or_else(|| missing("imageVariationParams"))?;
            if params.images.is_empty() {
                return Err(missing("imageVariationParams.images"));
            }
            source.images.extend(params.images.into_iter().map(B64::image));
            push_text(&mut source.fields, "prompt", params.text);
            push_text(&mut source.fields, "negative_prompt", params.negative_text);
        }
        "BACKGROUND_REMOVAL" => {
            let image = request
                .background_removal_params
                .and_then(|p| p.image)
                .ok_or_else(|| missing("backgroundRemovalParams.image"))?;
            source.images.push(image.image());
            source.fields.push(("type", "background_removal".to_string()));
        }
        other => {
            return Err(invalid(
                "taskType",
                format!(
                    "taskType '{}' is not an edit the gateway serves (INPAINTING, OUTPAINTING, IMAGE_VARIATION, BACKGROUND_REMOVAL)",
                    other.chars().take(64).collect::<String>()
                ),
            ))
        }
    }
    let mut seed = None;
    if let Some(config) = request.image_generation_config {
        if let Some(n) = config.number_of_images {
            source.fields.push(("n", n.to_string()));
        }
        match (config.width, config.height) {
            (Some(w), Some(h)) => source.fields.push(("size", format!("{w}x{h}"))),
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "imageGenerationConfig",
                    "give both width and height, or neither",
                ))
            }
        }
        if let Some(s) = config.seed {
            seed = Some(s);
            source.fields.push(("seed", s.to_string()));
        }
        match config.quality.as_deref() {
            None => {}
            Some("standard") => source.fields.push(("quality", "standard".into())),
            Some("premium") => source.fields.push(("quality", "high".into())),
            Some(other) => {
                return Err(invalid(
                    "imageGenerationConfig.quality",
                    format!(
                        "quality '{}' is not standard or premium",
                        other.chars().take(32).collect::<String>()
                    ),
                ))
            }
        }
        if let Some(cfg) = config.cfg_scale {
            source.fields.push(("cfg_scale", cfg.to_string()));
        }
    }
    Ok(BedrockEdit {
        shape: BodyShape::Titan,
        source,
        mask_source,
        seed,
    })
}

fn stability_request(body: &[u8]) -> Result<BedrockEdit<'_>, GatewayError> {
    let request: StabilityRequest<'_> = serde_json::from_slice(body).map_err(json_error)?;
    let mut source = EditSource::default();
    source.images.push(
        request
            .image
            .ok_or_else(|| invalid("image", "image is required"))?
            .image(),
    );
    let mask_source = match request.mask {
        Some(mask) => {
            source.mask = Some(mask.image());
            MaskSource::WhiteEdit
        }
        None => MaskSource::Detect,
    };
    if source.mask.is_none() && request.prompt.as_deref().is_none_or(|p| p.trim().is_empty()) {
        // The remove-background service's body: an image, no prompt, no mask.
        source.fields.push(("type", "background_removal".to_string()));
    }
    push_text(&mut source.fields, "prompt", request.prompt);
    push_text(&mut source.fields, "negative_prompt", request.negative_prompt);
    if let Some(seed) = request.seed {
        source.fields.push(("seed", seed.to_string()));
    }
    push_text(&mut source.fields, "output_format", request.output_format);
    if let Some(grow) = request.grow_mask {
        source.fields.push(("grow_mask", grow.to_string()));
    }
    push_text(&mut source.fields, "style_preset", request.style_preset);
    Ok(BedrockEdit {
        shape: BodyShape::Stability,
        source,
        mask_source,
        seed: request.seed,
    })
}

/// Validates `edit` as the multipart parser validates a form (the GenAI route's
/// [`super::genai::build_form`]: the same limits and errors, each image's base64 decoded into
/// `spool` piece by piece), with the model the path named; the form's `mask_source` is the
/// body's convention.
pub fn build_form(
    edit: &BedrockEdit<'_>,
    model: (&str, &str),
    limits: &Limits,
    spool: &mut Spool,
) -> Result<EditForm, GatewayError> {
    let mut form = super::genai::build_form(&edit.source, model, limits, spool)?;
    if form.mask.is_some() {
        form.mask_source = edit.mask_source;
    }
    Ok(form)
}

/// The parts of the unified answer Bedrock's shapes need.
#[derive(Deserialize)]
struct Unified<'a> {
    #[serde(borrow, default)]
    data: Vec<UnifiedImage<'a>>,
}

#[derive(Deserialize)]
struct UnifiedImage<'a> {
    #[serde(borrow, default)]
    b64_json: Option<Cow<'a, str>>,
}

/// The `InvokeModel` answer for a unified answer, in `edit`'s shape: Titan's
/// `{"images":[…],"error":null}`, or Stability's `{"images":[…],"seeds":[…],
/// "finish_reasons":[null…]}` (each seed the one asked for plus the image's index, as the
/// gateway's own calls for `n > 1` use them; 0 when none was asked).
pub fn answer(shape: BodyShape, seed: Option<i64>, unified: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let answer: Unified<'_> = serde_json::from_slice(unified)
        .map_err(|e| GatewayError::Internal(format!("unified answer unreadable: {e}")))?;
    let images: Vec<&str> = answer.data.iter().filter_map(|d| d.b64_json.as_deref()).collect();
    let body = match shape {
        BodyShape::Titan => json!({"images": images, "error": null}),
        BodyShape::Stability => {
            let seeds: Vec<i64> = (0..images.len() as i64)
                .map(|i| seed.map_or(0, |s| s.saturating_add(i)))
                .collect();
            let reasons: Vec<Value> = images.iter().map(|_| Value::Null).collect();
            json!({"images": images, "seeds": seeds, "finish_reasons": reasons})
        }
    };
    serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))
}

/// The exception Bedrock names for an error answered with `status` and the gateway's error
/// `code`: what boto3 raises as the `ClientError`'s code.
pub fn exception_name(status: u16, code: &str) -> &'static str {
    match code {
        "signature_unknown_key" | "virtual_key_not_found" => return "UnrecognizedClientException",
        "signature_mismatch" | "signature_expired" | "signature_headers" | "signature_payload_hash" => {
            return "InvalidSignatureException"
        }
        "signature_malformed" => return "IncompleteSignatureException",
        "virtual_key_required" => return "MissingAuthenticationTokenException",
        _ => {}
    }
    match status {
        401 | 403 => "AccessDeniedException",
        404 => "ResourceNotFoundException",
        408 | 504 => "ModelTimeoutException",
        424 | 502 => "ModelErrorException",
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        400..=499 => "ValidationException",
        _ => "InternalServerException",
    }
}

/// Bedrock's error answer for an error answered with `status` whose Bifrost body is
/// `bifrost`: the `x-amzn-ErrorType` value and the body `{"message":"…"}`.
pub fn error_answer(status: u16, bifrost: &Value) -> (String, Vec<u8>) {
    let error = &bifrost["error"];
    let message = error["message"].as_str().unwrap_or("request failed");
    let code = error["code"].as_str().unwrap_or("");
    let exception = exception_name(status, code);
    let body = serde_json::to_vec(&json!({ "message": message })).unwrap_or_else(|_| b"{}".to_vec());
    (
        format!("{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        body,
    )
}

#[cfg(test)]
mod tests;
