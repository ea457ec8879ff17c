//! Imagen editing (kind `vertex`, and kind `gemini` on the Gemini API's paths):
//! `POST {model path}:predict`, google-genai's `edit_image` body (each image a
//! `REFERENCE_TYPE_RAW` reference, the mask converted to white = edit); synthesized streams.

use super::google::{GoogleHost, VERTEX_TOKEN};
use super::{
    assert_converted_mask, b64, json_body, unb64, Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};

/// A `:predict` answer with one prediction per image; the images.
pub fn predictions(images: &[Vec<u8>]) -> Value {
    let items: Vec<Value> = images
        .iter()
        .map(|p| json!({"bytesBase64Encoded": b64(p), "mimeType": "image/png"}))
        .collect();
    json!({"predictions": items})
}

/// The parts of a recorded `:predict` request every test checks (method, `path`, the bearer
/// `token`, JSON, no API key header); the body as JSON.
pub fn predict_json(r: &Recorded, path: &str, token: &str) -> Value {
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, path);
    assert_eq!(r.header("authorization").as_deref(), Some(&*format!("Bearer {token}")));
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert!(r.header("x-goog-api-key").is_none());
    json_body(r)
}

/// An Imagen model on `host`.
pub struct Imagen {
    model: String,
    host: GoogleHost,
}

impl Imagen {
    /// The wire for `model` on `host`.
    pub fn new(model: &str, host: GoogleHost) -> Self {
        assert!(
            model.starts_with("imagen-"),
            "the Imagen wire describes Imagen models, not {model}"
        );
        Imagen {
            model: model.into(),
            host,
        }
    }
}

impl Wire for Imagen {
    fn kind(&self) -> ProviderKind {
        self.host.kind()
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        self.host.provider(name, mock)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(Reply::json(200, &predictions(images)));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        let path = format!("{}:predict", self.host.model_path(&sent.model));
        if self.host == GoogleHost::Vertex {
            predict_json(rec, &path, VERTEX_TOKEN);
        }
        assert_eq!((rec.method.as_str(), rec.path.as_str()), ("POST", path.as_str()));
        let v = json_body(rec);
        self.host.assert_headers(rec, mock, "application/json");
        let mut refs: Vec<Value> = sent
            .images
            .iter()
            .enumerate()
            .map(|(i, p)| {
                json!({"referenceType": "REFERENCE_TYPE_RAW", "referenceId": i + 1,
                    "referenceImage": {"bytesBase64Encoded": b64(p), "mimeType": "image/png"}})
            })
            .collect();
        let mut mode = "EDIT_MODE_DEFAULT";
        if sent.mask.is_some() {
            mode = "EDIT_MODE_INPAINT_INSERTION";
            // The converted mask: checked pixel by pixel, then taken as sent.
            let got = &v["instances"][0]["referenceImages"][sent.images.len()]["referenceImage"]["bytesBase64Encoded"];
            let converted = got.as_str().expect("a converted mask");
            assert_converted_mask(&unb64(converted), 255);
            refs.push(
                json!({"referenceType": "REFERENCE_TYPE_MASK", "referenceId": sent.images.len() + 1,
                "referenceImage": {"bytesBase64Encoded": converted, "mimeType": "image/png"},
                "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.01}}),
            );
        }
        assert_eq!(
            v,
            json!({"instances": [{"prompt": sent.prompt, "referenceImages": refs}],
                "parameters": {"editMode": mode, "sampleCount": 1, "includeRaiReason": true}})
        );
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
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
            400,
            &json!({"error": {"code": 400, "message": "Image editing failed with the following error: bad mask.",
                "status": "INVALID_ARGUMENT"}}),
        ));
        UpstreamError {
            status: 400,
            message: "Image editing failed with the following error: bad mask.".into(),
        }
    }
}
