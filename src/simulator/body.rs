//! The simulator's request bodies, read as they arrive with bounded memory: what the listener
//! hands [`super::route`].
//!
//! - `multipart/form-data` (OpenAI, Azure, Stability): parsed on the fly by [`crate::form::multipart`]; a part
//!   with a file name, or longer than [`INLINE_PART_BYTES`], goes to the request's [`Spool`]
//!   (memory up to `spool.memory_bytes`, then an anonymous temp file), other parts stay in
//!   memory. A body that is not valid multipart is kept as its parser's message, for the
//!   handler to answer in its provider's words.
//! - `application/json` (Gemini, Vertex, Bedrock, xAI, Hugging Face, BFL, Fireworks, Replicate):
//!   every string longer than [`BIG_STRING_BYTES`] (the base64 images) is decoded from base64
//!   as it arrives into the spool, and replaced in the kept JSON by a short reference
//!   ([`SimBody::spooled`] reads it back); a `data:…;base64,` prefix stays in the JSON. The
//!   rest of the JSON (prompts, parameters) is kept, at most [`MAX_JSON_BYTES`].
//! - Anything else (the token endpoint's form, polls): kept whole, at most [`MAX_RAW_BYTES`].
//!
//! So however large its images, a request holds in memory at most `spool.memory_bytes` of its
//! files and long strings, and [`MAX_JSON_BYTES`] of JSON or [`MAX_PARTS`] short parts of at
//! most [`INLINE_PART_BYTES`]; the whole body is bounded by [`MAX_BODY_BYTES`] (413 past it).

pub use super::json_split::{JsonSplitter, BIG_STRING_BYTES, REFERENCE};
use crate::form::multipart::{Event, MultipartParser};
use crate::form::BodySource;
use crate::spool::{Spool, SpoolRange, SpoolReader};
use bytes::{Bytes, BytesMut};
use std::io::{self, BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::sync::Arc;

/// Largest request body the simulator reads (it is a test double behind the gateway, whose own
/// limits come first): past it, a 413.
pub const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// A multipart part without a file name longer than this goes to the spool too.
pub const INLINE_PART_BYTES: usize = 64 * 1024;
/// Most parts in a multipart body.
pub const MAX_PARTS: usize = 256;
/// Largest JSON kept in memory once its long strings went to the spool.
pub const MAX_JSON_BYTES: usize = 4 * 1024 * 1024;
/// Largest body of any other type.
pub const MAX_RAW_BYTES: usize = 1024 * 1024;

/// The spool settings of the simulator's uploads and answers.
#[derive(Debug, Clone, Default)]
pub struct SpoolPlace {
    /// Bytes kept in memory per spool before the rest goes to a temp file.
    pub memory_bytes: usize,
    /// Where the temp files go (the system temp dir when `None`).
    pub directory: Option<std::path::PathBuf>,
}

impl SpoolPlace {
    /// A new, empty spool here.
    pub fn spool(&self) -> Spool {
        Spool::new(self.memory_bytes, self.directory.clone())
    }
}

impl From<&crate::config::SpoolSettings> for SpoolPlace {
    fn from(s: &crate::config::SpoolSettings) -> Self {
        SpoolPlace {
            memory_bytes: s.memory_bytes,
            directory: s.directory.clone(),
        }
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Over [`MAX_BODY_BYTES`], or a kept part of it over its own bound: answer 413.
    TooLarge(&'static str),
    /// Reading from the client, or writing the spool, failed: nothing to answer.
    Io(io::Error),
}

/// Bytes of an upload: in memory, or a range of the request's spool.
#[derive(Debug, Clone)]
pub enum Blob {
    /// Held in memory.
    Inline(Bytes),
    /// In the spool.
    Spooled(Arc<Spool>, SpoolRange),
}

impl Blob {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        match self {
            Blob::Inline(b) => b.len() as u64,
            Blob::Spooled(_, r) => r.len,
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffered, seekable reader over the bytes.
    pub fn reader(&self) -> io::Result<BlobReader> {
        Ok(match self {
            Blob::Inline(b) => BlobReader::Memory(Cursor::new(b.clone())),
            Blob::Spooled(spool, range) => {
                BlobReader::Spool(BufReader::with_capacity(64 * 1024, spool.reader(*range)?))
            }
        })
    }

    /// The first (at most) `n` bytes.
    pub fn head(&self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        if let Ok(r) = self.reader() {
            let _ = r.take(n as u64).read_to_end(&mut out);
        }
        out
    }

    /// The bytes as text, when they are held in memory (a text field); `None` for a spooled
    /// part (a file, or text too long to be one).
    pub fn text(&self) -> Option<String> {
        match self {
            Blob::Inline(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Blob::Spooled(..) => None,
        }
    }
}

/// A reader over a [`Blob`].
#[derive(Debug)]
pub enum BlobReader {
    /// Over memory.
    Memory(Cursor<Bytes>),
    /// Over a spool range.
    Spool(BufReader<SpoolReader>),
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlobReader::Memory(r) => r.read(buf),
            BlobReader::Spool(r) => r.read(buf),
        }
    }
}

impl BufRead for BlobReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            BlobReader::Memory(r) => r.fill_buf(),
            BlobReader::Spool(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            BlobReader::Memory(r) => r.consume(n),
            BlobReader::Spool(r) => r.consume(n),
        }
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        match self {
            BlobReader::Memory(r) => r.seek(to),
            BlobReader::Spool(r) => r.seek(to),
        }
    }
}

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    /// The field name.
    pub name: String,
    /// Its content.
    pub data: Blob,
}

