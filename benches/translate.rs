//! Translation benchmark: multipart parse of a 20 MB image edit (from 64 KiB chunks, as a
//! socket delivers them) into the spool, the OpenAI multipart re-encode or the Gemini
//! `generateContent` JSON (the image base64-encoded from the spool as the exchange does it,
//! with `Base64Stream`), and a walk over the body as the exchange sends it. Single-threaded, so
//! the figure is MB/s (of the client's body) per core.
//!
//! Each line also says how the upstream body was made: bytes forwarded from the spool as the
//! client sent them (file contents), and bytes the adapter wrote (part heads, text fields,
//! base64).
//!
//! Run: `cargo bench --bench translate`. Environment: `MB` (default 20), `KB` (the image size in
//! KiB instead, e.g. 64 for the load bench's edit), `ITER` (default 8).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use async_trait::async_trait;
use bytes::Bytes;
use refract::config::Limits;
use refract::form::{parse_edit_form, BodySource};
use refract::providers::{adapter_for, BodySegment, BuildScope};
use refract::spool::Spool;
use std::time::Instant;
use support::*;

struct Chunks(std::collections::VecDeque<Bytes>);

/// How an upstream body was made: bytes forwarded from the spool as the client sent them, and
/// bytes the adapter wrote (in how many segments).
#[derive(Default, Clone, Copy)]
struct Plan {
    forwarded: usize,
    literal: usize,
    literal_segments: usize,
}

impl Plan {
    /// A segment of `len` bytes the adapter wrote.
    fn written(&mut self, len: usize) {
        self.literal += len;
        self.literal_segments += 1;
    }

    /// The body's length.
    fn sent(&self) -> usize {
        self.forwarded + self.literal
    }
}

#[async_trait]
impl BodySource for Chunks {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        Ok(self.0.pop_front())
    }
}

