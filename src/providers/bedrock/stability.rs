//! Stability AI image services on Bedrock (providers.md §6.3): a flat JSON body, one image in
//! and one out, the service chosen by the model id. `n > 1` is served by the gateway as n calls
//! (the families' `n_by_calls`), call i with `seed + i`.
//!
//! ```json
//! {"image":"<b64>","prompt":"…","mask":"<b64 white = edit>","negative_prompt":"…","seed":42,"output_format":"png"}
//! ```
//!
//! Services refract translates to (a `type` the model's service cannot do is refused by the
//! capability check, before any call):
//! - `…stable-image-inpaint…`: `type` inpainting (or none); `prompt` required; the mask
//!   (converted to white = edit, opaque grayscale) optional: without it Stability uses the
//!   image's alpha channel.
//! - `…stable-image-erase-object…`: `type` inpainting (or none); image, mask, seed,
//!   output_format (no prompt).
//! - `…stable-image-remove-background…`: `type` background_removal (or none); image and
//!   output_format only.
//!
//! Other Stability services (outpaint, search-and-replace, recolor, control, style, upscale)
//! need fields the unified request does not carry and are refused (400, `model`).
//! `output_format` `png` (default), `jpeg` or `webp` (remove-background: `png` or `webp`).

use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::kernel::jsonbody::JsonWriter;
use crate::providers::BodySegment;

/// A Stability service refract can call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// `stable-image-inpaint`.
    Inpaint,
    /// `stable-image-erase-object`.
    EraseObject,
    /// `stable-image-remove-background`.
    RemoveBackground,
}

/// Largest `seed` Stability accepts.
pub const MAX_SEED: i64 = 4_294_967_294;

/// The service of a base model id such as `stability.stable-image-inpaint-v1:0` (`None`: not
/// one refract translates to).
pub fn service(base_model: &str) -> Option<Service> {
    let name = base_model.strip_prefix("stability.")?;
    if name.contains("inpaint") {
        Some(Service::Inpaint)
    } else if name.contains("erase-object") {
        Some(Service::EraseObject)
    } else if name.contains("remove-background") {
        Some(Service::RemoveBackground)
    } else {
        None
    }
}

fn unsupported(provider: &str, param: &str, message: String) -> GatewayError {
    GatewayError::Unsupported {
        provider: provider.to_string(),
        param: param.to_string(),
        message,
    }
}

/// The body for `form` (see the module docs); `mask` is the mask converted to white = edit
/// when the form has one. Fails, before any upstream call, on what the service cannot do.
pub fn body(
    form: &EditForm,
    service: Service,
    mask: Option<&[u8]>,
    provider: &str,
) -> Result<Vec<BodySegment>, GatewayError> {
    let format = match (form.output_format.as_deref(), service) {
        (None, _) => "png",
        (Some(f @ ("png" | "webp")), _) => f,
        (Some("jpeg"), Service::Inpaint | Service::EraseObject) => "jpeg",
        (Some(other), _) => {
            return Err(unsupported(
                provider,
                "output_format",
                format!("output_format={other} with this Stability service"),
            ))
        }
    };
    if let Some(seed) = form.seed.filter(|s| !(0..=MAX_SEED).contains(s)) {
        return Err(GatewayError::InvalidRequest {
            param: Some("seed".into()),
            message: format!("seed must be from 0 to {MAX_SEED}, not {seed}"),
        });
    }
    if service == Service::RemoveBackground && mask.is_some() {
        return Err(unsupported(
            provider,
            "mask",
            "a mask with Stability remove-background".into(),
        ));
    }
    let prompt = form.prompt.as_deref().filter(|p| !p.trim().is_empty());
    if service == Service::Inpaint && prompt.is_none() {
        return Err(GatewayError::InvalidRequest {
            param: Some("prompt".into()),
            message: "Stability inpainting needs a prompt".into(),
        });
    }
    let Some(image) = form.images.first() else {
        return Err(GatewayError::InvalidRequest {
            param: Some("image".into()),
            message: "an image is required".into(),
        });
    };
    let mut w = JsonWriter::with_capacity(3, 256 + mask.map_or(0, |m| m.len() * 4 / 3 + 4));
    w.raw("{\"image\":\"");
    w.base64_of_spool(image.range);
    w.raw("\"");
    if let Some(m) = mask {
        w.raw(",\"mask\":\"");
        w.base64_of_bytes(m);
        w.raw("\"");
    }
    if service == Service::Inpaint {
        w.raw(",\"prompt\":");
        w.json(&prompt)?;
        if let Some(n) = form.negative_prompt.as_deref().filter(|p| !p.trim().is_empty()) {
            w.raw(",\"negative_prompt\":");
            w.json(n)?;
        }
    }
    if let Some(seed) = form.seed.filter(|_| service != Service::RemoveBackground) {
        w.raw(&format!(",\"seed\":{seed}"));
    }
    w.raw(&format!(",\"output_format\":\"{format}\"}}"));
    Ok(w.finish())
}
