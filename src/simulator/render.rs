//! The simulator's answers, rendered with bounded memory: every edited image is made row by row
//! from the upload (in the spool) to a compressed PNG, base64-encoded straight into the answer,
//! which is written to a [`Body`] (memory up to `spool.memory_bytes`, then an anonymous temp
//! file). An answer of n 20 MB images holds a few rows, the compressor's state and a 64 KiB
//! buffer, never an image, decoded or encoded, whole (a JPEG or WebP input excepted: its decoder
//! decodes it whole, within `limits.max_image_pixels`). CPU-heavy: runs on the decode pool.
//!
//! A handler describes each image as a [`Picture`] (which upload, which pixels are edited, how)
//! and its answer as JSON whose image strings are [`slot`]s: [`json_body`] writes the JSON
//! with each slot replaced by its picture's base64, [`png_body`] writes one picture as a PNG.

use super::body::{Blob, SpoolPlace};
use crate::codec::base64::Base64Stream;
use crate::imaging::rows::CountingSink;
use crate::imaging::{self, encode_png_rows, ImageHeader, ImageKind, ImagingError, RowReader};
use crate::spool::{Spool, SpoolRange};
use bytes::Bytes;
use serde_json::Value;
use std::io::{self, Write};
use std::sync::Arc;

/// Where rendering happens: the pixel budget of every decode and where answers are spooled.
#[derive(Debug, Clone, Default)]
pub struct RenderPlace {
    /// Most pixels of an image decoded (`limits.max_image_pixels`).
    pub max_image_pixels: u64,
    /// Where answers are written.
    pub spool: SpoolPlace,
}

/// An answer's body: small ones in memory, rendered ones in a spool.
#[derive(Debug, Clone)]
pub enum Body {
    /// In memory.
    Memory(Bytes),
    /// In a spool (shared: a job's result is served to every poll that asks).
    Spooled(Arc<Spool>),
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Memory(v.into())
    }
}

impl From<&'static [u8]> for Body {
    fn from(v: &'static [u8]) -> Self {
        Body::Memory(Bytes::from_static(v))
    }
}

impl Body {
    /// Number of bytes.
    pub fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::Spooled(s) => s.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `limit` bytes (all of them when `limit` is past the end) as chunks of at most
    /// 64 KiB read from the spool when they are asked for.
    pub fn chunks(&self, limit: u64) -> BodyChunks {
        BodyChunks {
            body: self.clone(),
            pos: 0,
            end: limit.min(self.len()),
        }
    }

    /// The whole body in one vector (tests, and small bodies).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() as usize);
        for chunk in self.chunks(u64::MAX) {
            match chunk {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => break,
            }
        }
        out
    }
}

/// The chunks of a [`Body`]; see [`Body::chunks`].
#[derive(Debug)]
pub struct BodyChunks {
    body: Body,
    pos: u64,
    end: u64,
}

impl Iterator for BodyChunks {
    type Item = io::Result<Bytes>;

    fn next(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.end {
            return None;
        }
        let chunk = match &self.body {
            Body::Memory(b) => Ok(b.slice(self.pos as usize..self.end as usize)),
            Body::Spooled(s) => s
                .chunks(SpoolRange {
                    start: self.pos,
                    len: self.end - self.pos,
                })
                .next()?,
        };
        match &chunk {
            Ok(c) if !c.is_empty() => self.pos += c.len() as u64,
            _ => self.pos = self.end,
        }
        Some(chunk)
    }
}

/// Writes an answer into a spool, 64 KiB at a time.
pub struct BodyWriter {
    spool: Spool,
    buf: Vec<u8>,
}

/// Bytes gathered before they are handed to the spool.
const WRITE_CHUNK: usize = 64 * 1024;

impl BodyWriter {
    /// A writer into a new spool at `place`.
    pub fn new(place: &SpoolPlace) -> Self {
        BodyWriter {
            spool: place.spool(),
            buf: Vec::with_capacity(WRITE_CHUNK),
        }
    }

