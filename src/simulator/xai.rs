//! The simulator's xAI image edits: `POST …/images/edits` with a JSON body (the OpenAI route
//! takes multipart; [`super::route`] tells them apart by Content-Type).
//!
//! Strict: `Authorization: Bearer`, only xAI's fields (`model`, `prompt`, `image` or `images`
//! (1–3 `{"url":"data:…;base64,…"}`), `n` 1–10, `response_format` `b64_json`|`url`,
//! `aspect_ratio` one of xAI's, `resolution` `1k`|`2k`, `user`); `mask` or any other field is a
//! 400. Each output image is [`crate::imaging::simulate_edit`] of the first image (no mask);
//! the answer is `{"data":[{"b64_json"}…]}` or, for `url`, `data:` URLs. Errors are
//! `{"code","error"}`. Hook in the prompt: `simulate-error:NNN` answers that status.

use super::render::{self, Fault, Marks, Picture};
use super::{Blob, SimAnswer, SimRequest, SimResponse};
use base64::Engine;
use serde_json::{json, Value};

/// The `aspect_ratio` values xAI's image API takes (docs.x.ai, image model capabilities;
/// providers.md §12 lists the field without its values), written here apart from the
/// adapter's table so that a ratio the adapter gets wrong is refused, as xAI would.
const ASPECT_RATIOS: [&str; 14] = [
    "1:1", "3:4", "4:3", "3:2", "2:3", "2:1", "1:2", "9:16", "16:9", "19.5:9", "9:19.5", "20:9", "9:20", "auto",
];

fn xai_error(status: u16, message: &str) -> SimResponse {
    SimResponse::json(
        status,
        &json!({"code": "Client specified an invalid argument", "error": message}),
    )
}

/// Answers one edit request.
pub(super) fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(edit(req).unwrap_or_else(|answer| answer))
}

/// The bytes of a `{"url":"data:<mime>;base64,…"}` image reference.
fn data_url(req: &SimRequest, reference: &Value) -> Result<Blob, SimResponse> {
    let url = reference
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| xai_error(400, "an image reference needs a url"))?;
    let (head, b64) = url
        .strip_prefix("data:image/")
        .and_then(|u| u.split_once(";base64,"))
        .ok_or_else(|| xai_error(400, "image url must be a data:image/…;base64 URL"))?;
    if !["png", "jpeg", "webp"].contains(&head) {
        return Err(xai_error(400, &format!("unsupported image type image/{head}")));
    }
    req.base64_blob(b64, |s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| xai_error(400, "image data is not base64"))
}