/// Where a part's content was put.
#[derive(Debug, Clone)]
pub enum Stored {
    /// In memory.
    Held(Bytes),
    /// In the body's spool.
    Spooled(SpoolRange),
}

/// What a body holds, by its type.
#[derive(Debug, Clone)]
pub enum Content {
    /// A multipart form's parts (name, content) in order, or why it is not one.
    Form(Result<Vec<(String, Stored)>, String>),
    /// A JSON body, its long strings replaced by references to the spool.
    Json(Bytes),
    /// Any other body, whole.
    Raw(Bytes),
}

/// A request body as the simulator read it.
#[derive(Debug, Clone)]
pub struct SimBody {
    /// Bytes the client sent.
    pub len: u64,
    /// What they hold.
    pub content: Content,
    /// Where the uploaded files and decoded images are.
    pub spool: Arc<Spool>,
}

impl SimBody {
    /// The body's kept bytes: the JSON (with references), or the raw body; empty for a form.
    pub fn bytes(&self) -> &[u8] {
        match &self.content {
            Content::Json(b) | Content::Raw(b) => b,
            Content::Form(_) => &[],
        }
    }

    /// The parts of a multipart body in order; `Err` says why the body is not one.
    pub fn parts(&self) -> Result<Vec<Part>, String> {
        match &self.content {
            Content::Form(Ok(parts)) => Ok(parts
                .iter()
                .map(|(name, stored)| Part {
                    name: name.clone(),
                    data: match stored {
                        Stored::Held(b) => Blob::Inline(b.clone()),
                        Stored::Spooled(range) => Blob::Spooled(self.spool.clone(), *range),
                    },
                })
                .collect()),
            Content::Form(Err(e)) => Err(e.clone()),
            Content::Json(_) | Content::Raw(_) => Err("expected multipart/form-data".into()),
        }
    }

    /// The image a JSON string refers to when it is a reference to a long string decoded into
    /// the spool (see the module docs): `Some(Ok(blob))`, `Some(Err(()))` when that string was
    /// not base64; `None` when `text` is not a reference (an ordinary, short string).
    pub fn spooled(&self, text: &str) -> Option<Result<Blob, ()>> {
        let reference = text.strip_prefix(REFERENCE)?;
        let range = reference.split_once(':').and_then(|(start, len)| {
            Some(SpoolRange {
                start: start.parse().ok()?,
                len: len.parse().ok()?,
            })
        });
        Some(match range {
            Some(r) if r.start.checked_add(r.len).is_some_and(|end| end <= self.spool.len()) => {
                Ok(Blob::Spooled(self.spool.clone(), r))
            }
            _ => Err(()),
        })
    }

