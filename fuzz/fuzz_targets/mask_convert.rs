//! Mask conversion (`refract::imaging::convert_mask`) on any bytes: it never panics, and what it
//! returns is an opaque 8-bit grayscale PNG of the dimensions it reports, each pixel either the
//! `edit` or the `keep` value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refract::imaging::convert_mask;

fuzz_target!(|input: &[u8]| {
    let Ok(mask) = convert_mask(input, 255, 0) else { return };
    let decoder = png::Decoder::new(std::io::Cursor::new(&mask.png));
    let mut reader = decoder.read_info().expect("the converted mask is a PNG");
    let info = reader.info();
    assert_eq!((info.width, info.height), (mask.width, mask.height));
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).expect("the converted mask decodes");
    assert!(pixels.iter().all(|&p| p == 0 || p == 255), "a pixel neither edit nor keep");
});