fn edit(req: &SimRequest) -> Result<SimResponse, SimResponse> {
    let bad = |m: &str| xai_error(400, m);
    if !req
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7)
    {
        return Err(xai_error(401, "Incorrect API key provided"));
    }
    let body: Value = serde_json::from_slice(req.body.bytes()).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let obj = body.as_object().ok_or_else(|| bad("the body must be an object"))?;
    for key in obj.keys() {
        let known = [
            "model",
            "prompt",
            "image",
            "images",
            "n",
            "response_format",
            "aspect_ratio",
            "resolution",
            "user",
        ];
        if !known.contains(&key.as_str()) {
            return Err(bad(&format!("unknown field '{key}'")));
        }
    }
    if obj.get("model").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(bad("model is required"));
    }
    let prompt = obj
        .get("prompt")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| bad("prompt is required"))?;
    if let Some(status) = super::simulated_error_status(prompt) {
        return Err(xai_error(status, &format!("simulated error {status}")));
    }
    let references: Vec<&Value> = match (obj.get("image"), obj.get("images").and_then(Value::as_array)) {
        (Some(one), None) => vec![one],
        (None, Some(many)) if (1..=3).contains(&many.len()) => many.iter().collect(),
        (None, Some(_)) => return Err(bad("images takes 1 to 3 references")),
        _ => return Err(bad("exactly one of image and images is required")),
    };
    let images = references
        .into_iter()
        .map(|r| data_url(req, r))
        .collect::<Result<Vec<_>, _>>()?;
    let n = match obj.get("n") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=10).contains(n))
            .ok_or_else(|| bad("n must be 1 to 10"))?,
    };
    let url = match obj.get("response_format").map(Value::as_str) {
        None | Some(Some("b64_json")) => false,
        Some(Some("url")) => true,
        _ => return Err(bad("response_format must be b64_json or url")),
    };
    if let Some(r) = obj.get("aspect_ratio") {
        if !ASPECT_RATIOS.iter().any(|name| r.as_str() == Some(name)) {
            return Err(bad("unsupported aspect_ratio"));
        }
    }
    if let Some(r) = obj.get("resolution") {
        if !["1k", "2k"].contains(&r.as_str().unwrap_or_default()) {
            return Err(bad("resolution must be 1k or 2k"));
        }
    }
    let first = images.first().ok_or_else(|| bad("an image is required"))?;
    render::inspect(first, req.place.max_image_pixels).map_err(|e| bad(&e.to_string()))?;
    let mut data = Vec::new();
    let mut pictures = Vec::new();
    for i in 0..n as u32 {
        let slot = render::slot(pictures.len());
        data.push(if url {
            json!({"url": format!("data:image/png;base64,{slot}")})
        } else {
            json!({ "b64_json": slot })
        });
        pictures.push(Picture::edit(first.clone(), Marks::Blend, prompt, i));
    }
    SimResponse::rendered(&json!({ "data": data }), &pictures, &req.place).map_err(|f| match f {
        Fault::Output(_) => xai_error(500, "encoding failed"),
        other => bad(&other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png, paint_colour, solid};
    use bytes::Bytes;

    fn request(body: &Value) -> SimRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer xai-k".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        SimRequest::for_test(
            "/v1/images/edits".into(),
            None,
            headers,
            Bytes::from(serde_json::to_vec(body).unwrap()),
        )
    }

    fn answer(req: &SimRequest) -> (u16, Value) {
        match handle(req) {
            SimAnswer::Whole(r) => (r.status, serde_json::from_slice(&r.body.to_vec()).unwrap()),
            _ => panic!("expected a whole answer"),
        }
    }

    #[test]
    fn edits_the_first_image_and_checks_the_body() {
        let png = encode_png(&solid(2, 2, [0, 0, 0, 255])).unwrap();
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        );
        let (status, v) = answer(&request(&json!({"model": "grok-imagine-image", "prompt": "red",
            "images": [{"url": url}, {"url": url}], "n": 2, "aspect_ratio": "1:1", "resolution": "1k"})));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        let out = decode_png(
            &base64::engine::general_purpose::STANDARD
                .decode(v["data"][1]["b64_json"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let c = paint_colour("red", 1);
        assert_eq!(out.pixel(0, 0), [c[0] / 2, c[1] / 2, c[2] / 2, 255]);
        for body in [
            json!({"model": "m", "prompt": "p", "image": {"url": url}, "mask": {"url": url}}),
            json!({"model": "m", "prompt": "p", "images": [{"url": url}, {"url": url}, {"url": url}, {"url": url}]}),
            json!({"model": "m", "prompt": "p", "image": {"url": "https://x"}}),
            json!({"model": "m", "prompt": "p", "image": {"url": url}, "aspect_ratio": "5:4"}),
        ] {
            assert_eq!(answer(&request(&body)).0, 400, "{body}");
        }
        let (status, v) = answer(&request(
            &json!({"model": "m", "prompt": "simulate-error:429", "image": {"url": url}}),
        ));
        assert_eq!((status, v["error"].as_str()), (429, Some("simulated error 429")));
    }

    /// Every ratio xAI documents is taken, from the simulator's own table; others are 400s.
    #[test]
    fn takes_the_documented_aspect_ratios() {
        let png = encode_png(&solid(2, 2, [0, 0, 0, 255])).unwrap();
        let url = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        );
        for ratio in [
            "1:1", "16:9", "9:16", "2:1", "1:2", "19.5:9", "9:19.5", "20:9", "9:20", "auto",
        ] {
            let body = json!({"model": "m", "prompt": "p", "image": {"url": url}, "aspect_ratio": ratio});
            assert_eq!(answer(&request(&body)).0, 200, "{ratio}");
        }
        for ratio in ["5:4", "21:9", "1:1 ", ""] {
            let body = json!({"model": "m", "prompt": "p", "image": {"url": url}, "aspect_ratio": ratio});
            assert_eq!(answer(&request(&body)).0, 400, "{ratio}");
        }
    }
}
