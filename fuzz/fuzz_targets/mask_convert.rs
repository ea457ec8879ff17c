//! Mask detection, conversion and image decoding (`refract::imaging`) on any bytes, as the
//! gateway runs them on a client's upload: the header reader, then for each provider
//! convention the conversion under each reading of the mask (alpha, white = edit, black = edit)
//! and the one-decode detection and conversion, and the decoder, within a pixel budget. Nothing
//! may panic or allocate past the budget (fuzz/run caps one allocation at 512 MiB); a converted
//! mask is an 8-bit PNG of the header's dimensions in the convention's pixel format whose every
//! pixel is the edit or the keep value; the one-decode detection agrees with the separate one;
//! a decoded image has the header's dimensions and four bytes per pixel.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refract::imaging::header::dimensions_of;
use refract::imaging::mask::{convert_mask_from, detect_and_convert, detect_marks};
use refract::imaging::{decode, ConvertedMask, ImageHeader, MaskConvention, MaskMarks};
use std::io::Cursor;

/// 1024 × 1024. Below the gateway's default `limits.max_image_pixels` (4096 × 4096) on
/// purpose: each input is decoded up to 18 times here (every convention under every reading),
/// and under the sanitizer a 31-byte lossless WebP that declares 11,796 × 1,093 pixels took
/// over 10 s at the full budget (fuzz/seeds/mask_convert/webp-lossless-13mp). The properties
/// checked do not depend on the budget's size, only on its being respected.
const BUDGET: u64 = 1 << 20;

/// Checks a converted mask against the header it came from and its convention.
fn check(header: &ImageHeader, convention: MaskConvention, mask: &ConvertedMask) {
    assert_eq!((header.width, header.height), (mask.width, mask.height), "header and mask disagree");
    assert!(u64::from(mask.width) * u64::from(mask.height) <= BUDGET);
    let mut reader = png::Decoder::new(Cursor::new(&mask.png))
        .read_info()
        .expect("the converted mask is a PNG");
    let info = reader.info();
    assert_eq!((info.width, info.height), (mask.width, mask.height));
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let (color, channels) = match convention {
        MaskConvention::GrayWhiteEdit => (png::ColorType::Grayscale, 1),
        MaskConvention::RgbBlackEdit | MaskConvention::RgbWhiteEdit => (png::ColorType::Rgb, 3),
        MaskConvention::Alpha => (png::ColorType::Rgba, 4),
    };
    assert_eq!(info.color_type, color);
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).expect("the converted mask decodes");
    for px in pixels.chunks_exact(channels) {
        if convention == MaskConvention::Alpha {
            assert!(px == [0, 0, 0, 0] || px == [0, 0, 0, 255], "a pixel neither edit nor keep");
        } else {
            assert!(px.iter().all(|&v| v == px[0]), "a pixel that is not grey");
            assert!(px[0] == 0 || px[0] == 255, "a pixel neither edit nor keep");
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some(Ok(header)) = dimensions_of(input) else {
        return;
    };
    let detected = detect_marks(header.kind, Cursor::new(input), BUDGET);
    for convention in MaskConvention::ALL {
        for marks in [MaskMarks::Alpha, MaskMarks::WhiteEdit, MaskMarks::BlackEdit] {
            if let Ok(mask) = convert_mask_from(header.kind, Cursor::new(input), marks, convention, BUDGET) {
                check(&header, convention, &mask);
            }
        }
        if let Ok((marks, mask)) = detect_and_convert(header.kind, Cursor::new(input), convention, BUDGET) {
            check(&header, convention, &mask);
            if let Ok(alone) = &detected {
                assert_eq!(marks, *alone, "the one-decode detection disagrees");
            }
        }
    }
    if let Ok(image) = decode(header.kind, Cursor::new(input), BUDGET) {
        assert_eq!((image.width, image.height), (header.width, header.height), "header and image disagree");
        assert_eq!(image.pixels.len() as u64, u64::from(header.width) * u64::from(header.height) * 4);
    }
});
