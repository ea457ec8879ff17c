use super::*;
use crate::form::EditType;
use crate::imaging::{encode_png, solid};

fn png(colour: [u8; 4]) -> Vec<u8> {
    encode_png(&solid(8, 8, colour)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    crate::codec::base64::encode_append(bytes, &mut out);
    String::from_utf8(out).unwrap()
}

fn form_of(body: &serde_json::Value) -> (BedrockEdit<'static>, EditForm, Spool) {
    let text: &'static [u8] = Box::leak(body.to_string().into_bytes().into_boxed_slice());
    let edit = invoke_request(text).unwrap();
    let mut spool = Spool::new(1 << 20, None);
    let form = build_form(&edit, ("demo", "sim-image-1"), &Limits::default(), &mut spool).unwrap();
    (edit, form, spool)
}

fn field(edit: &BedrockEdit<'_>, name: &str) -> Option<String> {
    edit.source
        .fields
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.clone())
}

fn error_of(body: &serde_json::Value) -> GatewayError {
    let text = body.to_string();
    match invoke_request(text.as_bytes()) {
        Err(e) => e,
        Ok(_) => panic!("accepted {body}"),
    }
}

#[test]
fn the_invoke_path() {
    assert_eq!(
        route("/bedrock/model/amazon.nova-canvas-v1%3A0/invoke"),
        Some("amazon.nova-canvas-v1%3A0")
    );
    assert_eq!(
        route("/bedrock/model/demo%2Fsim-image-1/invoke"),
        Some("demo%2Fsim-image-1")
    );
    for bad in [
        "/bedrock/model//invoke",
        "/bedrock/model/a/b/invoke",
        "/bedrock/model/m/invoke-with-response-stream",
        "/bedrock/model/m/converse",
        "/bedrockx/model/m/invoke",
        "/model/m/invoke",
    ] {
        assert_eq!(route(bad), None, "{bad}");
    }
}

#[test]
fn titan_inpainting_becomes_an_inpainting_edit_with_a_black_edit_mask() {
    let (image, mask) = (png([200, 10, 10, 255]), png([0, 0, 0, 255]));
    let body = json!({
        "taskType": "INPAINTING",
        "inPaintingParams": {"image": b64(&image), "maskImage": b64(&mask), "text": "a cat", "negativeText": "dogs"},
        "imageGenerationConfig": {"numberOfImages": 2, "width": 512, "height": 768, "seed": 42, "quality": "premium", "cfgScale": 6.5}
    });
    let (edit, form, spool) = form_of(&body);
    assert_eq!(edit.shape, BodyShape::Titan);
    assert_eq!(edit.seed, Some(42));
    assert_eq!(form.edit_type, Some(EditType::Inpainting));
    assert_eq!(form.mask_source, MaskSource::BlackEdit);
    assert_eq!(form.prompt.as_deref(), Some("a cat"));
    assert_eq!(form.negative_prompt.as_deref(), Some("dogs"));
    assert_eq!(form.n, Some(2));
    assert_eq!(form.size.as_deref(), Some("512x768"));
    assert_eq!(form.seed, Some(42));
    assert_eq!(form.quality.as_deref(), Some("high"));
    assert_eq!(form.extra_text, vec![("cfg_scale".to_string(), "6.5".to_string())]);
    assert_eq!((form.provider.as_str(), form.model.as_str()), ("demo", "sim-image-1"));
    // The images, byte for byte, in the spool.
    assert_eq!(form.images.len(), 1);
    assert_eq!(spool.read_all(form.images[0].range).unwrap(), image);
    assert_eq!(spool.read_all(form.mask.as_ref().unwrap().range).unwrap(), mask);
}

#[test]
fn titan_outpainting_masks_are_white_edit() {
    let body = json!({
        "taskType": "OUTPAINTING",
        "outPaintingParams": {"image": b64(&png([1, 2, 3, 255])), "maskImage": b64(&png([255, 255, 255, 255])), "text": "more sky", "outPaintingMode": "PRECISE"}
    });
    let (_, form, _) = form_of(&body);
    assert_eq!(form.edit_type, Some(EditType::Outpainting));
    assert_eq!(form.mask_source, MaskSource::WhiteEdit);
}

#[test]
fn titan_variation_and_background_removal() {
    let (a, b) = (png([1, 1, 1, 255]), png([2, 2, 2, 255]));
    let body = json!({"taskType": "IMAGE_VARIATION",
        "imageVariationParams": {"images": [b64(&a), b64(&b)], "text": "autumn", "similarityStrength": 0.7}});
    let (_, form, spool) = form_of(&body);
    assert_eq!(form.edit_type, None);
    assert!(form.mask.is_none());
    assert_eq!(form.mask_source, MaskSource::Detect);
    assert_eq!(form.images.len(), 2);
    assert_eq!(spool.read_all(form.images[1].range).unwrap(), b);
    let body = json!({"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": b64(&a)}});
    let (_, form, _) = form_of(&body);
    assert_eq!(form.edit_type, Some(EditType::BackgroundRemoval));
    assert_eq!(form.prompt, None);
}

