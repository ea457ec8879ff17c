//! The built-in provider simulator: an OpenAI-compatible `POST …/images/edits` that performs a
//! real, deterministic edit (see [`crate::imaging::simulate_edit`]), so the demo, the tests and
//! the benchmarks need no provider account.
//!
//! It speaks OpenAI's wire format: multipart in (`image` or `image[]`, `mask`, `prompt`, `n`,
//! `size`, `response_format`, …), `ImagesResponse` JSON out, OpenAI's error object on failure.
//! It requires an `Authorization: Bearer` header (any value) as OpenAI does.
//!
//! Test hooks, driven by the prompt: `simulate-error:<status>` answers with that status and an
//! OpenAI error object; `simulate-garbage` answers 200 with a body that is not JSON.

use crate::imaging::{self, decode_png, encode_png, simulate_edit, solid};
use base64::Engine;
use bytes::Bytes;
use serde_json::json;

/// The simulator's answer.
#[derive(Debug, Clone)]
pub struct SimResponse {
    /// HTTP status.
    pub status: u16,
    /// `content-type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

fn error(status: u16, kind: &str, code: &str, param: Option<&str>, message: &str) -> SimResponse {
    SimResponse {
        status,
        content_type: "application/json",
        body: serde_json::to_vec(&json!({
            "error": {"message": message, "type": kind, "param": param, "code": code}
        }))
        .unwrap_or_default(),
    }
}

#[derive(Default)]
struct SimForm {
    model: Option<String>,
    prompt: Option<String>,
    images: Vec<Bytes>,
    mask: Option<Bytes>,
    n: u32,
    size: Option<String>,
    response_format: Option<String>,
    quality: Option<String>,
    background: Option<String>,
}

async fn read_form(content_type: &str, body: Bytes) -> Result<SimForm, SimResponse> {
    let bad = |m: String| error(400, "invalid_request_error", "invalid_multipart", None, &m);
    let boundary =
        multer::parse_boundary(content_type).map_err(|e| bad(format!("expected multipart/form-data: {e}")))?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut mp = multer::Multipart::new(stream, boundary);
    let mut f = SimForm {
        n: 1,
        ..Default::default()
    };
    while let Some(field) = mp.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or_default().to_string();
        let data = field.bytes().await.map_err(|e| bad(e.to_string()))?;
        let text = || String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "model" => f.model = Some(text()),
            "prompt" => f.prompt = Some(text()),
            "image" | "image[]" => f.images.push(data.clone()),
            "mask" => f.mask = Some(data.clone()),
            "n" => {
                f.n = text().parse().ok().filter(|n| (1..=10).contains(n)).ok_or_else(|| {
                    error(
                        400,
                        "invalid_request_error",
                        "invalid_value",
                        Some("n"),
                        "n must be 1..10",
                    )
                })?
            }
            "size" => f.size = Some(text()),
            "response_format" => f.response_format = Some(text()),
            "quality" => f.quality = Some(text()),
            "background" => f.background = Some(text()),
            _ => {}
        }
    }
    Ok(f)
}