    fn hand_over(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITE_CHUNK));
            self.spool.append(full.into())?;
        }
        Ok(())
    }

    /// The body written.
    pub fn finish(mut self) -> io::Result<Body> {
        self.hand_over()?;
        Ok(Body::Spooled(Arc::new(self.spool)))
    }
}

impl Write for BodyWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the base64 of what it is given onto another writer.
struct Base64Writer<'w> {
    out: &'w mut dyn Write,
    stream: Base64Stream,
    buf: Vec<u8>,
}

impl<'w> Base64Writer<'w> {
    fn new(out: &'w mut dyn Write) -> Self {
        Base64Writer {
            out,
            stream: Base64Stream::new(),
            buf: Vec::with_capacity(WRITE_CHUNK + WRITE_CHUNK / 2),
        }
    }

    fn finish(mut self) -> io::Result<()> {
        self.stream.finish(&mut self.buf);
        self.out.write_all(&self.buf)
    }
}

impl Write for Base64Writer<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.stream.push(data, &mut self.buf);
        if self.buf.len() >= WRITE_CHUNK {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a picture could not be rendered.
#[derive(Debug)]
pub enum Fault {
    /// The input image is unreadable, or over the pixel budget.
    Image(ImagingError),
    /// The mask is unreadable, over the budget, or not the image's size
    /// ([`ImagingError::MaskSize`]).
    Mask(ImagingError),
    /// The mask is not in the convention its rule wants (the message says how).
    MaskContent(String),
    /// Encoding or writing the answer failed.
    Output(String),
}

impl From<ImagingError> for Fault {
    fn from(e: ImagingError) -> Self {
        Fault::Output(e.to_string())
    }
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Self {
        Fault::Output(e.to_string())
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Image(e) | Fault::Mask(e) => e.fmt(f),
            Fault::MaskContent(m) | Fault::Output(m) => f.write_str(m),
        }
    }
}

/// How a mask's pixels say "edit".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// OpenAI's: fully transparent (alpha 0) pixels.
    Alpha,
    /// An opaque mask (one with transparency is refused): pixels whose red is at least 128
    /// when `white_edits`, below 128 otherwise (Imagen, Stability, BFL: white).
    Opaque {
        /// Whether white marks the edit.
        white_edits: bool,
    },
    /// Bedrock's: opaque pure black and white only (anything else is refused); pixels of
    /// value `edit` (0 black, 255 white).
    BlackWhite {
        /// The value of edited pixels.
        edit: u8,
    },
}

/// Which pixels an edit paints.
#[derive(Debug, Clone)]
pub enum Marks {
    /// None: the edit blends the whole image half-way towards its colour.
    Blend,
    /// Those a mask marks.
    Mask(Blob, MaskRule),
    /// The fully transparent pixels of the image itself (Stability's inpaint without a mask).
    OwnAlpha,
    /// Every pixel (Bedrock's background removal).
    Everything,
}

/// What is done to the input's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Nothing: the input as a PNG (Gemini 3's thought image).
    Input,
    /// [`imaging::simulate_edit`]'s edit with `colour` on the first `rows` rows (all of them
    /// with `u32::MAX`; fewer for a stream's partial images), the input below them.
    Edit {
        /// The paint colour ([`imaging::paint_colour`]).
        colour: [u8; 4],
        /// Rows edited, from the top.
        rows: u32,
    },
    /// A canvas grown by `[left, right, up, down]` pixels painted `colour`, the input at
    /// (`left`, `up`).
    Outpaint {
        /// The sides.
        sides: [u32; 4],
        /// The border's colour.
        colour: [u8; 4],
    },
    /// Every pixel of the top-left pixel's colour made transparent.
    RemoveBackground,
}

/// One output image: which upload, which pixels, what is done to them, and the size its PNG is
/// padded to (0: not padded).
#[derive(Debug, Clone)]
pub struct Picture {
    /// The input image.
    pub image: Blob,
    /// Which pixels [`Paint::Edit`] paints.
    pub marks: Marks,
    /// What is done.
    pub paint: Paint,
    /// With more than 0, the PNG is padded to about this many bytes (as [`imaging::pad_png`]).
    pub pad_to: usize,
}

