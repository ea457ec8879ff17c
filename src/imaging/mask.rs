//! Masks in every convention: how a client's mask marks the area to edit ([`MaskMarks`],
//! detected by [`marks_from_header`] and [`detect_marks`]), and its conversion into the
//! convention a provider wants ([`MaskConvention`], [`convert_mask_from`]). CPU-heavy: the
//! gateway runs detection and conversion once per request on its [`super::DecodePool`], after
//! the mask's header passed the size checks.
//!
//! # The rule
//! A mask is read as 8-bit RGBA (a PNG's `tRNS` applied, greyscale expanded; JPEG and WebP
//! decoded whole, within the pixel budget). It uses OpenAI's convention, [`MaskMarks::Alpha`],
//! when *transparency is present*: some pixel has alpha below 255. Otherwise it is opaque and
//! white marks the area to edit ([`MaskMarks::WhiteEdit`]). So a PNG whose alpha channel (or
//! `tRNS`) leaves every pixel at 255 counts as opaque. The header decides when it can: a PNG of
//! colour type grey, RGB or palette without `tRNS`, a JPEG, and a WebP without alpha are opaque
//! without decoding a pixel; only a PNG with an alpha channel or `tRNS` (or a WebP with alpha)
//! is scanned, up to its first transparent pixel.
//!
//! Under [`MaskMarks::Alpha`] a pixel is edited when its alpha is 0 (partly transparent
//! pixels are kept, as OpenAI does); under [`MaskMarks::WhiteEdit`] when its luminance
//! (`(299 R + 587 G + 114 B) / 1000`, rounded) is at least 128; under [`MaskMarks::BlackEdit`]
//! when it is below 128. Alpha is ignored by the opaque readings.
//!
//! The mask is decoded row by row (a PNG; JPEG and WebP whole) and the converted rows are
//! compressed as they are made. A mask whose reading its pixels decide is decoded once when it
//! must be converted anyway ([`detect_and_convert`]).

use super::rows::RowReader;
use super::{ImageKind, ImagingError};
use std::io::{BufRead, Read, Seek, Write};

/// How a client's mask marks the area to edit, once decided (from what the inbound format
/// says, or detected: see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskMarks {
    /// OpenAI's: fully transparent pixels (alpha 0) are edited.
    Alpha,
    /// Opaque: white (luminance ≥ 128) is edited, black kept.
    WhiteEdit,
    /// Opaque: black (luminance < 128) is edited, white kept.
    BlackEdit,
}

impl MaskMarks {
    /// Whether the RGBA pixel `px` is in the area to edit under this reading.
    pub fn edits(self, px: [u8; 4]) -> bool {
        match self {
            MaskMarks::Alpha => px[3] == 0,
            MaskMarks::WhiteEdit => luminance(px) >= 128,
            MaskMarks::BlackEdit => luminance(px) < 128,
        }
    }
}

/// The luminance of an RGBA pixel (Rec. 601 weights, rounded; alpha ignored).
fn luminance([r, g, b, _]: [u8; 4]) -> u32 {
    (299 * r as u32 + 587 * g as u32 + 114 * b as u32 + 500) / 1000
}

/// The mask a provider wants: which colour (or transparency) marks the area to edit, in
/// which pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskConvention {
    /// 8-bit greyscale, white (255) = edit, black = keep: Imagen, Stability, BFL Fill, the
    /// Stability services on Bedrock.
    GrayWhiteEdit,
    /// 8-bit RGB, black = edit, white = keep: Titan and Nova Canvas inpainting.
    RgbBlackEdit,
    /// 8-bit RGB, white = edit, black = keep: Titan and Nova Canvas outpainting.
    RgbWhiteEdit,
    /// OpenAI's: 8-bit RGBA, the area to edit fully transparent (`0,0,0,0`), the rest opaque
    /// black (`0,0,0,255`). A mask already in [`MaskMarks::Alpha`] is sent as uploaded instead
    /// ([`MaskConvention::takes_as_uploaded`]).
    Alpha,
}

impl MaskConvention {
    /// Every convention.
    pub const ALL: [MaskConvention; 4] = [
        MaskConvention::GrayWhiteEdit,
        MaskConvention::RgbBlackEdit,
        MaskConvention::RgbWhiteEdit,
        MaskConvention::Alpha,
    ];