    /// A body of `bytes` read as one of type `content_type` would be (tests, and in-memory
    /// callers): a JSON body is split as it is when read from a client. A multipart body is
    /// kept raw; read it with [`read_body`].
    pub fn from_bytes(content_type: Option<&str>, bytes: Bytes, place: &SpoolPlace) -> Result<SimBody, BodyError> {
        let mut spool = place.spool();
        let len = bytes.len() as u64;
        let content = if is_json(content_type) {
            let mut splitter = JsonSplitter::default();
            splitter.push(&bytes, &mut spool)?;
            Content::Json(splitter.finish()?)
        } else {
            Content::Raw(bytes)
        };
        Ok(SimBody {
            len,
            content,
            spool: Arc::new(spool),
        })
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"))
}

/// Reads a body of `content_type` from `source` (see the module docs), with its spool at
/// `place`.
pub async fn read_body(
    source: &mut dyn BodySource,
    content_type: Option<&str>,
    place: &SpoolPlace,
) -> Result<SimBody, BodyError> {
    let mut spool = place.spool();
    let mut seen = 0u64;
    let boundary = content_type
        .filter(|ct| ct.trim_start().to_ascii_lowercase().starts_with("multipart/"))
        .map(|ct| crate::form::multipart::parse_boundary(ct).ok_or(ct));
    let content = match boundary {
        Some(Ok(boundary)) => {
            let form = read_form(source, &boundary, &mut spool, &mut seen).await?;
            // The parser stops at the closing boundary, or at what it cannot parse: the rest (an
            // epilogue, the end of a chunked body) is read and dropped, so the answer is
            // delivered and the connection can be reused (a close with unread bytes would reset
            // it, and the answer with it).
            while next(source, &mut seen).await?.is_some() {}
            Content::Form(form)
        }
        Some(Err(ct)) => Content::Form(Err(format!("expected multipart/form-data with a boundary, not {ct:?}"))),
        None if is_json(content_type) => {
            let mut splitter = JsonSplitter::default();
            while let Some(chunk) = next(source, &mut seen).await? {
                splitter.push(&chunk, &mut spool)?;
            }
            Content::Json(splitter.finish()?)
        }
        None => {
            let mut raw = BytesMut::new();
            while let Some(chunk) = next(source, &mut seen).await? {
                if raw.len() + chunk.len() > MAX_RAW_BYTES {
                    return Err(BodyError::TooLarge("body"));
                }
                raw.extend_from_slice(&chunk);
            }
            Content::Raw(raw.freeze())
        }
    };
    Ok(SimBody {
        len: seen,
        content,
        spool: Arc::new(spool),
    })
}

/// The next chunk of the body, counted against [`MAX_BODY_BYTES`].
async fn next(source: &mut dyn BodySource, seen: &mut u64) -> Result<Option<Bytes>, BodyError> {
    let chunk = source.next_chunk().await.map_err(BodyError::Io)?;
    if let Some(c) = &chunk {
        *seen += c.len() as u64;
        if *seen > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge("body"));
        }
    }
    Ok(chunk)
}

/// Appends a part's chunk to the spool. A chunk the spool keeps in memory is copied first: the
/// parser's chunks are slices of the body's chunks, which may be slices of a larger read
/// buffer, and a slice kept would keep all of that buffer allocated (many times the bytes it
/// holds).
fn keep(spool: &mut Spool, chunk: Bytes) -> Result<(), BodyError> {
    let chunk = if spool.spilled() {
        chunk
    } else {
        Bytes::copy_from_slice(&chunk)
    };
    spool.append(chunk).map(|_| ()).map_err(BodyError::Io)
}

