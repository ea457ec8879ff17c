//! Mask conversion: the unified mask (OpenAI's convention, a PNG whose fully transparent
//! pixels, alpha 0, are edited) into the opaque mask a provider wants. CPU-heavy: the gateway
//! runs it once per request and convention on its [`super::DecodePool`], after the mask's
//! header passed the size checks.
//!
//! The mask is decoded row by row and the converted rows are compressed as they are made, so a
//! conversion holds one row of input and the compressed output, whatever the mask's size.

use super::decode::{png_reader, png_rows};
use super::{ImageKind, ImagingError};
use std::io::{Read, Write};

/// The opaque mask a provider wants: which colour marks the area to edit, in which pixel
/// format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskConvention {
    /// 8-bit greyscale, white (255) = edit, black = keep: Imagen, Stability, BFL Fill, the
    /// Stability services on Bedrock.
    GrayWhiteEdit,
    /// 8-bit RGB, black = edit, white = keep: Titan and Nova Canvas inpainting.
    RgbBlackEdit,
    /// 8-bit RGB, white = edit, black = keep: Titan and Nova Canvas outpainting.
    RgbWhiteEdit,
}

impl MaskConvention {
    /// Every convention.
    pub const ALL: [MaskConvention; 3] = [
        MaskConvention::GrayWhiteEdit,
        MaskConvention::RgbBlackEdit,
        MaskConvention::RgbWhiteEdit,
    ];

    /// The convention's position in [`MaskConvention::ALL`].
    pub fn index(self) -> usize {
        match self {
            MaskConvention::GrayWhiteEdit => 0,
            MaskConvention::RgbBlackEdit => 1,
            MaskConvention::RgbWhiteEdit => 2,
        }
    }

    fn edit_keep(self) -> (u8, u8) {
        match self {
            MaskConvention::GrayWhiteEdit | MaskConvention::RgbWhiteEdit => (255, 0),
            MaskConvention::RgbBlackEdit => (0, 255),
        }
    }

    fn color(self) -> png::ColorType {
        match self {
            MaskConvention::GrayWhiteEdit => png::ColorType::Grayscale,
            MaskConvention::RgbBlackEdit | MaskConvention::RgbWhiteEdit => png::ColorType::Rgb,
        }
    }
}

/// A mask converted from the unified convention: an opaque 8-bit PNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedMask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The encoded PNG.
    pub png: Vec<u8>,
}

/// A request's converted masks, at most one per convention, made on first use and reused by
/// every later attempt of the request (retries, fallbacks); kept with the request's spool.
#[derive(Debug, Default)]
pub struct ConvertedMasks {
    slots: [tokio::sync::OnceCell<std::sync::Arc<ConvertedMask>>; 3],
}

impl ConvertedMasks {
    /// The mask converted to `convention`: the one made earlier in this request, or the one
    /// `convert` makes now (concurrent callers wait for it). An error is not kept: the request
    /// ends with it.
    pub async fn get_or_convert<E, F, Fut>(
        &self,
        convention: MaskConvention,
        convert: F,
    ) -> Result<std::sync::Arc<ConvertedMask>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<std::sync::Arc<ConvertedMask>, E>>,
    {
        self.slots[convention.index()].get_or_try_init(convert).await.cloned()
    }
}

/// Converts the unified mask PNG read from `r` to `convention`: each alpha-0 pixel becomes the
/// edit colour, every other pixel the keep colour. Errors: not a decodable PNG, more than
/// `max_pixels` pixels ([`ImagingError::TooLarge`], checked on the decoder's header before
/// any row is read), or a PNG without transparency ([`ImagingError::MaskWithoutAlpha`]).
pub fn convert_mask_from(
    r: impl Read,
    convention: MaskConvention,
    max_pixels: u64,
) -> Result<ConvertedMask, ImagingError> {
    let (edit, keep) = convention.edit_keep();
    convert(r, convention.color(), [edit, keep], max_pixels)
}

/// Converts a unified mask held in memory into an opaque 8-bit greyscale PNG whose alpha-0
/// pixels are `edit` and every other pixel `keep` (fixtures and tests; the gateway uses
/// [`convert_mask_from`] on its decode pool). Errors as [`convert_mask_from`], within
/// [`super::DEFAULT_MAX_PIXELS`].
pub fn convert_mask(png: &[u8], edit: u8, keep: u8) -> Result<ConvertedMask, ImagingError> {
    convert(
        std::io::Cursor::new(png),
        png::ColorType::Grayscale,
        [edit, keep],
        super::DEFAULT_MAX_PIXELS,
    )
}