    /// The convention's position in [`MaskConvention::ALL`].
    pub fn index(self) -> usize {
        match self {
            MaskConvention::GrayWhiteEdit => 0,
            MaskConvention::RgbBlackEdit => 1,
            MaskConvention::RgbWhiteEdit => 2,
            MaskConvention::Alpha => 3,
        }
    }

    /// Whether a mask that marks its edit area as `marks` goes to the provider as uploaded,
    /// byte for byte, unconverted: an alpha mask to a provider that takes alpha masks.
    pub fn takes_as_uploaded(self, marks: MaskMarks) -> bool {
        self == MaskConvention::Alpha && marks == MaskMarks::Alpha
    }

    /// The output pixel format and the `[edit, keep]` pixels, in RGBA (only the first
    /// `samples` of each are written).
    fn output(self) -> Output {
        let (color, edit, keep) = match self {
            MaskConvention::GrayWhiteEdit => (png::ColorType::Grayscale, [255; 4], [0, 0, 0, 255]),
            MaskConvention::RgbBlackEdit => (png::ColorType::Rgb, [0, 0, 0, 255], [255; 4]),
            MaskConvention::RgbWhiteEdit => (png::ColorType::Rgb, [255; 4], [0, 0, 0, 255]),
            MaskConvention::Alpha => (png::ColorType::Rgba, [0, 0, 0, 0], [0, 0, 0, 255]),
        };
        Output { color, edit, keep }
    }
}

/// What a conversion writes: the pixel format, and the pixel for each side of the mask.
struct Output {
    color: png::ColorType,
    edit: [u8; 4],
    keep: [u8; 4],
}

/// A mask converted to a provider's convention: an 8-bit PNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertedMask {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The encoded PNG.
    pub png: Vec<u8>,
}

/// A request's mask work, done on first use and reused by every later attempt of the request
/// (retries, fallbacks); kept with the request's spool: how the mask marks its edit area, and
/// at most one conversion per convention.
#[derive(Debug, Default)]
pub struct ConvertedMasks {
    marks: tokio::sync::OnceCell<MaskMarks>,
    slots: [tokio::sync::OnceCell<std::sync::Arc<ConvertedMask>>; 4],
}

impl ConvertedMasks {
    /// How the mask marks its edit area: decided earlier in this request, or by `detect` now
    /// (concurrent callers wait for it). An error is not kept: the request ends with it.
    pub async fn get_or_detect<E, F, Fut>(&self, detect: F) -> Result<MaskMarks, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<MaskMarks, E>>,
    {
        self.marks.get_or_try_init(detect).await.copied()
    }

    /// How the mask marks its edit area, when decided already in this request.
    pub fn known_marks(&self) -> Option<MaskMarks> {
        self.marks.get().copied()
    }

