//! Kind `stability`: Stability AI's REST API, v2beta edit services (providers.md §7).
//!
//! Request: `POST {base}/v2beta/stable-image/edit/{service}` with `Authorization: Bearer`,
//! `Accept: application/json` and a multipart body (written with the kernel's
//! [`super::kernel::multipart::MultipartWriter`]): `image` (the first upload, streamed from the spool), `mask`, `prompt`,
//! `negative_prompt`, `seed`, `output_format`, and for outpainting `left`/`right`/`up`/`down`.
//! The model name is not sent: the service is the model.
//!
//! `type` → service:
//! - `inpainting` → `edit/inpaint`. The mask is **converted** from the unified convention
//!   (alpha 0 = edit) to Stability's (an opaque 8-bit grayscale PNG, white = edit), as for
//!   Imagen (by the gateway before the build, [`crate::providers::kernel::masks`]: a mask without
//!   transparency, of another size than the first image, or over the pixel budget is a 400 on
//!   `mask`). Without a mask the image is sent
//!   alone and Stability takes its alpha channel as the mask.
//! - `outpainting` → `edit/outpaint`. The border to add is `left`/`right`/`up`/`down` pixels:
//!   taken from those form fields when the client sends any of them (extra form fields, e.g. the
//!   OpenAI SDK's `extra_body`), else derived from `size`: the output `WxH` minus the input's
//!   size (read from a PNG's header), split evenly (left and up get the smaller half). No size,
//!   a size smaller than the input, an unreadable input size or a border over 2000 px per side
//!   is a 400 on `size`. A mask is refused (400 on `mask`).
//! - `background_removal` → `edit/remove-background`: only `image` and `output_format` are
//!   sent (a mask is refused).
//! - no `type`: `edit/inpaint` with a mask; without a mask the request is refused (400 on
//!   `type`): Stability has no mask-free, prompt-only edit (`search-and-replace` needs a
//!   `search_prompt` the unified request cannot carry), so the client must say what it wants.
//!
//! `seed` must be 0–4294967294 (0: random) and `output_format` png, jpeg or webp, else 400.
//! One image per call: the capability ([`N_BY_CALLS`]) has the gateway make n calls for `n > 1`,
//! call i with `seed + i` (a seed of 0, random, stays 0). `size` outside outpainting,
//! `quality`, `background`, `num_inference_steps`, `output_compression` are dropped.
//!
//! Answer: `{"image":"<b64>","finish_reason":"SUCCESS"|"CONTENT_FILTERED","seed":…}` → the
//! unified answer (the base64 copied once; `output_format` sniffed from its first bytes);
//! `CONTENT_FILTERED` → 400 `moderation_blocked`. Errors `{"id","name","errors":[…]}` keep the
//! provider's status; the message is the `errors` joined, `type` and `code` the `name`.

use super::capabilities::{any_model, Capabilities, ModelFamily, NByCalls, Streaming};
use super::kernel::errors::{no_image_error, provider_error};
use super::kernel::multipart::{boundary, multipart_head, MultipartWriter};
use super::kernel::post::auth_header;
use super::kernel::size::size_wxh;
use super::kernel::unified::{write_images_response, AnswerImage};
use super::{BuildScope, ProviderAdapter, ResponseContext, UpstreamRequest, UpstreamResponse};
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::{self, ImageKind, MaskConvention};
use crate::providers::UnifiedAnswer;
use crate::spool::{Spool, SpoolRange};
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

/// The adapter for kind `stability`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StabilityAdapter;

/// Largest `seed` Stability accepts.
pub const MAX_SEED: i64 = 4_294_967_294;

/// Largest border per side for outpainting, in pixels.
pub const MAX_BORDER: u32 = 2000;

/// `n > 1` with Stability (REST, and its services on Bedrock): n calls of one image, as the
/// references say (providers.md §6.3, §7.4: "loop for `n`"); call i sends `seed + i` within
/// 1–[`MAX_SEED`] (0 means random and stays 0).
pub const N_BY_CALLS: NByCalls = NByCalls { seeds: (1, MAX_SEED) };

/// Stability's edit services. Limits [doc/unverified]: one image per call (more by
/// [`N_BY_CALLS`]), a request of about 10 MiB (so 10 MB per image), `output_format`
/// png/jpeg/webp.
pub static STABILITY_CAPABILITIES: Capabilities = Capabilities {
    mask: true,
    max_n: 1,
    n_by_calls: Some(N_BY_CALLS),
    max_images: 1,
    max_image_bytes: 10_000_000,
    edit_types: &[EditType::Inpainting, EditType::Outpainting, EditType::BackgroundRemoval],
    url_output: false,
    sizes: "outpainting: the output `WxH` (the border is derived from it); else ignored",
    streaming: Streaming::Synthesized,
    extra_fields: "seed, negative_prompt, output_format (png, jpeg, webp); outpainting: left, right, up, down",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "v2beta edit services (inpaint, outpaint, remove-background)",
    matches: any_model,
    capabilities: STABILITY_CAPABILITIES,
}];

