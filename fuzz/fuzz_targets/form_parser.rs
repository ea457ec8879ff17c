//! The multipart form parser (`refract::form::parse_edit_form`) over any body, cut into chunks
//! anywhere: it never panics, and when it accepts a form, every file part lies inside the
//! spool and holds exactly the bytes the sink was streamed for it, the image count is within
//! its limit, and the sink saw `model` once.
//!
//! Input: byte 0 seeds the chunk sizes; the rest is the body, with boundary `fuzz`.

#![no_main]

use async_trait::async_trait;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use refract::config::Limits;
use refract::error::GatewayError;
use refract::form::{parse_edit_form, BodySource, FormSink};
use refract::imaging::ImageKind;
use refract::spool::Spool;
use std::collections::VecDeque;

struct Chunks(VecDeque<Bytes>);

#[async_trait]
impl BodySource for Chunks {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self.0.pop_front())
    }
}

/// Records what the parser streamed: `model` calls and each file part's bytes.
#[derive(Default)]
struct Recorder {
    models: usize,
    files: Vec<(String, Vec<u8>)>,
    open: bool,
}

#[async_trait]
impl FormSink for Recorder {
    async fn model(&mut self, _provider: &str, _model: &str) -> Result<(), GatewayError> {
        self.models += 1;
        Ok(())
    }
    async fn file_begin(
        &mut self,
        field: &str,
        _filename: Option<&str>,
        _kind: Option<ImageKind>,
        _declared: Option<&str>,
    ) -> Result<(), GatewayError> {
        assert!(!self.open, "file_begin inside a file part");
        self.open = true;
        self.files.push((field.to_string(), Vec::new()));
        Ok(())
    }
    async fn file_data(&mut self, chunk: Bytes) -> Result<(), GatewayError> {
        assert!(self.open, "file_data outside a file part");
        if let Some((_, bytes)) = self.files.last_mut() {
            bytes.extend_from_slice(&chunk);
        }
        Ok(())
    }
    async fn file_end(&mut self) -> Result<(), GatewayError> {
        assert!(self.open, "file_end outside a file part");
        self.open = false;
        Ok(())
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

fuzz_target!(|input: &[u8]| {
    let [seed, body @ ..] = input else { return };
    let mut state = u32::from(*seed) + 1;
    let mut chunks = VecDeque::new();
    let mut rest = body;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = ((state >> 16) as usize % 96 + 1).min(rest.len());
        chunks.push_back(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    let limits = Limits {
        max_body_bytes: 1 << 20,
        max_images: 4,
        max_part_bytes: 1 << 16,
        max_field_bytes: 1 << 12,
        ..Limits::default()
    };
    let mut spool = Spool::new(1 << 20, None);
    let mut sink = Recorder::default();
    let parsed = RUNTIME.with(|rt| {
        rt.block_on(parse_edit_form(&mut Chunks(chunks), "fuzz", &limits, &mut spool, &mut sink))
    });
    let Ok(form) = parsed else { return };
    assert_eq!(sink.models, 1, "model reported {} times", sink.models);
    assert!(!sink.open, "a file part left open");
    assert!(form.images.len() <= limits.max_images);
    let parts = form.images.iter().chain(&form.mask).chain(&form.extra_files);
    let mut spooled = 0;
    for part in parts {
        let bytes = spool.read_all(part.range).expect("a spooled part reads back");
        assert!(bytes.len() as u64 <= limits.max_part_bytes);
        let streamed = sink
            .files
            .iter()
            .find(|(field, data)| *field == part.field && *data == bytes);
        assert!(streamed.is_some(), "part '{}' differs from what was streamed", part.field);
        spooled += bytes.len() as u64;
    }
    assert!(spooled <= spool.len(), "parts exceed the spool");
});
