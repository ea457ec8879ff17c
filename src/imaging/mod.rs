//! Image helpers: type detection from magic bytes (used on every uploaded file part),
//! header-only dimensions ([`header`]), decoding within a pixel budget ([`mod@decode`]), mask
//! conversion ([`mask`]), the bounded pool that runs decodes off the async threads ([`pool`]),
//! images read and PNGs written row by row ([`rows`]), and the PNG encoding and deterministic "edit" the provider simulator performs.
//!
//! The simulator's edit is real and checkable: with a mask, every pixel where the mask is fully
//! transparent (the OpenAI convention: alpha 0 = edit) is painted with a colour derived from the
//! prompt and the image index; every other pixel is the input pixel unchanged. Without a mask the
//! whole image is blended half-way towards that colour.

pub mod decode;
pub mod header;
pub mod mask;
pub mod pool;
pub mod rows;

pub use decode::{decode, decode_png};
pub use header::{dimensions, ImageHeader};
pub use mask::{convert_mask, ConvertedMask, ConvertedMasks, MaskConvention, MaskMarks};
pub use pool::DecodePool;
pub use rows::{encode_png_rows, RowReader};

use std::io::Cursor;
use thiserror::Error;

/// The default pixel budget (`limits.max_image_pixels`): 4096 × 4096, the largest input any
/// supported provider documents (Imagen, Titan and Nova Canvas take at most 4096 px a side;
/// Stability about 9.4 Mpixel; gpt-image edits at most 3840 px), decoded as at most 64 MiB of
/// RGBA.
pub const DEFAULT_MAX_PIXELS: u64 = 4096 * 4096;

/// An image type the gateway accepts, detected from the first bytes of a file part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ImageKind {
    /// `89 50 4E 47 0D 0A 1A 0A`
    Png,
    /// `FF D8 FF`
    Jpeg,
    /// `RIFF....WEBP`
    Webp,
}

impl ImageKind {
    /// Bytes needed to decide ([`sniff`] returns `None` for anything shorter).
    pub const SNIFF_LEN: usize = 12;

    /// The MIME type sent upstream.
    pub fn mime(self) -> &'static str {
        match self {
            ImageKind::Png => "image/png",
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Webp => "image/webp",
        }
    }

    /// The file extension used in synthetic file names.
    pub fn extension(self) -> &'static str {
        match self {
            ImageKind::Png => "png",
            ImageKind::Jpeg => "jpg",
            ImageKind::Webp => "webp",
        }
    }

    /// The format's name in messages: `PNG`, `JPEG`, `WebP`.
    pub fn name(self) -> &'static str {
        match self {
            ImageKind::Png => "PNG",
            ImageKind::Jpeg => "JPEG",
            ImageKind::Webp => "WebP",
        }
    }

    /// The format's name as configs and `output_format` spell it: `png`, `jpeg`, `webp`.
    pub fn extension_name(self) -> &'static str {
        match self {
            ImageKind::Png => "png",
            ImageKind::Jpeg => "jpeg",
            ImageKind::Webp => "webp",
        }
    }
}

/// Detects PNG, JPEG or WebP from the first bytes of a file; `None` for anything else.
pub fn sniff(head: &[u8]) -> Option<ImageKind> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageKind::Png)
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageKind::Jpeg)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(ImageKind::Webp)
    } else {
        None
    }
}

