//! Kind `openai`: any OpenAI-compatible `images/edits`, multipart re-encoded with the model
//! prefix removed, small fields first, images typed from their bytes; native streams with
//! partial images. Kind `azure` sends the same body (`super::azure`).

use super::{
    assert_alpha_mask, assert_multipart_exact, assert_wire_headers, b64, file_part, is_alpha_mask, text_part,
    Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};
use std::time::Duration;

/// The provider key of the conformance `openai` provider.
pub const KEY: &str = "sk-upstream-conformance-openai";

/// An OpenAI `ImagesResponse` with `images`.
pub fn answer(images: &[Vec<u8>]) -> Value {
    let data: Vec<Value> = images.iter().map(|p| json!({"b64_json": b64(p)})).collect();
    json!({"created": 1_713_833_628, "data": data, "background": "opaque", "output_format": "png",
        "size": "1024x1024", "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}})
}

/// An OpenAI event stream for `images`: per image a partial image, then its completed event.
pub fn event_stream(images: &[Vec<u8>]) -> Reply {
    let mut body = String::new();
    for png in images {
        let partial = json!({"type": "image_edit.partial_image", "b64_json": b64(png), "partial_image_index": 0,
            "created_at": 7, "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png"});
        let completed = json!({"type": "image_edit.completed", "b64_json": b64(png), "created_at": 8,
            "size": "1024x1024", "quality": "low", "background": "opaque", "output_format": "png",
            "usage": {"total_tokens": 3, "input_tokens": 1, "output_tokens": 2,
                "input_tokens_details": {"text_tokens": 1, "image_tokens": 0},
                "output_tokens_details": {"text_tokens": 0, "image_tokens": 2}}});
        body += &format!(
            "event: image_edit.partial_image\ndata: {partial}\n\nevent: image_edit.completed\ndata: {completed}\n\n"
        );
    }
    Reply::Chunked {
        status: 200,
        content_type: "text/event-stream".into(),
        body: body.into_bytes(),
        piece: 100,
        pause: Duration::ZERO,
    }
}

/// Asserts the multipart body an OpenAI-compatible provider gets for `sent`, byte for byte:
/// `model` (as `model_part`), `prompt`, `stream` when streaming, then the images (`image`, or
/// `image[]` for several, typed file names), then the mask (as sent when it is OpenAI's
/// alpha mask, else converted to it); nothing else.
pub fn assert_openai_body(rec: &Recorded, sent: &Sent, model_part: &str) {
    let mut want = vec![text_part("model", model_part), text_part("prompt", &sent.prompt)];
    if sent.stream {
        want.push(text_part("stream", "true"));
    }
    let several = sent.images.len() > 1;
    for (i, png) in sent.images.iter().enumerate() {
        want.push(if several {
            file_part("image[]", &format!("image_{i}.png"), "image/png", png)
        } else {
            file_part("image", "image.png", "image/png", png)
        });
    }
    if let Some(mask) = &sent.mask {
        if is_alpha_mask(mask) {
            // OpenAI's own convention: as uploaded, byte for byte.
            want.push(file_part("mask", "mask.png", "image/png", mask));
        } else {
            // White = edit: converted to OpenAI's alpha, the same edit area.
            let ct = rec.header("content-type").expect("Content-Type");
            let parts = crate::common::parse_multipart(&ct, &rec.body);
            let got = &crate::common::parts_named(&parts, "mask")[0].data;
            assert_alpha_mask(got);
            want.push(file_part("mask", "mask.png", "image/png", got));
        }
    }
    assert_multipart_exact(rec, &want);
}

/// Kind `openai`.
pub struct OpenAi {
    model: String,
}

impl OpenAi {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        OpenAi { model: model.into() }
    }
}

impl Wire for OpenAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: openai\n    base_url: {}\n    keys:\n      - {{name: k, value: {KEY}}}\n",
            mock.base_url()
        )
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(Reply::json(200, &answer(images)));
    }

    fn serve_stream(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(event_stream(images));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        assert_eq!((rec.method.as_str(), rec.path.as_str()), ("POST", "/v1/images/edits"));
        let host = mock.addr.to_string();
        let auth = format!("Bearer {KEY}");
        assert_wire_headers(
            rec,
            "application/json",
            &[
                ("host", Some(&host)),
                ("authorization", Some(&auth)),
                ("content-type", None),
                ("content-length", None),
            ],
        );
        assert_openai_body(rec, sent, &sent.model);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
            mask: Capability::Served,
            streams: Streams::NativePartials,
            refusal: Refusal {
                field: "type",
                value: "outpainting",
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(
            400,
            &json!({"error": {"message": "Invalid image file or mode.", "type": "invalid_request_error",
                "param": "image", "code": "invalid_image"}}),
        ));
        UpstreamError {
            status: 400,
            message: "Invalid image file or mode.".into(),
        }
    }
}
