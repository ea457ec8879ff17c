//! The simulator's Amazon Bedrock `InvokeModel` (`POST …/model/{modelId}/invoke`).
//!
//! It requires what Bedrock requires: `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/
//! region/bedrock/aws4_request, SignedHeaders=…, Signature=<64 hex>` with an `x-amz-date`
//! header that is signed (it checks the shape; it cannot know the secret), or
//! `Authorization: Bearer <key>`. The body is read by model id: Titan/Nova (`taskType`
//! INPAINTING, OUTPAINTING, BACKGROUND_REMOVAL, IMAGE_VARIATION, with `imageGenerationConfig.
//! numberOfImages`) or a Stability service (flat `image`, `mask`, `prompt`). Masks must be in
//! Bedrock's convention: opaque pure black and white, black = edit for INPAINTING, white = edit
//! for OUTPAINTING and Stability (an unconverted OpenAI mask, with transparency, is refused).
//! The edit is [`crate::imaging::simulate_edit`]; background removal paints the whole image.
//! The answer is `{"images":["<b64 png>"…],"error":null}` (Titan/Nova) or `{"images":[…],
//! "seeds":[…],"finish_reasons":[null]}` (Stability).
//!
//! Errors are Bedrock's body `{"message":"…"}` with the status of the exception (the listener
//! sends no `x-amzn-ErrorType` header). Hooks in the prompt: `simulate-error:NNN` answers that
//! status; `simulate-filtered` answers 400 with the content-filter `ValidationException`
//! message (Titan/Nova) or a `Filter reason` finish reason (Stability).

use super::render::{self, Fault, Marks, MaskRule, Picture, RenderPlace};
use super::{Blob, SimAnswer, SimRequest, SimResponse};
use base64::Engine;
use serde_json::{json, Value};

/// The content-filter message of a blocked request.
pub const FILTER_MESSAGE: &str = "This request has been blocked by our content filters.";

fn answer(status: u16, body: &Value) -> SimResponse {
    SimResponse::json(status, body)
}

fn error(status: u16, message: &str) -> SimResponse {
    answer(status, &json!({ "message": message }))
}

fn bad(message: &str) -> SimResponse {
    error(400, message)
}

/// Answers `…/model/{modelId}/invoke`.
pub(super) fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(invoke(req).unwrap_or_else(|e| e))
}

/// Whether `authorization` (with `x-amz-date`) has SigV4's shape for service `bedrock`.
fn sigv4_shaped(authorization: &str, amz_date: Option<&str>) -> bool {
    let Some(rest) = authorization.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return false;
    };
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
    };
    let scope_ok = field("Credential").is_some_and(|c| {
        let parts: Vec<&str> = c.split('/').collect();
        parts.len() == 5
            && !parts[0].is_empty()
            && parts[1].len() == 8
            && amz_date.is_some_and(|d| d.starts_with(parts[1]))
            && !parts[2].is_empty()
            && parts[3] == "bedrock"
            && parts[4] == "aws4_request"
    });
    let signed_ok = field("SignedHeaders").is_some_and(|h| {
        let names: Vec<&str> = h.split(';').collect();
        names.contains(&"host") && names.contains(&"x-amz-date")
    });
    let signature_ok = field("Signature").is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()));
    scope_ok && signed_ok && signature_ok && amz_date.is_some_and(|d| d.len() == 16 && d.ends_with('Z'))
}

fn decode_b64(req: &SimRequest, v: Option<&Value>, what: &str) -> Result<Blob, SimResponse> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| bad(&format!("{what} is required")))?;
    req.base64_blob(s, |s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| bad(&format!("{what} is not base64")))
}

/// A Bedrock mask, checked from its header against the image: opaque pure black and white,
/// `edit` the value of pixels to edit (the pixels themselves are checked while rendering).
fn bedrock_mask(
    mask: Blob,
    edit: u8,
    image: &crate::imaging::ImageHeader,
    max_pixels: u64,
) -> Result<Marks, SimResponse> {
    let rule = MaskRule::BlackWhite { edit };
    render::inspect_mask(&mask, rule, image, max_pixels).map_err(|f| bad(&fault_message(&f)))?;
    Ok(Marks::Mask(mask, rule))
}

/// A rendering fault in Bedrock's words.
fn fault_message(fault: &Fault) -> String {
    match fault {
        Fault::Image(e) => format!("image: {e}"),
        Fault::Mask(e @ crate::imaging::ImagingError::MaskSize { .. }) => e.to_string(),
        Fault::Mask(e) => format!("maskImage: {e}"),
        other => other.to_string(),
    }
}

/// The model id as it appears in the path (percent-encoded; family names survive encoding).
fn model_id(path: &str) -> Option<&str> {
    Some(path.strip_suffix("/invoke")?.rsplit_once("/model/")?.1)
}