/// Parses a multipart body on the fly: `Ok(Err(message))` when it is not valid multipart.
async fn read_form(
    source: &mut dyn BodySource,
    boundary: &str,
    spool: &mut Spool,
    seen: &mut u64,
) -> Result<Result<Vec<(String, Stored)>, String>, BodyError> {
    // The parser's budget for the text between two parts (boundary line and header block).
    const PART_HEADER_BYTES: usize = 64 * 1024;
    let mut parser = MultipartParser::new(boundary, PART_HEADER_BYTES);
    let mut parts = Vec::new();
    // The open part: its name, whether it goes to the spool, its held chunks and their length,
    // and where it starts in the spool.
    let mut open: Option<(String, bool, Vec<Bytes>, usize, u64)> = None;
    loop {
        let event = match parser.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => {
                match next(source, seen).await? {
                    Some(chunk) => parser.feed(chunk),
                    None => parser.finish(),
                }
                continue;
            }
            Err(e) => return Ok(Err(e.to_string())),
        };
        match event {
            Event::PartStart(head) => {
                if parts.len() >= MAX_PARTS {
                    return Ok(Err(format!("too many parts (at most {MAX_PARTS})")));
                }
                let to_spool = head.filename.is_some();
                open = Some((head.name.unwrap_or_default(), to_spool, Vec::new(), 0, spool.len()));
            }
            Event::Data(chunk) => {
                let Some((_, to_spool, held, held_len, _)) = open.as_mut() else {
                    continue;
                };
                *held_len += chunk.len();
                if !*to_spool && *held_len > INLINE_PART_BYTES {
                    *to_spool = true;
                    for c in held.drain(..) {
                        keep(spool, c)?;
                    }
                }
                if *to_spool {
                    keep(spool, chunk)?;
                } else {
                    held.push(chunk);
                }
            }
            Event::PartEnd => {
                let Some((name, to_spool, held, _, start)) = open.take() else {
                    continue;
                };
                let data = if to_spool {
                    Stored::Spooled(SpoolRange {
                        start,
                        len: spool.len() - start,
                    })
                } else {
                    Stored::Held(held.concat().into())
                };
                parts.push((name, data));
            }
            Event::End => break,
        }
    }
    Ok(Ok(parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::{json, Value};

    struct Chunks(std::collections::VecDeque<Bytes>);

    #[async_trait::async_trait]
    impl BodySource for Chunks {
        async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
            Ok(self.0.pop_front())
        }
    }

    fn chunks(body: &[u8], step: usize) -> Chunks {
        Chunks(body.chunks(step).map(Bytes::copy_from_slice).collect())
    }

    fn place() -> SpoolPlace {
        SpoolPlace {
            memory_bytes: 1000,
            directory: None,
        }
    }

    fn read_blob(b: &Blob) -> Vec<u8> {
        let mut out = Vec::new();
        b.reader().unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn json_long_strings_go_to_the_spool_decoded() {
        let image: Vec<u8> = (0..700_000u32).map(|i| (i * 13 % 256) as u8).collect();
        let std = base64::engine::general_purpose::STANDARD.encode(&image);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&image);
        let body = serde_json::to_vec(&json!({
            "prompt": "a \"quoted\" prompt \\ with escapes",
            "images": [std, format!("data:image/png;base64,{url_safe}"), format!("{}!", "A".repeat(300_000))],
            "n": 2,
        }))
        .unwrap();
        for step in [1, 3, 1000, 65_536, body.len()] {
            if step == 1 && cfg!(debug_assertions) {
                continue; // byte by byte is slow unoptimised; 3 covers every split
            }
            let b = read_body(&mut chunks(&body, step), Some("application/json"), &place())
                .await
                .unwrap();
            assert_eq!(b.len, body.len() as u64);
            assert!(b.spool.spilled(), "step {step}");
            let v: Value = serde_json::from_slice(b.bytes()).unwrap();
            assert!(b.bytes().len() < 500, "{}", String::from_utf8_lossy(b.bytes()));
            assert_eq!(v["prompt"], "a \"quoted\" prompt \\ with escapes");
            assert_eq!(v["n"], 2);
            let first = b.spooled(v["images"][0].as_str().unwrap()).unwrap().unwrap();
            assert_eq!(read_blob(&first), image, "step {step}");
            let (prefix, rest) = v["images"][1].as_str().unwrap().split_once(";base64,").unwrap();
            assert_eq!(prefix, "data:image/png");
            assert_eq!(read_blob(&b.spooled(rest).unwrap().unwrap()), image);
            assert!(
                b.spooled(v["images"][2].as_str().unwrap()).unwrap().is_err(),
                "not base64"
            );
            assert!(b.spooled("short").is_none());
        }
        // The same split when the body is given whole.
        let whole = SimBody::from_bytes(Some("application/json"), body.clone().into(), &place()).unwrap();
        let v: Value = serde_json::from_slice(whole.bytes()).unwrap();
        assert_eq!(
            read_blob(&whole.spooled(v["images"][0].as_str().unwrap()).unwrap().unwrap()),
            image
        );
    }

    #[tokio::test]
    async fn json_bounds() {
        let many = serde_json::to_vec(&vec!["x".repeat(200_000); 30]).unwrap();
        assert!(matches!(
            read_body(&mut chunks(&many, 4096), Some("application/json"), &place()).await,
            Err(BodyError::TooLarge("JSON"))
        ));
        let raw = vec![b'a'; MAX_RAW_BYTES + 1];
        assert!(matches!(
            read_body(&mut chunks(&raw, 4096), Some("text/plain"), &place()).await,
            Err(BodyError::TooLarge("body"))
        ));
        // A forged reference outside the spool is refused.
        let b = SimBody::from_bytes(
            Some("application/json"),
            Bytes::from_static(br#"["\u0000spool:0:99"]"#),
            &place(),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(b.bytes()).unwrap();
        assert!(b.spooled(v[0].as_str().unwrap()).unwrap().is_err());
    }

    fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, file, data) in parts {
            v.extend(format!("--B\r\nContent-Disposition: form-data; name=\"{name}\"").bytes());
            if let Some(f) = file {
                v.extend(format!("; filename=\"{f}\"").bytes());
            }
            v.extend(b"\r\n\r\n");
            v.extend_from_slice(data);
            v.extend(b"\r\n");
        }
        v.extend(b"--B--\r\n");
        v
    }

    #[tokio::test]
    async fn multipart_files_go_to_the_spool_and_text_stays() {
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let long_text = vec![b'p'; INLINE_PART_BYTES + 1];
        let body = multipart(&[
            ("prompt", None, b"paint"),
            ("image", Some("a.png"), &image),
            ("note", None, &long_text),
            ("mask", Some("m.png"), b"tiny"),
        ]);
        // What follows the closing boundary is read too (the connection stays usable).
        let mut with_epilogue = body.clone();
        with_epilogue.extend_from_slice(&[b'e'; 100_000]);
        let b = read_body(
            &mut chunks(&with_epilogue, 7000),
            Some("multipart/form-data; boundary=B"),
            &place(),
        )
        .await
        .unwrap();
        assert_eq!(b.len, with_epilogue.len() as u64);
        let parts = b.parts().unwrap();
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["prompt", "image", "note", "mask"]);
        assert_eq!(parts[0].data.text().as_deref(), Some("paint"));
        assert!(matches!(parts[1].data, Blob::Spooled(..)));
        assert_eq!(read_blob(&parts[1].data), image);
        assert_eq!(parts[1].data.head(4), image[..4]);
        assert!(parts[2].data.text().is_none(), "a long text part is spooled");
        assert_eq!(read_blob(&parts[2].data), long_text);
        assert_eq!(read_blob(&parts[3].data), b"tiny");
        assert!(b.spool.spilled());
        // Not multipart: the parser's message, for the handler to answer; the body is read to
        // its end all the same.
        let garbage = vec![b'g'; 50_000];
        let b = read_body(
            &mut chunks(&garbage, 3000),
            Some("multipart/form-data; boundary=B"),
            &place(),
        )
        .await
        .unwrap();
        assert!(b.parts().is_err());
        assert_eq!(b.len, garbage.len() as u64);
        let b = read_body(&mut chunks(b"x", 3), Some("multipart/form-data"), &place())
            .await
            .unwrap();
        assert!(b.parts().unwrap_err().contains("multipart"));
    }

    /// A body source that fails after its chunks.
    struct Fails(Option<Bytes>);

    #[async_trait::async_trait]
    impl BodySource for Fails {
        async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
            match self.0.take() {
                Some(b) => Ok(Some(b)),
                None => Err(io::Error::other("gone")),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_read_is_an_io_error_not_a_bad_form() {
        let body = multipart(&[("image", Some("a.png"), &[7u8; 5000])]);
        let mut src = Fails(Some(Bytes::copy_from_slice(&body[..100])));
        let r = read_body(&mut src, Some("multipart/form-data; boundary=B"), &place()).await;
        assert!(matches!(r, Err(BodyError::Io(_))), "{r:?}");
    }
}