/// The conversion: `[edit, keep]` values, written as `color` (greyscale or RGB).
fn convert(
    r: impl Read,
    color: png::ColorType,
    [edit, keep]: [u8; 2],
    max_pixels: u64,
) -> Result<ConvertedMask, ImagingError> {
    let mut reader = png_reader(r, max_pixels)?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let has_alpha =
        matches!(info.color_type, png::ColorType::Rgba | png::ColorType::GrayscaleAlpha) || info.trns.is_some();
    if !has_alpha {
        return Err(ImagingError::MaskWithoutAlpha);
    }
    let out_channels = color.samples();
    let encode = |e: png::EncodingError| ImagingError::Encode(e.to_string());
    let mut out = Vec::with_capacity(4096);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(encode)?;
        let mut stream = writer.stream_writer().map_err(encode)?;
        let mut converted = Vec::with_capacity(width as usize * out_channels);
        let mut rows = 0u32;
        let mut failed = None;
        png_rows(&mut reader, |line, channels| {
            if failed.is_some() {
                return;
            }
            converted.clear();
            for px in line.chunks_exact(channels) {
                // Normalised rows with transparency are grey+alpha or RGBA: alpha comes last.
                let v = if channels % 2 == 0 && px[channels - 1] == 0 {
                    edit
                } else {
                    keep
                };
                converted.extend(std::iter::repeat_n(v, out_channels));
            }
            if let Err(e) = stream.write_all(&converted) {
                failed = Some(ImagingError::Encode(e.to_string()));
            }
            rows += 1;
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if rows != height {
            return Err(ImagingError::decode(ImageKind::Png, "the pixel data ends early"));
        }
        stream.finish().map_err(encode)?;
    }
    Ok(ConvertedMask {
        width,
        height,
        png: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::header::tests::png_declaring;
    use crate::imaging::{decode_png, encode_png, solid};
    use std::io::Cursor;

    fn unified(w: u32, h: u32) -> Vec<u8> {
        let mut m = solid(w, h, [0, 0, 0, 255]);
        m.pixels[3] = 0; // (0,0) edit
        encode_png(&m).unwrap()
    }

    #[test]
    fn each_convention_marks_the_transparent_pixels() {
        let png = unified(3, 2);
        for (c, edit, keep) in [
            (MaskConvention::GrayWhiteEdit, [255, 255, 255, 255], [0, 0, 0, 255]),
            (MaskConvention::RgbBlackEdit, [0, 0, 0, 255], [255, 255, 255, 255]),
            (MaskConvention::RgbWhiteEdit, [255, 255, 255, 255], [0, 0, 0, 255]),
        ] {
            let m = convert_mask_from(Cursor::new(&png), c, 6).unwrap();
            assert_eq!((m.width, m.height), (3, 2));
            let info = crate::imaging::png_info(&m.png).unwrap();
            assert!(!info.alpha);
            let out = decode_png(&m.png).unwrap();
            assert_eq!(out.pixel(0, 0), edit, "{c:?}");
            assert_eq!(out.pixel(2, 1), keep, "{c:?}");
            assert_eq!(MaskConvention::ALL[c.index()], c);
        }
    }

    #[test]
    fn the_budget_and_truncation_are_errors() {
        let png = unified(3, 2);
        assert!(matches!(
            convert_mask_from(Cursor::new(&png), MaskConvention::GrayWhiteEdit, 5),
            Err(ImagingError::TooLarge { .. })
        ));
        let bomb = png_declaring(8192, 8192);
        assert!(matches!(
            convert_mask_from(
                Cursor::new(&bomb),
                MaskConvention::GrayWhiteEdit,
                crate::imaging::DEFAULT_MAX_PIXELS
            ),
            Err(ImagingError::TooLarge { .. })
        ));
        assert!(matches!(
            convert_mask_from(Cursor::new(&png_declaring(30, 30)), MaskConvention::GrayWhiteEdit, 1000),
            Err(ImagingError::Decode { .. })
        ));
    }
}