impl Picture {
    /// The simulator's edit of `image` (all rows) with the colour of `prompt` and `index`.
    pub fn edit(image: Blob, marks: Marks, prompt: &str, index: u32) -> Self {
        Picture {
            image,
            marks,
            paint: Paint::Edit {
                colour: imaging::paint_colour(prompt, index),
                rows: u32::MAX,
            },
            pad_to: 0,
        }
    }
}

/// Reads an image's header: its format from its first bytes (PNG, JPEG or WebP, else an
/// error), its size, refused when over `max_pixels`. No pixel is decoded.
pub fn inspect(blob: &Blob, max_pixels: u64) -> Result<ImageHeader, ImagingError> {
    let kind = imaging::sniff(&blob.head(ImageKind::SNIFF_LEN)).ok_or_else(|| ImagingError::Decode {
        format: "image",
        detail: "not a PNG, JPEG or WebP".into(),
    })?;
    let header = imaging::dimensions(kind, blob.reader().map_err(|e| ImagingError::decode(kind, e))?)?;
    header.within(max_pixels)?;
    Ok(header)
}

/// Checks a mask against its image from headers alone: a PNG within `max_pixels`, of the
/// image's size, opaque when its rule wants it so. Pixel rules (Bedrock's black and white)
/// are checked while rendering.
pub fn inspect_mask(mask: &Blob, rule: MaskRule, image: &ImageHeader, max_pixels: u64) -> Result<(), Fault> {
    let reader = mask
        .reader()
        .map_err(|e| Fault::Mask(ImagingError::decode(ImageKind::Png, e)))?;
    let header = imaging::dimensions(ImageKind::Png, reader).map_err(Fault::Mask)?;
    header.within(max_pixels).map_err(Fault::Mask)?;
    if (header.width, header.height) != (image.width, image.height) {
        return Err(Fault::Mask(ImagingError::MaskSize {
            mw: header.width,
            mh: header.height,
            w: image.width,
            h: image.height,
        }));
    }
    if let MaskRule::Opaque { white_edits } = rule {
        if header.alpha {
            return Err(Fault::MaskContent(opaque_message(white_edits)));
        }
    }
    Ok(())
}

fn opaque_message(white_edits: bool) -> String {
    format!(
        "mask must be an opaque image whose {} pixels mark the area to edit (it has transparency)",
        if white_edits { "white" } else { "black" }
    )
}

/// The marks of one row: whether pixel `x` is edited.
enum RowMarks<'r> {
    Blend,
    Mask(&'r [u8], MaskRule),
    OwnAlpha,
    Everything,
}

/// Applies Bedrock's rule to a mask row: `Err` when a pixel is not opaque pure black or white.
fn check_black_white(row: &[u8]) -> Result<(), Fault> {
    for px in row.chunks_exact(4) {
        if px[3] != 255 {
            return Err(Fault::MaskContent(
                "maskImage must be an opaque black and white image (it has transparency)".into(),
            ));
        }
        if !(px[0] == px[1] && px[1] == px[2] && (px[0] == 0 || px[0] == 255)) {
            return Err(Fault::MaskContent(
                "maskImage must contain only pure black and white pixels".into(),
            ));
        }
    }
    Ok(())
}

/// The edit of one row in place: marked pixels painted `colour`, or every pixel blended.
fn edit_row(row: &mut [u8], marks: &RowMarks<'_>, colour: [u8; 4]) {
    for (x, px) in row.chunks_exact_mut(4).enumerate() {
        let edited = match marks {
            RowMarks::Blend => {
                for c in 0..3 {
                    px[c] = ((px[c] as u16 + colour[c] as u16) / 2) as u8;
                }
                continue;
            }
            RowMarks::Mask(mask, rule) => {
                let m = &mask[x * 4..x * 4 + 4];
                match rule {
                    MaskRule::Alpha => m[3] == 0,
                    MaskRule::Opaque { white_edits } => (m[0] >= 128) == *white_edits,
                    MaskRule::BlackWhite { edit } => m[0] == *edit,
                }
            }
            RowMarks::OwnAlpha => px[3] == 0,
            RowMarks::Everything => true,
        };
        if edited {
            px.copy_from_slice(&colour);
        }
    }
}