#[test]
fn titan_bodies_the_gateway_cannot_serve_are_clear_400s() {
    let img = b64(&png([1, 1, 1, 255]));
    let cases = [
        (
            json!({"taskType": "INPAINTING", "inPaintingParams": {"image": img, "maskPrompt": "the cat", "text": "a dog"}}),
            "maskPrompt",
        ),
        (
            json!({"taskType": "INPAINTING", "inPaintingParams": {"image": img, "text": "a dog"}}),
            "maskImage",
        ),
        (
            json!({"taskType": "OUTPAINTING", "inPaintingParams": {"image": img}}),
            "outPaintingParams",
        ),
        (
            json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": []}}),
            "images",
        ),
        (json!({"taskType": "BACKGROUND_REMOVAL"}), "backgroundRemovalParams"),
        (
            json!({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "x"}}),
            "TEXT_IMAGE",
        ),
        (
            json!({"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": img}, "imageGenerationConfig": {"width": 512}}),
            "width and height",
        ),
        (
            json!({"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": img}, "imageGenerationConfig": {"quality": "ultra"}}),
            "quality",
        ),
    ];
    for (body, needle) in cases {
        let e = error_of(&body);
        assert_eq!(e.status(), 400, "{body}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    assert_eq!(error_of(&json!([1])).status(), 400);
    assert!(invoke_request(b"{not json").is_err());
}

#[test]
fn stability_bodies_keep_their_names_and_white_edit_masks() {
    let (image, mask) = (png([9, 9, 9, 255]), png([255, 255, 255, 255]));
    let body = json!({"prompt": "a red door", "image": b64(&image), "mask": b64(&mask), "seed": 7,
        "output_format": "webp", "negative_prompt": "blur", "grow_mask": 5, "style_preset": "photographic"});
    let (edit, form, spool) = form_of(&body);
    assert_eq!(edit.shape, BodyShape::Stability);
    assert_eq!(form.mask_source, MaskSource::WhiteEdit);
    assert_eq!(form.prompt.as_deref(), Some("a red door"));
    assert_eq!(form.negative_prompt.as_deref(), Some("blur"));
    assert_eq!(form.seed, Some(7));
    assert_eq!(form.output_format.as_deref(), Some("webp"));
    assert_eq!(form.edit_type, None);
    assert_eq!(field(&edit, "grow_mask").as_deref(), Some("5"));
    assert_eq!(field(&edit, "style_preset").as_deref(), Some("photographic"));
    assert_eq!(spool.read_all(form.images[0].range).unwrap(), image);
    assert_eq!(spool.read_all(form.mask.as_ref().unwrap().range).unwrap(), mask);
    // Without a mask: nothing to name; with no prompt either, remove-background's body.
    let (_, form, _) = form_of(&json!({"image": b64(&image), "prompt": "x"}));
    assert_eq!(form.mask_source, MaskSource::Detect);
    assert_eq!(form.edit_type, None);
    let (_, form, _) = form_of(&json!({"image": b64(&image), "output_format": "png"}));
    assert_eq!(form.edit_type, Some(EditType::BackgroundRemoval));
    // Unknown fields (another Stability service's) and a missing image are 400s.
    let e = error_of(&json!({"image": b64(&image), "left": 100}));
    assert!(e.to_string().contains("left"), "{e}");
    assert!(error_of(&json!({"prompt": "x"})).to_string().contains("image"));
}

#[test]
fn bad_base64_is_a_400_naming_the_part() {
    let text = json!({"image": "***", "prompt": "x"}).to_string();
    let edit = invoke_request(text.as_bytes()).unwrap();
    let mut spool = Spool::new(1 << 20, None);
    let e = build_form(&edit, ("demo", "m"), &Limits::default(), &mut spool).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("base64"), "{e}");
}

#[test]
fn answers_in_the_bodys_shape() {
    let unified =
        br#"{"created":1,"data":[{"b64_json":"aW1hZ2UtMA=="},{"b64_json":"aW1hZ2UtMQ=="}],"output_format":"png"}"#;
    let titan: Value = serde_json::from_slice(&answer(BodyShape::Titan, Some(3), unified).unwrap()).unwrap();
    assert_eq!(
        titan,
        json!({"images": ["aW1hZ2UtMA==", "aW1hZ2UtMQ=="], "error": null})
    );
    let stability: Value = serde_json::from_slice(&answer(BodyShape::Stability, Some(3), unified).unwrap()).unwrap();
    assert_eq!(
        stability,
        json!({"images": ["aW1hZ2UtMA==", "aW1hZ2UtMQ=="], "seeds": [3, 4], "finish_reasons": [null, null]})
    );
    let unseeded: Value = serde_json::from_slice(&answer(BodyShape::Stability, None, unified).unwrap()).unwrap();
    assert_eq!(unseeded["seeds"], json!([0, 0]));
}

#[test]
fn errors_name_the_exception_boto3_raises() {
    assert_eq!(exception_name(400, "invalid_request"), "ValidationException");
    assert_eq!(exception_name(413, "payload_too_large"), "ValidationException");
    assert_eq!(exception_name(403, "model_blocked"), "AccessDeniedException");
    assert_eq!(
        exception_name(403, "signature_key_digest_only"),
        "AccessDeniedException"
    );
    assert_eq!(exception_name(403, "signature_mismatch"), "InvalidSignatureException");
    assert_eq!(
        exception_name(403, "signature_unknown_key"),
        "UnrecognizedClientException"
    );
    assert_eq!(
        exception_name(401, "virtual_key_not_found"),
        "UnrecognizedClientException"
    );
    assert_eq!(exception_name(401, "virtual_key_blocked"), "AccessDeniedException");
    assert_eq!(exception_name(429, "rate_limited"), "ThrottlingException");
    assert_eq!(exception_name(404, "deployment_not_found"), "ResourceNotFoundException");
    assert_eq!(exception_name(504, "upstream_timeout"), "ModelTimeoutException");
    assert_eq!(exception_name(503, "provider_busy"), "ServiceUnavailableException");
    assert_eq!(exception_name(500, "internal_error"), "InternalServerException");
    let bifrost = json!({"error": {"message": "prompt is required", "code": "invalid_request"}});
    let (kind, body) = error_answer(400, &bifrost);
    assert_eq!(
        kind,
        "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"message": "prompt is required"})
    );
}
