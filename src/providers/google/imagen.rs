//! The Imagen `:predict` edit request, as google-genai's `edit_image` sends it
//! (providers.md §5.2):
//!
//! ```json
//! {"instances":[{"prompt":"…","referenceImages":[
//!   {"referenceType":"REFERENCE_TYPE_RAW","referenceId":1,
//!    "referenceImage":{"bytesBase64Encoded":"<image 1>","mimeType":"image/png"}}, …,
//!   {"referenceType":"REFERENCE_TYPE_MASK","referenceId":n+1,
//!    "referenceImage":{"bytesBase64Encoded":"<mask>","mimeType":"image/png"},
//!    "maskImageConfig":{"maskMode":"MASK_MODE_USER_PROVIDED","dilation":0.01}}]}],
//!  "parameters":{"editMode":"…","sampleCount":n,"includeRaiReason":true,"seed":…,
//!   "negativePrompt":"…","editConfig":{"baseSteps":…},
//!   "outputOptions":{"mimeType":"image/jpeg","compressionQuality":…}}}
//! ```
//!
//! Each input image is a spool range sent as base64 encoded on the fly; only the mask, which
//! is converted, is held in memory.
//!
//! `type` → `editMode`: `inpainting` → `EDIT_MODE_INPAINT_INSERTION`, `outpainting` →
//! `EDIT_MODE_OUTPAINT` (both need a mask); `background_removal` → `EDIT_MODE_BGSWAP` with
//! Imagen's automatic background mask (`MASK_MODE_BACKGROUND`, no mask image) or the client's
//! mask when one is sent. Imagen cannot return transparency, so "removal" replaces the
//! background with what the prompt describes, [`BACKGROUND_PROMPT`] when there is no prompt.
//! No `type`: `EDIT_MODE_INPAINT_INSERTION` with a mask, `EDIT_MODE_DEFAULT` (mask-free,
//! prompt-driven) without.
//!
//! The mask: the unified mask follows OpenAI (a PNG whose fully transparent pixels are
//! edited); Imagen wants an opaque image whose white pixels are edited. The gateway converts it
//! before the build ([`crate::imaging::MaskConvention::GrayWhiteEdit`], see
//! [`crate::providers::kernel::masks`]: a mask that is not a PNG with transparency, of another size
//! than the first image, or over the pixel budget is refused with a 400 on `mask`).

use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::{ConvertedMask, ImageKind, MaskConvention};
use crate::providers::kernel::errors::no_image_error;
use crate::providers::kernel::jsonbody::JsonWriter;
use crate::providers::kernel::post::{auth_header, json_post};
use crate::providers::kernel::unified::{write_images_response, AnswerImage};
use crate::providers::{BodySegment, ResponseContext, UnifiedAnswer, UpstreamRequest};
use crate::route::Target;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The prompt of a `background_removal` request that has none: the new background.
pub const BACKGROUND_PROMPT: &str = "a plain white background";

/// `maskImageConfig.dilation` of a client's mask (google-genai's captured value).
pub const USER_MASK_DILATION: f64 = 0.01;

fn invalid_mask(message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        param: Some("mask".into()),
        message,
    }
}

/// The mask reference a request carries.
enum MaskReference<'a> {
    /// The client's mask, converted.
    User(&'a ConvertedMask),
    /// Imagen computes the background mask itself.
    Background,
}

/// `editMode` and the mask reference for the form's `type` and mask.
fn edit_mode<'a>(
    edit_type: Option<EditType>,
    mask: Option<&'a ConvertedMask>,
) -> Result<(&'static str, Option<MaskReference<'a>>), GatewayError> {
    use MaskReference::{Background, User};
    Ok(match (edit_type, mask) {
        (Some(EditType::Inpainting) | None, Some(m)) => ("EDIT_MODE_INPAINT_INSERTION", Some(User(m))),
        (Some(EditType::Outpainting), Some(m)) => ("EDIT_MODE_OUTPAINT", Some(User(m))),
        (Some(t @ (EditType::Inpainting | EditType::Outpainting)), None) => {
            return Err(invalid_mask(format!(
                "type={} with an Imagen model needs a mask (fully transparent pixels mark the area to edit)",
                crate::providers::capabilities::edit_type_name(t)
            )))
        }
        (Some(EditType::BackgroundRemoval), Some(m)) => ("EDIT_MODE_BGSWAP", Some(User(m))),
        (Some(EditType::BackgroundRemoval), None) => ("EDIT_MODE_BGSWAP", Some(Background)),
        (None, None) => ("EDIT_MODE_DEFAULT", None),
    })
}

