//! Kind `huggingface`: the router's hf-inference image-to-image, `POST {base}/hf-inference/
//! models/{owner}/{name}`, Bearer, `Accept: image/png`, JSON `{"inputs": <base64>, "parameters"}`;
//! the answer is the raw image; one image, no mask; synthesized streams.

use super::{assert_wire_headers, b64, json_body, Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::json;

/// The provider key of the conformance `huggingface` provider.
pub const KEY: &str = "hf_conformance_token";

/// Kind `huggingface`.
pub struct HuggingFace {
    model: String,
}

impl HuggingFace {
    /// The wire for an `owner/name` `model`.
    pub fn new(model: &str) -> Self {
        HuggingFace { model: model.into() }
    }
}

impl Wire for HuggingFace {
    fn kind(&self) -> ProviderKind {
        ProviderKind::HuggingFace
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: huggingface\n    base_url: http://{}\n    keys:\n      - {{name: h, value: {KEY}}}\n",
            mock.addr
        )
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "the answer is one raw image");
        mock.push(Reply::raw(200, "image/png", &images[0]));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        assert!(sent.mask.is_none() && sent.images.len() == 1);
        let rec = &recs[0];
        assert_eq!(
            (rec.method.as_str(), rec.path.clone()),
            ("POST", format!("/hf-inference/models/{}", sent.model))
        );
        let host = mock.addr.to_string();
        let auth = format!("Bearer {KEY}");
        assert_wire_headers(
            rec,
            "image/png",
            &[
                ("host", Some(&host)),
                ("authorization", Some(&auth)),
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
        assert_eq!(
            json_body(rec),
            json!({"inputs": b64(&sent.images[0]), "parameters": {"prompt": sent.prompt}})
        );
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
            mask: Capability::Refused { param: "mask" },
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "response_format",
                value: "url",
                param: "response_format",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(400, &json!({"error": "Input image is not a valid image"})));
        UpstreamError {
            status: 400,
            message: "Input image is not a valid image".into(),
        }
    }
}
