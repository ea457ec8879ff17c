//! The simulator's Vertex AI Imagen `:predict` and its fake OAuth token endpoint.
//!
//! `…/models/{model}:predict` answers like Imagen editing: it requires `Authorization: Bearer`
//! (or an `x-goog-api-key`, express mode), reads the JSON body (`instances[0].prompt`,
//! `referenceImages`, `parameters.editMode` / `sampleCount`), decodes the first RAW reference
//! and the MASK reference's image, and answers `{"predictions":[{"bytesBase64Encoded",
//! "mimeType"}…]}`, one image per `sampleCount`, made by [`crate::imaging::simulate_edit`].
//! The mask must be in Imagen's convention, an opaque PNG whose white pixels are edited (a mask
//! with transparency is refused, as an unconverted OpenAI mask would be wrong). Errors use
//! Google's envelope. Hooks in the prompt: `simulate-error:NNN` answers that status;
//! `simulate-filtered` answers with every image filtered (`raiFilteredReason` items when
//! `includeRaiReason` is set, else no `predictions` at all, as Vertex does).
//!
//! `POST /token` answers the JWT-bearer grant like Google's OAuth endpoint: it checks
//! `grant_type` and the assertion's shape and claims (`iss`, `scope`, `aud`, `iat` < `exp`),
//! not its signature (it cannot know the key), and answers
//! `{"access_token":"sim-token-…","expires_in":3600,"token_type":"Bearer"}`.

use super::render::{self, Fault, Marks, MaskRule, Picture};
use super::{Blob, SimAnswer, SimRequest, SimResponse};
use base64::Engine;
use serde_json::{json, Value};

