//! The parse plugin: reads a `multipart/form-data` image-edit request on the fly, validates
//! every field of the Bifrost image-edit spec as it arrives, and tees file parts into the
//! request [`Spool`].
//!
//! It runs in the request phase, after authentication and before routing. Limits are enforced
//! while reading: a body, part or field that crosses its limit ends parsing at once with a 413,
//! without reading the rest; a bad field ends it with a 400 naming the field. Parts may come in
//! any order; the `model` hook runs as soon as `model` has arrived, so an unknown provider or a
//! forbidden model is refused before a large image that follows is read.
//!
//! Parsing is split in two: [`FormBuilder`] is a pure, synchronous state machine that receives
//! field events and does all validation (unit-tested directly); [`parse_edit_form`] drives it
//! from the push parser of [`multipart`] over any [`BodySource`]: file content goes to the
//! spool and the sink as the same `Bytes` the body arrived in.

use crate::config::Limits;
use crate::error::GatewayError;
use crate::imaging::ImageKind;
use crate::spool::{Spool, SpoolRange};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::FutureExt;

mod fields;
pub mod multipart;

use multipart::{Event, MultipartError, MultipartParser};

pub use fields::{is_image_field, is_plain_name, split_model, Accepted, FormBuilder, MAX_FIELD_NAME_BYTES};

/// Where the request body comes from: the server hands the downstream session in, tests hand
/// a list of chunks.
#[async_trait]
pub trait BodySource: Send {
    /// The next chunk of the request body, `Ok(None)` at its end.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>>;
}

/// A file part of the form, its bytes kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePart {
    /// The part's field name as sent (`image`, `image[]`, `mask`, …).
    pub field: String,
    /// The client's file name, if any.
    pub filename: Option<String>,
    /// The type detected from magic bytes (always set for images and the mask).
    pub kind: Option<ImageKind>,
    /// The Content-Type the client declared (kept for pass-through parts).
    pub declared_type: Option<String>,
    /// Where the content lives in the spool.
    pub range: SpoolRange,
}

/// The `type` field: the kind of edit requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EditType {
    /// Fill the masked area.
    Inpainting,
    /// Extend the image beyond its borders.
    Outpainting,
    /// Remove the background (prompt optional).
    BackgroundRemoval,
}

/// The convention the client's mask is drawn in (issue 18 item 8). A multipart upload does not
/// say: its mask is read as [`MaskSource::Detect`]. Inbound formats whose provider fixes the
/// convention (Imagen's and Stability's white = edit, Titan's inpainting black = edit) name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MaskSource {
    /// Decided from the mask itself: transparency present → [`MaskSource::Alpha`], else
    /// [`MaskSource::WhiteEdit`].
    #[default]
    Detect,
    /// OpenAI's: fully transparent pixels (alpha 0) mark the area to edit.
    Alpha,
    /// Opaque, white marks the area to edit, black the area to keep.
    WhiteEdit,
    /// Opaque, black marks the area to edit, white the area to keep.
    BlackEdit,
}

pub use crate::spec::{Fallback, MAX_N};

/// A validated image-edit request: every field of the spec, typed.
/// Serializable: an async job keeps it (with its spool's bytes) until a worker runs it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EditForm {
    /// Provider part of `model`.
    pub provider: String,
    /// Model part of `model` (what the provider receives).
    pub model: String,
    /// The edit instruction (absent only for background removal).
    pub prompt: Option<String>,
    /// Images to edit, in order; the first is the edit target.
    pub images: Vec<FilePart>,
    /// Mask for the first image, in the convention [`EditForm::mask_source`] names.
    pub mask: Option<FilePart>,
    /// How [`EditForm::mask`] marks the area to edit.
    #[serde(default)]
    pub mask_source: MaskSource,
    /// `type`.
    pub edit_type: Option<EditType>,
    /// `n`, 1..=[`MAX_N`].
    pub n: Option<u32>,
    /// `size`, `WxH` or `auto`.
    pub size: Option<String>,
    /// `response_format`: `url` or `b64_json`.
    pub response_format: Option<String>,
    /// `stream`.
    pub stream: bool,
    /// `background`.
    pub background: Option<String>,
    /// `input_fidelity`.
    pub input_fidelity: Option<String>,
    /// `partial_images`, 0..=3.
    pub partial_images: Option<u32>,
    /// `quality`.
    pub quality: Option<String>,
    /// `output_format`.
    pub output_format: Option<String>,
    /// `num_inference_steps`, 1..=1000.
    pub num_inference_steps: Option<u32>,
    /// `seed`.
    pub seed: Option<i64>,
    /// `output_compression`, 0..=100.
    pub output_compression: Option<u32>,
    /// `negative_prompt`.
    pub negative_prompt: Option<String>,
    /// `user`.
    pub user: Option<String>,
    /// `fallbacks`, in order.
    pub fallbacks: Vec<Fallback>,
    /// Text fields the spec does not name, passed through to providers that accept them.
    pub extra_text: Vec<(String, String)>,
    /// File parts the spec does not name, passed through likewise.
    pub extra_files: Vec<FilePart>,
}
/// The body's multipart events, each chunk read from the source when the parser has
/// consumed the previous one (so at most one chunk is held ahead of the form's validation).
struct PartReader<'s> {
    source: &'s mut dyn BodySource,
    parser: MultipartParser,
    /// Body bytes read so far.
    seen: u64,
    /// `limits.max_body_bytes`.
    max_body: u64,
}