fn invalid(param: &str, message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        param: Some(param.into()),
        message,
    }
}

/// The service a form asks for (see the module docs); `Err` is a 400.
fn service(form: &EditForm) -> Result<&'static str, GatewayError> {
    match (form.edit_type, form.mask.is_some()) {
        (Some(EditType::Inpainting), _) | (None, true) => Ok("inpaint"),
        (Some(EditType::Outpainting), false) => Ok("outpaint"),
        (Some(EditType::BackgroundRemoval), false) => Ok("remove-background"),
        (Some(t @ (EditType::Outpainting | EditType::BackgroundRemoval)), true) => Err(invalid(
            "mask",
            format!(
                "type={} with Stability takes no mask",
                super::capabilities::edit_type_name(t)
            ),
        )),
        (None, false) => Err(invalid(
            "type",
            "Stability has no mask-free edit: send type=inpainting (with a mask, or an image whose \
             transparent pixels mark the area), outpainting (with size) or background_removal"
                .into(),
        )),
    }
}

/// The first image's width and height when it is a PNG (read from its header).
fn png_size(form: &EditForm, spool: &Spool) -> Result<Option<(u32, u32)>, GatewayError> {
    let Some(first) = form.images.first().filter(|i| i.kind == Some(ImageKind::Png)) else {
        return Ok(None);
    };
    let head = spool
        .read_all(SpoolRange {
            start: first.range.start,
            len: first.range.len.min(24),
        })
        .map_err(|e| GatewayError::Internal(format!("spool read failed: {e}")))?;
    Ok(imaging::png_dimensions(&head))
}

/// The outpainting border `[left, right, up, down]`: the client's fields, else derived from
/// `size` and the input's size (see the module docs).
fn border(form: &EditForm, input: Option<(u32, u32)>) -> Result<[u32; 4], GatewayError> {
    const SIDES: [&str; 4] = ["left", "right", "up", "down"];
    let mut explicit = [None; 4];
    for (name, value) in &form.extra_text {
        if let Some(i) = SIDES.iter().position(|s| s == name) {
            let v = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| *v <= MAX_BORDER)
                .ok_or_else(|| invalid(name, format!("{name} must be an integer from 0 to {MAX_BORDER}")))?;
            explicit[i] = Some(v);
        }
    }
    let sides = if explicit.iter().any(Option::is_some) {
        explicit.map(|v| v.unwrap_or(0))
    } else {
        let size_error = |why: &str| {
            invalid(
                "size",
                format!("outpainting with Stability needs size=WxH larger than the input image ({why}), or left/right/up/down in pixels"),
            )
        };
        let (w, h) = size_wxh(form.size.as_deref()).ok_or_else(|| size_error("no size given"))?;
        let (iw, ih) = input.ok_or_else(|| size_error("the input size is known for PNG images only"))?;
        if w < iw || h < ih {
            return Err(size_error(&format!("{w}x{h} is smaller than the input's {iw}x{ih}")));
        }
        let (dx, dy) = (w - iw, h - ih);
        let sides = [dx / 2, dx - dx / 2, dy / 2, dy - dy / 2];
        if sides.iter().any(|s| *s > MAX_BORDER) {
            return Err(size_error(&format!("at most {MAX_BORDER} px per side")));
        }
        sides
    };
    if sides.iter().all(|s| *s == 0) {
        return Err(invalid(
            "size",
            "outpainting with Stability needs a border: a size larger than the input, or left/right/up/down".into(),
        ));
    }
    Ok(sides)
}