    /// Keeps how the mask marks its edit area, decided by a conversion (the first decision
    /// stays: the rule gives every decision the same answer).
    pub fn keep_marks(&self, marks: MaskMarks) {
        let _ = self.marks.set(marks);
    }

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

/// How a mask whose header is `header` marks its edit area, when the header alone tells:
/// [`MaskMarks::WhiteEdit`] for an image that cannot carry transparency; `None` when the
/// pixels must decide ([`detect_marks`]).
pub fn marks_from_header(header: &super::ImageHeader) -> Option<MaskMarks> {
    (!header.alpha).then_some(MaskMarks::WhiteEdit)
}

/// How the mask of `kind` read from `r` marks its edit area, from its pixels:
/// [`MaskMarks::Alpha`] at the first pixel whose alpha is below 255 (the rest is not
/// decoded), else [`MaskMarks::WhiteEdit`]. Errors: not decodable, or more than `max_pixels`
/// pixels (checked on the decoder's header before any row is read).
pub fn detect_marks(kind: ImageKind, r: impl BufRead + Seek, max_pixels: u64) -> Result<MaskMarks, ImagingError> {
    let mut rows = RowReader::open(kind, r, max_pixels)?;
    let mut row = vec![0u8; rows.width() as usize * 4];
    for _ in 0..rows.height() {
        rows.read_row(&mut row)?;
        if row.chunks_exact(4).any(|px| px[3] < 255) {
            return Ok(MaskMarks::Alpha);
        }
    }
    Ok(MaskMarks::WhiteEdit)
}

/// Converts the mask of `kind` read from `r`, whose edit area `marks` names, to `convention`:
/// each pixel [`MaskMarks::edits`] becomes the convention's edit pixel, every other its keep
/// pixel. Errors: not decodable, or more than `max_pixels` pixels ([`ImagingError::TooLarge`],
/// checked on the decoder's header before any row is read).
pub fn convert_mask_from(
    kind: ImageKind,
    r: impl BufRead + Seek,
    marks: MaskMarks,
    convention: MaskConvention,
    max_pixels: u64,
) -> Result<ConvertedMask, ImagingError> {
    let rows = RowReader::open(kind, r, max_pixels)?;
    let (mut converted, _) = convert(rows, &[marks], convention.output())?;
    converted
        .pop()
        .ok_or_else(|| ImagingError::Encode("no conversion".into()))
}

/// [`detect_marks`] and [`convert_mask_from`] in one decode, for a mask whose header allows
/// transparency: each row is converted under both readings ([`MaskMarks::Alpha`] and
/// [`MaskMarks::WhiteEdit`]) as it is read, and the rule picks the one to keep at the end.
/// Errors as [`convert_mask_from`].
pub fn detect_and_convert(
    kind: ImageKind,
    r: impl BufRead + Seek,
    convention: MaskConvention,
    max_pixels: u64,
) -> Result<(MaskMarks, ConvertedMask), ImagingError> {
    let rows = RowReader::open(kind, r, max_pixels)?;
    let readings = [MaskMarks::Alpha, MaskMarks::WhiteEdit];
    let (converted, transparent) = convert(rows, &readings, convention.output())?;
    let pick = if transparent { 0 } else { 1 };
    let mask = converted
        .into_iter()
        .nth(pick)
        .ok_or_else(|| ImagingError::Encode("no conversion".into()))?;
    Ok((readings[pick], mask))
}

/// Converts an OpenAI mask held in memory into an opaque 8-bit greyscale PNG whose alpha-0
/// pixels are `edit` and every other pixel `keep` (fixtures and tests; the gateway uses
/// [`convert_mask_from`] on its decode pool). Errors as [`convert_mask_from`], within
/// [`super::DEFAULT_MAX_PIXELS`], and [`ImagingError::MaskWithoutAlpha`] for a PNG that cannot
/// carry transparency.
pub fn convert_mask(png: &[u8], edit: u8, keep: u8) -> Result<ConvertedMask, ImagingError> {
    let header = super::dimensions(ImageKind::Png, std::io::Cursor::new(png))?;
    if !header.alpha {
        return Err(ImagingError::MaskWithoutAlpha);
    }
    let rows = RowReader::png(std::io::Cursor::new(png), super::DEFAULT_MAX_PIXELS)?;
    let output = Output {
        color: png::ColorType::Grayscale,
        edit: [edit; 4],
        keep: [keep; 4],
    };
    let (mut converted, _) = convert(rows, &[MaskMarks::Alpha], output)?;
    converted
        .pop()
        .ok_or_else(|| ImagingError::Encode("no conversion".into()))
}

/// The conversion: each row of `rows` read once, each pixel written as `output`'s edit or keep
/// pixel under each of `readings` (one PNG per reading, each row compressed at once); also
/// whether some pixel's alpha was below 255.
fn convert<R: Read>(
    mut rows: RowReader<R>,
    readings: &[MaskMarks],
    output: Output,
) -> Result<(Vec<ConvertedMask>, bool), ImagingError> {
    let (width, height) = (rows.width(), rows.height());
    let samples = output.color.samples();
    let encode = |e: png::EncodingError| ImagingError::Encode(e.to_string());
    let mut outs: Vec<Vec<u8>> = readings.iter().map(|_| Vec::with_capacity(4096)).collect();
    let mut transparent = false;
    {
        let mut writers = Vec::with_capacity(readings.len());
        for out in outs.iter_mut() {
            let mut enc = png::Encoder::new(out, width, height);
            enc.set_color(output.color);
            enc.set_depth(png::BitDepth::Eight);
            writers.push(enc.write_header().map_err(encode)?);
        }
        let mut streams = Vec::with_capacity(readings.len());
        for writer in writers.iter_mut() {
            streams.push(writer.stream_writer().map_err(encode)?);
        }
        let mut row = vec![0u8; width as usize * 4];
        let mut converted = Vec::with_capacity(width as usize * samples);
        for _ in 0..height {
            rows.read_row(&mut row)?;
            transparent |= row.chunks_exact(4).any(|px| px[3] < 255);
            for (marks, stream) in readings.iter().zip(streams.iter_mut()) {
                converted.clear();
                for px in row.chunks_exact(4) {
                    let px = [px[0], px[1], px[2], px[3]];
                    let side = if marks.edits(px) { &output.edit } else { &output.keep };
                    converted.extend_from_slice(&side[..samples]);
                }
                stream
                    .write_all(&converted)
                    .map_err(|e| ImagingError::Encode(e.to_string()))?;
            }
        }
        for stream in streams {
            stream.finish().map_err(encode)?;
        }
    }
    let converted = outs
        .into_iter()
        .map(|png| ConvertedMask { width, height, png })
        .collect();
    Ok((converted, transparent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::header::tests::{jpeg, png_declaring, webp};
    use crate::imaging::{decode_png, dimensions, encode_png, solid, Rgba};
    use std::io::Cursor;

    /// The edit area of every 3×2 fixture below: (0,0) and (2,1).
    const EDIT: [(u32, u32); 2] = [(0, 0), (2, 1)];

    fn in_edit(x: u32, y: u32) -> bool {
        EDIT.contains(&(x, y))
    }

    /// A 3×2 PNG of `color` whose pixel (x,y) is `px(x, y)` (its first `samples` bytes), with
    /// an optional palette and `tRNS`.
    fn png_of(
        color: png::ColorType,
        px: impl Fn(u32, u32) -> [u8; 4],
        palette: Option<&[u8]>,
        trns: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, 3, 2);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        if let Some(p) = palette {
            enc.set_palette(p.to_vec());
        }
        if let Some(t) = trns {
            enc.set_trns(t.to_vec());
        }
        let mut w = enc.write_header().unwrap();
        let samples = color.samples();
        let data: Vec<u8> = (0..2)
            .flat_map(|y| (0..3).map(move |x| (x, y)))
            .flat_map(|(x, y)| px(x, y)[..samples].to_vec())
            .collect();
        w.write_image_data(&data).unwrap();
        drop(w);
        out
    }

    /// Each source fixture: its name, its bytes, how it marks its edit area (as detected).
    fn sources() -> Vec<(&'static str, Vec<u8>, MaskMarks)> {
        use png::ColorType::*;
        let alpha = |edit: u8| move |x, y| if in_edit(x, y) { [9, 9, 9, edit] } else { [9, 9, 9, 255] };
        // Half-transparent pixels are kept under OpenAI's reading.
        let rgba_alpha = |x, y| match (x, y) {
            (1, 0) => [200, 200, 200, 128],
            _ => alpha(0)(x, y),
        };
        let white = |x, y| {
            if in_edit(x, y) {
                [255, 255, 255, 255]
            } else {
                [0, 0, 0, 255]
            }
        };
        // Light grey is white, dark grey black.
        let grey = |x, y| match (x, y) {
            (0, 0) => [128; 4],
            (2, 1) => [255; 4],
            (1, 1) => [127, 127, 127, 255],
            _ => [0, 0, 0, 255],
        };
        let index = |x, y| if in_edit(x, y) { [0; 4] } else { [1; 4] };
        vec![
            ("rgba", png_of(Rgba, rgba_alpha, None, None), MaskMarks::Alpha),
            (
                "grey+alpha",
                png_of(
                    GrayscaleAlpha,
                    |x, y| {
                        let p = alpha(0)(x, y);
                        [p[0], p[3], 0, 0]
                    },
                    None,
                    None,
                ),
                MaskMarks::Alpha,
            ),
            (
                "palette+tRNS",
                png_of(Indexed, index, Some(&[0, 0, 0, 255, 255, 255]), Some(&[0, 255])),
                MaskMarks::Alpha,
            ),
            ("grey", png_of(Grayscale, grey, None, None), MaskMarks::WhiteEdit),
            ("rgb", png_of(Rgb, white, None, None), MaskMarks::WhiteEdit),
            ("rgba opaque", png_of(Rgba, white, None, None), MaskMarks::WhiteEdit),
            (
                "grey+alpha opaque",
                png_of(
                    GrayscaleAlpha,
                    |x, y| {
                        let p = white(x, y);
                        [p[0], 255, 0, 0]
                    },
                    None,
                    None,
                ),
                MaskMarks::WhiteEdit,
            ),
            // tRNS present, but no pixel uses the transparent entry: opaque.
            (
                "palette+tRNS unused",
                png_of(
                    Indexed,
                    |x, y| if in_edit(x, y) { [1; 4] } else { [2; 4] },
                    Some(&[9, 9, 9, 255, 255, 255, 0, 0, 0]),
                    Some(&[0]),
                ),
                MaskMarks::WhiteEdit,
            ),
            (
                "palette",
                png_of(
                    Indexed,
                    |x, y| if in_edit(x, y) { [1; 4] } else { [0; 4] },
                    Some(&[0, 0, 0, 255, 255, 255]),
                    None,
                ),
                MaskMarks::WhiteEdit,
            ),
        ]
    }

    fn kind_of(bytes: &[u8]) -> ImageKind {
        crate::imaging::sniff(bytes).unwrap()
    }

    fn detect(bytes: &[u8]) -> MaskMarks {
        let kind = kind_of(bytes);
        let header = dimensions(kind, Cursor::new(bytes)).unwrap();
        marks_from_header(&header).unwrap_or_else(|| detect_marks(kind, Cursor::new(bytes), 6).unwrap())
    }

    #[test]
    fn transparency_present_is_openais_convention_else_white_edits() {
        for (name, bytes, marks) in sources() {
            assert_eq!(detect(&bytes), marks, "{name}");
        }
        // The header decides for images that cannot carry transparency: no pixel decoded (a
        // PNG whose pixel data is missing still detects).
        let mut grey_header_only = png_of(png::ColorType::Grayscale, |_, _| [0; 4], None, None);
        let idat = grey_header_only.windows(4).position(|w| w == b"IDAT").unwrap();
        grey_header_only[idat + 4..].fill(0x55);
        assert!(decode_png(&grey_header_only).is_err(), "the pixels are garbage");
        let header = dimensions(ImageKind::Png, Cursor::new(&grey_header_only)).unwrap();
        assert_eq!(marks_from_header(&header), Some(MaskMarks::WhiteEdit));
        let rgba_header = dimensions(ImageKind::Png, Cursor::new(&png_declaring(3, 2))).unwrap();
        assert_eq!(
            marks_from_header(&rgba_header),
            None,
            "an alpha channel needs its pixels"
        );
        // JPEG never has transparency; a WebP with alpha is scanned.
        let img = Rgba {
            width: 3,
            height: 2,
            pixels: (0..6)
                .flat_map(|i| if i == 0 { [0, 0, 0, 0] } else { [255, 255, 255, 255] })
                .collect(),
        };
        assert_eq!(detect(&jpeg(&img)), MaskMarks::WhiteEdit);
        assert_eq!(detect(&webp(&img)), MaskMarks::Alpha);
        assert_eq!(detect(&webp(&solid(3, 2, [255; 4]))), MaskMarks::WhiteEdit);
    }

    #[test]
    fn every_reading_converts_to_every_convention_pixel_by_pixel() {
        let mut cases = sources();
        // Black = edit, told by the inbound format (never detected).
        let black = png_of(
            png::ColorType::Grayscale,
            |x, y| if in_edit(x, y) { [0; 4] } else { [255; 4] },
            None,
            None,
        );
        cases.push(("grey black-edit", black, MaskMarks::BlackEdit));
        for (name, bytes, marks) in cases {
            for c in MaskConvention::ALL {
                assert_eq!(MaskConvention::ALL[c.index()], c);
                let m = convert_mask_from(kind_of(&bytes), Cursor::new(&bytes), marks, c, 6).unwrap();
                assert_eq!((m.width, m.height), (3, 2));
                let info = crate::imaging::png_info(&m.png).unwrap();
                assert_eq!(info.alpha, c == MaskConvention::Alpha, "{name} → {c:?}");
                let (edit, keep) = match c {
                    MaskConvention::GrayWhiteEdit | MaskConvention::RgbWhiteEdit => ([255; 4], [0, 0, 0, 255]),
                    MaskConvention::RgbBlackEdit => ([0, 0, 0, 255], [255; 4]),
                    MaskConvention::Alpha => ([0; 4], [0, 0, 0, 255]),
                };
                let out = decode_png(&m.png).unwrap();
                for y in 0..2 {
                    for x in 0..3 {
                        let want = if in_edit(x, y) { edit } else { keep };
                        assert_eq!(out.pixel(x, y), want, "{name} → {c:?} at ({x},{y})");
                    }
                }
            }
        }
    }

    #[test]
    fn one_decode_detects_and_converts_as_the_two_steps_do() {
        for (name, bytes, marks) in sources() {
            let kind = kind_of(&bytes);
            if marks_from_header(&dimensions(kind, Cursor::new(&bytes)).unwrap()).is_some() {
                continue; // the header decides: no detection to merge
            }
            for c in MaskConvention::ALL {
                let (got, mask) = detect_and_convert(kind, Cursor::new(&bytes), c, 6).unwrap();
                assert_eq!(got, marks, "{name}");
                assert_eq!(
                    mask,
                    convert_mask_from(kind, Cursor::new(&bytes), marks, c, 6).unwrap(),
                    "{name} → {c:?}"
                );
            }
        }
        assert!(matches!(
            detect_and_convert(
                ImageKind::Png,
                Cursor::new(&png_declaring(30, 30)),
                MaskConvention::Alpha,
                100
            ),
            Err(ImagingError::TooLarge { .. })
        ));
    }

    #[test]
    fn opaque_jpeg_and_webp_masks_convert() {
        let img = Rgba {
            width: 3,
            height: 2,
            pixels: (0..6u32)
                .flat_map(|i| {
                    if in_edit(i % 3, i / 3) {
                        [255; 4]
                    } else {
                        [0, 0, 0, 255]
                    }
                })
                .collect(),
        };
        for bytes in [jpeg(&img), webp(&img)] {
            let m = convert_mask_from(
                kind_of(&bytes),
                Cursor::new(&bytes),
                MaskMarks::WhiteEdit,
                MaskConvention::Alpha,
                6,
            )
            .unwrap();
            let out = decode_png(&m.png).unwrap();
            for (x, y) in [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)] {
                assert_eq!(out.pixel(x, y)[3] == 0, in_edit(x, y), "({x},{y})");
            }
        }
    }

    #[test]
    fn only_an_alpha_mask_to_an_alpha_provider_goes_as_uploaded() {
        for c in MaskConvention::ALL {
            for m in [MaskMarks::Alpha, MaskMarks::WhiteEdit, MaskMarks::BlackEdit] {
                assert_eq!(
                    c.takes_as_uploaded(m),
                    c == MaskConvention::Alpha && m == MaskMarks::Alpha
                );
            }
        }
    }

    #[test]
    fn the_budget_and_truncation_are_errors() {
        let png = encode_png(&solid(3, 2, [0, 0, 0, 0])).unwrap();
        let convert = |bytes: &[u8], max| {
            convert_mask_from(
                ImageKind::Png,
                Cursor::new(bytes),
                MaskMarks::Alpha,
                MaskConvention::GrayWhiteEdit,
                max,
            )
        };
        assert!(matches!(convert(&png, 5), Err(ImagingError::TooLarge { .. })));
        assert!(matches!(
            detect_marks(ImageKind::Png, Cursor::new(&png), 5),
            Err(ImagingError::TooLarge { .. })
        ));
        let bomb = png_declaring(8192, 8192);
        assert!(matches!(
            convert(&bomb, crate::imaging::DEFAULT_MAX_PIXELS),
            Err(ImagingError::TooLarge { .. })
        ));
        assert!(matches!(
            convert(&png_declaring(30, 30), 1000),
            Err(ImagingError::Decode { .. })
        ));
        assert!(matches!(
            detect_marks(ImageKind::Png, Cursor::new(&png_declaring(30, 30)), 1000),
            Err(ImagingError::Decode { .. })
        ));
    }
}