fn invoke(req: &SimRequest) -> Result<SimResponse, SimResponse> {
    let authorization = req.header("authorization").unwrap_or("");
    let bearer = authorization.strip_prefix("Bearer ").is_some_and(|k| !k.is_empty());
    if !bearer && !sigv4_shaped(authorization, req.header("x-amz-date")) {
        return Err(error(
            403,
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    if req.header("content-type") != Some("application/json") {
        return Err(bad("Content-Type must be application/json"));
    }
    let model = model_id(&req.path).ok_or_else(|| error(404, "unknown operation"))?;
    let body: Value =
        serde_json::from_slice(req.body.bytes()).map_err(|e| bad(&format!("Malformed input request: {e}")))?;
    if model.contains("stability.") {
        return stability(req, &body);
    }
    if !model.contains("amazon.titan-image") && !model.contains("amazon.nova-canvas") {
        return Err(error(
            404,
            &format!("The provided model identifier is invalid: {model}"),
        ));
    }
    titan(req, &body)
}

/// `doc` with its `images` slots filled with the `n` edits of `image` (one picture each).
fn edited_images(
    (image, marks): (&Blob, &Marks),
    prompt: &str,
    n: u32,
    doc: Value,
    place: &RenderPlace,
) -> Result<SimResponse, SimResponse> {
    let pictures: Vec<Picture> = (0..n)
        .map(|i| Picture::edit(image.clone(), marks.clone(), prompt, i))
        .collect();
    SimResponse::rendered(&doc, &pictures, place).map_err(|f| match f {
        Fault::Output(_) => error(500, "encoding failed"),
        other => bad(&fault_message(&other)),
    })
}

/// `n` image slots.
fn slots(n: u32) -> Vec<String> {
    (0..n as usize).map(render::slot).collect()
}

fn titan(req: &SimRequest, body: &Value) -> Result<SimResponse, SimResponse> {
    let max_pixels = req.place.max_image_pixels;
    let task = body.get("taskType").and_then(Value::as_str).unwrap_or("");
    let (params, mask_edit) = match task {
        "INPAINTING" => ("inPaintingParams", Some(0)),
        "OUTPAINTING" => ("outPaintingParams", Some(255)),
        "BACKGROUND_REMOVAL" => ("backgroundRemovalParams", None),
        "IMAGE_VARIATION" => ("imageVariationParams", None),
        other => return Err(bad(&format!("Malformed input request: unsupported taskType '{other}'"))),
    };
    let p = body
        .get(params)
        .ok_or_else(|| bad(&format!("Malformed input request: {params} is required")))?;
    let text = p.get("text").and_then(Value::as_str).unwrap_or("");
    if let Some(status) = super::simulated_error_status(text) {
        return Err(error(status, &format!("simulated error {status}")));
    }
    if text == "simulate-filtered" {
        return Err(bad(FILTER_MESSAGE));
    }
    let first = if task == "IMAGE_VARIATION" {
        let images = p.get("images").and_then(Value::as_array).cloned().unwrap_or_default();
        if !(1..=5).contains(&images.len()) {
            return Err(bad("imageVariationParams.images must hold 1 to 5 images"));
        }
        decode_b64(req, images.first(), "images[0]")?
    } else {
        decode_b64(req, p.get("image"), &format!("{params}.image"))?
    };
    let header = render::inspect(&first, max_pixels).map_err(|e| bad(&format!("image: {e}")))?;
    let marks = match mask_edit {
        Some(edit) => bedrock_mask(
            decode_b64(req, p.get("maskImage"), "maskImage")?,
            edit,
            &header,
            max_pixels,
        )?,
        None if task == "BACKGROUND_REMOVAL" => Marks::Everything,
        None => Marks::Blend,
    };
    let n = match body.pointer("/imageGenerationConfig/numberOfImages") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=5).contains(n))
            .ok_or_else(|| bad("numberOfImages must be an integer from 1 to 5"))? as u32,
    };
    let doc = json!({"images": slots(n), "error": null});
    edited_images((&first, &marks), text, n, doc, &req.place)
}