/// Opens an upload's rows (its format sniffed), within `max_pixels`.
fn open_rows(blob: &Blob, max_pixels: u64) -> Result<RowReader<super::body::BlobReader>, ImagingError> {
    let kind = imaging::sniff(&blob.head(ImageKind::SNIFF_LEN)).ok_or_else(|| ImagingError::Decode {
        format: "image",
        detail: "not a PNG, JPEG or WebP".into(),
    })?;
    RowReader::open(
        kind,
        blob.reader().map_err(|e| ImagingError::decode(kind, e))?,
        max_pixels,
    )
}

/// Encodes `p` as a PNG onto `out`, with a padding chunk of `padding` bytes if any.
fn encode(p: &Picture, max_pixels: u64, padding: Option<usize>, out: &mut dyn Write) -> Result<(), Fault> {
    let mut image = open_rows(&p.image, max_pixels).map_err(Fault::Image)?;
    let (width, height) = (image.width(), image.height());
    let mut mask = match &p.marks {
        Marks::Mask(blob, rule) => {
            let reader = blob
                .reader()
                .map_err(|e| Fault::Mask(ImagingError::decode(ImageKind::Png, e)))?;
            let m = RowReader::png(reader, max_pixels).map_err(Fault::Mask)?;
            if (m.width(), m.height()) != (width, height) {
                return Err(Fault::Mask(ImagingError::MaskSize {
                    mw: m.width(),
                    mh: m.height(),
                    w: width,
                    h: height,
                }));
            }
            Some((m, *rule))
        }
        _ => None,
    };
    let mut mask_row = vec![0u8; if mask.is_some() { width as usize * 4 } else { 0 }];
    if let Paint::Outpaint {
        sides: [left, right, up, down],
        colour,
    } = p.paint
    {
        let (l, w) = (left as usize * 4, width as usize * 4);
        let size = (width + left + right, height + up + down);
        return encode_png_rows(out, size, padding, |y, buf: &mut [u8]| {
            if y < up || y >= up + height {
                buf.chunks_exact_mut(4).for_each(|px| px.copy_from_slice(&colour));
                return Ok(());
            }
            buf[..l].chunks_exact_mut(4).for_each(|px| px.copy_from_slice(&colour));
            buf[l + w..]
                .chunks_exact_mut(4)
                .for_each(|px| px.copy_from_slice(&colour));
            image.read_row(&mut buf[l..l + w]).map_err(Fault::Image)
        });
    }
    let mut background: Option<[u8; 4]> = None;
    encode_png_rows(out, (width, height), padding, |y, buf: &mut [u8]| {
        image.read_row(buf).map_err(Fault::Image)?;
        let marks = match (&mut mask, &p.marks) {
            (Some((m, rule)), _) => {
                m.read_row(&mut mask_row).map_err(Fault::Mask)?;
                if matches!(rule, MaskRule::BlackWhite { .. }) {
                    check_black_white(&mask_row)?;
                }
                RowMarks::Mask(&mask_row, *rule)
            }
            (None, Marks::OwnAlpha) => RowMarks::OwnAlpha,
            (None, Marks::Everything) => RowMarks::Everything,
            (None, _) => RowMarks::Blend,
        };
        match p.paint {
            Paint::Edit { colour, rows } if y < rows => edit_row(buf, &marks, colour),
            Paint::RemoveBackground => {
                let bg = *background.get_or_insert_with(|| {
                    let mut first = [0u8; 4];
                    first.copy_from_slice(&buf[..4.min(buf.len())]);
                    first
                });
                for px in buf.chunks_exact_mut(4) {
                    if px == bg {
                        px.copy_from_slice(&[0, 0, 0, 0]);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    })
}

/// Writes `p` as a PNG onto `out`; a padded one is encoded twice (first only to learn its
/// size), so it is never held whole either.
pub fn write_png(p: &Picture, max_pixels: u64, out: &mut dyn Write) -> Result<(), Fault> {
    let padding = if p.pad_to > 0 {
        let mut size = CountingSink::default();
        encode(p, max_pixels, None, &mut size)?;
        let size = size.0 as usize;
        (size < p.pad_to).then(|| p.pad_to.saturating_sub(size + 12))
    } else {
        None
    };
    encode(p, max_pixels, padding, out)
}

/// The JSON text of an image slot number `index` (a string value, or the end of one: a
/// `data:` URL ends with it): [`write_json`] replaces it with the picture's base64.
pub fn slot(index: usize) -> String {
    format!("\u{1}{index}\u{1}")
}

/// [`slot`]'s delimiter as serde_json writes it.
const SLOT_MARK: &[u8] = b"\\u0001";

/// Writes `doc` as JSON onto `out`, each [`slot`] replaced by the base64 of the PNG of
/// `pictures[index]` (the standard alphabet needs no escaping in a JSON string).
pub fn write_json(doc: &Value, pictures: &[Picture], max_pixels: u64, out: &mut dyn Write) -> Result<(), Fault> {
    let text = serde_json::to_vec(doc).map_err(|e| Fault::Output(e.to_string()))?;
    let mut rest = &text[..];
    while let Some(at) = memchr::memmem::find(rest, SLOT_MARK) {
        let after = &rest[at + SLOT_MARK.len()..];
        let picture = memchr::memmem::find(after, SLOT_MARK).and_then(|end| {
            let index: usize = std::str::from_utf8(&after[..end]).ok()?.parse().ok()?;
            Some((pictures.get(index)?, end))
        });
        let Some((picture, end)) = picture else {
            out.write_all(&rest[..at + SLOT_MARK.len()])?;
            rest = after;
            continue;
        };
        out.write_all(&rest[..at])?;
        let mut b64 = Base64Writer::new(out);
        write_png(picture, max_pixels, &mut b64)?;
        b64.finish()?;
        rest = &after[end + SLOT_MARK.len()..];
    }
    out.write_all(rest)?;
    Ok(())
}

/// [`write_json`] into a new [`Body`].
pub fn json_body(doc: &Value, pictures: &[Picture], place: &RenderPlace) -> Result<Body, Fault> {
    let mut out = BodyWriter::new(&place.spool);
    write_json(doc, pictures, place.max_image_pixels, &mut out)?;
    Ok(out.finish()?)
}

/// `prefix`, then [`write_json`], then `suffix`, into a new [`Body`] (one server-sent event).
pub fn framed_json_body(
    (prefix, suffix): (&[u8], &[u8]),
    doc: &Value,
    pictures: &[Picture],
    place: &RenderPlace,
) -> Result<Body, Fault> {
    let mut out = BodyWriter::new(&place.spool);
    out.write_all(prefix)?;
    write_json(doc, pictures, place.max_image_pixels, &mut out)?;
    out.write_all(suffix)?;
    Ok(out.finish()?)
}

/// One picture as a PNG, into a new [`Body`].
pub fn png_body(picture: &Picture, place: &RenderPlace) -> Result<Body, Fault> {
    let mut out = BodyWriter::new(&place.spool);
    write_png(picture, place.max_image_pixels, &mut out)?;
    Ok(out.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png, pad_png, simulate_edit, solid, Rgba};
    use base64::Engine;
    use serde_json::json;

    fn place() -> RenderPlace {
        RenderPlace {
            max_image_pixels: imaging::DEFAULT_MAX_PIXELS,
            spool: SpoolPlace {
                memory_bytes: 100,
                directory: None,
            },
        }
    }

    fn striped(w: u32, h: u32) -> Rgba {
        let mut img = solid(w, h, [0, 0, 0, 255]);
        for (i, px) in img.pixels.chunks_exact_mut(4).enumerate() {
            px.copy_from_slice(&[
                (i % 256) as u8,
                (i / 3 % 256) as u8,
                9,
                if i % 5 == 0 { 0 } else { 255 },
            ]);
        }
        img
    }

    fn blob(bytes: Vec<u8>) -> Blob {
        Blob::Inline(bytes.into())
    }

    fn rendered(p: &Picture) -> Rgba {
        decode_png(&png_body(p, &place()).unwrap().to_vec()).unwrap()
    }

    #[test]
    fn edits_match_simulate_edit() {
        let img = striped(33, 17);
        let mut m = solid(33, 17, [0, 0, 0, 255]);
        m.pixels.chunks_exact_mut(4).step_by(3).for_each(|px| px[3] = 0);
        let (png, mask) = (encode_png(&img).unwrap(), encode_png(&m).unwrap());
        let masked = Picture::edit(blob(png.clone()), Marks::Mask(blob(mask), MaskRule::Alpha), "p", 2);
        assert_eq!(rendered(&masked), simulate_edit(&img, Some(&m), "p", 2).unwrap());
        let blended = Picture::edit(blob(png.clone()), Marks::Blend, "p", 0);
        assert_eq!(rendered(&blended), simulate_edit(&img, None, "p", 0).unwrap());
        // The image's own alpha as the mask, and every pixel.
        let own = Picture::edit(blob(png.clone()), Marks::OwnAlpha, "q", 0);
        assert_eq!(rendered(&own), simulate_edit(&img, Some(&img), "q", 0).unwrap());
        let all = rendered(&Picture::edit(blob(png.clone()), Marks::Everything, "q", 0));
        assert!(all.pixels.chunks_exact(4).all(|px| px == imaging::paint_colour("q", 0)));
        // Partial rows, and the input unchanged.
        let mut partial = Picture::edit(blob(png.clone()), Marks::Blend, "p", 0);
        partial.paint = Paint::Edit {
            colour: imaging::paint_colour("p", 0),
            rows: 5,
        };
        let (out, fin) = (rendered(&partial), simulate_edit(&img, None, "p", 0).unwrap());
        assert_eq!(out.pixel(7, 4), fin.pixel(7, 4));
        assert_eq!(out.pixel(7, 5), img.pixel(7, 5));
        let mut input = partial.clone();
        input.paint = Paint::Input;
        assert_eq!(rendered(&input), img);
    }

    #[test]
    fn opaque_and_black_white_masks() {
        let img = striped(4, 2);
        let png = encode_png(&img).unwrap();
        let mut m = solid(4, 2, [0, 0, 0, 255]);
        m.pixels[..4].copy_from_slice(&[255, 255, 255, 255]); // (0,0) white
        let mask = encode_png(&m).unwrap();
        let colour = imaging::paint_colour("p", 0);
        for (rule, edited) in [
            (MaskRule::Opaque { white_edits: true }, (0, 0)),
            (MaskRule::Opaque { white_edits: false }, (1, 0)),
            (MaskRule::BlackWhite { edit: 255 }, (0, 0)),
            (MaskRule::BlackWhite { edit: 0 }, (3, 1)),
        ] {
            let out = rendered(&Picture::edit(
                blob(png.clone()),
                Marks::Mask(blob(mask.clone()), rule),
                "p",
                0,
            ));
            assert_eq!(out.pixel(edited.0, edited.1), colour, "{rule:?}");
        }
        // Grey is not black and white.
        m.pixels[4..8].copy_from_slice(&[128, 128, 128, 255]);
        let grey = Picture::edit(
            blob(png.clone()),
            Marks::Mask(blob(encode_png(&m).unwrap()), MaskRule::BlackWhite { edit: 0 }),
            "p",
            0,
        );
        let e = png_body(&grey, &place()).unwrap_err();
        assert!(
            matches!(&e, Fault::MaskContent(m) if m.contains("pure black and white")),
            "{e}"
        );
        // A transparent mask is refused for an opaque rule from its header.
        let header = inspect(&blob(png.clone()), 1 << 20).unwrap();
        let unified = encode_png(&striped(4, 2)).unwrap();
        let e = inspect_mask(&blob(unified), MaskRule::Opaque { white_edits: true }, &header, 1 << 20).unwrap_err();
        assert!(matches!(&e, Fault::MaskContent(m) if m.contains("transparency")), "{e}");
        let small = encode_png(&solid(2, 2, [0, 0, 0, 255])).unwrap();
        let e = inspect_mask(&blob(small.clone()), MaskRule::Alpha, &header, 1 << 20).unwrap_err();
        assert!(matches!(e, Fault::Mask(ImagingError::MaskSize { mw: 2, .. })));
        let e = png_body(
            &Picture::edit(blob(png), Marks::Mask(blob(small), MaskRule::Alpha), "p", 0),
            &place(),
        )
        .unwrap_err();
        assert!(matches!(e, Fault::Mask(ImagingError::MaskSize { .. })));
    }

    #[test]
    fn outpaint_and_background_removal() {
        let img = striped(3, 2);
        let png = encode_png(&img).unwrap();
        let colour = [1, 2, 3, 255];
        let mut p = Picture::edit(blob(png.clone()), Marks::Blend, "p", 0);
        p.paint = Paint::Outpaint {
            sides: [2, 1, 1, 3],
            colour,
        };
        let out = rendered(&p);
        assert_eq!((out.width, out.height), (6, 6));
        assert_eq!(out.pixel(0, 0), colour);
        assert_eq!(out.pixel(2, 1), img.pixel(0, 0));
        assert_eq!(out.pixel(4, 2), img.pixel(2, 1));
        assert_eq!(out.pixel(5, 2), colour);
        assert_eq!(out.pixel(3, 5), colour);
        p.paint = Paint::RemoveBackground;
        let out = rendered(&p);
        assert_eq!(out.pixel(0, 0), [0, 0, 0, 0]);
        assert_eq!(out.pixel(1, 0), img.pixel(1, 0));
    }

    #[test]
    fn padding_matches_pad_png() {
        let img = striped(20, 10);
        let mut p = Picture::edit(blob(encode_png(&img).unwrap()), Marks::Blend, "p", 0);
        let plain = png_body(&p, &place()).unwrap().to_vec();
        for target in [0, plain.len(), plain.len() + 5, plain.len() + 12, 10_000] {
            p.pad_to = target;
            let padded = png_body(&p, &place()).unwrap().to_vec();
            assert_eq!(padded.len(), pad_png(plain.clone(), target).len(), "target {target}");
            assert_eq!(decode_png(&padded).unwrap(), decode_png(&plain).unwrap());
        }
    }

    #[test]
    fn json_slots_become_base64_images() {
        let img = striped(9, 9);
        let pictures = vec![
            Picture::edit(blob(encode_png(&img).unwrap()), Marks::Blend, "a", 0),
            Picture::edit(blob(encode_png(&img).unwrap()), Marks::Blend, "a", 1),
        ];
        let doc = json!({"data": [{"b64_json": slot(1)}, {"url": format!("data:image/png;base64,{}", slot(0))}],
            "other": "\u{1}7\u{1} stays", "n": 2});
        let body = json_body(&doc, &pictures, &place()).unwrap();
        assert!(matches!(body, Body::Spooled(ref s) if s.spilled()));
        let v: Value = serde_json::from_slice(&body.to_vec()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        let one = decode_png(&b64.decode(v["data"][0]["b64_json"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(one, simulate_edit(&img, None, "a", 1).unwrap());
        let url = v["data"][1]["url"].as_str().unwrap();
        let zero = decode_png(&b64.decode(url.strip_prefix("data:image/png;base64,").unwrap()).unwrap()).unwrap();
        assert_eq!(zero, simulate_edit(&img, None, "a", 0).unwrap());
        assert_eq!(v["other"], "\u{1}7\u{1} stays");
        assert_eq!(v["n"], 2);
        // Chunks of a spooled body, and a prefix of it.
        let whole = body.to_vec();
        let got: Vec<u8> = body.chunks(u64::MAX).flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(got, whole);
        let half: Vec<u8> = body
            .chunks(whole.len() as u64 / 2)
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(half, whole[..whole.len() / 2]);
        // A corrupt image is the image's fault.
        let bad = vec![Picture::edit(
            blob(b"\x89PNG\r\n\x1a\nbroken".to_vec()),
            Marks::Blend,
            "a",
            0,
        )];
        assert!(matches!(
            json_body(&json!({"x": slot(0)}), &bad, &place()),
            Err(Fault::Image(_))
        ));
    }
}
