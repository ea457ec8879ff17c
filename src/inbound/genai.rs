//! Google GenAI inbound: the bodies google-genai sends (Gemini's `generateContent` and
//! `streamGenerateContent`, Imagen's Vertex `:predict` for `edit_image`) become the unified
//! edit, and the unified answer goes back in Google's shape. Pure: the server glue
//! (`src/server/gateway/genai.rs`) reads the body, calls [`generate_request`] or
//! [`predict_request`], then [`build_form`], runs the usual pipeline and answers with
//! [`generate_answer`] (or [`stream_event`]) or [`predict_answer`]; errors with [`error_body`].
//!
//! Mapping (docs/api.md, "Google GenAI clients"):
//!
//! | Google | unified |
//! |---|---|
//! | `contents[].parts[].inlineData` (`data` base64, `mimeType`) | `image[]`, in order |
//! | `contents[].parts[].text` | `prompt` (several joined by a line break) |
//! | `generationConfig.candidateCount` | `n` |
//! | `generationConfig.imageConfig` `aspectRatio` (+ `imageSize` 1K/2K/4K, default 1K) | `size` `WxH` (long side 1024/2048/3840) |
//! | `generationConfig.seed` | `seed` |
//! | `instances[0].prompt` | `prompt` |
//! | `referenceImages[]` RAW (`referenceImage.bytesBase64Encoded`) | `image[]`, in order |
//! | `referenceImages[]` MASK, `MASK_MODE_USER_PROVIDED` | `mask`, white = edit (see below) |
//! | `parameters.editMode` `EDIT_MODE_INPAINT_*` / `OUTPAINT` / `BGSWAP` | `type` inpainting / outpainting / background_removal |
//! | `parameters.sampleCount`, `seed`, `negativePrompt`, `outputOptions.mimeType` | `n`, `seed`, `negative_prompt`, `output_format` |
//!
//! An Imagen mask is white = edit, whatever its pixel format: the form says so
//! ([`MaskSource::WhiteEdit`]), and the gateway converts it to the convention of the provider
//! that serves the edit (OpenAI's alpha for the OpenAI-compatible kinds; see
//! `crate::imaging::mask`).

use crate::codec::base64::Base64Decoder;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::form::{EditForm, FormBuilder, MaskSource};
use crate::spool::Spool;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use std::borrow::Cow;

/// Which Google call a `/genai/…` path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenaiCall {
    /// `…/models/{model}:generateContent`.
    Generate,
    /// `…/models/{model}:streamGenerateContent` (answered as Gemini's SSE).
    StreamGenerate,
    /// `…:predict` (Imagen's `edit_image`, on Vertex's paths only).
    Predict,
}

/// A `/genai/…` route: the call, and the model as the path names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenaiRoute<'p> {
    /// The call.
    pub call: GenaiCall,
    /// Vertex's publisher segment (`google` for Google's own models), if the path has one.
    pub publisher: Option<&'p str>,
    /// The model segment, percent-encoded as sent (it may hold a raw `/`: `provider/model`).
    pub model: &'p str,
}

/// Where google-genai is pointed (`http_options={"base_url": <gateway>/genai}`).
pub const GENAI_BASE: &str = "/genai";

/// The route of a path under [`GENAI_BASE`] (`None`: not a GenAI call):
/// `/genai/{version}/models/{model}:generateContent|streamGenerateContent` (the Gemini API) and
/// `/genai/{version}/[projects/{p}/locations/{l}/]publishers/{publisher}/models/{model}:predict|generateContent|streamGenerateContent`
/// (Vertex, where google-genai sends `provider/model` as publisher and model).
/// `{model}` may hold a `/` (google-genai sends `provider/model` unencoded), `%2F` too.
pub fn route(path: &str) -> Option<GenaiRoute<'_>> {
    let rest = path.strip_prefix(GENAI_BASE)?.strip_prefix('/')?;
    let (version, rest) = rest.split_once('/')?;
    if version.is_empty() || !version.starts_with('v') {
        return None;
    }
    let (target, method) = rest.rsplit_once(':')?;
    let call = match method {
        "generateContent" => GenaiCall::Generate,
        "streamGenerateContent" => GenaiCall::StreamGenerate,
        "predict" => GenaiCall::Predict,
        _ => return None,
    };
    let (publisher, model) = match target.strip_prefix("models/") {
        // Gemini API paths name no publisher; Imagen's `:predict` is Vertex's only.
        Some(model) if call != GenaiCall::Predict => (None, model),
        Some(_) => return None,
        None => {
            let target = match target.strip_prefix("projects/") {
                Some(t) => {
                    let (_project, t) = t.split_once('/')?;
                    let t = t.strip_prefix("locations/")?;
                    let (_location, t) = t.split_once('/')?;
                    t
                }
                None => target,
            };
            let (publisher, model) = target.strip_prefix("publishers/")?.split_once("/models/")?;
            if publisher.is_empty() || publisher.contains('/') {
                return None;
            }
            (Some(publisher), model)
        }
    };
    if model.is_empty() || model.starts_with('/') || model.ends_with('/') {
        return None;
    }
    Some(GenaiRoute { call, publisher, model })
}

