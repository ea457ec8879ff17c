//! Images row by row: reading an image as 8-bit RGBA rows ([`RowReader`]) and writing a PNG
//! from rows ([`encode_png_rows`]). CPU-heavy: callers on an async runtime run them through
//! [`super::DecodePool`].
//!
//! A non-interlaced PNG is read straight from its reader, one row in memory at a time; an
//! interlaced PNG, a JPEG or a WebP is decoded whole first (their decoders need it), within the
//! pixel budget. The PNG writer compresses each row as it is given. So the simulator renders an
//! edited PNG from an uploaded PNG holding a few rows and the compressor's state, whatever the
//! image's size.

use super::decode::png_reader;
use super::{decode, ImageKind, ImagingError, Rgba};
use std::io::{BufRead, Read, Seek, Write};

/// An image being read row by row, top to bottom, as 8-bit RGBA.
pub struct RowReader<R: Read> {
    width: u32,
    height: u32,
    next: u32,
    rows: Rows<R>,
}

enum Rows<R: Read> {
    /// A non-interlaced PNG: each row decoded when asked for; `channels` per pixel after the
    /// reader's normalisation (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    Png {
        reader: Box<png::Reader<R>>,
        channels: usize,
    },
    /// An interlaced PNG, its normalised frame decoded whole.
    Frame {
        buf: Vec<u8>,
        line_size: usize,
        channels: usize,
    },
    /// A JPEG or WebP, decoded whole.
    Decoded(Rgba),
}

impl<R: BufRead + Seek> RowReader<R> {
    /// Opens an image of `kind` from `r`, refusing more than `max_pixels` pixels (from its
    /// header, before any pixel is decoded).
    pub fn open(kind: ImageKind, r: R, max_pixels: u64) -> Result<Self, ImagingError> {
        if kind != ImageKind::Png {
            let image = decode(kind, r, max_pixels)?;
            return Ok(RowReader {
                width: image.width,
                height: image.height,
                next: 0,
                rows: Rows::Decoded(image),
            });
        }
        Self::png(r, max_pixels)
    }
}

