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
//! from `multer` over any [`BodySource`].

use crate::config::Limits;
use crate::error::GatewayError;
use crate::imaging::ImageKind;
use crate::spool::{Spool, SpoolRange};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};
use std::pin::Pin;
use std::task::{Context, Poll};

mod fields;

pub use fields::{is_image_field, split_model, FormBuilder};

/// Where the request body comes from: the server hands the downstream session in, tests hand
/// a list of chunks.
#[async_trait]
pub trait BodySource: Send {
    /// The next chunk of the request body, `Ok(None)` at its end.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>>;
}

/// A file part of the form, its bytes kept in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditType {
    /// Fill the masked area.
    Inpainting,
    /// Extend the image beyond its borders.
    Outpainting,
    /// Remove the background (prompt optional).
    BackgroundRemoval,
}

/// A fallback candidate from the `fallbacks` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// Provider name.
    pub provider: String,
    /// Bare model name.
    pub model: String,
}

/// Largest `n` a request may ask for (the spec's bound).
pub const MAX_N: u32 = 10;

/// A validated image-edit request: every field of the spec, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EditForm {
    /// Provider part of `model`.
    pub provider: String,
    /// Model part of `model` (what the provider receives).
    pub model: String,
    /// The edit instruction (absent only for background removal).
    pub prompt: Option<String>,
    /// Images to edit, in order; the first is the edit target.
    pub images: Vec<FilePart>,
    /// Mask for the first image (transparent = edit).
    pub mask: Option<FilePart>,
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
/// Why the body source stopped: the body limit, or a read failure.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("request body exceeds the limit")]
    TooLarge,
    #[error("reading the request body failed: {0}")]
    Io(std::io::Error),
}

/// A stream adapter that yields to the executor after each chunk, so `multer` (which reads
/// its stream until it would block) buffers at most one chunk ahead of the parser instead of a
/// whole fast upload.
struct OneChunkAhead<S> {
    inner: S,
    just_yielded: bool,
}

impl<S: Stream + Unpin> Stream for OneChunkAhead<S> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        if self.just_yielded {
            self.just_yielded = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let polled = self.inner.poll_next_unpin(cx);
        if let Poll::Ready(Some(_)) = &polled {
            self.just_yielded = true;
        }
        polled
    }
}

/// Maps a multer error to the gateway's: a limit hit in the body source becomes a 413, the rest
/// a malformed-multipart 400.
fn from_multer(e: multer::Error, max_body: u64) -> GatewayError {
    if let multer::Error::StreamReadFailed(inner) = &e {
        if let Some(src) = inner.downcast_ref::<SourceError>() {
            return match src {
                SourceError::TooLarge => GatewayError::PayloadTooLarge {
                    param: None,
                    what: "request body".into(),
                    limit: max_body,
                },
                SourceError::Io(io) => GatewayError::BodyUnreadable(io.to_string()),
            };
        }
    }
    GatewayError::MalformedMultipart(e.to_string())
}