/// `outputOptions.mimeType` for `output_format` (Imagen writes PNG and JPEG only).
fn output_mime(form: &EditForm, provider: &str) -> Result<Option<&'static str>, GatewayError> {
    match form.output_format.as_deref() {
        None => Ok(None),
        Some("png") => Ok(Some("image/png")),
        Some("jpeg") => Ok(Some("image/jpeg")),
        Some(other) => Err(GatewayError::Unsupported {
            provider: provider.to_string(),
            param: "output_format".into(),
            message: format!("output_format={other} with Imagen (png or jpeg)"),
        }),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Parameters<'a> {
    edit_mode: &'static str,
    sample_count: u32,
    include_rai_reason: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    negative_prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edit_config: Option<EditConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_options: Option<OutputOptions>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EditConfig {
    base_steps: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutputOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    compression_quality: Option<u32>,
}

/// The `:predict` body for `form` (see the module docs); `mask` is the converted mask, if the
/// form has one. Fails (before any upstream call) on a combination Imagen cannot serve.
pub fn body(form: &EditForm, mask: Option<&ConvertedMask>, provider: &str) -> Result<Vec<BodySegment>, GatewayError> {
    let (mode, mask_ref) = edit_mode(form.edit_type, mask)?;
    let mime = output_mime(form, provider)?;
    let prompt = match form.prompt.as_deref() {
        Some(p) if !p.trim().is_empty() => p,
        _ => BACKGROUND_PROMPT,
    };
    let mut w = JsonWriter::with_capacity(
        2 * form.images.len() + 2,
        512 + mask.map_or(0, |m| m.png.len() * 4 / 3 + 4),
    );
    w.raw("{\"instances\":[{\"prompt\":");
    w.json(prompt)?;
    w.raw(",\"referenceImages\":[");
    let mut id = 0u32;
    for image in &form.images {
        id += 1;
        if id > 1 {
            w.raw(",");
        }
        w.raw(&format!(
            "{{\"referenceType\":\"REFERENCE_TYPE_RAW\",\"referenceId\":{id},\"referenceImage\":{{\"bytesBase64Encoded\":\""
        ));
        w.base64_of_spool(image.range);
        w.raw("\",\"mimeType\":");
        w.json(image.kind.unwrap_or(ImageKind::Png).mime())?;
        w.raw("}}");
    }
    if let Some(reference) = mask_ref {
        id += 1;
        if id > 1 {
            w.raw(",");
        }
        w.raw(&format!(
            "{{\"referenceType\":\"REFERENCE_TYPE_MASK\",\"referenceId\":{id},"
        ));
        match reference {
            MaskReference::User(m) => {
                w.raw("\"referenceImage\":{\"bytesBase64Encoded\":\"");
                w.base64_of_bytes(&m.png);
                w.raw(&format!(
                    "\",\"mimeType\":\"image/png\"}},\"maskImageConfig\":{{\"maskMode\":\"MASK_MODE_USER_PROVIDED\",\"dilation\":{USER_MASK_DILATION}}}}}"
                ));
            }
            MaskReference::Background => w.raw("\"maskImageConfig\":{\"maskMode\":\"MASK_MODE_BACKGROUND\"}}"),
        }
    }
    w.raw("]}],\"parameters\":");
    let output_options = (mime.is_some() || form.output_compression.is_some()).then_some(OutputOptions {
        mime_type: mime,
        compression_quality: form.output_compression,
    });
    w.json(&Parameters {
        edit_mode: mode,
        sample_count: form.n.unwrap_or(1),
        include_rai_reason: true,
        seed: form.seed,
        negative_prompt: form.negative_prompt.as_deref(),
        edit_config: form.num_inference_steps.map(|base_steps| EditConfig { base_steps }),
        output_options,
    })?;
    w.raw("}");
    Ok(w.finish())
}

/// The Imagen convention for `form`'s mask on `model`: opaque greyscale, white = edit (no
/// convention for Gemini models, which take no mask, or a form without one).
pub fn mask_convention(form: &EditForm, model: &str) -> Option<MaskConvention> {
    (form.mask.is_some() && super::is_imagen(model)).then_some(MaskConvention::GrayWhiteEdit)
}

/// The `:predict` request for `form` to `target`'s model at `model_path` (`:predict` is
/// appended), the key in `x-goog-api-key` or as a Bearer token; `mask` is the form's mask
/// converted by the gateway. A form with a mask and no converted mask is an internal error
/// (the gateway always converts it).
pub fn predict_request(
    form: &EditForm,
    mask: Option<&ConvertedMask>,
    target: &Target,
    model_path: String,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    if form.mask.is_some() && mask.is_none() {
        return Err(GatewayError::Internal(
            "an Imagen mask must be converted from the spool".into(),
        ));
    }
    let body = body(form, mask, &target.provider.name)?;
    Ok(json_post(
        format!("{model_path}:predict"),
        auth_header(target, "x-goog-api-key")?,
        "application/json",
        request_id,
        body,
    ))
}

/// Imagen's answer, borrowed from the body (the base64 is never copied into a `String`).
#[derive(Deserialize)]
struct PredictResponse<'a> {
    #[serde(borrow, default)]
    predictions: Option<Vec<Prediction<'a>>>,
}

#[derive(Deserialize)]
struct Prediction<'a> {
    #[serde(borrow, rename = "bytesBase64Encoded")]
    b64: Option<&'a RawValue>,
    #[serde(borrow, rename = "mimeType")]
    mime: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "raiFilteredReason")]
    filtered: Option<Cow<'a, str>>,
}

/// A 2xx `:predict` answer → the unified answer, or `moderation_blocked` when every image was
/// filtered, or 502 when the body is not Imagen's JSON.
pub fn convert_predictions(body: &Bytes, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    let protocol = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let parsed: PredictResponse<'_> =
        serde_json::from_slice(body).map_err(|e| protocol(format!("not an Imagen :predict answer: {e}")))?;
    let predictions = parsed.predictions.unwrap_or_default();
    let mut images = Vec::with_capacity(predictions.len());
    for p in &predictions {
        if let Some(b64) = p.b64 {
            if !b64.get().starts_with('"') {
                return Err(protocol("bytesBase64Encoded is not a string".into()));
            }
            images.push(AnswerImage {
                b64: b64.get(),
                mime: p.mime.as_deref(),
            });
        }
    }
    if images.is_empty() {
        let reasons: Vec<&str> = predictions.iter().filter_map(|p| p.filtered.as_deref()).collect();
        let why = if reasons.is_empty() {
            "every image was filtered (no predictions)".to_string()
        } else {
            reasons.join("; ")
        };
        return Err(no_image_error(cx.provider, &why));
    }
    write_images_response(std::slice::from_ref(body), &images, None, cx.created, cx)
}
