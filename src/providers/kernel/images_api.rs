//! The OpenAI Images API's edit request and answer, which are also the unified ones: the
//! multipart body built from the complete form ([`build_multipart`]) or part by part while it
//! arrives ([`multipart_encoder`]), and an `ImagesResponse` converted into the unified answer
//! ([`convert_images_response`]: the provider's members kept, `index`, `num_input_images` and
//! `extra_fields` added). Used by kinds `openai` and `azure` (both), and `xai` (answers).

use super::errors::provider_error;
use super::multipart::{safe_content_type, MultipartWriter};
use super::unified::extra_fields_json;
use crate::error::GatewayError;
use crate::form::{is_image_field, EditForm, EditType};
use crate::imaging::{ConvertedMask, ImageKind, MaskConvention};
use crate::providers::answer::AnswerWriter;
use crate::providers::capabilities::{Capabilities, Streaming};
use crate::providers::rawjson::{ExpandedObject, JsonOut, RawObject};
use crate::providers::{RequestEncoder, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse};
use bytes::Bytes;

/// Fields the gateway understands but OpenAI does not take.
const GATEWAY_ONLY: &[&str] = &[
    "type",
    "fallbacks",
    "fallbacks[]",
    "seed",
    "negative_prompt",
    "num_inference_steps",
];

/// The streaming encoder of the Images API (kinds `openai`, `azure`): parts are forwarded in arrival order; an image keeps
/// the client's choice of `image` or `image[]` (the count is not known yet), typed from its
/// magic bytes.
struct ImagesApiEncoder {
    head: UpstreamRequest,
    w: MultipartWriter,
    images: usize,
}

impl RequestEncoder for ImagesApiEncoder {
    fn head(&self) -> UpstreamRequest {
        self.head.clone()
    }

    fn text(&mut self, name: &str, value: &str) -> Option<Bytes> {
        // `fallbacks[0]`, `fallbacks[][provider]`…: the SDKs' list and dict encodings.
        if GATEWAY_ONLY.contains(&name) || name.starts_with("fallbacks[") {
            return None;
        }
        self.w.text(name, value);
        Some(self.w.take())
    }

    fn file_begin(
        &mut self,
        field: &str,
        filename: Option<&str>,
        kind: Option<ImageKind>,
        declared: Option<&str>,
    ) -> Bytes {
        let (name, filename, content_type) = match kind {
            Some(kind) if field == "mask" => ("mask".to_string(), format!("mask.{}", kind.extension()), kind.mime()),
            Some(kind) if is_image_field(field) => {
                let name = if field == "image" { "image" } else { "image[]" };
                let filename = if name == "image" && self.images == 0 {
                    format!("image.{}", kind.extension())
                } else {
                    format!("image_{}.{}", self.images, kind.extension())
                };
                self.images += 1;
                (name.to_string(), filename, kind.mime())
            }
            Some(kind) => (field.to_string(), filename.unwrap_or("file").to_string(), kind.mime()),
            None => (
                field.to_string(),
                filename.unwrap_or("file").to_string(),
                safe_content_type(declared),
            ),
        };
        self.w.file_head(&name, &filename, content_type);
        self.w.take()
    }

    fn file_end(&mut self) -> Bytes {
        self.w.file_end();
        self.w.take()
    }

    fn finish(&mut self) -> Bytes {
        self.w.end();
        self.w.take()
    }
}

/// The streaming encoder for an OpenAI multipart body under `head` (made with `boundary`),
/// `model` being what the provider receives in the `model` part.
pub fn multipart_encoder(head: UpstreamRequest, boundary: String, model: &str) -> Box<dyn RequestEncoder> {
    let mut w = MultipartWriter::new(boundary);
    w.text("model", model);
    Box::new(ImagesApiEncoder { head, w, images: 0 })
}