/// A Google error envelope (`{"error":{"code","message","status"}}`).
pub(super) fn google_error(code: u16, message: &str) -> SimResponse {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    };
    json_answer(
        code,
        &json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

fn json_answer(status: u16, body: &Value) -> SimResponse {
    SimResponse::json(status, body)
}

/// Answers `…/models/{model}:predict`.
pub(super) fn handle(req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(predict(req).unwrap_or_else(|answer| answer))
}

fn bad(message: &str) -> SimResponse {
    google_error(400, message)
}

/// A reference image's bytes (`referenceImage.bytesBase64Encoded`).
fn reference_bytes(req: &SimRequest, reference: &Value) -> Result<Blob, SimResponse> {
    let b64 = reference
        .pointer("/referenceImage/bytesBase64Encoded")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("referenceImage.bytesBase64Encoded is required"))?;
    req.base64_blob(b64, |s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .ok_or_else(|| bad("bytesBase64Encoded is not base64"))
}

/// Imagen's mask rule: an opaque image whose white pixels are edited.
pub(super) const IMAGEN_MASK: MaskRule = MaskRule::Opaque { white_edits: true };

/// A mask fault in the simulator's words (`mask: …`).
pub(super) fn mask_message(fault: &Fault) -> String {
    match fault {
        Fault::Mask(e @ crate::imaging::ImagingError::MaskSize { .. }) => e.to_string(),
        Fault::Mask(e) => format!("mask: {e}"),
        other => other.to_string(),
    }
}

fn predict(req: &SimRequest) -> Result<SimResponse, SimResponse> {
    let bearer = req
        .header("authorization")
        .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7);
    let api_key = req.header("x-goog-api-key").is_some_and(|k| !k.is_empty());
    if !bearer && !api_key {
        return Err(google_error(
            401,
            "Request is missing required authentication credential. Expected OAuth 2 access token.",
        ));
    }
    let body: Value =
        serde_json::from_slice(req.body.bytes()).map_err(|e| bad(&format!("Invalid JSON payload: {e}")))?;
    let instance = body
        .pointer("/instances/0")
        .ok_or_else(|| bad("instances[0] is required"))?;
    let prompt = instance
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("instances[0].prompt is required"))?;
    let parameters = body.get("parameters").cloned().unwrap_or(json!({}));
    if let Some(status) = super::simulated_error_status(prompt) {
        return Err(google_error(status, &format!("simulated error {status}")));
    }
    if prompt == "simulate-filtered" {
        let answer = if parameters.get("includeRaiReason") == Some(&json!(true)) {
            json!({"predictions": [{"raiFilteredReason": "The image was filtered by the simulated safety filter."}]})
        } else {
            json!({})
        };
        return Ok(json_answer(200, &answer));
    }
    let samples = match parameters.get("sampleCount") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=4).contains(n))
            .ok_or_else(|| bad("sampleCount must be an integer from 1 to 4"))?,
    };
    let references = instance
        .get("referenceImages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let of_type = |t: &str| {
        references
            .iter()
            .find(|r| r.get("referenceType").and_then(Value::as_str) == Some(t))
    };
    let raw = of_type("REFERENCE_TYPE_RAW").ok_or_else(|| bad("a REFERENCE_TYPE_RAW reference image is required"))?;
    let image = reference_bytes(req, raw)?;
    let max_pixels = req.place.max_image_pixels;
    let header = render::inspect(&image, max_pixels).map_err(|e| bad(&format!("reference image: {e}")))?;
    let mask_ref = of_type("REFERENCE_TYPE_MASK");
    let mask_mode = mask_ref
        .and_then(|m| m.pointer("/maskImageConfig/maskMode"))
        .and_then(Value::as_str);
    let mask = match (mask_ref, mask_mode) {
        (Some(m), Some("MASK_MODE_USER_PROVIDED")) => {
            let mask = reference_bytes(req, m)?;
            render::inspect_mask(&mask, IMAGEN_MASK, &header, max_pixels).map_err(|f| bad(&mask_message(&f)))?;
            Some(mask)
        }
        (Some(_), Some("MASK_MODE_BACKGROUND" | "MASK_MODE_FOREGROUND")) => None,
        (Some(_), other) => return Err(bad(&format!("unsupported maskMode {other:?}"))),
        (None, _) => None,
    };
    let mode = parameters
        .get("editMode")
        .and_then(Value::as_str)
        .unwrap_or("EDIT_MODE_DEFAULT");
    match mode {
        "EDIT_MODE_INPAINT_INSERTION" | "EDIT_MODE_INPAINT_REMOVAL" | "EDIT_MODE_OUTPAINT" if mask.is_none() => {
            return Err(bad(&format!("{mode} requires a user-provided mask")));
        }
        "EDIT_MODE_BGSWAP" if mask_ref.is_none() => {
            return Err(bad("EDIT_MODE_BGSWAP requires a mask reference"));
        }
        "EDIT_MODE_DEFAULT"
        | "EDIT_MODE_INPAINT_INSERTION"
        | "EDIT_MODE_INPAINT_REMOVAL"
        | "EDIT_MODE_OUTPAINT"
        | "EDIT_MODE_BGSWAP" => {}
        other => return Err(bad(&format!("unsupported editMode {other}"))),
    }
    let marks = match mask {
        Some(m) => Marks::Mask(m, IMAGEN_MASK),
        None => Marks::Blend,
    };
    let pictures: Vec<Picture> = (0..samples as u32)
        .map(|i| Picture::edit(image.clone(), marks.clone(), prompt, i))
        .collect();
    let predictions: Vec<Value> = (0..pictures.len())
        .map(|i| json!({"bytesBase64Encoded": render::slot(i), "mimeType": "image/png"}))
        .collect();
    SimResponse::rendered(&json!({ "predictions": predictions }), &pictures, &req.place).map_err(|f| match f {
        Fault::Output(e) => google_error(500, &e),
        Fault::Image(e) => bad(&format!("reference image: {e}")),
        other => bad(&mask_message(&other)),
    })
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(b) => {
                    out.push(b);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The claims of a JWT assertion whose header says RS256, or why it is not acceptable.
fn assertion_claims(jwt: &str) -> Result<Value, String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("the assertion is not a JWT (header.claims.signature)".into());
    };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "a JWT segment is not base64url".to_string())?;
        serde_json::from_slice(&bytes).map_err(|_| "a JWT segment is not JSON".to_string())
    };
    if decode(header)?.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err("the JWT's alg must be RS256".into());
    }
    if signature.is_empty() {
        return Err("the JWT has no signature".into());
    }
    let claims = decode(claims)?;
    for name in ["iss", "scope", "aud"] {
        if claims.get(name).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(format!("the JWT has no {name} claim"));
        }
    }
    let (iat, exp) = (
        claims.get("iat").and_then(Value::as_u64),
        claims.get("exp").and_then(Value::as_u64),
    );
    match (iat, exp) {
        (Some(iat), Some(exp)) if exp > iat && exp - iat <= 3600 => Ok(claims),
        _ => Err("iat and exp must be numbers with iat < exp <= iat + 3600".into()),
    }
}