/// An image inlined in the request: its base64, borrowed from the body where it needs no
/// unescaping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InlineImage<'a> {
    /// The base64 text.
    #[serde(borrow)]
    pub data: Cow<'a, str>,
    /// The declared MIME type, if any (the type is detected from the bytes anyway).
    #[serde(borrow, default, rename = "mimeType", alias = "mime_type")]
    pub mime_type: Option<Cow<'a, str>>,
}

/// A Google request, read: the unified edit's parts before they are validated.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EditSource<'a> {
    /// The images, in order (the first is the edit target).
    pub images: Vec<InlineImage<'a>>,
    /// The mask, as sent.
    pub mask: Option<InlineImage<'a>>,
    /// Text fields of the unified form (`prompt`, `n`, `size`, `type`, …), in the form's names.
    pub fields: Vec<(&'static str, String)>,
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(param.to_string(), message)
}

fn json_error(e: serde_json::Error) -> GatewayError {
    invalid("body", format!("the body is not the expected JSON: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentRequest<'a> {
    #[serde(borrow, default)]
    contents: Vec<Content<'a>>,
    #[serde(default, alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default)]
    role: Option<String>,
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(default)]
    text: Option<String>,
    #[serde(borrow, default, alias = "inline_data")]
    inline_data: Option<InlineImage<'a>>,
    #[serde(default, alias = "file_data")]
    file_data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default, alias = "candidate_count")]
    candidate_count: Option<u32>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default, alias = "image_config")]
    image_config: Option<ImageConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImageConfig {
    #[serde(default, alias = "aspect_ratio")]
    aspect_ratio: Option<String>,
    #[serde(default, alias = "image_size")]
    image_size: Option<String>,
}

/// The unified `size` for Gemini's `imageConfig`: `aspectRatio` `W:H` with the long side of
/// `imageSize` (`1K` = 1024 by default, `2K` = 2048, `4K` = 3840, the form's largest side), the
/// short side rounded to a multiple of 16 (the form's grid);
/// `None` without an aspect ratio. The gateway's Gemini adapter maps it back to the same ratio
/// and size.
pub fn size_for_image_config(
    aspect_ratio: Option<&str>,
    image_size: Option<&str>,
) -> Result<Option<String>, GatewayError> {
    let Some(ratio) = aspect_ratio.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let bad = || {
        invalid(
            "generationConfig.imageConfig.aspectRatio",
            format!("aspectRatio '{ratio}' is not W:H"),
        )
    };
    let (w, h) = ratio.split_once(':').ok_or_else(bad)?;
    let (w, h) = (
        w.trim().parse::<u32>().map_err(|_| bad())?,
        h.trim().parse::<u32>().map_err(|_| bad())?,
    );
    if w == 0 || h == 0 || w > 64 || h > 64 {
        return Err(bad());
    }
    let long: u64 = match image_size.map(str::trim) {
        None | Some("") | Some("1K") => 1024,
        Some("2K") => 2048,
        Some("4K") => 3840,
        Some(other) => {
            return Err(invalid(
                "generationConfig.imageConfig.imageSize",
                format!("imageSize '{other}' is not 1K, 2K or 4K"),
            ))
        }
    };
    let short = |a: u32, b: u32| ((long * u64::from(a) / u64::from(b) + 8) / 16 * 16).max(16);
    let (width, height) = if w >= h {
        (long, short(h, w))
    } else {
        (short(w, h), long)
    };
    Ok(Some(format!("{width}x{height}")))
}

