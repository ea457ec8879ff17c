//! Decoding PNG, JPEG and WebP to 8-bit RGBA within a pixel budget. CPU-heavy: callers on an
//! async runtime run it through [`super::DecodePool`], never on a worker thread.
//!
//! Each decoder reads its own header first and the image is refused
//! ([`ImagingError::TooLarge`]) when it has more than `max_pixels` pixels, before any pixel
//! buffer is allocated; so a header that lied to an earlier header-only check cannot make a
//! decode allocate more than the budget allows (at most `4 × max_pixels` bytes of output).

use super::header::JPEG_MAX_SIDE;
use super::{ImageHeader, ImageKind, ImagingError, Rgba};
use std::io::{BufRead, Read, Seek};

/// Decodes an image of `kind` from `r` to 8-bit RGBA, refusing more than `max_pixels` pixels.
pub fn decode(kind: ImageKind, r: impl BufRead + Seek, max_pixels: u64) -> Result<Rgba, ImagingError> {
    match kind {
        ImageKind::Png => decode_png_from(r, max_pixels),
        ImageKind::Jpeg => decode_jpeg(r, max_pixels),
        ImageKind::Webp => decode_webp(r, max_pixels),
    }
}

/// Decodes any PNG (palette, grey, 16-bit, with or without alpha) held in memory to 8-bit
/// RGBA, within [`super::DEFAULT_MAX_PIXELS`].
pub fn decode_png(bytes: &[u8]) -> Result<Rgba, ImagingError> {
    decode_png_from(std::io::Cursor::new(bytes), super::DEFAULT_MAX_PIXELS)
}

fn header(kind: ImageKind, width: u32, height: u32, max_pixels: u64) -> Result<(), ImagingError> {
    ImageHeader {
        kind,
        width,
        height,
        alpha: false,
    }
    .within(max_pixels)
}

/// A PNG reader that normalises every colour type to 8-bit grey, grey+alpha, RGB or RGBA,
/// its header checked against `max_pixels`.
pub(super) fn png_reader<R: Read>(r: R, max_pixels: u64) -> Result<png::Reader<R>, ImagingError> {
    let mut decoder = png::Decoder::new_with_limits(r, png::Limits { bytes: 64 << 20 });
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let reader = decoder
        .read_info()
        .map_err(|e| ImagingError::decode(ImageKind::Png, e))?;
    header(ImageKind::Png, reader.info().width, reader.info().height, max_pixels)?;
    Ok(reader)
}

fn decode_png_from(r: impl Read, max_pixels: u64) -> Result<Rgba, ImagingError> {
    let mut rows = super::rows::RowReader::png(r, max_pixels)?;
    let (width, height) = (rows.width(), rows.height());
    let mut pixels = vec![0u8; width as usize * height as usize * 4];
    for row in pixels.chunks_exact_mut((width as usize * 4).max(1)) {
        rows.read_row(row)?;
    }
    Ok(Rgba { width, height, pixels })
}

fn decode_jpeg(r: impl BufRead + Seek, max_pixels: u64) -> Result<Rgba, ImagingError> {
    let err = |e: zune_jpeg::errors::DecodeErrors| ImagingError::decode(ImageKind::Jpeg, format!("{e:?}"));
    let side = JPEG_MAX_SIDE.min(usize::try_from(max_pixels).unwrap_or(usize::MAX));
    let options = zune_core::options::DecoderOptions::default()
        .set_max_width(side)
        .set_max_height(side)
        .jpeg_set_out_colorspace(zune_core::colorspace::ColorSpace::RGBA);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(r, options);
    decoder.decode_headers().map_err(err)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| ImagingError::decode(ImageKind::Jpeg, "no frame header"))?;
    let (width, height) = (w as u32, h as u32);
    header(ImageKind::Jpeg, width, height, max_pixels)?;
    let pixels = decoder.decode().map_err(err)?;
    if pixels.len() != width as usize * height as usize * 4 {
        return Err(ImagingError::decode(ImageKind::Jpeg, "unexpected output size"));
    }
    Ok(Rgba { width, height, pixels })
}

