//! Header-only image dimensions: what a PNG, JPEG or WebP says its size is, read with the
//! decoders' own header readers (`png`'s `read_info`, `zune-jpeg`'s `decode_headers`,
//! `image-webp`'s chunk walk), before a single pixel is decoded. Runs on the request's task:
//! it reads the first bytes of the file (a JPEG's marker segments up to its frame header, a
//! WebP's chunk list), never its pixel data.
//!
//! A header can lie (a file that declares 8192×8192 in 8 KB of data): the dimensions decide
//! whether a decode is attempted at all, and every decode checks its own decoder's header
//! against the same budget again ([`mod@super::decode`]).

use super::{ImageKind, ImagingError};
use std::io::{BufRead, Seek};

/// What a header says about an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// The format.
    pub kind: ImageKind,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// True when the image can carry transparency: an alpha channel, or a PNG `tRNS` chunk.
    pub alpha: bool,
}

impl ImageHeader {
    /// `width × height`.
    pub fn pixels(&self) -> u64 {
        self.width as u64 * self.height as u64
    }

    /// `Err(TooLarge)` when the image has more than `max_pixels` pixels.
    pub fn within(&self, max_pixels: u64) -> Result<(), ImagingError> {
        if self.pixels() > max_pixels {
            return Err(ImagingError::TooLarge {
                width: self.width,
                height: self.height,
                limit: max_pixels,
            });
        }
        Ok(())
    }
}

/// Largest side a JPEG can declare (its frame header has 16-bit sides): the header reader
/// accepts every legal JPEG so that the budget, not the decoder's own default, decides.
pub(super) const JPEG_MAX_SIDE: usize = u16::MAX as usize;

/// Reads the header of an image of `kind` from `r` (positioned at the file's first byte).
pub fn dimensions(kind: ImageKind, r: impl BufRead + Seek) -> Result<ImageHeader, ImagingError> {
    let decode = |e: &dyn std::fmt::Display| ImagingError::decode(kind, e);
    match kind {
        ImageKind::Png => {
            // Chunks before the pixel data are read (tRNS among them); bounded like a decode.
            let decoder = png::Decoder::new_with_limits(r, png::Limits { bytes: 1 << 20 });
            let reader = decoder.read_info().map_err(|e| decode(&e))?;
            let info = reader.info();
            Ok(ImageHeader {
                kind,
                width: info.width,
                height: info.height,
                alpha: matches!(info.color_type, png::ColorType::Rgba | png::ColorType::GrayscaleAlpha)
                    || info.trns.is_some(),
            })
        }
        ImageKind::Jpeg => {
            let options = zune_core::options::DecoderOptions::default()
                .set_max_width(JPEG_MAX_SIDE)
                .set_max_height(JPEG_MAX_SIDE);
            let mut decoder = zune_jpeg::JpegDecoder::new_with_options(r, options);
            decoder.decode_headers().map_err(|e| decode(&format!("{e:?}")))?;
            let (w, h) = decoder.dimensions().ok_or_else(|| decode(&"no frame header"))?;
            Ok(ImageHeader {
                kind,
                width: w as u32,
                height: h as u32,
                alpha: false,
            })
        }
        ImageKind::Webp => {
            let decoder = image_webp::WebPDecoder::new(r).map_err(|e| decode(&e))?;
            let (width, height) = decoder.dimensions();
            Ok(ImageHeader {
                kind,
                width,
                height,
                alpha: decoder.has_alpha(),
            })
        }
    }
}

/// [`dimensions`] of a file held in memory, its format sniffed; `None` when it is none of the
/// three.
pub fn dimensions_of(bytes: &[u8]) -> Option<Result<ImageHeader, ImagingError>> {
    let kind = super::sniff(bytes)?;
    Some(dimensions(kind, std::io::Cursor::new(bytes)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::imaging::{encode_png, solid, Rgba};

    /// A JPEG of `img` (test fixtures).
    pub(crate) fn jpeg(img: &Rgba) -> Vec<u8> {
        let mut out = Vec::new();
        let enc = jpeg_encoder::Encoder::new(&mut out, 90);
        enc.encode(
            &img.pixels,
            img.width as u16,
            img.height as u16,
            jpeg_encoder::ColorType::Rgba,
        )
        .unwrap();
        out
    }

    /// A lossless WebP of `img` (test fixtures).
    pub(crate) fn webp(img: &Rgba) -> Vec<u8> {
        let mut out = Vec::new();
        image_webp::WebPEncoder::new(&mut out)
            .encode(&img.pixels, img.width, img.height, image_webp::ColorType::Rgba8)
            .unwrap();
        out
    }

    /// A valid PNG header (signature + IHDR with a correct CRC) declaring `w`×`h` RGBA, then an
    /// empty IDAT and IEND: a few dozen bytes that claim any size.
    pub(crate) fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8; 4], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crate::imaging::png_crc(&[kind, data]).to_be_bytes());
        };
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
        chunk(b"IEND", &[]);
        out
    }

    #[test]
    fn reads_the_size_of_each_format_from_its_header() {
        let img = solid(37, 21, [10, 200, 30, 255]);
        let png = encode_png(&img).unwrap();
        let want = |kind, alpha| ImageHeader {
            kind,
            width: 37,
            height: 21,
            alpha,
        };
        assert_eq!(dimensions_of(&png).unwrap().unwrap(), want(ImageKind::Png, true));
        assert_eq!(
            dimensions_of(&jpeg(&img)).unwrap().unwrap(),
            want(ImageKind::Jpeg, false)
        );
        let w = dimensions_of(&webp(&img)).unwrap().unwrap();
        assert_eq!((w.kind, w.width, w.height), (ImageKind::Webp, 37, 21));
        assert!(dimensions_of(b"GIF89a......").is_none());
    }

    #[test]
    fn a_header_can_claim_a_size_the_data_does_not_have() {
        let bomb = png_declaring(8192, 8192);
        assert!(bomb.len() < 100);
        let h = dimensions_of(&bomb).unwrap().unwrap();
        assert_eq!((h.width, h.height, h.pixels()), (8192, 8192, 1 << 26));
        assert!(matches!(
            h.within(crate::imaging::DEFAULT_MAX_PIXELS),
            Err(ImagingError::TooLarge {
                width: 8192,
                height: 8192,
                ..
            })
        ));
        assert!(h.within(1 << 26).is_ok());
    }

    #[test]
    fn truncated_headers_are_decode_errors() {
        let img = solid(300, 200, [1, 2, 3, 255]);
        for (kind, file) in [
            (ImageKind::Png, encode_png(&img).unwrap()),
            (ImageKind::Jpeg, jpeg(&img)),
            (ImageKind::Webp, webp(&img)),
        ] {
            for cut in [3, 11, 20] {
                let e = dimensions(kind, std::io::Cursor::new(&file[..cut])).unwrap_err();
                assert!(matches!(e, ImagingError::Decode { .. }), "{kind:?} cut at {cut}: {e}");
            }
        }
        // A PNG whose IHDR checksum is wrong.
        let mut png = encode_png(&img).unwrap();
        png[20] ^= 1;
        assert!(dimensions(ImageKind::Png, std::io::Cursor::new(&png)).is_err());
    }
}
