//! The simulator's Stability AI REST edit services: `POST …/v2beta/stable-image/edit/{inpaint|
//! outpaint|remove-background}`.
//!
//! Strict like the real API: `Authorization: Bearer`, `Accept: application/json` (the only
//! answer form simulated), a multipart body with only the service's fields (an unknown part is a
//! 400), `image` a decodable image, `seed` 0–4294967294, `output_format` png/jpeg/webp (the
//! answer is always a PNG). What each service does (deterministically):
//! - `inpaint` (`prompt` required): [`crate::imaging::simulate_edit`] with the `mask`, which
//!   must be Stability's convention (opaque, white = edit; a mask with transparency is refused);
//!   without a mask the image's own alpha channel is the mask, as Stability does.
//! - `outpaint`: a canvas grown by `left`/`right`/`up`/`down` (0–2000, at least one > 0),
//!   the new border painted with [`crate::imaging::paint_colour`] of the prompt, the input
//!   copied at (`left`, `up`).
//! - `remove-background`: every pixel of the top-left pixel's colour becomes transparent.
//!
//! Answer `{"image":"<b64 png>","finish_reason":"SUCCESS","seed":…}`; errors
//! `{"id","name","errors":[…]}`. Hooks in the prompt: `simulate-error:NNN` answers that
//! status; `simulate-filtered` answers `finish_reason: CONTENT_FILTERED`.

use super::{multipart_parts, opaque_mask, png_base64, starting_image, SimAnswer, SimRequest, SimResponse};
use crate::imaging::{paint_colour, simulate_edit, solid, Rgba};
use bytes::Bytes;
use serde_json::json;

/// A Stability error answer.
fn stability_error(status: u16, name: &str, message: &str) -> SimResponse {
    SimResponse {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(&json!({"id": "sim-request", "name": name, "errors": [message]})).unwrap_or_default(),
    }
}

fn bad(message: &str) -> SimResponse {
    stability_error(400, "bad_request", message)
}

/// Answers one edit request.
pub(super) async fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(edit(req).await.unwrap_or_else(|answer| answer))
}

/// The fields each service takes.
fn allowed(service: &str) -> Option<&'static [&'static str]> {
    match service {
        "inpaint" => Some(&[
            "image",
            "mask",
            "prompt",
            "negative_prompt",
            "seed",
            "output_format",
            "grow_mask",
            "style_preset",
        ]),
        "outpaint" => Some(&[
            "image",
            "prompt",
            "negative_prompt",
            "seed",
            "output_format",
            "left",
            "right",
            "up",
            "down",
            "creativity",
        ]),
        "remove-background" => Some(&["image", "output_format"]),
        _ => None,
    }
}

async fn edit(req: &SimRequest) -> Result<SimResponse, SimResponse> {
    let service = req.path.rsplit('/').next().unwrap_or_default();
    let fields = allowed(service).ok_or_else(|| stability_error(404, "not_found", "unknown edit service"))?;
    if !req
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7)
    {
        return Err(stability_error(
            401,
            "unauthorized",
            "authorization: missing bearer token",
        ));
    }
    if req.header("accept") != Some("application/json") {
        return Err(bad("the simulator answers Accept: application/json only"));
    }
    let parts = multipart_parts(req.header("content-type").unwrap_or_default(), req.body.clone())
        .await
        .map_err(|e| bad(&e))?;
    let mut image: Option<Bytes> = None;
    let mut mask: Option<Bytes> = None;
    let mut text = std::collections::HashMap::new();
    for (name, data) in parts {
        if !fields.contains(&name.as_str()) {
            return Err(bad(&format!("{name}: unknown field for {service}")));
        }
        match name.as_str() {
            "image" => image = Some(data),
            "mask" => mask = Some(data),
            _ => {
                text.insert(name, String::from_utf8_lossy(&data).into_owned());
            }
        }
    }
    let prompt = text.get("prompt").cloned().unwrap_or_default();
    if let Some(status) = super::simulated_error_status(&prompt) {
        return Err(stability_error(
            status,
            "simulated_error",
            &format!("simulated error {status}"),
        ));
    }
    if let Some(f) = text.get("output_format") {
        if !["png", "jpeg", "webp"].contains(&f.as_str()) {
            return Err(bad("output_format: must be one of png, jpeg, webp"));
        }
    }
    let seed = match text.get("seed") {
        None => 0,
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= 4_294_967_294)
            .ok_or_else(|| bad("seed: must be an integer from 0 to 4294967294"))?,
    };
    let image = image.ok_or_else(|| bad("image: required"))?;
    let image = starting_image(&image, req.max_image_pixels).map_err(|e| bad(&format!("image: {e}")))?;
    let out = match service {
        "inpaint" => {
            if prompt.trim().is_empty() {
                return Err(bad("prompt: required"));
            }
            let mask = match &mask {
                Some(m) => opaque_mask(m, true).map_err(|e| bad(&e))?,
                None => image.clone(),
            };
            simulate_edit(&image, Some(&mask), &prompt, 0).map_err(|e| bad(&e.to_string()))?
        }
        "outpaint" => outpaint(&image, &text, &prompt)?,
        _ => remove_background(image),
    };
    let filtered = prompt == "simulate-filtered";
    let b64 = png_base64(&out, 0).map_err(|_| stability_error(500, "internal_error", "encoding failed"))?;
    Ok(SimResponse {
        status: 200,
        content_type: "application/json",
        body: serde_json::to_vec(&json!({
            "image": b64,
            "finish_reason": if filtered { "CONTENT_FILTERED" } else { "SUCCESS" },
            "seed": if seed == 0 { 42 } else { seed },
        }))
        .unwrap_or_default(),
    })
}