/// Why an image could not be read, decoded, converted or edited.
#[derive(Debug, Error)]
pub enum ImagingError {
    /// Not a file of its format the decoder accepts (or its header is unreadable).
    #[error("cannot decode {format}: {detail}")]
    Decode {
        /// `PNG`, `JPEG` or `WebP`.
        format: &'static str,
        /// The decoder's reason.
        detail: String,
    },
    /// Encoding the result failed.
    #[error("cannot encode PNG: {0}")]
    Encode(String),
    /// The mask's dimensions differ from the image's.
    #[error("the mask is {mw}x{mh} but the first image is {w}x{h}; they must match")]
    MaskSize {
        /// Mask width.
        mw: u32,
        /// Mask height.
        mh: u32,
        /// Image width.
        w: u32,
        /// Image height.
        h: u32,
    },
    /// The image is larger than the pixel budget: refused before any pixel is decoded.
    #[error("the image is {width}x{height} ({} pixels), over the limit of {limit} pixels", *width as u64 * *height as u64)]
    TooLarge {
        /// Width in pixels, from the header.
        width: u32,
        /// Height in pixels, from the header.
        height: u32,
        /// The budget (`limits.max_image_pixels`).
        limit: u64,
    },
    /// A unified mask without an alpha channel: it cannot say which pixels to edit.
    #[error("the mask has no alpha channel: use a PNG whose fully transparent pixels (alpha 0) mark the area to edit")]
    MaskWithoutAlpha,
    /// The blocking task that decoded went away (it panicked, or the runtime is shutting down).
    #[error("the decoder task failed: {0}")]
    Worker(String),
}

impl ImagingError {
    /// A decoder error of `kind`'s format.
    pub fn decode(kind: ImageKind, detail: impl std::fmt::Display) -> Self {
        ImagingError::Decode {
            format: kind.name(),
            detail: detail.to_string(),
        }
    }
}

/// A decoded 8-bit RGBA image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgba {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes, row-major RGBA.
    pub pixels: Vec<u8>,
}

impl Rgba {
    /// The RGBA value at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 4] {
        let i = ((y * self.width + x) * 4) as usize;
        [
            self.pixels[i],
            self.pixels[i + 1],
            self.pixels[i + 2],
            self.pixels[i + 3],
        ]
    }
}