/// Receives the parts of the form as they pass validation, in arrival order: the hook through
/// which routing refuses early and the translate plugin streams the request upstream while it
/// is still being uploaded. Every method may refuse, which ends parsing with that error.
#[async_trait]
pub trait FormSink: Send {
    /// `model` arrived and is well formed.
    async fn model(&mut self, provider: &str, model: &str) -> Result<(), GatewayError>;
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
    let max_body = limits.max_body_bytes;
    let body = stream::unfold((source, 0u64, false), move |(src, seen, done)| async move {
        if done {
            return None;
        }
        match src.next_chunk().await {
            Ok(Some(chunk)) => {
                let seen = seen + chunk.len() as u64;
                if seen > max_body {
                    Some((Err(SourceError::TooLarge), (src, seen, true)))
                } else {
                    Some((Ok(chunk), (src, seen, false)))
                }
            }
            Ok(None) => None,
            Err(e) => Some((Err(SourceError::Io(e)), (src, seen, true))),
        }
    });
    let body = OneChunkAhead {
        inner: Box::pin(body),
        just_yielded: false,
    };
    let mut multipart = multer::Multipart::new(body, boundary);
    let mut builder = FormBuilder::new(limits);
    let mut fields = 0usize;
    while let Some(mut field) = multipart.next_field().await.map_err(|e| from_multer(e, max_body))? {
        fields += 1;
        if fields > 256 {
            return Err(GatewayError::MalformedMultipart("too many parts (at most 256)".into()));
        }
        let name = match field.name() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => return Err(GatewayError::MalformedMultipart("a part has no field name".into())),
        };
        let filename = field.file_name().map(str::to_string);
        if FormBuilder::is_file_part(&name, filename.as_deref()) {
            let declared = field.content_type().map(|m| m.essence_str().to_string());
            builder.file_start(&name, filename.as_deref(), declared.as_deref(), spool.len())?;
            // Chunks wait here until the part's type is known from its first bytes.
            let mut held: Vec<Bytes> = Vec::new();
            let mut begun = false;
            while let Some(chunk) = field.chunk().await.map_err(|e| from_multer(e, max_body))? {
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
            let part = builder.file_end()?;
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
            while let Some(chunk) = field.chunk().await.map_err(|e| from_multer(e, max_body))? {
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
                Some((provider, model)) => sink.model(&provider, &model).await?,
                None => sink.text(&name, &text).await?,
            }
        }
    }
    builder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body source over fixed chunks.
    struct Chunks(std::collections::VecDeque<Bytes>);

