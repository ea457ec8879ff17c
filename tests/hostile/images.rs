//! Finding 5, mask and image bombs: a mask whose header declares 8192×8192 in a few KB is
//! refused from its header (its size against the first image's and the pixel budget) before
//! anything is decoded or sent upstream; bombs sent in parallel leave `/health` prompt (decodes
//! run off the async workers, bounded); and a mask is converted once per request, however many
//! retries and fallbacks build a request from it (`refract_image_decodes_total`).

use super::common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A mask bomb: a complete, valid PNG of about 18 KB that declares `side`×`side` pixels, 1-bit
/// greyscale with black transparent (`tRNS`), all black: every pixel is to be edited. Decoded
/// to RGBA as a converter would, it takes `4 × side²` bytes (256 MiB at 8192) and the CPU to
/// expand each pixel. Made once (compressing the zeros takes a moment in a debug build).
fn png_bomb(side: u32) -> Vec<u8> {
    static BOMBS: std::sync::Mutex<Vec<(u32, Vec<u8>)>> = std::sync::Mutex::new(Vec::new());
    let mut made = BOMBS.lock().unwrap();
    if let Some((_, png)) = made.iter().find(|(s, _)| *s == side) {
        return png.clone();
    }
    let mut png = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::One);
        enc.set_trns(vec![0u8, 0]);
        enc.set_compression(png::Compression::Best);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![0u8; side as usize * side.div_ceil(8) as usize])
            .unwrap();
    }
    made.push((side, png.clone()));
    png
}

const STABILITY_KEY: &str = "sk-stability-upstream-images";

/// Providers `stab` and `stab2` (kind stability, the mask converted to white = edit) at
/// `mock`; `stab` retries once.
fn gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: stab\n    kind: stability\n    base_url: http://{a}\n    retries: 1\n    retry_backoff_ms: 1\n    keys:\n      - {{name: s, value: {STABILITY_KEY}}}\n\
         \x20 - name: stab2\n    kind: stability\n    base_url: http://{a}\n    keys:\n      - {{name: s, value: {STABILITY_KEY}}}\n",
        a = mock.addr
    );
    Gateway::start(&setup)
}

fn inpaint(image: &[u8], mask: &[u8]) -> Form {
    Form::new()
        .text("model", "stab/stable-image-inpaint")
        .text("prompt", "fill it")
        .text("type", "inpainting")
        .file("image", "in.png", "image/png", image)
        .file("mask", "mask.png", "image/png", mask)
}

fn decodes(gw: &Gateway) -> f64 {
    gw.metric("refract_image_decodes_total")
}

#[test]
fn a_header_bomb_is_refused_from_its_header_before_any_decode_or_upstream_call() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let bomb = png_bomb(8192);
    assert!(bomb.len() < 24 * 1024, "{}", bomb.len());

    // Its size differs from the image's: refused naming the mask and both sizes.
    let start = Instant::now();
    let r = gw.edit(&inpaint(&gradient_png(), &bomb), &[("x-bf-vk", VK)]);
    let v = assert_invalid(&r, "mask");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("8192x8192") && message.contains("6x4"), "{message}");
    // Same size as the image (a bomb too): over the pixel budget, refused naming the mask.
    let r = gw.edit(&inpaint(&png_bomb(8192), &bomb), &[("x-bf-vk", VK)]);
    let v = assert_invalid(&r, "mask");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("8192x8192") && message.contains("16777216"),
        "{message}"
    );
    // A real mask of another size than the image.
    let mut small = refract::imaging::solid(3, 3, [0, 0, 0, 255]);
    small.pixels[3] = 0;
    let small = refract::imaging::encode_png(&small).unwrap();
    let r = gw.edit(&inpaint(&gradient_png(), &small), &[("x-bf-vk", VK)]);
    let v = assert_invalid(&r, "mask");
    assert!(v["error"]["message"].as_str().unwrap().contains("3x3"), "{v}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert_eq!(mock.received(), 0, "no upstream call");
    assert_eq!(decodes(&gw), 0.0, "nothing decoded");
    gw.assert_still_serves();
}

