//! Kind `xai`: `POST {base}/images/edits`, Bearer, JSON `{"model","prompt","image":{"url":
//! data URL}}` (or `"images"` for 2–3), `response_format`; no mask; synthesized streams.

use super::{
    assert_wire_headers, json_body, png_data_url, Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};

/// The provider key of the conformance `xai` provider.
pub const KEY: &str = "xai-conformance-key";

/// Kind `xai`.
pub struct Xai {
    model: String,
}

impl Xai {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        Xai { model: model.into() }
    }
}

impl Wire for Xai {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Xai
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: xai\n    base_url: {}\n    keys:\n      - {{name: x, value: {KEY}}}\n",
            mock.base_url()
        )
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(Reply::json(200, &super::openai::answer(images)));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        assert!(sent.mask.is_none());
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
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
        let mut want = json!({"model": sent.model, "prompt": sent.prompt, "response_format": "b64_json"});
        let urls: Vec<Value> = sent.images.iter().map(|p| json!({"url": png_data_url(p)})).collect();
        if urls.len() == 1 {
            want["image"] = urls[0].clone();
        } else {
            want["images"] = Value::Array(urls);
        }
        assert_eq!(json_body(rec), want);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
            mask: Capability::Refused { param: "mask" },
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "type",
                value: "inpainting",
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(
            400,
            &json!({"code": "Client specified an invalid argument", "error": "Image too small"}),
        ));
        UpstreamError {
            status: 400,
            message: "Image too small".into(),
        }
    }
}