impl PartReader<'_> {
    /// The next event, reading as many chunks as it takes: a body past `max_body_bytes` is a
    /// 413, a failed read [`GatewayError::BodyUnreadable`], a malformed body a 400.
    async fn next(&mut self) -> Result<Event, GatewayError> {
        loop {
            if let Some(event) = self.parser.next_event().map_err(from_parser)? {
                return Ok(event);
            }
            if self.parser.is_done() {
                return Ok(Event::End);
            }
            match self.source.next_chunk().await {
                Ok(Some(chunk)) => {
                    self.seen += chunk.len() as u64;
                    if self.seen > self.max_body {
                        return Err(GatewayError::PayloadTooLarge {
                            param: None,
                            what: "request body".into(),
                            limit: self.max_body,
                        });
                    }
                    self.parser.feed(chunk);
                }
                Ok(None) => self.parser.finish(),
                Err(e) => return Err(GatewayError::BodyUnreadable(e.to_string())),
            }
        }
    }

    /// After the closing boundary: a read that fails at once (a broken chunked framing right
    /// after it) still fails the request, as it did when `multer` read one chunk ahead; a read
    /// that would wait is not waited for (the epilogue is drained after the answer).
    fn check_after_end(&mut self) -> Result<(), GatewayError> {
        match self.source.next_chunk().now_or_never() {
            Some(Err(e)) => Err(GatewayError::BodyUnreadable(e.to_string())),
            _ => Ok(()),
        }
    }

    /// The next bytes of the current part's content, `None` at its end.
    async fn content(&mut self) -> Result<Option<Bytes>, GatewayError> {
        match self.next().await? {
            Event::Data(chunk) => Ok(Some(chunk)),
            Event::PartEnd => Ok(None),
            Event::PartStart(_) | Event::End => Err(GatewayError::Internal("a part ended without its end".into())),
        }
    }
}

/// A malformed body: a 400 `malformed_multipart` with the parser's reason.
fn from_parser(e: MultipartError) -> GatewayError {
    GatewayError::MalformedMultipart(e.to_string())
}

/// Receives the parts of the form as they pass validation, in arrival order: the hook through
/// which routing refuses early and the translate plugin streams the request upstream while it
/// is still being uploaded. Every method may refuse, which ends parsing with that error.
#[async_trait]
pub trait FormSink: Send {
    /// `model` arrived and is well formed (or, when [`FormSink::preset_model`] gives one,
    /// before the first part is read).
    async fn model(&mut self, provider: &str, model: &str) -> Result<(), GatewayError>;
    /// The `(provider, model)` the request's path already names (Azure OpenAI's deployment
    /// path), asked once before the first part: the form's own `model` field is then ignored.
    fn preset_model(&self) -> Option<(&str, &str)> {
        None
    }
    /// A text field other than `model` passed validation.
    async fn text(&mut self, _name: &str, _value: &str) -> Result<(), GatewayError> {
        Ok(())
    }
    /// A file part begins; its type is known (`kind` is `None` only for pass-through parts).
    async fn file_begin(
        &mut self,
        _field: &str,
        _filename: Option<&str>,
        _kind: Option<ImageKind>,
        _declared: Option<&str>,
    ) -> Result<(), GatewayError> {
        Ok(())
    }
    /// The next bytes of the current file part.
    async fn file_data(&mut self, _chunk: Bytes) -> Result<(), GatewayError> {
        Ok(())
    }
    /// The current file part ended.
    async fn file_end(&mut self) -> Result<(), GatewayError> {
        Ok(())
    }
}

/// A [`FormSink`] that only checks `model` with a function (tests, benchmarks, and requests
/// that are not streamed upstream).
pub struct ModelCheck<F>(pub F);

