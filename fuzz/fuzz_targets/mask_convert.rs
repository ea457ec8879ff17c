//! Mask conversion and image decoding (`refract::imaging`) on any bytes, as the gateway runs
//! them on a client's upload: the header reader, then the conversion to each provider
//! convention and the decoder, within a pixel budget. Nothing may panic or allocate past the
//! budget (fuzz/run caps one allocation at 512 MiB); a converted mask is an opaque 8-bit PNG of
//! the header's dimensions whose every pixel is the edit or the keep value; a decoded image has
//! the header's dimensions and four bytes per pixel.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refract::imaging::header::dimensions_of;
use refract::imaging::mask::convert_mask_from;
use refract::imaging::{decode, MaskConvention};
use std::io::Cursor;

/// 4096 × 4096, the gateway's default `limits.max_image_pixels`.
const BUDGET: u64 = 1 << 24;

fuzz_target!(|input: &[u8]| {
    let header = match dimensions_of(input) {
        Some(Ok(header)) => Some(header),
        _ => None,
    };
    for convention in MaskConvention::ALL {
        let Ok(mask) = convert_mask_from(Cursor::new(input), convention, BUDGET) else {
            continue;
        };
        if let Some(h) = &header {
            assert_eq!((h.width, h.height), (mask.width, mask.height), "header and mask disagree");
        }
        assert!(u64::from(mask.width) * u64::from(mask.height) <= BUDGET);
        let mut reader = png::Decoder::new(Cursor::new(&mask.png))
            .read_info()
            .expect("the converted mask is a PNG");
        let info = reader.info();
        assert_eq!((info.width, info.height), (mask.width, mask.height));
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        let gray = convention == MaskConvention::GrayWhiteEdit;
        let want = if gray { png::ColorType::Grayscale } else { png::ColorType::Rgb };
        assert_eq!(info.color_type, want);
        let mut pixels = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut pixels).expect("the converted mask decodes");
        let channels = if gray { 1 } else { 3 };
        for px in pixels.chunks_exact(channels) {
            assert!(px.iter().all(|&v| v == px[0]), "a pixel that is not grey");
            assert!(px[0] == 0 || px[0] == 255, "a pixel neither edit nor keep");
        }
    }
    if let Some(h) = header {
        if let Ok(image) = decode(h.kind, Cursor::new(input), BUDGET) {
            assert_eq!((image.width, image.height), (h.width, h.height), "header and image disagree");
            assert_eq!(image.pixels.len() as u64, u64::from(h.width) * u64::from(h.height) * 4);
        }
    }
});