fn main() {
    if !measuring() {
        return;
    }
    let mb: usize = env_or("MB", 20);
    let iters: usize = env_or("ITER", 8);
    let image_bytes = std::env::var("KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(mb * 1024 * 1024, |kb| kb * 1024);
    let image = noise_png(image_bytes);
    let config = refract::config::from_yaml_str_with_env(
        "providers:\n  - {name: openai, kind: openai, base_url: 'https://api.openai.com/v1', keys: [{name: k, value: sk-x}]}\n  - {name: gemini, kind: gemini, keys: [{name: k, value: gm-x}]}\n",
        &|_| None,
    )
    .expect("config");
    let router = refract::route::Router::new(&config);
    let limits = Limits {
        max_body_bytes: 1 << 30,
        max_part_bytes: 1 << 30,
        ..Limits::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    for (label, model, model_last, spool_memory) in [
        (
            "model first, spool in memory",
            "openai/gpt-image-1",
            false,
            usize::MAX / 2,
        ),
        (
            "model last, spool in memory",
            "openai/gpt-image-1",
            true,
            usize::MAX / 2,
        ),
        (
            "model last, spool spills to a temp file after 1 MiB",
            "openai/gpt-image-1",
            true,
            1 << 20,
        ),
        // multipart -> Gemini JSON: the image goes out as base64 encoded from the spool.
        (
            "gemini generateContent JSON, spool in memory",
            "gemini/gemini-2.5-flash-image",
            true,
            usize::MAX / 2,
        ),
        (
            "gemini generateContent JSON, spool spills after 1 MiB",
            "gemini/gemini-2.5-flash-image",
            true,
            1 << 20,
        ),
    ] {
        let body = Bytes::from(edit_body(model, &image, model_last));
        let mut best = f64::MAX;
        let mut times = Vec::new();
        let mut build_times = Vec::new();
        let mut plan = Plan::default();
        for _ in 0..iters {
            let chunks = (0..body.len())
                .step_by(64 * 1024)
                .map(|i| body.slice(i..(i + 64 * 1024).min(body.len())))
                .collect();
            let mut source = Chunks(chunks);
            let start = Instant::now();
            let made = rt.block_on(async {
                let mut spool = Spool::new(spool_memory, None);
                let mut ok = refract::form::ModelCheck(|_: &str, _: &str| Ok(()));
                let form = parse_edit_form(&mut source, BOUNDARY, &limits, &mut spool, &mut ok)
                    .await
                    .expect("parse");
                let target = router.select(&form.provider, &form.model, 0.0).expect("route");
                let building = Instant::now();
                let req = adapter_for(target.provider.kind)
                    .build(&BuildScope {
                        form: &form,
                        spool: &spool,
                        mask: None,
                        target: &target,
                        request_id: "bench",
                        now: std::time::SystemTime::now(),
                        nonce: 1,
                    })
                    .expect("build");
                build_times.push(building.elapsed().as_secs_f64());
                let mut made = Plan::default();
                for seg in &req.body {
                    match seg {
                        BodySegment::Bytes(b) => made.written(b.len()),
                        BodySegment::Spool(r) => {
                            for c in spool.chunks(*r) {
                                made.forwarded += c.expect("spool read").len();
                            }
                        }
                        BodySegment::Base64(r) => {
                            let mut enc = refract::codec::base64::Base64Stream::new();
                            let mut out = Vec::new();
                            let mut encoded = 0;
                            for c in spool.chunks(*r) {
                                out.clear();
                                enc.push(&c.expect("spool read"), &mut out);
                                encoded += out.len();
                            }
                            out.clear();
                            enc.finish(&mut out);
                            made.written(encoded + out.len());
                        }
                    }
                }
                made
            });
            let t = start.elapsed().as_secs_f64();
            assert!(made.sent() > image.len());
            plan = made;
            best = best.min(t);
            times.push(t);
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let median = times[times.len() / 2];
        build_times.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        println!(
            "{label}: {:.3} MB body in, {:.3} MB out ({} B forwarded from the spool, {} B written in {} segments; building the upstream request {:.2} us of it), median {:.1} us ({:.0} MB/s), best {:.1} us ({:.0} MB/s) per core",
            body.len() as f64 / 1e6,
            plan.sent() as f64 / 1e6,
            plan.forwarded,
            plan.literal,
            plan.literal_segments,
            build_times[build_times.len() / 2] * 1e6,
            median * 1e6,
            body.len() as f64 / 1e6 / median,
            best * 1e6,
            body.len() as f64 / 1e6 / best
        );
    }

    // The answer side: OpenAI ImagesResponse / Gemini GenerateContentResponse -> unified JSON.
    use refract::config::ProviderKind;
    for (label, kind, model, body) in [
        (
            "answer conversion",
            ProviderKind::OpenAi,
            "gpt-image-1",
            images_response(&noise_png(64 * 1024)),
        ),
        (
            "answer conversion",
            ProviderKind::OpenAi,
            "gpt-image-1",
            images_response(&noise_png(20 << 20)),
        ),
        (
            "gemini answer conversion",
            ProviderKind::Gemini,
            "gemini-2.5-flash-image",
            gemini_response(&noise_png(20 << 20)),
        ),
    ] {
        let answer = refract::providers::UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from(body),
        };
        let cx = refract::providers::ResponseContext {
            provider: kind.as_str(),
            model_requested: model,
            model_deployment: model,
            latency_ms: 1,
            num_input_images: 1,
            created: 1,
        };
        let adapter = adapter_for(kind);
        let mut times = Vec::new();
        for _ in 0..iters.max(20) {
            let start = Instant::now();
            let out = adapter.convert_response(&answer, &cx).expect("convert");
            times.push(start.elapsed().as_secs_f64());
            assert!(out.len() > answer.body.len() / 2);
        }
        let median = median(times);
        println!(
            "{label}: {:.2} MB JSON, median {:.3} ms ({:.0} MB/s) per core",
            answer.body.len() as f64 / 1e6,
            median * 1000.0,
            answer.body.len() as f64 / 1e6 / median
        );
    }

    // Stream conversion: one partial-image event carrying a ~1 MB PNG, fed in 64 KiB chunks.
    {
        use base64::Engine;
        let png = noise_png(1 << 20);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let event = format!(
            "event: image_edit.partial_image\ndata: {{\"type\":\"image_edit.partial_image\",\"b64_json\":\"{b64}\",\"partial_image_index\":0,\"created_at\":1,\"size\":\"1024x1024\",\"quality\":\"high\",\"background\":\"opaque\",\"output_format\":\"png\"}}\n\n"
        );
        let mut times = Vec::new();
        for _ in 0..iters.max(20) {
            let mut pipeline =
                refract::providers::stream::StreamPipeline::new(refract::providers::stream::StreamContext {
                    provider: "openai".into(),
                    model_requested: "gpt-image-1".into(),
                    model_deployment: "gpt-image-1".into(),
                    request_id: "bench".into(),
                    images: 1,
                    start: Instant::now(),
                    created: 1,
                    framing: refract::providers::stream::Framing::Bifrost,
                    kind: refract::config::ProviderKind::OpenAi,
                });
            let mut out = Vec::new();
            let start = Instant::now();
            for chunk in event.as_bytes().chunks(64 * 1024) {
                pipeline.feed(chunk, &mut out).expect("feed");
            }
            times.push(start.elapsed().as_secs_f64());
            assert!(out.len() > b64.len());
        }
        let m = median(times);
        println!(
            "stream event conversion: {:.2} MB event, median {:.3} ms ({:.0} MB/s) per core",
            event.len() as f64 / 1e6,
            m * 1000.0,
            event.len() as f64 / 1e6 / m
        );
    }
}