#[async_trait]
impl<F> FormSink for ModelCheck<F>
where
    F: FnMut(&str, &str) -> Result<(), GatewayError> + Send,
{
    async fn model(&mut self, provider: &str, model: &str) -> Result<(), GatewayError> {
        (self.0)(provider, model)
    }
}

/// Reads the whole multipart body from `source`, validating as it goes, storing file parts in
/// `spool`, and handing each part to `sink` as soon as it is valid.
pub async fn parse_edit_form(
    source: &mut dyn BodySource,
    boundary: &str,
    limits: &Limits,
    spool: &mut Spool,
    sink: &mut dyn FormSink,
) -> Result<EditForm, GatewayError> {
    let mut reader = PartReader {
        source,
        parser: MultipartParser::new(boundary, limits.max_part_header_bytes),
        seen: 0,
        max_body: limits.max_body_bytes,
    };
    let mut builder = FormBuilder::new(limits);
    if let Some((provider, model)) = sink.preset_model().map(|(p, m)| (p.to_string(), m.to_string())) {
        builder.preset_model(&provider, &model);
        sink.model(&provider, &model).await?;
    }
    let mut fields = 0usize;
    loop {
        let head = match reader.next().await? {
            Event::PartStart(head) => head,
            Event::End => {
                reader.check_after_end()?;
                break;
            }
            Event::Data(_) | Event::PartEnd => {
                return Err(GatewayError::Internal("part content outside a part".into()));
            }
        };
        fields += 1;
        if fields > 256 {
            return Err(GatewayError::MalformedMultipart("too many parts (at most 256)".into()));
        }
        let name = match head.name {
            Some(n) if !n.is_empty() => n,
            _ => return Err(GatewayError::MalformedMultipart("a part has no field name".into())),
        };
        let filename = head.filename;
        if FormBuilder::is_file_part(&name, filename.as_deref()) {
            let declared = head.content_type;
            if !builder.file_start(&name, filename.as_deref(), declared.as_deref(), spool.len())? {
                // Not kept: read past it, within the part limit.
                let mut len = 0u64;
                while let Some(chunk) = reader.content().await? {
                    len += chunk.len() as u64;
                    if len > limits.max_part_bytes {
                        return Err(GatewayError::PayloadTooLarge {
                            param: None,
                            what: "a file part".into(),
                            limit: limits.max_part_bytes,
                        });
                    }
                }
                continue;
            }
            // Chunks wait here until the part's type is known from its first bytes.
            let mut held: Vec<Bytes> = Vec::new();
            let mut begun = false;
            while let Some(chunk) = reader.content().await? {
                builder.file_chunk(&chunk)?;
                spool
                    .append(chunk.clone())
                    .map_err(|e| GatewayError::Internal(format!("spool write failed: {e}")))?;
                if begun {
                    sink.file_data(chunk).await?;
                } else if let Some(kind) = builder.sniffed_kind() {
                    sink.file_begin(&name, filename.as_deref(), kind, declared.as_deref())
                        .await?;
                    begun = true;
                    for c in held.drain(..) {
                        sink.file_data(c).await?;
                    }
                    sink.file_data(chunk).await?;
                } else {
                    held.push(chunk);
                }
            }
            let Some(part) = builder.file_end()? else {
                // Empty: absent, and nothing of it was handed on.
                continue;
            };
            if !begun {
                sink.file_begin(&name, filename.as_deref(), part.kind, declared.as_deref())
                    .await?;
                for c in held {
                    sink.file_data(c).await?;
                }
            }
            sink.file_end().await?;
        } else {
            let mut text = Vec::new();
            fields::check_field_name(&name, limits)?;
            while let Some(chunk) = reader.content().await? {
                if text.len() + chunk.len() > limits.max_field_bytes {
                    return Err(GatewayError::PayloadTooLarge {
                        param: Some(name.clone()),
                        what: format!("field '{name}'"),
                        limit: limits.max_field_bytes as u64,
                    });
                }
                text.extend_from_slice(&chunk);
            }
            let text = String::from_utf8(text)
                .map_err(|_| GatewayError::invalid(name.clone(), format!("field '{name}' is not valid UTF-8")))?;
            match builder.text(&name, text.clone())? {
                Accepted::Model(provider, model) => sink.model(&provider, &model).await?,
                Accepted::Field => sink.text(&name, &text).await?,
                Accepted::Ignored => {}
            }
        }
    }
    builder.finish()
}

#[cfg(test)]
mod tests;