/// The outpainted canvas (see the module docs).
fn outpaint(image: &Rgba, text: &std::collections::HashMap<String, String>, prompt: &str) -> Result<Rgba, SimResponse> {
    let mut sides = [0u32; 4];
    for (i, name) in ["left", "right", "up", "down"].iter().enumerate() {
        if let Some(v) = text.get(*name) {
            sides[i] = v
                .parse()
                .ok()
                .filter(|v| *v <= 2000)
                .ok_or_else(|| bad(&format!("{name}: must be an integer from 0 to 2000")))?;
        }
    }
    if sides.iter().all(|s| *s == 0) {
        return Err(bad("at least one of left, right, up, down must be greater than 0"));
    }
    let [left, right, up, down] = sides;
    let mut out = solid(
        image.width + left + right,
        image.height + up + down,
        paint_colour(prompt, 0),
    );
    for y in 0..image.height {
        let src = (y * image.width * 4) as usize;
        let dst = (((y + up) * out.width + left) * 4) as usize;
        let row = (image.width * 4) as usize;
        out.pixels[dst..dst + row].copy_from_slice(&image.pixels[src..src + row]);
    }
    Ok(out)
}

/// Every pixel of the top-left pixel's colour made transparent.
fn remove_background(mut image: Rgba) -> Rgba {
    let background = image.pixel(0, 0);
    for px in image.pixels.chunks_exact_mut(4) {
        if px == background {
            px.copy_from_slice(&[0, 0, 0, 0]);
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png};
    use base64::Engine;
    use serde_json::Value;

    fn request(service: &str, parts: &[(&str, &[u8])], accept: &str) -> SimRequest {
        let mut body = Vec::new();
        for (name, data) in parts {
            body.extend(format!("--b\r\nContent-Disposition: form-data; name=\"{name}\"").bytes());
            if ["image", "mask"].contains(name) {
                body.extend(b"; filename=\"f.png\"\r\nContent-Type: image/png");
            }
            body.extend(b"\r\n\r\n");
            body.extend_from_slice(data);
            body.extend(b"\r\n");
        }
        body.extend(b"--b--\r\n");
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer k".parse().unwrap());
        headers.insert("accept", accept.parse().unwrap());
        headers.insert("content-type", "multipart/form-data; boundary=b".parse().unwrap());
        SimRequest {
            max_image_pixels: crate::imaging::DEFAULT_MAX_PIXELS,
            path: format!("/v2beta/stable-image/edit/{service}"),
            query: None,
            headers,
            body: Bytes::from(body),
        }
    }

    async fn answer(req: SimRequest) -> (u16, Value) {
        match handle(&req).await {
            SimAnswer::Whole(r) => (r.status, serde_json::from_slice(&r.body).unwrap()),
            _ => panic!("expected a whole answer"),
        }
    }

    fn image_of(v: &Value) -> Rgba {
        decode_png(
            &base64::engine::general_purpose::STANDARD
                .decode(v["image"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn inpaint_paints_the_white_area_of_an_opaque_mask() {
        let png = encode_png(&solid(4, 2, [10, 20, 30, 255])).unwrap();
        // The gateway's conversion of a unified mask whose pixel (0,0) is transparent.
        let mut m = solid(4, 2, [0, 0, 0, 255]);
        m.pixels[3] = 0;
        let mask = crate::imaging::convert_mask(&encode_png(&m).unwrap(), 255, 0)
            .unwrap()
            .png;
        let parts: &[(&str, &[u8])] = &[("image", &png), ("mask", &mask), ("prompt", b"red"), ("seed", b"7")];
        let (status, v) = answer(request("inpaint", parts, "application/json")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (v["finish_reason"].as_str(), v["seed"].as_u64()),
            (Some("SUCCESS"), Some(7))
        );
        let out = image_of(&v);
        assert_eq!(out.pixel(0, 0), paint_colour("red", 0));
        assert_eq!(out.pixel(1, 0), [10, 20, 30, 255]);
        // An unconverted (transparent) mask, an unknown field, a bad Accept, no auth.
        let unified = encode_png(&solid(4, 2, [0, 0, 0, 0])).unwrap();
        let (status, v) = answer(request(
            "inpaint",
            &[("image", &png), ("mask", &unified), ("prompt", b"red")],
            "application/json",
        ))
        .await;
        assert_eq!(status, 400);
        assert!(v["errors"][0].as_str().unwrap().contains("transparency"), "{v}");
        let (status, _) = answer(request("inpaint", &[("image", &png), ("n", b"2")], "application/json")).await;
        assert_eq!(status, 400);
        let (status, _) = answer(request("inpaint", &[("image", &png), ("prompt", b"p")], "image/*")).await;
        assert_eq!(status, 400);
        let mut r = request("inpaint", &[("image", &png), ("prompt", b"p")], "application/json");
        r.headers.remove("authorization");
        assert_eq!(answer(r).await.0, 401);
    }

    #[tokio::test]
    async fn outpaint_grows_the_canvas_and_remove_background_clears_it() {
        let mut img = solid(2, 2, [1, 1, 1, 255]);
        img.pixels[12..16].copy_from_slice(&[9, 9, 9, 255]);
        let png = encode_png(&img).unwrap();
        let (status, v) = answer(request(
            "outpaint",
            &[("image", &png), ("prompt", b"sky"), ("left", b"1"), ("down", b"2")],
            "application/json",
        ))
        .await;
        assert_eq!(status, 200, "{v}");
        let out = image_of(&v);
        assert_eq!((out.width, out.height), (3, 4));
        assert_eq!(out.pixel(0, 0), paint_colour("sky", 0));
        assert_eq!(out.pixel(1, 0), [1, 1, 1, 255]);
        assert_eq!(out.pixel(2, 1), [9, 9, 9, 255]);
        assert_eq!(out.pixel(2, 3), paint_colour("sky", 0));
        let (status, _) = answer(request("outpaint", &[("image", &png)], "application/json")).await;
        assert_eq!(status, 400, "a border is required");
        let (status, v) = answer(request("remove-background", &[("image", &png)], "application/json")).await;
        assert_eq!(status, 200, "{v}");
        let out = image_of(&v);
        assert_eq!(out.pixel(0, 0), [0, 0, 0, 0]);
        assert_eq!(out.pixel(1, 1), [9, 9, 9, 255]);
        let (status, _) = answer(request(
            "remove-background",
            &[("image", &png), ("prompt", b"x")],
            "application/json",
        ))
        .await;
        assert_eq!(status, 400, "remove-background takes no prompt");
    }

    #[tokio::test]
    async fn hooks() {
        let png = encode_png(&solid(2, 2, [1, 1, 1, 255])).unwrap();
        let (status, v) = answer(request(
            "inpaint",
            &[("image", &png), ("prompt", b"simulate-error:429")],
            "application/json",
        ))
        .await;
        assert_eq!(status, 429);
        assert_eq!(v["errors"][0], "simulated error 429");
        let (status, v) = answer(request(
            "inpaint",
            &[("image", &png), ("prompt", b"simulate-filtered")],
            "application/json",
        ))
        .await;
        assert_eq!(status, 200);
        assert_eq!(v["finish_reason"], "CONTENT_FILTERED");
    }
}