/// Encodes 8-bit RGBA pixels as a PNG.
pub fn encode_png(img: &Rgba) -> Result<Vec<u8>, ImagingError> {
    let mut out = Vec::with_capacity(img.pixels.len() / 2 + 64);
    {
        let mut enc = png::Encoder::new(&mut out, img.width, img.height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut writer = enc.write_header().map_err(|e| ImagingError::Encode(e.to_string()))?;
        writer
            .write_image_data(&img.pixels)
            .map_err(|e| ImagingError::Encode(e.to_string()))?;
        writer.finish().map_err(|e| ImagingError::Encode(e.to_string()))?;
    }
    Ok(out)
}

/// The CRC-32 table of the PNG chunk checksum (ISO 3309, reflected polynomial `0xEDB88320`).
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

/// The CRC-32 of the concatenation of `parts`, as PNG chunks carry it.
fn png_crc(parts: &[&[u8]]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for part in parts {
        for &b in *part {
            c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
        }
    }
    c ^ 0xFFFF_FFFF
}

/// The type of the padding chunk [`pad_png`] adds: ancillary (lowercase first letter, so
/// decoders skip it), private (lowercase second), safe to copy (lowercase fourth).
pub const PAD_CHUNK_TYPE: [u8; 4] = *b"rfPd";

/// Pads `png` to at least `target` bytes (at most 11 more) by inserting a zero-filled
/// [`PAD_CHUNK_TYPE`] chunk right after `IHDR`; the image stays a valid PNG with the same pixels.
/// A PNG already that large, or one that does not start with a signature and `IHDR`, is
/// returned unchanged.
pub fn pad_png(png: Vec<u8>, target: usize) -> Vec<u8> {
    // signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC)
    const AFTER_IHDR: usize = 33;
    let well_formed = png.starts_with(b"\x89PNG\r\n\x1a\n") && png.get(8..16) == Some(&b"\0\0\0\x0dIHDR"[..]);
    if png.len() >= target || !well_formed || png.len() < AFTER_IHDR {
        return png;
    }
    let data_len = target.saturating_sub(png.len() + 12);
    let Ok(len_field) = u32::try_from(data_len) else {
        return png;
    };
    let data = vec![0u8; data_len];
    let crc = png_crc(&[&PAD_CHUNK_TYPE, &data]);
    let mut out = Vec::with_capacity(png.len() + 12 + data_len);
    out.extend_from_slice(&png[..AFTER_IHDR]);
    out.extend_from_slice(&len_field.to_be_bytes());
    out.extend_from_slice(&PAD_CHUNK_TYPE);
    out.extend_from_slice(&data);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// PNG colour information read from the header chunks only (no pixel decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngInfo {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// True when the image carries transparency: an alpha channel or a `tRNS` chunk.
    pub alpha: bool,
}

/// Reads a PNG's dimensions and whether it has transparency, without decoding pixels.
pub fn png_info(bytes: &[u8]) -> Result<PngInfo, ImagingError> {
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(|e| ImagingError::decode(ImageKind::Png, e))?;
    let info = reader.info();
    Ok(PngInfo {
        width: info.width,
        height: info.height,
        alpha: matches!(info.color_type, png::ColorType::Rgba | png::ColorType::GrayscaleAlpha) || info.trns.is_some(),
    })
}

/// The dimensions in a PNG's `IHDR` chunk, from the file's first 24 bytes; `None` when `head`
/// does not start like a PNG.
pub fn png_dimensions(head: &[u8]) -> Option<(u32, u32)> {
    if !head.starts_with(b"\x89PNG\r\n\x1a\n") || head.get(12..16) != Some(&b"IHDR"[..]) {
        return None;
    }
    let be = |at: usize| Some(u32::from_be_bytes(head.get(at..at + 4)?.try_into().ok()?));
    Some((be(16)?, be(20)?))
}

/// The paint colour for `prompt` and output image `index`: a stable FNV-1a hash, opaque.
pub fn paint_colour(prompt: &str, index: u32) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for b in prompt.bytes().chain(index.to_le_bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    [(h >> 24) as u8, (h >> 16) as u8, (h >> 8) as u8, 255]
}

/// The simulator's deterministic edit of `image` (decoded), guided by an optional `mask`
/// (decoded, same size): see the module docs for what it does to each pixel. The simulator
/// renders the same edit row by row from its uploads (`simulator::render`); this whole-image
/// form is its reference in tests.
pub fn simulate_edit(image: &Rgba, mask: Option<&Rgba>, prompt: &str, index: u32) -> Result<Rgba, ImagingError> {
    if let Some(m) = mask {
        if (m.width, m.height) != (image.width, image.height) {
            return Err(ImagingError::MaskSize {
                mw: m.width,
                mh: m.height,
                w: image.width,
                h: image.height,
            });
        }
    }
    let colour = paint_colour(prompt, index);
    let mut out = image.clone();
    for (i, px) in out.pixels.chunks_exact_mut(4).enumerate() {
        match mask {
            Some(m) => {
                if m.pixels[i * 4 + 3] == 0 {
                    px.copy_from_slice(&colour);
                }
            }
            None => {
                for c in 0..3 {
                    px[c] = ((px[c] as u16 + colour[c] as u16) / 2) as u8;
                }
            }
        }
    }
    Ok(out)
}

/// A solid-colour RGBA image (fixtures).
pub fn solid(width: u32, height: u32, colour: [u8; 4]) -> Rgba {
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 4);
    for _ in 0..(width as usize * height as usize) {
        pixels.extend_from_slice(&colour);
    }
    Rgba { width, height, pixels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_three_types() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\0"), Some(ImageKind::Png));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]), Some(ImageKind::Jpeg));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(ImageKind::Webp));
        assert_eq!(sniff(b"GIF89a......"), None);
        assert_eq!(sniff(b"RIFF\x10\0\0\0WAVE"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"%PDF-1.7"), None);
    }

    #[test]
    fn png_round_trip() {
        let img = Rgba {
            width: 3,
            height: 2,
            pixels: (0..24).map(|i| i as u8 * 10).collect(),
        };
        let png = encode_png(&img).unwrap();
        assert_eq!(sniff(&png), Some(ImageKind::Png));
        assert_eq!(decode_png(&png).unwrap(), img);
    }

    #[test]
    fn masked_edit_paints_only_transparent_pixels() {
        let img = solid(4, 4, [10, 20, 30, 255]);
        let mut mask = solid(4, 4, [0, 0, 0, 255]);
        // make the left half transparent
        for y in 0..4 {
            for x in 0..2 {
                mask.pixels[((y * 4 + x) * 4 + 3) as usize] = 0;
            }
        }
        let out = simulate_edit(&img, Some(&mask), "make it blue", 0).unwrap();
        let c = paint_colour("make it blue", 0);
        assert_eq!(out.pixel(0, 0), c);
        assert_eq!(out.pixel(1, 3), c);
        assert_eq!(out.pixel(2, 0), [10, 20, 30, 255]);
        assert_eq!(out.pixel(3, 3), [10, 20, 30, 255]);
    }

    #[test]
    fn mask_size_mismatch_is_an_error() {
        let img = solid(4, 4, [0; 4]);
        let mask = solid(2, 2, [0; 4]);
        assert!(matches!(
            simulate_edit(&img, Some(&mask), "p", 0),
            Err(ImagingError::MaskSize { .. })
        ));
    }

    #[test]
    fn unmasked_edit_blends_and_differs_per_index() {
        let img = solid(2, 2, [0, 0, 0, 255]);
        let a = simulate_edit(&img, None, "p", 0).unwrap();
        let b = simulate_edit(&img, None, "p", 1).unwrap();
        assert_ne!(a, b);
        let c = paint_colour("p", 0);
        assert_eq!(a.pixel(1, 1), [c[0] / 2, c[1] / 2, c[2] / 2, 255]);
    }

    #[test]
    fn padding_keeps_the_png_valid() {
        let img = solid(5, 3, [9, 8, 7, 255]);
        let png = encode_png(&img).unwrap();
        // the CRC matches the one the encoder wrote for IHDR
        assert_eq!(png_crc(&[&png[12..29]]).to_be_bytes(), png[29..33]);
        for target in [0, png.len(), png.len() + 5, png.len() + 12, 10_000] {
            let padded = pad_png(png.clone(), target);
            assert!(padded.len() >= target && padded.len() < target.max(png.len()) + 12);
            assert_eq!(decode_png(&padded).unwrap(), img, "target {target}");
        }
        let padded = pad_png(png.clone(), 10_000);
        assert_eq!(&padded[37..41], b"rfPd");
        assert_eq!(pad_png(b"not a png".to_vec(), 100), b"not a png");
    }

    #[test]
    fn unified_mask_becomes_white_on_black_grayscale() {
        let mut mask = solid(3, 2, [9, 9, 9, 255]);
        mask.pixels[3] = 0; // (0,0) transparent: edit
        mask.pixels[5 * 4 + 3] = 0; // (2,1)
        mask.pixels[4 + 3] = 128; // (1,0) half transparent: kept
        let png = encode_png(&mask).unwrap();
        let m = convert_mask(&png, 255, 0).unwrap();
        assert_eq!((m.width, m.height), (3, 2));
        let info = png_info(&m.png).unwrap();
        assert!(!info.alpha);
        assert_eq!(png_dimensions(&m.png), Some((3, 2)));
        let back = decode_png(&m.png).unwrap();
        let grey: Vec<u8> = back.pixels.chunks_exact(4).map(|p| p[0]).collect();
        assert_eq!(grey, [255, 0, 0, 0, 0, 255]);
        assert!(back.pixels.chunks_exact(4).all(|p| p[3] == 255));
        // The other convention, and a mask without alpha.
        let black = convert_mask(&png, 0, 255).unwrap();
        assert_eq!(decode_png(&black.png).unwrap().pixel(0, 0), [0, 0, 0, 255]);
        assert!(matches!(
            convert_mask(&m.png, 255, 0),
            Err(ImagingError::MaskWithoutAlpha)
        ));
        assert!(convert_mask(b"nope", 255, 0).is_err());
        assert_eq!(png_dimensions(b"\x89PNG\r\n"), None);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        assert!(decode_png(b"\x89PNG\r\n\x1a\nnot really").is_err());
        assert!(decode_png(b"").is_err());
    }
}