/// Reads a `generateContent` body: every inline image of the user's turns (in order), their
/// texts as the prompt, and the `generationConfig` fields that map (see the module docs). A
/// `fileData` part (an image by URI) is refused: the gateway fetches nothing.
pub fn generate_request(body: &[u8]) -> Result<EditSource<'_>, GatewayError> {
    let request: GenerateContentRequest<'_> = serde_json::from_slice(body).map_err(json_error)?;
    let mut source = EditSource::default();
    let mut prompt = Vec::new();
    for content in request.contents {
        if content.role.as_deref().is_some_and(|r| r != "user") {
            continue;
        }
        for part in content.parts {
            if part.file_data.is_some() {
                return Err(invalid(
                    "contents",
                    "fileData parts (images by URI) are not supported: send the image as inlineData",
                ));
            }
            if let Some(image) = part.inline_data {
                source.images.push(image);
            }
            if let Some(text) = part.text.filter(|t| !t.trim().is_empty()) {
                prompt.push(text);
            }
        }
    }
    if !prompt.is_empty() {
        source.fields.push(("prompt", prompt.join("\n")));
    }
    if let Some(config) = request.generation_config {
        if let Some(n) = config.candidate_count {
            source.fields.push(("n", n.to_string()));
        }
        if let Some(seed) = config.seed {
            source.fields.push(("seed", seed.to_string()));
        }
        if let Some(image) = config.image_config {
            if let Some(size) = size_for_image_config(image.aspect_ratio.as_deref(), image.image_size.as_deref())? {
                source.fields.push(("size", size));
            }
        }
    }
    Ok(source)
}

#[derive(Deserialize)]
struct PredictRequest<'a> {
    #[serde(borrow, default)]
    instances: Vec<Instance<'a>>,
    #[serde(default)]
    parameters: Option<PredictParameters>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance<'a> {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(borrow, default, alias = "reference_images")]
    reference_images: Vec<ReferenceImage<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceImage<'a> {
    #[serde(default, alias = "reference_type")]
    reference_type: Option<String>,
    #[serde(borrow, default, alias = "reference_image")]
    reference_image: Option<ImagenImage<'a>>,
    #[serde(default, alias = "mask_image_config")]
    mask_image_config: Option<MaskImageConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImagenImage<'a> {
    #[serde(borrow, default, alias = "bytes_base64_encoded")]
    bytes_base64_encoded: Option<Cow<'a, str>>,
    #[serde(borrow, default, alias = "mime_type")]
    mime_type: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MaskImageConfig {
    #[serde(default, alias = "mask_mode")]
    mask_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PredictParameters {
    #[serde(default, alias = "sample_count")]
    sample_count: Option<u32>,
    #[serde(default, alias = "edit_mode")]
    edit_mode: Option<String>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default, alias = "negative_prompt")]
    negative_prompt: Option<String>,
    #[serde(default, alias = "output_options")]
    output_options: Option<OutputOptions>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutputOptions {
    #[serde(default, alias = "mime_type")]
    mime_type: Option<String>,
}

/// The unified `type` for Imagen's `editMode` (`None`: a mask-free, prompt-driven edit).
fn edit_type_for(mode: &str) -> Result<Option<&'static str>, GatewayError> {
    Ok(match mode {
        "EDIT_MODE_DEFAULT" | "" => None,
        "EDIT_MODE_INPAINT_INSERTION" | "EDIT_MODE_INPAINT_REMOVAL" => Some("inpainting"),
        "EDIT_MODE_OUTPAINT" => Some("outpainting"),
        "EDIT_MODE_BGSWAP" => Some("background_removal"),
        other => {
            return Err(invalid(
                "parameters.editMode",
                format!(
                "editMode '{other}' is not supported (DEFAULT, INPAINT_INSERTION, INPAINT_REMOVAL, OUTPAINT, BGSWAP)"
            ),
            ))
        }
    })
}

