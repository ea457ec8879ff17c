//! The Titan Image Generator v2 / Nova Canvas `InvokeModel` body (providers.md §6.2):
//!
//! ```json
//! {"taskType":"INPAINTING",
//!  "inPaintingParams":{"image":"<b64>","maskImage":"<b64 black = edit>","text":"…","negativeText":"…"},
//!  "imageGenerationConfig":{"numberOfImages":1,"width":1024,"height":1024,"seed":42,"quality":"standard","cfgScale":6.5}}
//! ```
//!
//! `type` → `taskType`: `inpainting` → `INPAINTING` (`inPaintingParams`), `outpainting` →
//! `OUTPAINTING` (`outPaintingParams`, `outPaintingMode` `DEFAULT`), `background_removal` →
//! `BACKGROUND_REMOVAL` (`backgroundRemovalParams {image}`, no `imageGenerationConfig`). No
//! `type`: `INPAINTING` with a mask, else `IMAGE_VARIATION` (`imageVariationParams {images,
//! text, negativeText}`, 1–5 images). Every task but `IMAGE_VARIATION` takes one image.
//!
//! The mask (OpenAI's convention, alpha 0 = edit) is converted to an opaque 8-bit RGB PNG of
//! pure black and white: black = edit for `INPAINTING`, white = edit for `OUTPAINTING`. Images
//! are sent from the spool as base64 encoded on the fly; only the mask is held in memory.
//!
//! `n` → `numberOfImages`, `size` `WxH` → `width`/`height` (`auto` omitted), `seed`,
//! `quality` (`low`/`medium`/`standard` → `standard`, `high`/`hd`/`premium` → `premium`,
//! `auto` omitted), `negative_prompt` → `negativeText`, the extra form field `cfg_scale` →
//! `cfgScale`. Other fields are dropped; the answer is PNG.

use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::MaskConvention;
use crate::providers::capabilities::edit_type_name;
use crate::providers::kernel::jsonbody::JsonWriter;
use crate::providers::BodySegment;
use serde::Serialize;

/// A Titan/Nova task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `INPAINTING`: the mask's black pixels are replaced.
    Inpainting,
    /// `OUTPAINTING`: the mask's white pixels are replaced.
    Outpainting,
    /// `BACKGROUND_REMOVAL`.
    BackgroundRemoval,
    /// `IMAGE_VARIATION`: variations of 1–5 images.
    ImageVariation,
}

impl Task {
    /// The task for the form's `type` and mask.
    pub fn of(form: &EditForm) -> Task {
        match (form.edit_type, form.mask.is_some()) {
            (Some(EditType::Inpainting), _) | (None, true) => Task::Inpainting,
            (Some(EditType::Outpainting), _) => Task::Outpainting,
            (Some(EditType::BackgroundRemoval), _) => Task::BackgroundRemoval,
            (None, false) => Task::ImageVariation,
        }
    }

    /// `taskType`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Inpainting => "INPAINTING",
            Task::Outpainting => "OUTPAINTING",
            Task::BackgroundRemoval => "BACKGROUND_REMOVAL",
            Task::ImageVariation => "IMAGE_VARIATION",
        }
    }

    /// The mask the task takes: an 8-bit RGB PNG, pure black and white, black = edit for
    /// inpainting and white = edit for outpainting (greyscale white = edit otherwise, where
    /// the mask is refused anyway).
    pub fn mask_convention(self) -> MaskConvention {
        match self {
            Task::Inpainting => MaskConvention::RgbBlackEdit,
            Task::Outpainting => MaskConvention::RgbWhiteEdit,
            Task::BackgroundRemoval | Task::ImageVariation => MaskConvention::GrayWhiteEdit,
        }
    }
}

/// Largest `seed` Titan accepts.
pub const MAX_SEED: i64 = 2_147_483_646;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    number_of_images: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cfg_scale: Option<f64>,
}

fn unsupported(provider: &str, param: &str, message: String) -> GatewayError {
    GatewayError::Unsupported {
        provider: provider.to_string(),
        param: param.to_string(),
        message,
    }
}

fn invalid(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        param: Some(param.to_string()),
        message,
    }
}

/// `width`/`height` for `size` (`None` for no size or `auto`).
fn dimensions(form: &EditForm) -> Result<Option<(u32, u32)>, GatewayError> {
    let Some(size) = form.size.as_deref().filter(|s| *s != "auto") else {
        return Ok(None);
    };
    size.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .map(Some)
        .ok_or_else(|| invalid("size", format!("size must be WxH or auto, not '{size}'")))
}