#[test]
fn bombs_in_parallel_leave_health_prompt() {
    let mock = MockUpstream::start();
    let gw = Arc::new(gateway(&mock));
    // Image and mask declare the same size, so only the budget (or a decode) can stop them.
    let form = Arc::new(inpaint(&png_bomb(8192), &png_bomb(8192)));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (gw, form, stop) = (gw.clone(), form.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    statuses.push(gw.edit(&form, &[("x-bf-vk", VK)]).status);
                }
                statuses
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let start = Instant::now();
        let r = Gateway::get(gw.addr, "/health");
        assert_eq!(r.status, 200);
        slowest = slowest.max(start.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let statuses: Vec<u16> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    println!(
        "/health slowest {slowest:?} while 8 clients sent {} bombs",
        statuses.len()
    );
    assert!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 400),
        "{statuses:?}"
    );
    assert!(slowest < Duration::from_secs(1), "/health took {slowest:?}");
    assert_eq!(mock.received(), 0);
}

#[test]
fn a_mask_is_converted_once_across_a_retry_and_a_fallback() {
    let mock = MockUpstream::start();
    let failure = Reply::json(503, &json!({"name": "unavailable", "errors": ["try later"]}));
    mock.push(failure.clone());
    mock.push(failure);
    let out = refract::imaging::encode_png(&refract::imaging::solid(6, 4, [1, 2, 3, 255])).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&out);
    mock.push(Reply::json(
        200,
        &json!({"image": b64, "finish_reason": "SUCCESS", "seed": 1}),
    ));
    let gw = gateway(&mock);
    let form = inpaint(&gradient_png(), &unified_mask_png()).text("fallbacks", "stab2/stable-image-inpaint");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    assert_eq!(v["extra_fields"]["fallback_index"], 1, "{v}");
    // The primary, its retry and the fallback each sent the same converted mask …
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let masks: Vec<Vec<u8>> = requests
        .iter()
        .map(|rec| {
            let ct = rec.header("content-type").unwrap();
            let parts = parse_multipart(&ct, &rec.body);
            parts_named(&parts, "mask")[0].data.clone()
        })
        .collect();
    assert!(masks.iter().all(|m| *m == masks[0]));
    let native = refract::imaging::decode_png(&masks[0]).unwrap();
    assert_eq!(native.pixel(0, 0), [255, 255, 255, 255], "edit: white");
    assert_eq!(native.pixel(0, 3), [0, 0, 0, 255], "keep: black");
    // … converted once.
    assert_eq!(decodes(&gw), 1.0);
}

#[test]
fn the_simulator_edits_a_1024_jpeg_at_its_size() {
    let mut setup = Setup::new("http://127.0.0.1:9");
    setup.simulator = true;
    let gw = Gateway::start(&setup);
    let mut input = refract::imaging::solid(1024, 1024, [0, 0, 0, 255]);
    for (i, px) in input.pixels.chunks_exact_mut(4).enumerate() {
        px[0] = (i % 1024 / 4) as u8;
        px[1] = 90;
    }
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 85)
        .encode(&input.pixels, 1024, 1024, jpeg_encoder::ColorType::Rgba)
        .unwrap();
    let mut mask = refract::imaging::solid(1024, 1024, [0, 0, 0, 255]);
    for px in mask.pixels.chunks_exact_mut(4).take(1024 * 100) {
        px[3] = 0; // the top 100 rows are edited
    }
    let form = Form::new()
        .text("model", "demo/sim-image-1")
        .text("prompt", "paint the sky")
        .file("image", "in.jpg", "image/jpeg", &jpeg)
        .file(
            "mask",
            "mask.png",
            "image/png",
            &refract::imaging::encode_png(&mask).unwrap(),
        );
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(r.json()["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let out = refract::imaging::decode_png(&png).unwrap();
    assert_eq!((out.width, out.height), (1024, 1024));
    assert_eq!(out.pixel(500, 50), refract::imaging::paint_colour("paint the sky", 0));
    let kept = out.pixel(800, 900);
    assert!(kept[0].abs_diff(200) < 20 && kept[1].abs_diff(90) < 20, "{kept:?}");
}
