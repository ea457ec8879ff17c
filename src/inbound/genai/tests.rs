use super::*;
use crate::imaging::{encode_png, solid, ImageKind};

fn png(colour: [u8; 4]) -> Vec<u8> {
    encode_png(&solid(8, 8, colour)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    crate::codec::base64::encode_append(bytes, &mut out);
    String::from_utf8(out).unwrap()
}

fn spool() -> Spool {
    Spool::new(1 << 20, None)
}

#[test]
fn routes_of_the_gemini_and_vertex_paths() {
    let r = route("/genai/v1beta/models/demo%2Fsim-image-1:generateContent").unwrap();
    assert_eq!(r.call, GenaiCall::Generate);
    assert_eq!(r.model, "demo%2Fsim-image-1");
    assert_eq!(r.publisher, None);
    // google-genai sends `provider/model` with its `/` as it is.
    let r = route("/genai/v1beta/models/demo/sim-image-1:streamGenerateContent").unwrap();
    assert_eq!((r.call, r.model), (GenaiCall::StreamGenerate, "demo/sim-image-1"));
    let r = route(
        "/genai/v1beta1/projects/p/locations/us-central1/publishers/google/models/imagen-3.0-capability-001:predict",
    )
    .unwrap();
    assert_eq!(r.call, GenaiCall::Predict);
    assert_eq!((r.publisher, r.model), (Some("google"), "imagen-3.0-capability-001"));
    // The SDK's Vertex mode turns `demo/sim-image-1` into `publishers/demo/models/sim-image-1`.
    let r = route("/genai/v1beta1/projects/p/locations/l/publishers/demo/models/sim-image-1:predict").unwrap();
    assert_eq!((r.publisher, r.model), (Some("demo"), "sim-image-1"));
    // Express mode: no project.
    let r = route("/genai/v1/publishers/google/models/m:predict").unwrap();
    assert_eq!((r.publisher, r.model), (Some("google"), "m"));
    // Vertex mode's `generate_content`.
    let r = route("/genai/v1beta1/projects/p/locations/l/publishers/demo/models/sim-image-1:streamGenerateContent")
        .unwrap();
    assert_eq!(r.call, GenaiCall::StreamGenerate);
    assert_eq!((r.publisher, r.model), (Some("demo"), "sim-image-1"));
    for bad in [
        "/genai",
        "/genai/",
        "/genai/v1beta/models/:generateContent",
        "/genai/v1beta/models/m:countTokens",
        "/genai/v1beta/models/m",
        "/genai/v1beta/models/m/:generateContent",
        "/genai/x/models/m:generateContent",
        "/genai/v1/projects/p/publishers/google/models/m:predict",
        "/genai/v1/publishers//models/m:predict",
        "/genai/v1/models/m:predict",
        "/genaix/v1beta/models/m:generateContent",
        "/v1beta/models/m:generateContent",
    ] {
        assert_eq!(route(bad), None, "{bad}");
    }
}

#[test]
fn aspect_ratio_and_image_size_become_a_size_the_gemini_adapter_maps_back() {
    assert_eq!(size_for_image_config(None, Some("2K")).unwrap(), None);
    assert_eq!(
        size_for_image_config(Some("1:1"), None).unwrap().as_deref(),
        Some("1024x1024")
    );
    assert_eq!(
        size_for_image_config(Some("16:9"), None).unwrap().as_deref(),
        Some("1024x576")
    );
    assert_eq!(
        size_for_image_config(Some("9:16"), Some("2K")).unwrap().as_deref(),
        Some("1152x2048")
    );
    assert_eq!(
        size_for_image_config(Some("3:2"), Some("4K")).unwrap().as_deref(),
        Some("3840x2560")
    );
    for (ratio, image_size) in [
        ("16:9", "1K"),
        ("9:16", "2K"),
        ("4:3", "4K"),
        ("21:9", "1K"),
        ("1:8", "2K"),
    ] {
        let size = size_for_image_config(Some(ratio), Some(image_size)).unwrap().unwrap();
        let back = crate::providers::kernel::size::image_config_for_size(Some(&size), "gemini").unwrap();
        assert_eq!(back, Some((ratio, image_size)), "{ratio} {image_size} → {size}");
    }
    for bad in ["16x9", "0:1", "a:b", "100:1"] {
        assert!(size_for_image_config(Some(bad), None).is_err(), "{bad}");
    }
    assert!(size_for_image_config(Some("1:1"), Some("8K")).is_err());
}

#[test]
fn generate_content_becomes_the_unified_form() {
    let (a, b) = (png([255, 0, 0, 255]), png([0, 0, 255, 255]));
    let body = json!({
        "contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": b64(&a)}},
            {"text": "make it"},
            {"inline_data": {"mime_type": "image/png", "data": b64(&b)}},
            {"text": "green"},
        ]},
        {"role": "model", "parts": [{"text": "ignored: the model's turn"}]}],
        "generationConfig": {"candidateCount": 2, "seed": 7, "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "16:9"}},
    })
    .to_string();
    let source = generate_request(body.as_bytes()).unwrap();
    assert_eq!(source.images.len(), 2);
    assert_eq!(source.images[0].mime_type.as_deref(), Some("image/png"));
    assert!(
        matches!(source.images[0].data, Cow::Borrowed(_)),
        "base64 borrowed from the body"
    );
    let mut spool = spool();
    let limits = Limits::default();
    let form = build_form(&source, ("demo", "sim-image-1"), &limits, &mut spool).unwrap();
    assert_eq!((form.provider.as_str(), form.model.as_str()), ("demo", "sim-image-1"));
    assert_eq!(form.prompt.as_deref(), Some("make it\ngreen"));
    assert_eq!(form.n, Some(2));
    assert_eq!(form.seed, Some(7));
    assert_eq!(form.size.as_deref(), Some("1024x576"));
    assert!(!form.stream);
    assert_eq!(form.images.len(), 2);
    assert_eq!(form.images[0].kind, Some(ImageKind::Png));
    assert_eq!(spool.read_all(form.images[0].range).unwrap(), a);
    assert_eq!(spool.read_all(form.images[1].range).unwrap(), b);
    assert_eq!(form.mask, None);
}