fn decode_webp(r: impl BufRead + Seek, max_pixels: u64) -> Result<Rgba, ImagingError> {
    let err = |e: image_webp::DecodingError| ImagingError::decode(ImageKind::Webp, e);
    let mut decoder = image_webp::WebPDecoder::new(r).map_err(err)?;
    let (width, height) = decoder.dimensions();
    header(ImageKind::Webp, width, height, max_pixels)?;
    decoder.set_memory_limit(usize::try_from(max_pixels.saturating_mul(4)).unwrap_or(usize::MAX));
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| ImagingError::decode(ImageKind::Webp, "image too large"))?;
    let mut buf = vec![0u8; size];
    decoder.read_image(&mut buf).map_err(err)?;
    let pixels = if decoder.has_alpha() {
        buf
    } else {
        let mut rgba = Vec::with_capacity(width as usize * height as usize * 4);
        for px in buf.chunks_exact(3) {
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
        rgba
    };
    Ok(Rgba { width, height, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::header::tests::{jpeg, png_declaring, webp};
    use crate::imaging::{encode_png, solid};
    use std::io::Cursor;

    fn gradient(w: u32, h: u32) -> Rgba {
        let mut img = solid(w, h, [0, 0, 0, 255]);
        for y in 0..h {
            for x in 0..w {
                let i = ((y * w + x) * 4) as usize;
                img.pixels[i] = (x * 255 / w.max(1)) as u8;
                img.pixels[i + 1] = (y * 255 / h.max(1)) as u8;
                img.pixels[i + 2] = 128;
            }
        }
        img
    }

    #[test]
    fn every_format_decodes_to_rgba() {
        let img = gradient(64, 48);
        let png = decode(ImageKind::Png, Cursor::new(encode_png(&img).unwrap()), 1 << 20).unwrap();
        assert_eq!(png, img);
        let webp = decode(ImageKind::Webp, Cursor::new(webp(&img)), 1 << 20).unwrap();
        assert_eq!(webp, img, "lossless");
        let jpeg = decode(ImageKind::Jpeg, Cursor::new(jpeg(&img)), 1 << 20).unwrap();
        assert_eq!((jpeg.width, jpeg.height, jpeg.pixels.len()), (64, 48, 64 * 48 * 4));
        // Lossy, but close.
        let off = jpeg
            .pixels
            .iter()
            .zip(&img.pixels)
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .max()
            .unwrap();
        assert!(off < 40, "max difference {off}");
    }

    #[test]
    fn the_budget_is_checked_on_the_decoders_own_header() {
        let img = gradient(100, 100);
        for (kind, file) in [
            (ImageKind::Png, encode_png(&img).unwrap()),
            (ImageKind::Jpeg, jpeg(&img)),
            (ImageKind::Webp, webp(&img)),
        ] {
            assert!(decode(kind, Cursor::new(&file), 10_000).is_ok(), "{kind:?}");
            let e = decode(kind, Cursor::new(&file), 9_999).unwrap_err();
            assert!(
                matches!(
                    e,
                    ImagingError::TooLarge {
                        width: 100,
                        height: 100,
                        limit: 9_999
                    }
                ),
                "{kind:?}: {e}"
            );
        }
        // A lying header is refused before anything is allocated for it …
        let bomb = png_declaring(8192, 8192);
        let e = decode(ImageKind::Png, Cursor::new(&bomb), crate::imaging::DEFAULT_MAX_PIXELS).unwrap_err();
        assert!(matches!(e, ImagingError::TooLarge { .. }), "{e}");
        // … and within a budget it allows, its missing data is a decode error.
        let e = decode(ImageKind::Png, Cursor::new(&png_declaring(64, 64)), 1 << 20).unwrap_err();
        assert!(matches!(e, ImagingError::Decode { .. }), "{e}");
    }

    #[test]
    fn grey_and_rgba_pngs_decode() {
        let img = gradient(9, 7);
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 9, 7);
            enc.set_color(png::ColorType::Rgba);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&img.pixels).unwrap();
        }
        assert_eq!(decode_png(&out).unwrap(), img);
        let mut grey = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut grey, 3, 2);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0, 100, 200, 50, 150, 250]).unwrap();
        }
        let g = decode_png(&grey).unwrap();
        assert_eq!(g.pixel(2, 1), [250, 250, 250, 255]);
    }
}