impl<R: Read> RowReader<R> {
    /// Opens a PNG from `r`, refusing more than `max_pixels` pixels before decoding any.
    pub fn png(r: R, max_pixels: u64) -> Result<Self, ImagingError> {
        let mut reader = png_reader(r, max_pixels)?;
        let (width, height) = (reader.info().width, reader.info().height);
        let channels = reader.output_color_type().0.samples();
        let rows = if reader.info().interlaced {
            let mut buf = vec![0u8; reader.output_buffer_size()];
            let frame = reader
                .next_frame(&mut buf)
                .map_err(|e| ImagingError::decode(ImageKind::Png, e))?;
            Rows::Frame {
                buf,
                line_size: frame.line_size,
                channels,
            }
        } else {
            Rows::Png {
                reader: Box::new(reader),
                channels,
            }
        };
        Ok(RowReader {
            width,
            height,
            next: 0,
            rows,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Reads the next row into `out` (`width × 4` bytes of RGBA). Past the last row, or when the
    /// image's data is corrupt or ends early, an error.
    pub fn read_row(&mut self, out: &mut [u8]) -> Result<(), ImagingError> {
        let short = || ImagingError::decode(ImageKind::Png, "the pixel data ends early");
        let y = self.next as usize;
        if self.next >= self.height || out.len() != self.width as usize * 4 {
            return Err(short());
        }
        match &mut self.rows {
            Rows::Png { reader, channels } => {
                let row = reader
                    .next_row()
                    .map_err(|e| ImagingError::decode(ImageKind::Png, e))?
                    .ok_or_else(short)?;
                to_rgba(row.data(), *channels, out)?;
            }
            Rows::Frame {
                buf,
                line_size,
                channels,
            } => {
                let line = buf.get(y * *line_size..(y + 1) * *line_size).ok_or_else(short)?;
                to_rgba(line, *channels, out)?;
            }
            Rows::Decoded(image) => {
                let row = image.width as usize * 4;
                out.copy_from_slice(image.pixels.get(y * row..(y + 1) * row).ok_or_else(short)?);
            }
        }
        self.next += 1;
        Ok(())
    }
}

/// Converts one normalised PNG row of `channels` samples per pixel into RGBA in `out`.
fn to_rgba(line: &[u8], channels: usize, out: &mut [u8]) -> Result<(), ImagingError> {
    if channels == 0 || line.len() / channels != out.len() / 4 {
        return Err(ImagingError::decode(ImageKind::Png, "unexpected row size"));
    }
    for (px, o) in line.chunks_exact(channels).zip(out.chunks_exact_mut(4)) {
        let rgba = match channels {
            1 => [px[0], px[0], px[0], 255],
            2 => [px[0], px[0], px[0], px[1]],
            3 => [px[0], px[1], px[2], 255],
            _ => [px[0], px[1], px[2], px[3]],
        };
        o.copy_from_slice(&rgba);
    }
    Ok(())
}

/// Encodes a `width × height` 8-bit RGBA PNG onto `out`, compressing each row as it is made:
/// `row(y, buf)` fills row `y` (`width × 4` bytes), in order from the top; its error ends the
/// encoding. With `padding`, an ancillary [`super::PAD_CHUNK_TYPE`] chunk of that many zero
/// bytes follows the header (the image stays valid, its pixels the same): 12 bytes more than
/// the padding. The same rows give the same bytes.
pub fn encode_png_rows<W: Write, E: From<ImagingError>>(
    out: W,
    (width, height): (u32, u32),
    padding: Option<usize>,
    mut row: impl FnMut(u32, &mut [u8]) -> Result<(), E>,
) -> Result<(), E> {
    let encode = |e: png::EncodingError| E::from(ImagingError::Encode(e.to_string()));
    let mut enc = png::Encoder::new(out, width, height);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut writer = enc.write_header().map_err(encode)?;
    if let Some(padding) = padding {
        writer
            .write_chunk(png::chunk::ChunkType(super::PAD_CHUNK_TYPE), &vec![0u8; padding])
            .map_err(encode)?;
    }
    {
        let mut stream = writer.stream_writer_with_size(64 * 1024).map_err(encode)?;
        let mut buf = vec![0u8; width as usize * 4];
        for y in 0..height {
            row(y, &mut buf)?;
            stream
                .write_all(&buf)
                .map_err(|e| E::from(ImagingError::Encode(e.to_string())))?;
        }
        stream.finish().map_err(encode)?;
    }
    writer.finish().map_err(encode)
}

/// A writer that only counts what it is given (the size of an encoding, without keeping it).
#[derive(Debug, Default)]
pub struct CountingSink(pub u64);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::header::tests::{jpeg, png_declaring, webp};
    use crate::imaging::{decode_png, encode_png, solid};
    use std::io::Cursor;

    fn gradient(w: u32, h: u32) -> Rgba {
        let mut img = solid(w, h, [0, 0, 0, 255]);
        for (i, px) in img.pixels.chunks_exact_mut(4).enumerate() {
            px[0] = (i % 251) as u8;
            px[1] = (i / 7 % 253) as u8;
            px[3] = 200;
        }
        img
    }

    /// A 2×2 8-bit grey Adam7-interlaced PNG of `pixels` (row-major), made by hand (the png
    /// crate does not write interlaced images): pass 1 holds (0,0), pass 6 (1,0), pass 7 row 1.
    fn interlaced_grey_2x2([a, b, c, d]: [u8; 4]) -> Vec<u8> {
        let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&crate::imaging::png_crc(&[kind, data]).to_be_bytes());
        };
        let raw = [0, a, 0, b, 0, c, d];
        let (mut s1, mut s2) = (1u32, 0u32);
        for &x in &raw {
            s1 = (s1 + x as u32) % 65521;
            s2 = (s2 + s1) % 65521;
        }
        // zlib: header, one stored block, Adler-32
        let mut zlib = vec![0x78, 0x01, 0x01, raw.len() as u8, 0, !(raw.len() as u8), 0xFF];
        zlib.extend_from_slice(&raw);
        zlib.extend_from_slice(&((s2 << 16) | s1).to_be_bytes());
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut png, b"IHDR", &[0, 0, 0, 2, 0, 0, 0, 2, 8, 0, 0, 0, 1]);
        chunk(&mut png, b"IDAT", &zlib);
        chunk(&mut png, b"IEND", &[]);
        png
    }

    fn all_rows<R: Read>(mut r: RowReader<R>) -> Result<Rgba, ImagingError> {
        let (width, height) = (r.width(), r.height());
        let mut pixels = vec![0u8; width as usize * height as usize * 4];
        for row in pixels.chunks_exact_mut(width as usize * 4) {
            r.read_row(row)?;
        }
        assert!(
            r.read_row(&mut vec![0; width as usize * 4]).is_err(),
            "past the last row"
        );
        Ok(Rgba { width, height, pixels })
    }

    #[test]
    fn rows_of_every_format() {
        let img = gradient(37, 21);
        let png = RowReader::open(ImageKind::Png, Cursor::new(encode_png(&img).unwrap()), 1 << 20).unwrap();
        assert!(matches!(png.rows, Rows::Png { .. }));
        assert_eq!(all_rows(png).unwrap(), img);
        let mut opaque = img.clone();
        opaque.pixels.chunks_exact_mut(4).for_each(|p| p[3] = 255);
        let webp = RowReader::open(ImageKind::Webp, Cursor::new(webp(&opaque)), 1 << 20).unwrap();
        assert_eq!(all_rows(webp).unwrap(), opaque);
        let jpeg = all_rows(RowReader::open(ImageKind::Jpeg, Cursor::new(jpeg(&img)), 1 << 20).unwrap()).unwrap();
        assert_eq!((jpeg.width, jpeg.height), (37, 21));
    }

    #[test]
    fn interlaced_and_grey_pngs() {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, 3, 2);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0, 100, 200, 50, 150, 250]).unwrap();
        }
        let grey = all_rows(RowReader::png(Cursor::new(&out), 100).unwrap()).unwrap();
        assert_eq!(grey.pixel(2, 1), [250, 250, 250, 255]);
        // An interlaced PNG (Adam7, made by hand: the png crate does not write them).
        let interlaced = interlaced_grey_2x2([10, 20, 30, 40]);
        let r = RowReader::png(Cursor::new(&interlaced), 1 << 20).unwrap();
        assert!(matches!(r.rows, Rows::Frame { .. }));
        let img = all_rows(r).unwrap();
        assert_eq!(img, decode_png(&interlaced).unwrap());
        let grey: Vec<u8> = img.pixels.chunks_exact(4).map(|p| p[0]).collect();
        assert_eq!(grey, [10, 20, 30, 40]);
    }

    #[test]
    fn budget_and_truncation_are_errors() {
        let bomb = png_declaring(8192, 8192);
        assert!(matches!(
            RowReader::png(Cursor::new(&bomb), crate::imaging::DEFAULT_MAX_PIXELS),
            Err(ImagingError::TooLarge { .. })
        ));
        let png = encode_png(&gradient(64, 64)).unwrap();
        let cut = &png[..png.len() / 2];
        assert!(all_rows(RowReader::png(Cursor::new(cut), 1 << 20).unwrap()).is_err());
    }

    #[test]
    fn encoded_rows_decode_back_and_padding_keeps_the_pixels() {
        let img = gradient(50, 30);
        let row = |y: u32, buf: &mut [u8]| {
            let at = y as usize * 200;
            buf.copy_from_slice(&img.pixels[at..at + 200]);
            Ok(())
        };
        let mut plain = Vec::new();
        encode_png_rows::<_, ImagingError>(&mut plain, (50, 30), None, row).unwrap();
        assert_eq!(decode_png(&plain).unwrap(), img);
        let mut count = CountingSink::default();
        encode_png_rows::<_, ImagingError>(&mut count, (50, 30), None, row).unwrap();
        assert_eq!(count.0, plain.len() as u64);
        let mut padded = Vec::new();
        encode_png_rows::<_, ImagingError>(&mut padded, (50, 30), Some(1000), row).unwrap();
        assert_eq!(padded.len(), plain.len() + 1012);
        assert_eq!(&padded[37..41], b"rfPd");
        assert_eq!(decode_png(&padded).unwrap(), img);
        // A row that fails ends the encoding with its error.
        let failing = |y: u32, _: &mut [u8]| {
            if y == 3 {
                Err(ImagingError::MaskWithoutAlpha)
            } else {
                Ok(())
            }
        };
        assert!(matches!(
            encode_png_rows(Vec::new(), (4, 4), None, failing),
            Err(ImagingError::MaskWithoutAlpha)
        ));
    }
}
