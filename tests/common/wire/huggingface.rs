//! Kind `huggingface`: the router's hf-inference image-to-image, `POST {base}/hf-inference/
//! models/{owner}/{name}`, Bearer, `Accept: image/png`, JSON `{"inputs": <base64>, "parameters"}`;
//! the answer is the raw image; one image, no mask; synthesized streams. And the router's
//! `fal-ai` provider ([`FalAi`]): fal's queue, polled on the router.

use super::{
    assert_bodiless, assert_converted_mask, assert_wire_headers, b64, json_body, png_data_url, unb64, Abilities,
    Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
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

/// The router provider `fal-ai` (a `fal-ai/…` model): `POST {base}/fal-ai/{endpoint}?_subdomain=queue`
/// with the token and JSON (`prompt`, `image_url`, or `image_urls` for `…/edit` endpoints,
/// `mask_url` white = edit for fill endpoints, all `data:` URLs); then, on the router, two
/// status polls, the result document, and the download of its image URL without the token.
pub struct FalAi {
    model: String,
}

impl FalAi {
    /// The wire for a `fal-ai/…` `model`.
    pub fn new(model: &str) -> Self {
        assert!(
            model.starts_with("fal-ai/"),
            "the fal-ai wire describes fal-ai/… models, not {model}"
        );
        FalAi { model: model.into() }
    }

    fn multi_image(&self) -> bool {
        self.model.ends_with("/edit")
    }

    fn fill(&self) -> bool {
        self.model.contains("fill") || self.model.contains("inpaint")
    }

    /// fal's queue path of the request: the endpoint's app (fal drops a sub-path).
    fn request_path(&self) -> String {
        let app: Vec<&str> = self.model.split('/').take(2).collect();
        format!("/{}/requests/req-7", app.join("/"))
    }
}

impl Wire for FalAi {
    fn kind(&self) -> ProviderKind {
        ProviderKind::HuggingFace
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: huggingface\n    base_url: http://{}\n    poll_interval_ms: 20\n    keys:\n      - {{name: h, value: {KEY}}}\n",
            mock.addr
        )
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one result image");
        let response_url = format!("https://queue.fal.run{}", self.request_path());
        mock.push(Reply::json(
            200,
            &json!({"request_id": "req-7", "status": "IN_QUEUE", "response_url": response_url,
                "status_url": format!("{response_url}/status"), "queue_position": 0}),
        ));
        mock.push(Reply::json(
            202,
            &json!({"status": "IN_PROGRESS", "response_url": response_url}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"status": "COMPLETED", "response_url": response_url}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"images": [{"url": format!("http://{}/files/out.png", mock.addr), "content_type": "image/png",
                "width": 2, "height": 2}], "seed": 42, "has_nsfw_concepts": [false], "prompt": "p"}),
        ));
        mock.push(Reply::raw(200, "image/png", &images[0]));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 5, "submit, two status polls, the result, the download");
        let host = mock.addr.to_string();
        let auth = format!("Bearer {KEY}");
        let submit = &recs[0];
        assert_eq!(
            (submit.method.as_str(), submit.path.clone()),
            ("POST", format!("/fal-ai/{}?_subdomain=queue", sent.model))
        );
        assert_wire_headers(
            submit,
            "application/json",
            &[
                ("host", Some(&host)),
                ("authorization", Some(&auth)),
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
        let body = json_body(submit);
        let mut want = json!({"prompt": sent.prompt});
        if self.multi_image() {
            want["image_urls"] = sent.images.iter().map(|i| json!(png_data_url(i))).collect();
        } else {
            assert_eq!(sent.images.len(), 1);
            want["image_url"] = json!(png_data_url(&sent.images[0]));
        }
        if sent.mask.is_some() {
            assert!(self.fill(), "only fill endpoints take a mask");
            let got = body["mask_url"].as_str().expect("a converted mask");
            assert!(got.starts_with("data:image/png;base64,"), "{got}");
            assert_converted_mask(&unb64(got), 255);
            want["mask_url"] = json!(got);
        }
        assert_eq!(body, want);
        let queued = format!("/fal-ai{}", self.request_path());
        for poll in &recs[1..3] {
            assert_bodiless(
                poll,
                "GET",
                &format!("{queued}/status?_subdomain=queue"),
                Some("application/json"),
                &[("host", Some(&host)), ("authorization", Some(&auth))],
            );
        }
        assert_bodiless(
            &recs[3],
            "GET",
            &format!("{queued}?_subdomain=queue"),
            Some("application/json"),
            &[("host", Some(&host)), ("authorization", Some(&auth))],
        );
        assert_bodiless(&recs[4], "GET", "/files/out.png", None, &[("host", Some(&host))]);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: if self.multi_image() {
                Capability::Served
            } else {
                Capability::Refused { param: "image" }
            },
            mask: if self.fill() {
                Capability::Served
            } else {
                Capability::Refused { param: "mask" }
            },
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
            422,
            &json!({"detail": [{"loc": ["body", "image_url"], "msg": "Could not load the image", "type": "value_error"}]}),
        ));
        UpstreamError {
            status: 422,
            message: "Could not load the image".into(),
        }
    }
}