/// Answers one `images/edits` request.
pub async fn handle(content_type: Option<&str>, authorization: Option<&str>, body: Bytes) -> SimResponse {
    if !authorization.is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
        return error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            None,
            "missing bearer token",
        );
    }
    let form = match read_form(content_type.unwrap_or_default(), body).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let prompt = form.prompt.clone().unwrap_or_default();
    if let Some(rest) = prompt.strip_prefix("simulate-error:") {
        let status = rest
            .get(..3)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (400..600).contains(s))
            .unwrap_or(500);
        return error(
            status,
            "simulated_error",
            "simulated",
            None,
            &format!("simulated error {status}"),
        );
    }
    if prompt == "simulate-garbage" {
        return SimResponse {
            status: 200,
            content_type: "application/json",
            body: b"{not json".to_vec(),
        };
    }
    if form.model.as_deref().is_none_or(str::is_empty) {
        return error(
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("model"),
            "model is required",
        );
    }
    let Some(first) = form.images.first() else {
        return error(
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("image"),
            "image is required",
        );
    };
    let image = if imaging::sniff(first) == Some(imaging::ImageKind::Png) {
        match decode_png(first) {
            Ok(img) => img,
            Err(e) => {
                return error(
                    400,
                    "invalid_request_error",
                    "invalid_image",
                    Some("image"),
                    &e.to_string(),
                )
            }
        }
    } else {
        // JPEG and WebP are accepted but not decoded: the edit starts from a blank canvas.
        solid(64, 64, [255, 255, 255, 255])
    };
    let mask = match &form.mask {
        Some(m) => match decode_png(m) {
            Ok(img) => Some(img),
            Err(e) => {
                return error(
                    400,
                    "invalid_request_error",
                    "invalid_image",
                    Some("mask"),
                    &e.to_string(),
                )
            }
        },
        None => None,
    };
    let mut data = Vec::new();
    for i in 0..form.n {
        let edited = match simulate_edit(&image, mask.as_ref(), &prompt, i) {
            Ok(img) => img,
            Err(e) => {
                return error(
                    400,
                    "invalid_request_error",
                    "invalid_value",
                    Some("mask"),
                    &e.to_string(),
                )
            }
        };
        let png = match encode_png(&edited) {
            Ok(p) => p,
            Err(e) => return error(500, "server_error", "internal_error", None, &e.to_string()),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        if form.response_format.as_deref() == Some("url") {
            data.push(json!({"url": format!("data:image/png;base64,{b64}")}));
        } else {
            data.push(json!({"b64_json": b64}));
        }
    }
    let text_tokens = (prompt.len() as u64).div_ceil(4);
    let image_tokens = 65 * form.images.len() as u64 + if mask.is_some() { 65 } else { 0 };
    let output_tokens = 272 * form.n as u64;
    let body = json!({
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "data": data,
        "background": form.background.unwrap_or_else(|| "opaque".into()),
        "output_format": "png",
        "quality": form.quality.unwrap_or_else(|| "auto".into()),
        "size": form.size.unwrap_or_else(|| format!("{}x{}", image.width, image.height)),
        "usage": {
            "input_tokens": text_tokens + image_tokens,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
            "output_tokens": output_tokens,
            "output_tokens_details": {"text_tokens": 0, "image_tokens": output_tokens},
            "total_tokens": text_tokens + image_tokens + output_tokens,
        },
    });
    SimResponse {
        status: 200,
        content_type: "application/json",
        body: serde_json::to_vec(&body).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{paint_colour, Rgba};

    const B: &str = "simb";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut v = Vec::new();
        for (name, fname, data) in parts {
            v.extend(format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"").bytes());
            if let Some(f) = fname {
                v.extend(format!("; filename=\"{f}\"\r\nContent-Type: image/png").bytes());
            }
            v.extend(b"\r\n\r\n");
            v.extend_from_slice(data);
            v.extend(b"\r\n");
        }
        v.extend(format!("--{B}--\r\n").bytes());
        Bytes::from(v)
    }

    #[tokio::test]
    async fn paints_the_masked_area() {
        let img = encode_png(&solid(8, 8, [1, 2, 3, 255])).unwrap();
        let mut m = solid(8, 8, [0, 0, 0, 255]);
        m.pixels[3] = 0; // pixel (0,0) transparent
        let mask = encode_png(&m).unwrap();
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"paint"),
            ("n", None, b"2"),
            ("image", Some("a.png"), &img),
            ("mask", Some("m.png"), &mask),
        ]);
        let r = handle(
            Some(&format!("multipart/form-data; boundary={B}")),
            Some("Bearer k"),
            body,
        )
        .await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"][1]["b64_json"].as_str().unwrap())
            .unwrap();
        let out: Rgba = decode_png(&png).unwrap();
        assert_eq!(out.pixel(0, 0), paint_colour("paint", 1));
        assert_eq!(out.pixel(1, 0), [1, 2, 3, 255]);
        assert_eq!(v["size"], "8x8");
    }

    #[tokio::test]
    async fn auth_and_error_hooks() {
        let ct = format!("multipart/form-data; boundary={B}");
        let body = form(&[("model", None, b"sim"), ("prompt", None, b"simulate-error:429")]);
        assert_eq!(handle(Some(&ct), None, body.clone()).await.status, 401);
        let r = handle(Some(&ct), Some("Bearer k"), body).await;
        assert_eq!(r.status, 429);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["error"]["code"], "simulated");
        let r = handle(
            Some(&ct),
            Some("Bearer k"),
            form(&[("model", None, b"sim"), ("prompt", None, b"x")]),
        )
        .await;
        assert_eq!(r.status, 400);
    }
}