/// Reads an Imagen `:predict` edit body (one instance): RAW references as the images, a
/// user-provided MASK reference as the mask, `parameters` mapped (see the module docs). A
/// `MASK_MODE_BACKGROUND` mask (Imagen computes it) sends no mask image: with `BGSWAP` it is
/// the unified background removal. Other reference types (style, subject, control) are refused.
pub fn predict_request(body: &[u8]) -> Result<EditSource<'_>, GatewayError> {
    let request: PredictRequest<'_> = serde_json::from_slice(body).map_err(json_error)?;
    let mut instances = request.instances.into_iter();
    let instance = instances
        .next()
        .ok_or_else(|| invalid("instances", "instances must hold one edit"))?;
    if instances.next().is_some() {
        return Err(invalid("instances", "only one instance per request is supported"));
    }
    let mut source = EditSource::default();
    for reference in instance.reference_images {
        let kind = reference.reference_type.as_deref().unwrap_or("REFERENCE_TYPE_RAW");
        let image = reference.reference_image.and_then(|i| {
            Some(InlineImage {
                data: i.bytes_base64_encoded?,
                mime_type: i.mime_type,
            })
        });
        match kind {
            "REFERENCE_TYPE_RAW" => source
                .images
                .push(image.ok_or_else(|| invalid("referenceImages", "a RAW reference has no bytesBase64Encoded"))?),
            "REFERENCE_TYPE_MASK" => {
                let mode = reference.mask_image_config.and_then(|c| c.mask_mode);
                match mode.as_deref() {
                    None | Some("MASK_MODE_USER_PROVIDED") | Some("MASK_MODE_DEFAULT") => {
                        if source.mask.is_some() {
                            return Err(invalid("referenceImages", "more than one MASK reference"));
                        }
                        source.mask = Some(image.ok_or_else(|| {
                            invalid("referenceImages", "a user-provided mask has no bytesBase64Encoded")
                        })?);
                    }
                    // Imagen's automatic background mask: no image to pass.
                    Some("MASK_MODE_BACKGROUND") => {}
                    Some(other) => {
                        return Err(invalid(
                            "maskImageConfig.maskMode",
                            format!("maskMode '{other}' is not supported (USER_PROVIDED, BACKGROUND)"),
                        ))
                    }
                }
            }
            other => {
                return Err(invalid(
                    "referenceImages",
                    format!("referenceType '{other}' is not supported (RAW and MASK)"),
                ))
            }
        }
    }
    if let Some(prompt) = instance.prompt.filter(|p| !p.trim().is_empty()) {
        source.fields.push(("prompt", prompt));
    }
    if let Some(p) = request.parameters {
        if let Some(t) = edit_type_for(p.edit_mode.as_deref().unwrap_or(""))? {
            source.fields.push(("type", t.to_string()));
        }
        if let Some(n) = p.sample_count {
            source.fields.push(("n", n.to_string()));
        }
        if let Some(seed) = p.seed {
            source.fields.push(("seed", seed.to_string()));
        }
        if let Some(negative) = p.negative_prompt {
            source.fields.push(("negative_prompt", negative));
        }
        match p.output_options.and_then(|o| o.mime_type).as_deref() {
            None => {}
            Some("image/png") => source.fields.push(("output_format", "png".into())),
            Some("image/jpeg") => source.fields.push(("output_format", "jpeg".into())),
            Some(other) => {
                return Err(invalid(
                    "parameters.outputOptions.mimeType",
                    format!("mimeType '{other}' is not image/png or image/jpeg"),
                ))
            }
        }
    }
    Ok(source)
}

/// Base64 decoded into the spool in pieces of this many input characters (each piece's output
/// goes to the spool at once: no image is held whole outside it).
const DECODE_PIECE: usize = 64 * 1024;

/// Validates `source` as the multipart parser validates a form (the same [`FormBuilder`], so
/// the same limits and errors) with the model the path named, decoding each image's base64
/// into `spool` piece by piece. The result is what [`crate::form::parse_edit_form`] would have
/// produced for the same edit sent as a multipart form.
pub fn build_form(
    source: &EditSource<'_>,
    (provider, model): (&str, &str),
    limits: &Limits,
    spool: &mut Spool,
) -> Result<EditForm, GatewayError> {
    let mut builder = FormBuilder::new(limits);
    builder.preset_model(provider, model);
    for (name, value) in &source.fields {
        // (The model is the path's: a `model` never comes from the body.)
        builder.text(name, value.clone())?;
    }
    let files = source
        .images
        .iter()
        .map(|i| ("image[]", i))
        .chain(source.mask.iter().map(|m| ("mask", m)));
    for (field, image) in files {
        spool_base64(&mut builder, spool, field, image)?;
    }
    let mut form = builder.finish()?;
    // Imagen's convention (the only mask these bodies carry).
    if form.mask.is_some() {
        form.mask_source = MaskSource::WhiteEdit;
    }
    Ok(form)
}

/// One file part of `field` given as base64 (`image`): checked by `builder` and decoded into
/// `spool` piece by piece, never held whole outside it. Shared by the inbound formats that
/// inline their images (Google's, OpenAI's JSON data URLs).
pub fn spool_base64(
    builder: &mut FormBuilder<'_>,
    spool: &mut Spool,
    field: &str,
    image: &InlineImage<'_>,
) -> Result<(), GatewayError> {
    if !builder.file_start(field, None, image.mime_type.as_deref(), spool.len())? {
        return Ok(());
    }
    let mut decoder = Base64Decoder::new();
    let mut out = Vec::new();
    let text = image.data.as_bytes();
    let bad = || invalid(field.trim_end_matches("[]"), format!("'{field}' is not valid base64"));
    for piece in text.chunks(DECODE_PIECE) {
        if !decoder.push(piece, &mut out) {
            return Err(bad());
        }
        store(builder, spool, &mut out)?;
    }
    if !decoder.finish(&mut out) {
        return Err(bad());
    }
    store(builder, spool, &mut out)?;
    if builder.file_end()?.is_none() {
        return Err(invalid(field.trim_end_matches("[]"), format!("'{field}' is empty")));
    }
    Ok(())
}