    #[async_trait]
    impl BodySource for Chunks {
        async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
            Ok(self.0.pop_front())
        }
    }

    const B: &str = "XyZb0undary";
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDRfakepng";

    fn text(name: &str, v: &str) -> Vec<u8> {
        format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n").into_bytes()
    }

    fn file(name: &str, fname: &str, ct: &str, data: &[u8]) -> Vec<u8> {
        let mut v =
            format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{fname}\"\r\nContent-Type: {ct}\r\n\r\n")
                .into_bytes();
        v.extend_from_slice(data);
        v.extend_from_slice(b"\r\n");
        v
    }

    fn end() -> Vec<u8> {
        format!("--{B}--\r\n").into_bytes()
    }

    fn limits() -> Limits {
        Limits {
            max_body_bytes: 1 << 20,
            max_images: 3,
            max_part_bytes: 1 << 16,
            max_field_bytes: 1024,
            ..Limits::default()
        }
    }

    async fn parse_with(body: Vec<u8>, chunk: usize, limits: &Limits) -> (Result<EditForm, GatewayError>, Spool) {
        let chunks = body.chunks(chunk.max(1)).map(Bytes::copy_from_slice).collect();
        let mut src = Chunks(chunks);
        let mut spool = Spool::new(64, None);
        let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
        let r = parse_edit_form(&mut src, B, limits, &mut spool, &mut ok).await;
        (r, spool)
    }

    fn body(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut v: Vec<u8> = parts.concat();
        v.extend(end());
        v
    }

    /// A body source whose read fails after its chunks (a broken chunked framing, a stall).
    struct FailsAfter(std::collections::VecDeque<Bytes>);

    #[async_trait]
    impl BodySource for FailsAfter {
        async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
            match self.0.pop_front() {
                Some(b) => Ok(Some(b)),
                None => Err(std::io::Error::other("InvalidChunk")),
            }
        }
    }

    /// A failed read is its own error (the connection must close), whatever part it cut, and
    /// keeps the client-visible shape of a malformed body.
    #[tokio::test]
    async fn a_failed_read_is_an_unreadable_body() {
        let whole = body(&[
            text("model", "openai/gpt-image-1"),
            file("image", "a.png", "image/png", PNG),
        ]);
        for cut in [0, 10, whole.len() - 30, whole.len() - 1] {
            let mut src = FailsAfter([Bytes::copy_from_slice(&whole[..cut])].into_iter().collect());
            let mut spool = Spool::new(64, None);
            let mut ok = ModelCheck(|_: &str, _: &str| Ok(()));
            let e = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut ok)
                .await
                .unwrap_err();
            assert!(
                matches!(&e, GatewayError::BodyUnreadable(m) if m == "InvalidChunk"),
                "cut {cut}: {e:?}"
            );
            assert_eq!((e.status(), e.code()), (400, "malformed_multipart"));
        }
    }

    #[tokio::test]
    async fn any_order_any_chunking_gives_the_same_form() {
        let big: Vec<u8> = PNG.iter().copied().chain((0..5000u32).map(|i| i as u8)).collect();
        let a = body(&[
            file("image[]", "a.png", "image/png", &big),
            file("image[]", "b.bin", "application/octet-stream", PNG),
            text("prompt", "make it blue"),
            text("n", "2"),
            text("model", "openai/gpt-image-1"),
        ]);
        for chunk in [1, 7, 100, 4096, a.len()] {
            let (form, spool) = parse_with(a.clone(), chunk, &limits()).await;
            let form = form.unwrap();
            assert_eq!(form.provider, "openai");
            assert_eq!(form.model, "gpt-image-1");
            assert_eq!(form.n, Some(2));
            assert_eq!(form.images.len(), 2);
            assert_eq!(form.images[0].kind, Some(ImageKind::Png));
            assert_eq!(form.images[1].kind, Some(ImageKind::Png));
            assert_eq!(spool.read_all(form.images[0].range).unwrap(), big);
            assert_eq!(spool.read_all(form.images[1].range).unwrap(), PNG);
        }
    }

    #[tokio::test]
    async fn every_field_is_typed() {
        let b = body(&[
            text("model", "openai/gpt-image-1"),
            text("prompt", "p"),
            file("image", "a.png", "image/png", PNG),
            file("mask", "m.png", "image/png", PNG),
            text("type", "inpainting"),
            text("n", "3"),
            text("size", "1024x1536"),
            text("response_format", "b64_json"),
            text("stream", "true"),
            text("background", "transparent"),
            text("input_fidelity", "high"),
            text("partial_images", "2"),
            text("quality", "high"),
            text("output_format", "webp"),
            text("num_inference_steps", "30"),
            text("seed", "-42"),
            text("output_compression", "80"),
            text("negative_prompt", "no cats"),
            text("user", "u1"),
            text("fallbacks", "azure/gpt-image-1"),
            text("fallbacks", r#"[{"provider":"gemini","model":"g"},"vertex/imagen"]"#),
            text("safety_identifier", "s1"),
        ]);
        let f = parse_with(b, 13, &limits()).await.0.unwrap();
        assert_eq!(f.edit_type, Some(EditType::Inpainting));
        assert!(f.mask.is_some());
        assert_eq!(f.size.as_deref(), Some("1024x1536"));
        assert!(f.stream);
        assert_eq!(f.partial_images, Some(2));
        assert_eq!(f.seed, Some(-42));
        assert_eq!(f.output_compression, Some(80));
        assert_eq!(f.num_inference_steps, Some(30));
        assert_eq!(f.fallbacks.len(), 3);
        assert_eq!(
            f.fallbacks[1],
            Fallback {
                provider: "gemini".into(),
                model: "g".into()
            }
        );
        assert_eq!(f.extra_text, vec![("safety_identifier".to_string(), "s1".to_string())]);
    }

    #[tokio::test]
    async fn fallbacks_in_every_sdk_encoding() {
        let b = body(&[
            text("model", "openai/gpt-image-1"),
            text("prompt", "p"),
            text("fallbacks[0]", "a/one"),
            text("fallbacks[][provider]", "b"),
            text("fallbacks[][model]", "two"),
            text("fallbacks[][model]", "three"),
            text("fallbacks[][provider]", "c"),
            text("fallbacks[5][model]", "four"),
            text("fallbacks[5][provider]", "d"),
            file("image", "a.png", "image/png", PNG),
        ]);
        let f = parse_with(b, 13, &limits()).await.0.unwrap();
        let got: Vec<(&str, &str)> = f
            .fallbacks
            .iter()
            .map(|fb| (fb.provider.as_str(), fb.model.as_str()))
            .collect();
        assert_eq!(got, [("a", "one"), ("b", "two"), ("c", "three"), ("d", "four")]);
        let too_many: Vec<Vec<u8>> = [text("model", "openai/m"), text("prompt", "p")]
            .into_iter()
            .chain((0..=super::fields::MAX_FALLBACKS).map(|i| text("fallbacks", &format!("p/m{i}"))))
            .chain([file("image", "a.png", "image/png", PNG)])
            .collect();
        expect_err(&too_many, 400, Some("fallbacks")).await;
        for (name, value) in [
            ("fallbacks[x]", "a/b"),
            ("fallbacks[0][name]", "a"),
            ("fallbacks[][provider]", "a"),
            ("fallbacks[0]", "nope"),
        ] {
            let parts = [
                text("model", "openai/m"),
                text("prompt", "p"),
                text(name, value),
                file("image", "a.png", "image/png", PNG),
            ];
            expect_err(&parts, 400, Some("fallbacks")).await;
        }
        expect_err(
            &[
                text("model", "openai/m"),
                text("prompt", "p"),
                text("fallbacks[1][model]", "m"),
                text("fallbacks[1][model]", "m"),
                file("image", "a.png", "image/png", PNG),
            ],
            400,
            Some("fallbacks"),
        )
        .await;
    }

    async fn expect_err(parts: &[Vec<u8>], status: u16, param: Option<&str>) {
        let (r, _) = parse_with(body(parts), 50, &limits()).await;
        let e = r.expect_err("should fail");
        assert_eq!(e.status(), status, "{e}");
        assert_eq!(e.param(), param, "{e}");
    }

    #[tokio::test]
    async fn out_of_range_and_wrong_types_name_the_param() {
        let base = || {
            vec![
                text("model", "openai/m"),
                text("prompt", "p"),
                file("image", "a.png", "image/png", PNG),
            ]
        };
        for (name, value) in [
            ("n", "0"),
            ("n", "11"),
            ("n", "two"),
            ("partial_images", "4"),
            ("output_compression", "101"),
            ("output_compression", "-1"),
            ("size", "1000x1000"),
            ("size", "big"),
            ("quality", "ultra"),
            ("response_format", "png"),
            ("background", "none"),
            ("input_fidelity", "medium"),
            ("output_format", "gif"),
            ("type", "recolor"),
            ("stream", "yes"),
            ("seed", "1.5"),
            ("num_inference_steps", "0"),
            ("fallbacks", "nope"),
            ("fallbacks", "[1,2]"),
        ] {
            let mut parts = base();
            parts.push(text(name, value));
            expect_err(&parts, 400, Some(name)).await;
        }
    }

    #[tokio::test]
    async fn required_fields() {
        expect_err(
            &[text("prompt", "p"), file("image", "a.png", "image/png", PNG)],
            400,
            Some("model"),
        )
        .await;
        expect_err(&[text("model", "openai/m"), text("prompt", "p")], 400, Some("image")).await;
        expect_err(
            &[text("model", "openai/m"), file("image", "a.png", "image/png", PNG)],
            400,
            Some("prompt"),
        )
        .await;
        expect_err(
            &[
                text("model", "nomodel"),
                text("prompt", "p"),
                file("image", "a.png", "image/png", PNG),
            ],
            400,
            Some("model"),
        )
        .await;
        // background removal needs no prompt
        let (r, _) = parse_with(
            body(&[
                text("model", "openai/m"),
                text("type", "background_removal"),
                file("image", "a.png", "image/png", PNG),
            ]),
            9,
            &limits(),
        )
        .await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn non_images_and_duplicates_are_rejected() {
        let m = || text("model", "openai/m");
        expect_err(
            &[
                m(),
                text("prompt", "p"),
                file("image", "a.gif", "image/png", b"GIF89a......"),
            ],
            400,
            Some("image"),
        )
        .await;
        expect_err(
            &[m(), text("prompt", "p"), file("image", "a.png", "image/png", b"")],
            400,
            Some("image"),
        )
        .await;
        expect_err(
            &[m(), text("prompt", "p"), file("image", "a.png", "image/png", b"\x89P")],
            400,
            Some("image"),
        )
        .await;
        expect_err(
            &[
                m(),
                text("prompt", "p"),
                file("image", "a.png", "image/png", PNG),
                file("mask", "m", "text/plain", b"hello world!"),
            ],
            400,
            Some("mask"),
        )
        .await;
        expect_err(
            &[m(), m(), text("prompt", "p"), file("image", "a.png", "image/png", PNG)],
            400,
            Some("model"),
        )
        .await;
        expect_err(
            &[m(), text("prompt", "p"), text("image", "not a file")],
            400,
            Some("image"),
        )
        .await;
        let four: Vec<Vec<u8>> = (0..4).map(|_| file("image[]", "a.png", "image/png", PNG)).collect();
        let mut parts = vec![m(), text("prompt", "p")];
        parts.extend(four);
        expect_err(&parts, 400, Some("image")).await;
    }

    #[tokio::test]
    async fn limits_give_413() {
        let m = || text("model", "openai/m");
        let big = vec![0x89u8; (1 << 16) + 1];
        let mut img = PNG.to_vec();
        img.extend_from_slice(&big);
        expect_err(
            &[m(), text("prompt", "p"), file("image", "a.png", "image/png", &img)],
            413,
            Some("image"),
        )
        .await;
        expect_err(
            &[
                m(),
                text("prompt", &"x".repeat(1025)),
                file("image", "a.png", "image/png", PNG),
            ],
            413,
            Some("prompt"),
        )
        .await;
        let small = Limits {
            max_body_bytes: 100,
            ..limits()
        };
        let (r, _) = parse_with(body(&[m(), text("prompt", &"x".repeat(200))]), 10, &small).await;
        let e = r.unwrap_err();
        assert_eq!((e.status(), e.param()), (413, None));
    }

    #[tokio::test]
    async fn malformed_bodies_are_400() {
        let m = text("model", "openai/m");
        // truncated: no closing boundary
        let (r, _) = parse_with(m.clone(), 5, &limits()).await;
        assert_eq!(r.unwrap_err().status(), 400);
        // garbage
        let (r, _) = parse_with(b"this is not multipart at all".to_vec(), 5, &limits()).await;
        assert_eq!(r.unwrap_err().status(), 400);
        // part without a name
        let mut b = format!("--{B}\r\nContent-Disposition: form-data\r\n\r\nv\r\n").into_bytes();
        b.extend(end());
        let (r, _) = parse_with(b, 5, &limits()).await;
        assert_eq!(r.unwrap_err().status(), 400);
        // empty body
        let (r, _) = parse_with(Vec::new(), 5, &limits()).await;
        assert_eq!(r.unwrap_err().status(), 400);
    }

    #[tokio::test]
    async fn model_hook_runs_before_the_rest_is_read() {
        let b = body(&[text("model", "nope/m"), file("image", "a.png", "image/png", PNG)]);
        let chunks = b.chunks(8).map(Bytes::copy_from_slice).collect();
        let mut src = Chunks(chunks);
        let mut spool = Spool::new(64, None);
        let mut refuse = ModelCheck(|p: &str, _: &str| Err(GatewayError::UnknownProvider(p.to_string())));
        let r = parse_edit_form(&mut src, B, &limits(), &mut spool, &mut refuse).await;
        assert!(matches!(r, Err(GatewayError::UnknownProvider(_))));
        assert!(!src.0.is_empty(), "the image must not have been read");
        assert!(spool.is_empty());
    }

    #[test]
    fn image_field_names() {
        for ok in ["image", "image[]", "image[0]", "image[12]"] {
            assert!(is_image_field(ok), "{ok}");
        }
        for no in ["images", "image[a]", "image[", "mask", "img"] {
            assert!(!is_image_field(no), "{no}");
        }
    }
}