/// What OpenAI's image edits support (also Azure's: the same API).
pub static IMAGES_API_CAPABILITIES: Capabilities = Capabilities {
    mask: true,
    max_n: 10,
    n_by_calls: None,
    max_images: 16,
    max_image_bytes: 50_000_000,
    // A mask is OpenAI's inpainting; it has no outpainting or background-removal mode.
    edit_types: &[EditType::Inpainting],
    url_output: true,
    sizes: "`WxH` as the model allows, `auto`",
    streaming: Streaming::Native,
    extra_fields:
        "quality, background, input_fidelity, output_format, output_compression, partial_images, user, unknown fields",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

/// The mask convention of the Images API (kinds `openai`, `azure`): OpenAI's alpha, for a form
/// with a mask. An alpha mask goes as uploaded; an opaque one (white = edit) is converted.
pub fn images_api_mask_convention(form: &EditForm) -> Option<MaskConvention> {
    form.mask.is_some().then_some(MaskConvention::Alpha)
}

/// The OpenAI multipart body for `form` under `head` (made with `boundary`), `model` being
/// what the provider receives in the `model` part; the form's mask as uploaded, or `mask`
/// when the gateway converted it to OpenAI's convention (a `mask.png`).
pub fn build_multipart(
    form: &EditForm,
    mask: Option<&ConvertedMask>,
    head: UpstreamRequest,
    boundary: String,
    model: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let mut w = MultipartWriter::new(boundary);
    w.text("model", model);
    if let Some(p) = &form.prompt {
        w.text("prompt", p);
    }
    let n = form.n.map(|v| v.to_string());
    let partial = form.partial_images.map(|v| v.to_string());
    let compression = form.output_compression.map(|v| v.to_string());
    let fields: [(&str, Option<&str>); 10] = [
        ("n", n.as_deref()),
        ("size", form.size.as_deref()),
        ("response_format", form.response_format.as_deref()),
        ("quality", form.quality.as_deref()),
        ("background", form.background.as_deref()),
        ("input_fidelity", form.input_fidelity.as_deref()),
        ("output_format", form.output_format.as_deref()),
        ("output_compression", compression.as_deref()),
        ("partial_images", partial.as_deref()),
        ("user", form.user.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            w.text(name, v);
        }
    }
    if form.stream {
        w.text("stream", "true");
    }
    for (name, value) in &form.extra_text {
        w.text(name, value);
    }
    let image_field = if form.images.len() == 1 { "image" } else { "image[]" };
    for (i, img) in form.images.iter().enumerate() {
        let kind = img
            .kind
            .ok_or_else(|| GatewayError::Internal("image part without a detected type".into()))?;
        let filename = if form.images.len() == 1 {
            format!("image.{}", kind.extension())
        } else {
            format!("image_{i}.{}", kind.extension())
        };
        w.file(image_field, &filename, kind.mime(), img);
    }
    if let Some(converted) = mask {
        w.file_bytes("mask", "mask.png", "image/png", Bytes::from(converted.png.clone()));
    } else if let Some(mask) = &form.mask {
        let kind = mask
            .kind
            .ok_or_else(|| GatewayError::Internal("mask part without a detected type".into()))?;
        w.file("mask", &format!("mask.{}", kind.extension()), kind.mime(), mask);
    }
    for part in &form.extra_files {
        let content_type = match part.kind {
            Some(kind) => kind.mime(),
            None => safe_content_type(part.declared_type.as_deref()),
        };
        let filename = part.filename.clone().unwrap_or_else(|| "file".to_string());
        w.file(&part.field, &filename, content_type, part);
    }
    let mut req = head;
    req.body = w.finish();
    Ok(req)
}

/// Converts an OpenAI `ImagesResponse` (or error) into the unified answer: the provider's
/// members as sent (its `extra_fields` replaced), `data[].index` filled in,
/// `usage.num_input_images` added. The images are shared with the provider's body, not copied
/// ([`AnswerWriter`]).
pub fn convert_images_response(
    resp: &UpstreamResponse,
    cx: &ResponseContext<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    if !(200..300).contains(&resp.status) {
        return Err(provider_error(cx.provider, resp));
    }
    let doc = parse_images_response(&resp.body, cx)?;
    let mut out = AnswerWriter::new(vec![resp.body.clone()]);
    write_converted(&doc, cx, &mut out)?;
    Ok(out.finish())
}

/// A success body as an `ImagesResponse` object with its `data` array expanded, or a 502.
fn parse_images_response<'a>(body: &'a [u8], cx: &ResponseContext<'_>) -> Result<ExpandedObject<'a>, GatewayError> {
    let bad = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let doc = ExpandedObject::parse(body, "data")
        .map_err(|e| bad(format!("the success body is not an ImagesResponse object ({e})")))?;
    if doc.position.is_none() {
        return Err(bad("the success body has no 'data' array".into()));
    }
    Ok(doc)
}

/// The unified answer of [`convert_images_response`] for `doc`, written into `out`.
fn write_converted<'a, O: JsonOut>(
    doc: &ExpandedObject<'a>,
    cx: &ResponseContext<'_>,
    out: &mut O,
) -> Result<(), GatewayError> {
    let extra = extra_fields_json(cx).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let images = cx.num_input_images.to_string();
    doc.write(
        out,
        "data",
        &mut |items, out| {
            out.put(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                let index = i.to_string();
                let add: &[(&str, &[u8])] = if item.get("index").is_some() {
                    &[]
                } else {
                    &[("index", index.as_bytes())]
                };
                item.write(out, &[], &mut |_, _, _| Ok(false), add)?;
            }
            out.put(b"]");
            Ok(())
        },
        &["extra_fields"],
        &mut |key, value, out| match key {
            "usage" => match RawObject::parse(value.get().as_bytes()) {
                Ok(usage) if usage.get("num_input_images").is_none() => {
                    usage.write(
                        out,
                        &[],
                        &mut |_, _, _| Ok(false),
                        &[("num_input_images", images.as_bytes())],
                    )?;
                    Ok(true)
                }
                _ => Ok(false),
            },
            _ => Ok(false),
        },
        &[("extra_fields", &extra)],
    )
    .map_err(|e| GatewayError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::test_support::{openai_cx, random_images_response, success};
    use serde_json::Value;

    fn cx() -> ResponseContext<'static> {
        openai_cx()
    }

    /// Differential: over varied answers, the spliced answer is byte for byte what the
    /// converter writes into one buffer (the output before answers were spliced), and shares
    /// exactly the long strings.
    #[test]
    fn spliced_answers_equal_the_copied_ones() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut shared_seen = 0;
        for _ in 0..300 {
            let (body, shared) = random_images_response(&mut rng);
            let resp = success(body);
            let answer = convert_images_response(&resp, &cx()).unwrap();
            let doc = parse_images_response(&resp.body, &cx()).unwrap();
            let mut copied = Vec::new();
            write_converted(&doc, &cx(), &mut copied).unwrap();
            assert_eq!(
                answer.to_bytes(),
                copied,
                "{}",
                String::from_utf8_lossy(&resp.body[..200.min(resp.body.len())])
            );
            assert_eq!(answer.len(), copied.len());
            assert_eq!(answer.shared_len(), shared);
            assert!(answer.pieces().all(|p| !p.is_empty()));
            serde_json::from_slice::<Value>(&copied).unwrap();
            shared_seen += shared;
        }
        assert!(shared_seen > 0);
    }
}
