//! The simulator's Hugging Face router, hf-inference image-to-image:
//! `POST …/hf-inference/models/{owner}/{name}`.
//!
//! Strict like the router: `Authorization: Bearer`, a JSON body of at most 2 MB (else 413),
//! `{"inputs":"<base64 image>","parameters":{…}}` with only image-to-image parameters
//! (`prompt`, `negative_prompt`, `num_inference_steps`, `guidance_scale`, `target_size`
//! `{width,height}`; anything else is a 400). The answer is the raw PNG of
//! [`crate::imaging::simulate_edit`] (no mask) with `content-type: image/png`; `target_size`
//! is checked, not applied. Errors are `{"error":"…"}`. Hook in the prompt:
//! `simulate-error:NNN` answers that status (503 adds `estimated_time`, as a loading model).

use super::render::{self, Fault, Marks, Picture};
use super::{SimAnswer, SimRequest, SimResponse};
use base64::Engine;
use serde_json::{json, Value};

/// The router's request body cap.
const MAX_BODY: usize = 2_000_000;

fn hf_error(status: u16, message: &str) -> SimResponse {
    let mut body = json!({"error": message});
    if status == 503 {
        body["estimated_time"] = json!(20.0);
    }
    SimResponse::json(status, &body)
}

/// Answers one image-to-image request.
pub(super) fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(image_to_image(req).unwrap_or_else(|answer| answer))
}

fn image_to_image(req: &SimRequest) -> Result<SimResponse, SimResponse> {
    let bad = |m: &str| hf_error(400, m);
    if !req
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7)
    {
        return Err(hf_error(401, "Invalid credentials in Authorization header"));
    }
    if req.body.len > MAX_BODY as u64 {
        return Err(hf_error(413, "Request body too large"));
    }
    if !req
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        return Err(bad("expected a JSON body"));
    }
    let body: Value = serde_json::from_slice(req.body.bytes()).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let inputs = body
        .get("inputs")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("inputs: a base64 image is required"))?;
    let params = body.get("parameters").cloned().unwrap_or(json!({}));
    let params = params.as_object().ok_or_else(|| bad("parameters must be an object"))?;
    for key in params.keys() {
        if ![
            "prompt",
            "negative_prompt",
            "num_inference_steps",
            "guidance_scale",
            "target_size",
        ]
        .contains(&key.as_str())
        {
            return Err(bad(&format!("parameters.{key} is not an image-to-image parameter")));
        }
    }
    if let Some(t) = params.get("target_size") {
        let dim = |k: &str| t.get(k).and_then(Value::as_u64).filter(|v| *v > 0);
        if dim("width").is_none() || dim("height").is_none() {
            return Err(bad("target_size must be {width, height} positive integers"));
        }
    }
    let prompt = params.get("prompt").and_then(Value::as_str).unwrap_or_default();
    if let Some(status) = super::simulated_error_status(prompt) {
        return Err(hf_error(status, &format!("simulated error {status}")));
    }
    let image = req
        .base64_blob(inputs, |s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| bad("inputs is not base64"))?;
    render::inspect(&image, req.place.max_image_pixels).map_err(|e| bad(&format!("inputs: {e}")))?;
    let picture = Picture::edit(image, Marks::Blend, prompt, 0);
    let png = render::png_body(&picture, &req.place).map_err(|f| match f {
        Fault::Image(e) => bad(&format!("inputs: {e}")),
        other => hf_error(500, &other.to_string()),
    })?;
    Ok(SimResponse {
        status: 200,
        content_type: "image/png",
        body: png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png, paint_colour, solid};
    use bytes::Bytes;

    fn request(body: &Value) -> SimRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer hf_x".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        SimRequest::for_test(
            "/hf-inference/models/o/m".into(),
            None,
            headers,
            Bytes::from(serde_json::to_vec(body).unwrap()),
        )
    }

    fn whole(a: SimAnswer) -> SimResponse {
        match a {
            SimAnswer::Whole(r) => r,
            _ => panic!("expected a whole answer"),
        }
    }

    #[test]
    fn answers_raw_png_and_checks_the_body() {
        let png = encode_png(&solid(3, 2, [0, 0, 0, 255])).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        let r = whole(handle(&request(
            &json!({"inputs": b64, "parameters": {"prompt": "blue", "target_size": {"width": 3, "height": 2}}}),
        )));
        assert_eq!((r.status, r.content_type), (200, "image/png"));
        let out = decode_png(&r.body.to_vec()).unwrap();
        let c = paint_colour("blue", 0);
        assert_eq!(out.pixel(2, 1), [c[0] / 2, c[1] / 2, c[2] / 2, 255]);
        let r = whole(handle(&request(&json!({"inputs": b64, "parameters": {"seed": 1}}))));
        assert_eq!(r.status, 400);
        let r = whole(handle(&request(
            &json!({"inputs": b64, "parameters": {"prompt": "simulate-error:503"}}),
        )));
        assert_eq!(r.status, 503);
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["estimated_time"], 20.0);
        let mut big = request(&json!({"inputs": "A".repeat(MAX_BODY)}));
        assert_eq!(whole(handle(&big)).status, 413);
        big.headers.remove("authorization");
        assert_eq!(whole(handle(&big)).status, 401);
    }
}
