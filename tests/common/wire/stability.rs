//! Kind `stability`: REST v2beta edit services, `POST {base}/v2beta/stable-image/edit/{service}`,
//! Bearer, `Accept: application/json`, multipart with the first image, the mask converted to an
//! opaque grayscale PNG (white = edit), the prompt; one image per call; synthesized streams.

use super::{
    assert_converted_mask, assert_multipart_exact, assert_wire_headers, b64, file_part, text_part, Abilities,
    Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
use crate::common::{parts_named, MockUpstream, Part, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};

/// The provider key of the conformance `stability` provider.
pub const KEY: &str = "sk-stability-conformance-1";

/// A Stability answer carrying `png`.
pub fn stability_answer(png: &[u8]) -> Value {
    json!({"image": b64(png), "finish_reason": "SUCCESS", "seed": 42})
}

/// What Stability requires of every request (method, the `service` path, Bearer `key`, JSON
/// accepted, multipart, exactly one `image` part equal to `image`); returns the parts.
pub fn check_stability(rec: &Recorded, service: &str, key: &str, image: &[u8]) -> Vec<Part> {
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, format!("/v2beta/stable-image/edit/{service}"));
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {key}")));
    assert_eq!(rec.header("accept").as_deref(), Some("application/json"));
    assert!(rec
        .header("content-type")
        .expect("Content-Type")
        .starts_with("multipart/form-data; boundary="));
    let parts = rec.parts();
    let images = parts_named(&parts, "image");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].data, image, "the image byte for byte");
    parts
}

/// The unified 6×4 mask converted for Stability: opaque grayscale (no alpha), the top two rows
/// white (edit).
pub fn assert_stability_mask(png: &[u8]) {
    assert!(!refract::imaging::png_info(png).expect("a PNG").alpha);
    assert_converted_mask(png, 255);
}

/// Kind `stability`, inpainting (the mask-free edit uses the image's alpha).
pub struct Stability {
    model: String,
}

impl Stability {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        Stability { model: model.into() }
    }
}

impl Wire for Stability {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Stability
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: stability\n    base_url: http://{}\n    keys:\n      - {{name: s, value: {KEY}}}\n",
            mock.addr
        )
    }

    fn basic_fields(&self) -> Vec<(&'static str, &'static str)> {
        vec![("type", "inpainting")]
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one image per call");
        mock.push(Reply::json(200, &stability_answer(&images[0])));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        let parts = check_stability(rec, "inpaint", KEY, &sent.images[0]);
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
        let mut want = vec![file_part("image", "image.png", "image/png", &sent.images[0])];
        if sent.mask.is_some() {
            let converted = &parts_named(&parts, "mask")[0].data;
            assert_stability_mask(converted);
            want.push(file_part("mask", "mask.png", "image/png", converted));
        }
        want.push(text_part("prompt", &sent.prompt));
        assert_multipart_exact(rec, &want);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
            mask: Capability::Served,
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "response_format",
                value: "url",
                param: "response_format",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(
            403,
            &json!({"id": "x1", "name": "content_moderation", "errors": ["Your request was flagged"]}),
        ));
        UpstreamError {
            status: 403,
            message: "Your request was flagged".into(),
        }
    }
}