/// `quality` for OpenAI's values (`None`: let the model choose).
fn quality<'a>(form: &'a EditForm, provider: &str) -> Result<Option<&'a str>, GatewayError> {
    match form.quality.as_deref() {
        None | Some("auto") => Ok(None),
        Some("low" | "medium" | "standard") => Ok(Some("standard")),
        Some("high" | "hd" | "premium") => Ok(Some("premium")),
        Some(other) => Err(unsupported(
            provider,
            "quality",
            format!("quality={other} with Titan/Nova (low, medium, standard, high, hd, premium, auto)"),
        )),
    }
}

/// `cfgScale` from the extra form field `cfg_scale` (1.1–10.0).
fn cfg_scale(form: &EditForm) -> Result<Option<f64>, GatewayError> {
    let Some((_, value)) = form.extra_text.iter().find(|(k, _)| k == "cfg_scale") else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (1.1..=10.0).contains(v))
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "cfg_scale",
                format!("cfg_scale must be a number from 1.1 to 10, not '{value}'"),
            )
        })
}

/// The body for `form` and `task` (see the module docs); `mask` is the converted mask
/// ([`Task::mask_convention`]) when the form has one. Fails, before any upstream call, on a combination
/// the task cannot serve.
pub fn body(
    form: &EditForm,
    task: Task,
    mask: Option<&[u8]>,
    provider: &str,
) -> Result<Vec<BodySegment>, GatewayError> {
    let type_name = form.edit_type.map_or("(none)", edit_type_name);
    if task != Task::ImageVariation && form.images.len() > 1 {
        return Err(unsupported(
            provider,
            "image",
            format!(
                "{} input images with {} (type={type_name}); only IMAGE_VARIATION (no type, no mask) takes several",
                form.images.len(),
                task.name()
            ),
        ));
    }
    match (task, mask.is_some()) {
        (Task::Inpainting | Task::Outpainting, false) => {
            return Err(invalid(
                "mask",
                format!(
                    "type={type_name} with Titan/Nova needs a mask (fully transparent pixels mark the area to edit)"
                ),
            ))
        }
        (Task::BackgroundRemoval, true) => {
            return Err(unsupported(
                provider,
                "mask",
                "a mask with type=background_removal (Titan/Nova find the background themselves)".into(),
            ))
        }
        _ => {}
    }
    if task == Task::BackgroundRemoval && form.n.unwrap_or(1) > 1 {
        return Err(unsupported(provider, "n", "n > 1 with type=background_removal".into()));
    }
    if let Some(seed) = form.seed.filter(|s| !(0..=MAX_SEED).contains(s)) {
        return Err(invalid(
            "seed",
            format!("seed must be from 0 to {MAX_SEED}, not {seed}"),
        ));
    }
    let config = GenerationConfig {
        number_of_images: form.n.unwrap_or(1),
        width: dimensions(form)?.map(|d| d.0),
        height: dimensions(form)?.map(|d| d.1),
        seed: form.seed,
        quality: quality(form, provider)?,
        cfg_scale: cfg_scale(form)?,
    };
    let text = form.prompt.as_deref().filter(|p| !p.trim().is_empty());
    let negative = form.negative_prompt.as_deref().filter(|p| !p.trim().is_empty());
    let mut w = JsonWriter::with_capacity(
        2 * form.images.len() + 2,
        512 + mask.map_or(0, |m| m.len() * 4 / 3 + 4) + text.map_or(0, str::len),
    );
    w.raw(&format!("{{\"taskType\":\"{}\",", task.name()));
    let params = match task {
        Task::Inpainting => "inPaintingParams",
        Task::Outpainting => "outPaintingParams",
        Task::BackgroundRemoval => "backgroundRemovalParams",
        Task::ImageVariation => "imageVariationParams",
    };
    w.raw(&format!("\"{params}\":{{"));
    if task == Task::ImageVariation {
        w.raw("\"images\":[");
        for (i, image) in form.images.iter().enumerate() {
            w.raw(if i == 0 { "\"" } else { ",\"" });
            w.base64_of_spool(image.range);
            w.raw("\"");
        }
        w.raw("]");
    } else if let Some(image) = form.images.first() {
        w.raw("\"image\":\"");
        w.base64_of_spool(image.range);
        w.raw("\"");
    }
    if let Some(m) = mask {
        w.raw(",\"maskImage\":\"");
        w.base64_of_bytes(m);
        w.raw("\"");
    }
    if task != Task::BackgroundRemoval {
        if let Some(t) = text {
            w.raw(",\"text\":");
            w.json(t)?;
        }
        if let Some(n) = negative {
            w.raw(",\"negativeText\":");
            w.json(n)?;
        }
    }
    if task == Task::Outpainting {
        w.raw(",\"outPaintingMode\":\"DEFAULT\"");
    }
    w.raw("}");
    if task != Task::BackgroundRemoval {
        w.raw(",\"imageGenerationConfig\":");
        w.json(&config)?;
    }
    w.raw("}");
    Ok(w.finish())
}