#[test]
fn large_images_are_decoded_piece_by_piece_byte_for_byte() {
    // Larger than one decode piece, and not a multiple of it.
    let mut image = png([1, 2, 3, 255]);
    image.extend((0..200_000u32).map(|i| (i * 7 % 251) as u8));
    let body = json!({"contents": [{"parts": [{"text": "p"}, {"inlineData": {"data": b64(&image)}}]}]}).to_string();
    let source = generate_request(body.as_bytes()).unwrap();
    let mut spool = spool();
    let form = build_form(&source, ("demo", "m"), &Limits::default(), &mut spool).unwrap();
    assert_eq!(spool.read_all(form.images[0].range).unwrap(), image);
}

#[test]
fn bad_requests_are_refused_with_the_forms_errors() {
    let limits = Limits::default();
    let refused = |body: Value| -> GatewayError {
        let body = body.to_string();
        match generate_request(body.as_bytes()) {
            Err(e) => e,
            Ok(source) => build_form(&source, ("demo", "m"), &limits, &mut spool()).unwrap_err(),
        }
    };
    let image = b64(&png([0, 0, 0, 255]));
    // No image, no prompt, not an image, not base64, a URI, n out of range, not JSON.
    for (body, param) in [
        (json!({"contents": [{"parts": [{"text": "p"}]}]}), "image"),
        (
            json!({"contents": [{"parts": [{"inlineData": {"data": image}}]}]}),
            "prompt",
        ),
        (
            json!({"contents": [{"parts": [{"text": "p"}, {"inlineData": {"data": b64(b"GIF89a-not-png")}}]}]}),
            "image[]",
        ),
        (
            json!({"contents": [{"parts": [{"text": "p"}, {"inlineData": {"data": "@@@@"}}]}]}),
            "image",
        ),
        (
            json!({"contents": [{"parts": [{"text": "p"}, {"fileData": {"fileUri": "gs://b/o"}}]}]}),
            "contents",
        ),
        (
            json!({"contents": [{"parts": [{"text": "p"}, {"inlineData": {"data": image}}]}],
                "generationConfig": {"candidateCount": 99}}),
            "n",
        ),
        (json!({"contents": 3}), "body"),
    ] {
        let e = refused(body.clone());
        assert_eq!(e.status(), 400, "{body}: {e}");
        let shown = e.to_json(&crate::error::ErrorContext::default());
        assert_eq!(shown["error"]["param"], param, "{body}: {shown}");
    }
}