/// Builds the request for `scope`; `mask` is the converted mask PNG and `input` the first
/// image's size (when known). Fails with a 400 before any upstream call on what Stability
/// cannot serve.
fn build(
    scope: &BuildScope<'_>,
    mask: Option<Vec<u8>>,
    input: Option<(u32, u32)>,
) -> Result<UpstreamRequest, GatewayError> {
    let BuildScope {
        form,
        target,
        request_id,
        nonce,
        ..
    } = *scope;
    let service = service(form)?;
    let image = form
        .images
        .first()
        .ok_or_else(|| invalid("image", "an image is required".into()))?;
    let kind = image.kind.unwrap_or(ImageKind::Png);
    if let Some(seed) = form.seed {
        if !(0..=MAX_SEED).contains(&seed) {
            return Err(invalid(
                "seed",
                format!("seed must be from 0 to {MAX_SEED} with Stability"),
            ));
        }
    }
    if let Some(f) = form
        .output_format
        .as_deref()
        .filter(|f| !["png", "jpeg", "webp"].contains(f))
    {
        return Err(GatewayError::Unsupported {
            provider: target.provider.name.clone(),
            param: "output_format".into(),
            message: format!("output_format={f} (png, jpeg or webp)"),
        });
    }
    let boundary = boundary(nonce);
    let mut req = multipart_head(
        format!("{}/v2beta/stable-image/edit/{service}", target.provider.base_url.path),
        auth_header(target, "authorization")?,
        request_id,
        &boundary,
    );
    let mut w = MultipartWriter::new(boundary);
    w.file("image", &format!("image.{}", kind.extension()), kind.mime(), image);
    if let Some(png) = mask {
        w.file_bytes("mask", "mask.png", "image/png", Bytes::from(png));
    }
    if service != "remove-background" {
        if let Some(p) = &form.prompt {
            w.text("prompt", p);
        }
        if let Some(p) = &form.negative_prompt {
            w.text("negative_prompt", p);
        }
        if let Some(seed) = form.seed {
            w.text("seed", &seed.to_string());
        }
    }
    if service == "outpaint" {
        let sides = border(form, input)?;
        for (name, v) in ["left", "right", "up", "down"].iter().zip(sides) {
            w.text(name, &v.to_string());
        }
    }
    if let Some(f) = &form.output_format {
        w.text("output_format", f);
    }
    req.body = w.finish();
    Ok(req)
}

impl ProviderAdapter for StabilityAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// Inpainting takes an opaque greyscale mask, white = edit; a type that takes no mask
    /// asks for none (the build refuses it, before anything is decoded).
    fn mask_convention(&self, form: &EditForm, _model: &str) -> Option<MaskConvention> {
        (form.mask.is_some() && service(form).is_ok_and(|s| s == "inpaint")).then_some(MaskConvention::GrayWhiteEdit)
    }

    /// The mask converted by the gateway (`scope.mask`), and for outpainting the first image's
    /// size read from the spool.
    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope { form, spool, .. } = *scope;
        service(form)?;
        if form.mask.is_some() && scope.mask.is_none() {
            return Err(GatewayError::Internal(
                "kind stability needs the mask converted by the gateway".into(),
            ));
        }
        let mask = scope.mask.map(|m| m.png.clone());
        let input = if form.edit_type == Some(EditType::Outpainting) {
            png_size(form, spool)?
        } else {
            None
        };
        build(scope, mask, input)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        if !(200..300).contains(&resp.status) {
            return Err(stability_error(cx.provider, resp));
        }
        convert_answer(&resp.body, cx)
    }
}

/// Stability's JSON answer, borrowed from the body.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    image: Option<&'a RawValue>,
    #[serde(borrow)]
    finish_reason: Option<std::borrow::Cow<'a, str>>,
}

/// The MIME type of a base64 image, sniffed from its first bytes.
fn sniff_b64(b64: &str) -> Option<&'static str> {
    let prefix = b64.get(..16).unwrap_or(b64);
    let head = base64::engine::general_purpose::STANDARD.decode(prefix).ok()?;
    imaging::sniff(&head).map(ImageKind::mime)
}

/// A 2xx answer → the unified answer, `moderation_blocked` when filtered, 502 when it is not
/// Stability's JSON.
fn convert_answer(body: &Bytes, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    let protocol = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let answer: Answer<'_> =
        serde_json::from_slice(body).map_err(|e| protocol(format!("not a Stability edit answer: {e}")))?;
    let reason = answer.finish_reason.as_deref().unwrap_or("SUCCESS");
    if reason == "CONTENT_FILTERED" {
        return Err(no_image_error(cx.provider, "CONTENT_FILTERED"));
    }
    let b64 = answer
        .image
        .filter(|i| i.get().starts_with('"'))
        .ok_or_else(|| protocol("the answer has no 'image' string".into()))?;
    let mime = sniff_b64(b64.get().trim_matches('"'));
    let image = AnswerImage { b64: b64.get(), mime };
    write_images_response(std::slice::from_ref(body), &[image], None, cx.created, cx)
}

/// A Stability error (`{"id","name","errors":[…]}`) as a provider error keeping the status:
/// `message` the reasons joined, `type` and `code` the `name`. Other bodies are handled like
/// OpenAI errors.
pub fn stability_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let Some(obj) = parsed
        .as_ref()
        .and_then(Value::as_object)
        .filter(|o| o.get("errors").is_some_and(Value::is_array))
    else {
        return provider_error(provider, resp);
    };
    let reasons: Vec<String> = obj
        .get("errors")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let name = obj.get("name").and_then(Value::as_str);
    let message = if reasons.is_empty() {
        format!("provider '{provider}' answered HTTP {}", resp.status)
    } else {
        reasons.join("; ")
    };
    let mut error = Map::new();
    error.insert("message".into(), json!(message));
    error.insert("type".into(), json!(name));
    error.insert("code".into(), json!(name));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: resp.status,
        error,
    }
}

#[cfg(test)]
mod tests;