/// Answers `POST /token`: a JWT-bearer grant for a service account.
pub(super) fn token(req: &SimRequest) -> SimAnswer {
    let oauth_error = |error: &str, description: &str| {
        SimAnswer::Whole(json_answer(
            400,
            &json!({"error": error, "error_description": description}),
        ))
    };
    let body = String::from_utf8_lossy(req.body.bytes());
    let field = |name: &str| {
        body.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| form_decode(k) == name)
            .map(|(_, v)| form_decode(v))
    };
    if field("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return oauth_error("unsupported_grant_type", "Invalid grant_type.");
    }
    let Some(assertion) = field("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    if let Err(why) = assertion_claims(&assertion) {
        return oauth_error("invalid_grant", &why);
    }
    SimAnswer::Whole(json_answer(
        200,
        &json!({
            "access_token": format!("sim-token-{}", uuid::Uuid::new_v4().simple()),
            "expires_in": 3600,
            "token_type": "Bearer",
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{decode_png, encode_png, paint_colour, solid};
    use bytes::Bytes;

    fn request(path: &str, auth: Option<&str>, body: Vec<u8>) -> SimRequest {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert("authorization", a.parse().unwrap());
        }
        SimRequest::for_test(path.into(), None, headers, Bytes::from(body))
    }

    fn answer(a: SimAnswer) -> (u16, Value) {
        match a {
            SimAnswer::Whole(r) => (r.status, serde_json::from_slice(&r.body.to_vec()).unwrap()),
            _ => panic!("expected a whole answer"),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn predict_body(prompt: &str, mask: Option<&[u8]>, mode: &str, samples: u32) -> Vec<u8> {
        let image = encode_png(&solid(4, 2, [10, 20, 30, 255])).unwrap();
        let mut refs = vec![json!({"referenceType":"REFERENCE_TYPE_RAW","referenceId":1,
            "referenceImage":{"bytesBase64Encoded": b64(&image),"mimeType":"image/png"}})];
        if let Some(m) = mask {
            refs.push(json!({"referenceType":"REFERENCE_TYPE_MASK","referenceId":2,
                "referenceImage":{"bytesBase64Encoded": b64(m),"mimeType":"image/png"},
                "maskImageConfig":{"maskMode":"MASK_MODE_USER_PROVIDED","dilation":0.01}}));
        }
        serde_json::to_vec(&json!({"instances":[{"prompt":prompt,"referenceImages":refs}],
            "parameters":{"editMode":mode,"sampleCount":samples,"includeRaiReason":true}}))
        .unwrap()
    }

    const PATH: &str = "/v1/projects/p/locations/l/publishers/google/models/imagen-3.0-capability-001:predict";

    /// An opaque greyscale PNG of `side`² black pixels.
    fn grey_png(side: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&vec![0u8; (side * side) as usize]).unwrap();
        w.finish().unwrap();
        out
    }

    /// A provider-format mask is read within the configured pixel budget, not the default one:
    /// a 2000×2000 mask (within the default) is refused from its header under a budget of 8,
    /// before any of it is decoded.
    #[test]
    fn a_mask_over_the_configured_budget_is_refused_from_its_header() {
        let body = predict_body("p", Some(&grey_png(2000)), "EDIT_MODE_INPAINT_INSERTION", 1);
        let mut req = request(PATH, Some("Bearer t"), body);
        req.place.max_image_pixels = 8; // the 4×2 image fits
        let (status, v) = answer(handle(&req));
        assert_eq!(status, 400, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("over the limit of 8 pixels"), "{message}");
    }

    #[test]
    fn paints_the_white_area_of_an_imagen_mask() {
        // Left half white (edit), right half black, as a grayscale PNG.
        let mask = crate::imaging::convert_mask(
            &{
                let mut m = solid(4, 2, [0, 0, 0, 255]);
                for i in [0, 1, 4, 5] {
                    m.pixels[i * 4 + 3] = 0;
                }
                encode_png(&m).unwrap()
            },
            255,
            0,
        )
        .unwrap()
        .png;
        let body = predict_body("a hat", Some(&mask), "EDIT_MODE_INPAINT_INSERTION", 2);
        let (status, v) = answer(handle(&request(PATH, Some("Bearer t"), body)));
        assert_eq!(status, 200, "{v}");
        let predictions = v["predictions"].as_array().unwrap();
        assert_eq!(predictions.len(), 2);
        for (i, p) in predictions.iter().enumerate() {
            assert_eq!(p["mimeType"], "image/png");
            let png = base64::engine::general_purpose::STANDARD
                .decode(p["bytesBase64Encoded"].as_str().unwrap())
                .unwrap();
            let img = decode_png(&png).unwrap();
            assert_eq!(img.pixel(0, 0), paint_colour("a hat", i as u32));
            assert_eq!(img.pixel(1, 1), paint_colour("a hat", i as u32));
            assert_eq!(img.pixel(2, 0), [10, 20, 30, 255]);
            assert_eq!(img.pixel(3, 1), [10, 20, 30, 255]);
        }
    }

    #[test]
    fn refuses_what_vertex_refuses() {
        let body = || predict_body("p", None, "EDIT_MODE_DEFAULT", 1);
        let (status, v) = answer(handle(&request(PATH, None, body())));
        assert_eq!((status, v["error"]["status"].as_str()), (401, Some("UNAUTHENTICATED")));
        let (status, _) = answer(handle(&request(PATH, Some("Bearer t"), body())));
        assert_eq!(status, 200);
        // An unconverted (transparent) mask, a missing mask, too many samples, bad JSON.
        let unified = {
            let mut m = solid(4, 2, [0, 0, 0, 255]);
            m.pixels[3] = 0;
            encode_png(&m).unwrap()
        };
        for body in [
            predict_body("p", Some(&unified), "EDIT_MODE_INPAINT_INSERTION", 1),
            predict_body("p", None, "EDIT_MODE_INPAINT_INSERTION", 1),
            predict_body("p", None, "EDIT_MODE_DEFAULT", 5),
            predict_body("p", None, "EDIT_MODE_NONSENSE", 1),
            b"{not json".to_vec(),
        ] {
            let (status, v) = answer(handle(&request(PATH, Some("Bearer t"), body)));
            assert_eq!(
                (status, v["error"]["status"].as_str()),
                (400, Some("INVALID_ARGUMENT")),
                "{v}"
            );
        }
    }

    #[test]
    fn prompt_hooks() {
        let (status, v) = answer(handle(&request(
            PATH,
            Some("Bearer t"),
            predict_body("simulate-error:429", None, "EDIT_MODE_DEFAULT", 1),
        )));
        assert_eq!((status, v["error"]["code"].as_u64()), (429, Some(429)));
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        let (status, v) = answer(handle(&request(
            PATH,
            Some("Bearer t"),
            predict_body("simulate-filtered", None, "EDIT_MODE_DEFAULT", 1),
        )));
        assert_eq!(status, 200);
        assert!(v["predictions"][0]["raiFilteredReason"].is_string(), "{v}");
        assert!(v["predictions"][0].get("bytesBase64Encoded").is_none());
    }

    fn jwt(header: &Value, claims: &Value) -> String {
        let enc = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(claims))
    }

    #[test]
    fn token_endpoint_checks_the_grant() {
        let claims = json!({"iss":"a@b","scope":"s","aud":"http://x/token","iat":100,"exp":3700});
        let good = jwt(&json!({"alg":"RS256","typ":"JWT"}), &claims);
        let form = |grant: &str, assertion: &str| format!("grant_type={grant}&assertion={assertion}").into_bytes();
        let grant = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
        let (status, v) = answer(token(&request("/token", None, form(grant, &good))));
        assert_eq!(status, 200, "{v}");
        assert!(v["access_token"].as_str().unwrap().starts_with("sim-token-"));
        assert_eq!(
            (v["expires_in"].as_u64(), v["token_type"].as_str()),
            (Some(3600), Some("Bearer"))
        );
        let cases = [
            (form("password", &good), "unsupported_grant_type"),
            (form(grant, "not-a-jwt"), "invalid_grant"),
            (form(grant, &jwt(&json!({"alg":"none"}), &claims)), "invalid_grant"),
            (
                form(
                    grant,
                    &jwt(
                        &json!({"alg":"RS256"}),
                        &json!({"iss":"a","scope":"s","aud":"x","iat":5,"exp":5}),
                    ),
                ),
                "invalid_grant",
            ),
            (
                form(
                    grant,
                    &jwt(&json!({"alg":"RS256"}), &json!({"scope":"s","aud":"x","iat":1,"exp":5})),
                ),
                "invalid_grant",
            ),
            (format!("grant_type={grant}").into_bytes(), "invalid_request"),
        ];
        for (body, error) in cases {
            let (status, v) = answer(token(&request("/token", None, body)));
            assert_eq!((status, v["error"].as_str()), (400, Some(error)), "{v}");
        }
        assert_eq!(form_decode("a%3Ab+c%zz%4"), "a:b c%zz%4");
    }
}