#[test]
fn imagen_predict_becomes_the_unified_form() {
    let image = png([9, 9, 9, 255]);
    let mask = png([0, 0, 0, 0]);
    let body = json!({
        "instances": [{"prompt": "a cat", "referenceImages": [
            {"referenceType": "REFERENCE_TYPE_RAW", "referenceId": 1,
             "referenceImage": {"bytesBase64Encoded": b64(&image), "mimeType": "image/png"}},
            {"referenceType": "REFERENCE_TYPE_MASK", "referenceId": 2,
             "referenceImage": {"bytesBase64Encoded": b64(&mask)},
             "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.01}},
        ]}],
        "parameters": {"sampleCount": 3, "editMode": "EDIT_MODE_OUTPAINT", "seed": 5,
            "negativePrompt": "dogs", "outputOptions": {"mimeType": "image/jpeg"}, "includeRaiReason": true},
    })
    .to_string();
    let source = predict_request(body.as_bytes()).unwrap();
    let mut spool = spool();
    let form = build_form(
        &source,
        ("vertex", "imagen-3.0-capability-001"),
        &Limits::default(),
        &mut spool,
    )
    .unwrap();
    assert_eq!(form.prompt.as_deref(), Some("a cat"));
    assert_eq!(form.edit_type, Some(crate::form::EditType::Outpainting));
    assert_eq!(form.n, Some(3));
    assert_eq!(form.seed, Some(5));
    assert_eq!(form.negative_prompt.as_deref(), Some("dogs"));
    assert_eq!(form.output_format.as_deref(), Some("jpeg"));
    assert_eq!(spool.read_all(form.images[0].range).unwrap(), image);
    let m = form.mask.as_ref().unwrap();
    assert_eq!(spool.read_all(m.range).unwrap(), mask);
    // Imagen's convention: white marks the area to edit.
    assert_eq!(form.mask_source, crate::form::MaskSource::WhiteEdit);
    // Imagen's automatic background mask: background removal, no mask image.
    let body = json!({
        "instances": [{"referenceImages": [
            {"referenceType": "REFERENCE_TYPE_RAW", "referenceImage": {"bytesBase64Encoded": b64(&image)}},
            {"referenceType": "REFERENCE_TYPE_MASK", "maskImageConfig": {"maskMode": "MASK_MODE_BACKGROUND"}},
        ]}],
        "parameters": {"editMode": "EDIT_MODE_BGSWAP"},
    })
    .to_string();
    let source = predict_request(body.as_bytes()).unwrap();
    let form = build_form(&source, ("vertex", "m"), &Limits::default(), &mut spool).unwrap();
    assert_eq!(form.edit_type, Some(crate::form::EditType::BackgroundRemoval));
    assert_eq!(form.mask, None);
    assert_eq!(form.prompt, None);
}

#[test]
fn imagen_requests_outside_the_mapping_are_refused() {
    let image = b64(&png([9, 9, 9, 255]));
    for body in [
        json!({"instances": []}),
        json!({"instances": [{"prompt": "a"}, {"prompt": "b"}]}),
        json!({"instances": [{"prompt": "a", "referenceImages": [
            {"referenceType": "REFERENCE_TYPE_STYLE", "referenceImage": {"bytesBase64Encoded": image}}]}]}),
        json!({"instances": [{"prompt": "a", "referenceImages": [
            {"referenceType": "REFERENCE_TYPE_MASK", "maskImageConfig": {"maskMode": "MASK_MODE_SEMANTIC"}}]}]}),
        json!({"instances": [{"prompt": "a", "referenceImages": [{"referenceType": "REFERENCE_TYPE_RAW"}]}]}),
        json!({"instances": [{"prompt": "a"}], "parameters": {"editMode": "EDIT_MODE_PRODUCT_IMAGE"}}),
        json!({"instances": [{"prompt": "a"}], "parameters": {"outputOptions": {"mimeType": "image/gif"}}}),
    ] {
        let e = predict_request(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{body}");
    }
}

#[test]
fn answers_in_googles_shapes() {
    let unified = json!({
        "created": 1, "data": [{"b64_json": "QUFB", "index": 0}, {"b64_json": "QkJC", "index": 1}],
        "output_format": "jpeg",
        "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30},
        "extra_fields": {"provider": "demo"},
    })
    .to_string();
    let answer: Value = serde_json::from_slice(&generate_answer(unified.as_bytes(), "demo/m").unwrap()).unwrap();
    assert_eq!(answer["candidates"].as_array().unwrap().len(), 2);
    let first = &answer["candidates"][0];
    assert_eq!(first["content"]["role"], "model");
    assert_eq!(first["content"]["parts"][0]["inlineData"]["data"], "QUFB");
    assert_eq!(first["content"]["parts"][0]["inlineData"]["mimeType"], "image/jpeg");
    assert_eq!(first["finishReason"], "STOP");
    assert_eq!(answer["candidates"][1]["index"], 1);
    assert_eq!(answer["usageMetadata"]["promptTokenCount"], 10);
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 20);
    assert_eq!(answer["usageMetadata"]["totalTokenCount"], 30);
    assert_eq!(answer["modelVersion"], "demo/m");
    let predicted: Value = serde_json::from_slice(&predict_answer(unified.as_bytes()).unwrap()).unwrap();
    assert_eq!(
        predicted,
        json!({"predictions": [
            {"bytesBase64Encoded": "QUFB", "mimeType": "image/jpeg"},
            {"bytesBase64Encoded": "QkJC", "mimeType": "image/jpeg"},
        ]})
    );
    assert_eq!(stream_event(b"{}"), b"data: {}\r\n\r\n");
}

#[test]
fn errors_in_googles_envelope() {
    let bifrost = json!({"error": {"type": "invalid_request_error", "code": "invalid_request", "message": "no"}});
    let body: Value = serde_json::from_slice(&error_body(400, &bifrost)).unwrap();
    assert_eq!(body["error"]["code"], 400);
    assert_eq!(body["error"]["message"], "no");
    assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(body["error"]["details"][0]["reason"], "invalid_request");
    for (status, name) in [
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (429, "RESOURCE_EXHAUSTED"),
        (502, "INTERNAL"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ] {
        assert_eq!(status_name(status), name);
    }
}