fn stability(req: &SimRequest, body: &Value) -> Result<SimResponse, SimResponse> {
    let max_pixels = req.place.max_image_pixels;
    let prompt = body.get("prompt").and_then(Value::as_str).unwrap_or("");
    if let Some(status) = super::simulated_error_status(prompt) {
        return Err(error(status, &format!("simulated error {status}")));
    }
    if prompt == "simulate-filtered" {
        return Ok(answer(
            200,
            &json!({"images": [], "seeds": [0], "finish_reasons": ["Filter reason: prompt"]}),
        ));
    }
    let image = decode_b64(req, body.get("image"), "image")?;
    let header = render::inspect(&image, max_pixels).map_err(|e| bad(&format!("image: {e}")))?;
    let marks = match body.get("mask") {
        Some(m) => bedrock_mask(decode_b64(req, Some(m), "mask")?, 255, &header, max_pixels)?,
        None => Marks::Blend,
    };
    let seed = body.get("seed").and_then(Value::as_u64).unwrap_or(0);
    let doc = json!({"images": slots(1), "seeds": [seed], "finish_reasons": [null]});
    edited_images((&image, &marks), prompt, 1, doc, &req.place)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{self, decode_png, encode_png, solid, Rgba};
    use bytes::Bytes;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    const SIGNED: &str = "AWS4-HMAC-SHA256 Credential=AKID/20261124/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date, Signature=43c004d8fe877906a6d30051f3315e695feac35a954a210f62f4f7838ce8b5db";

    fn request(auth: &str, model: &str, body: &Value) -> SimRequest {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", auth.parse().unwrap());
        headers.insert("x-amz-date", "20261124T022054Z".parse().unwrap());
        headers.insert("content-type", "application/json".parse().unwrap());
        SimRequest::for_test(
            format!("/model/{model}/invoke"),
            None,
            headers,
            Bytes::from(serde_json::to_vec(body).unwrap()),
        )
    }

    fn run(req: &SimRequest) -> (u16, Value) {
        let SimAnswer::Whole(r) = handle(req) else {
            panic!("not a whole answer")
        };
        (r.status, serde_json::from_slice(&r.body.to_vec()).unwrap())
    }

    /// A 2×1 opaque RGB mask: left pixel `left`, right pixel `255 - left`.
    fn mask(left: u8) -> Vec<u8> {
        let mut m = solid(2, 1, [left, left, left, 255]);
        m.pixels[4..7].copy_from_slice(&[255 - left; 3]);
        encode_png(&m).unwrap()
    }

    fn out_image(v: &Value, i: usize) -> Rgba {
        decode_png(
            &base64::engine::general_purpose::STANDARD
                .decode(v["images"][i].as_str().unwrap())
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn inpainting_edits_the_black_pixels_only() {
        let image = encode_png(&solid(2, 1, [9, 9, 9, 255])).unwrap();
        let body = json!({"taskType": "INPAINTING",
            "inPaintingParams": {"image": b64(&image), "maskImage": b64(&mask(0)), "text": "ball"},
            "imageGenerationConfig": {"numberOfImages": 2}});
        let (status, v) = run(&request(SIGNED, "amazon.nova-canvas-v1%3A0", &body));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["error"], Value::Null);
        for i in 0..2 {
            let out = out_image(&v, i);
            assert_eq!(out.pixel(0, 0), imaging::paint_colour("ball", i as u32));
            assert_eq!(out.pixel(1, 0), [9, 9, 9, 255]);
        }
        // Outpainting edits the white ones.
        let body = json!({"taskType": "OUTPAINTING",
            "outPaintingParams": {"image": b64(&image), "maskImage": b64(&mask(0)), "text": "sea", "outPaintingMode": "DEFAULT"}});
        let (_, v) = run(&request("Bearer k", "us.amazon.titan-image-generator-v2%3A0", &body));
        assert_eq!(out_image(&v, 0).pixel(0, 0), [9, 9, 9, 255]);
        assert_eq!(out_image(&v, 0).pixel(1, 0), imaging::paint_colour("sea", 0));
    }

    #[test]
    fn unsigned_unconverted_and_hooked_requests() {
        let image = encode_png(&solid(2, 1, [9, 9, 9, 255])).unwrap();
        let body = json!({"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": b64(&image)}});
        assert_eq!(
            run(&request("AWS4-HMAC-SHA256 junk", "amazon.nova-canvas-v1%3A0", &body)).0,
            403
        );
        assert_eq!(run(&request(SIGNED, "amazon.nova-canvas-v1%3A0", &body)).0, 200);
        assert_eq!(run(&request(SIGNED, "meta.llama", &body)).0, 404);
        let mut openai_mask = solid(2, 1, [0, 0, 0, 255]);
        openai_mask.pixels[3] = 0;
        let body = json!({"taskType": "INPAINTING",
            "inPaintingParams": {"image": b64(&image), "maskImage": b64(&encode_png(&openai_mask).unwrap()), "text": "x"}});
        let (status, v) = run(&request(SIGNED, "amazon.nova-canvas-v1%3A0", &body));
        assert_eq!(status, 400);
        assert!(v["message"].as_str().unwrap().contains("transparency"));
        let hooked = |text: &str| json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": [b64(&image)], "text": text}});
        assert_eq!(
            run(&request(
                SIGNED,
                "amazon.nova-canvas-v1%3A0",
                &hooked("simulate-error:429")
            ))
            .0,
            429
        );
        let (status, v) = run(&request(
            SIGNED,
            "amazon.nova-canvas-v1%3A0",
            &hooked("simulate-filtered"),
        ));
        assert_eq!((status, v["message"].as_str()), (400, Some(FILTER_MESSAGE)));
        let stab = json!({"image": b64(&image), "mask": b64(&mask(255)), "prompt": "p", "seed": 4});
        let (status, v) = run(&request(SIGNED, "stability.stable-image-inpaint-v1%3A0", &stab));
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["finish_reasons"], json!([null]));
        assert_eq!(out_image(&v, 0).pixel(0, 0), imaging::paint_colour("p", 0));
        assert_eq!(out_image(&v, 0).pixel(1, 0), [9, 9, 9, 255]);
    }
}
