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

use super::render::{self, Fault, Marks, Paint, Picture};
use super::vertex::{mask_message, IMAGEN_MASK};
use super::{Blob, SimAnswer, SimRequest, SimResponse};
use crate::imaging::paint_colour;
use serde_json::json;

/// A Stability error answer.
fn stability_error(status: u16, name: &str, message: &str) -> SimResponse {
    SimResponse::json(status, &json!({"id": "sim-request", "name": name, "errors": [message]}))
}

fn bad(message: &str) -> SimResponse {
    stability_error(400, "bad_request", message)
}

/// Answers one edit request.
pub(super) fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(edit(req).unwrap_or_else(|answer| answer))
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

fn edit(req: &SimRequest) -> Result<SimResponse, SimResponse> {
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
    let parts = req.body.parts().map_err(|e| bad(&e))?;
    let mut image: Option<Blob> = None;
    let mut mask: Option<Blob> = None;
    let mut text = std::collections::HashMap::new();
    for part in parts {
        let name = part.name;
        if !fields.contains(&name.as_str()) {
            return Err(bad(&format!("{name}: unknown field for {service}")));
        }
        match name.as_str() {
            "image" => image = Some(part.data),
            "mask" => mask = Some(part.data),
            _ => {
                text.insert(name, part.data.text().unwrap_or_default());
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
    let max_pixels = req.place.max_image_pixels;
    let header = render::inspect(&image, max_pixels).map_err(|e| bad(&format!("image: {e}")))?;
    let mut picture = Picture::edit(image, Marks::OwnAlpha, &prompt, 0);
    match service {
        "inpaint" => {
            if prompt.trim().is_empty() {
                return Err(bad("prompt: required"));
            }
            if let Some(m) = mask {
                render::inspect_mask(&m, IMAGEN_MASK, &header, max_pixels).map_err(|f| bad(&mask_message(&f)))?;
                picture.marks = Marks::Mask(m, IMAGEN_MASK);
            }
        }
        "outpaint" => picture.paint = outpaint(&text, &prompt)?,
        _ => picture.paint = Paint::RemoveBackground,
    }
    let filtered = prompt == "simulate-filtered";
    let doc = json!({
        "image": render::slot(0),
        "finish_reason": if filtered { "CONTENT_FILTERED" } else { "SUCCESS" },
        "seed": if seed == 0 { 42 } else { seed },
    });
    SimResponse::rendered(&doc, &[picture], &req.place).map_err(|f| match f {
        Fault::Output(_) => stability_error(500, "internal_error", "encoding failed"),
        Fault::Image(e) => bad(&format!("image: {e}")),
        other => bad(&mask_message(&other)),
    })
}

/// The outpainting (see the module docs): the sides from the form.
fn outpaint(text: &std::collections::HashMap<String, String>, prompt: &str) -> Result<Paint, SimResponse> {
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
    Ok(Paint::Outpaint {
        sides,
        colour: paint_colour(prompt, 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png, solid, Rgba};
    use base64::Engine;
    use bytes::Bytes;
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
        SimRequest::for_test(
            format!("/v2beta/stable-image/edit/{service}"),
            None,
            headers,
            Bytes::from(body),
        )
    }

    async fn answer(req: SimRequest) -> (u16, Value) {
        match handle(&req) {
            SimAnswer::Whole(r) => (r.status, serde_json::from_slice(&r.body.to_vec()).unwrap()),
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