/// Hands the bytes in `out` (a file part's next piece) to the builder's checks and then to the
/// spool, leaving `out` empty.
pub fn store(builder: &mut FormBuilder<'_>, spool: &mut Spool, out: &mut Vec<u8>) -> Result<(), GatewayError> {
    if out.is_empty() {
        return Ok(());
    }
    builder.file_chunk(out)?;
    spool
        .append(Bytes::from(std::mem::take(out)))
        .map_err(|e| GatewayError::Internal(format!("spool write failed: {e}")))?;
    Ok(())
}

/// The parts of the unified answer the Google shapes need.
#[derive(Deserialize)]
struct Unified<'a> {
    #[serde(borrow, default)]
    data: Vec<UnifiedImage<'a>>,
    #[serde(default)]
    output_format: Option<String>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct UnifiedImage<'a> {
    #[serde(borrow, default)]
    b64_json: Option<Cow<'a, str>>,
}

fn mime_of(format: Option<&str>) -> &'static str {
    match format {
        Some("jpeg") | Some("jpg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "image/png",
    }
}

fn read_unified(unified: &[u8]) -> Result<Unified<'_>, GatewayError> {
    serde_json::from_slice(unified).map_err(|e| GatewayError::Internal(format!("unified answer unreadable: {e}")))
}

/// The `generateContent` answer for a unified answer: one candidate per image (`inlineData`,
/// `finishReason: STOP`), `usageMetadata` from the unified usage (prompt ← input tokens,
/// candidates ← output tokens), `modelVersion` the model the client named.
pub fn generate_answer(unified: &[u8], model_version: &str) -> Result<Vec<u8>, GatewayError> {
    let answer = read_unified(unified)?;
    let mime = mime_of(answer.output_format.as_deref());
    let candidates: Vec<Value> = answer
        .data
        .iter()
        .filter_map(|d| d.b64_json.as_deref())
        .enumerate()
        .map(|(index, b64)| {
            json!({
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": mime, "data": b64}}]},
                "finishReason": "STOP",
                "index": index,
            })
        })
        .collect();
    let tokens = |key: &str| {
        answer
            .usage
            .as_ref()
            .and_then(|u| u.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (prompt, output) = (tokens("input_tokens"), tokens("output_tokens"));
    let body = json!({
        "candidates": candidates,
        "usageMetadata": {
            "promptTokenCount": prompt,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt + output,
        },
        "modelVersion": model_version,
    });
    serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))
}

/// One Gemini SSE event carrying `json` (a `generateContent` answer or an error body).
pub fn stream_event(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 10);
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json);
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// The Imagen `:predict` answer for a unified answer: `{"predictions":[{"bytesBase64Encoded",
/// "mimeType"}…]}`.
pub fn predict_answer(unified: &[u8]) -> Result<Vec<u8>, GatewayError> {
    let answer = read_unified(unified)?;
    let mime = mime_of(answer.output_format.as_deref());
    let predictions: Vec<Value> = answer
        .data
        .iter()
        .filter_map(|d| d.b64_json.as_deref())
        .map(|b64| json!({"bytesBase64Encoded": b64, "mimeType": mime}))
        .collect();
    serde_json::to_vec(&json!({ "predictions": predictions })).map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Google's status name for an HTTP status (google.rpc.Code).
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 | 405 | 413 | 415 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    }
}

/// Google's error envelope for an error answered with `status` whose Bifrost body is
/// `bifrost`: `{"error":{"code","message","status","details":[ErrorInfo]}}`, the Bifrost
/// error code as the `ErrorInfo` reason.
pub fn error_body(status: u16, bifrost: &Value) -> Vec<u8> {
    let error = &bifrost["error"];
    let message = error["message"].as_str().unwrap_or("request failed");
    let mut details = json!({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "domain": "refract",
    });
    if let Some(code) = error["code"].as_str() {
        details["reason"] = json!(code);
    }
    let body = json!({
        "error": {
            "code": status,
            "message": message,
            "status": status_name(status),
            "details": [details],
        }
    });
    serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests;
