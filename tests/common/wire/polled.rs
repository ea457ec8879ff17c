//! The asynchronous kinds, `bfl`, `fireworks` and `replicate`: a submit, polls until the job is
//! ready, and a download of the result, each request checked here; one image per call and no
//! mask for the FLUX Kontext models; synthesized streams.

use super::{
    assert_bodiless, assert_converted_mask, assert_wire_headers, b64, json_body, png_data_url, unb64, Abilities,
    Capability, Refusal, Sent, Streams, UpstreamError, Wire,
};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::json;

/// The provider key of the conformance `bfl` provider.
pub const BFL_KEY: &str = "bfl-conformance-SECRET";
/// The provider key of the conformance `fireworks` provider.
pub const FIREWORKS_KEY: &str = "fw-conformance-SECRET";
/// The provider key of the conformance `replicate` provider.
pub const REPLICATE_KEY: &str = "r8-conformance-SECRET";

/// A provider entry of `kind` at `mock`'s `/v1`, polling every 20 ms.
fn polled_provider(name: &str, kind: &str, mock: &MockUpstream, key: &str) -> String {
    format!(
        "  - name: {name}\n    kind: {kind}\n    base_url: {}\n    poll_interval_ms: 20\n    keys:\n      - {{name: k, value: {key}}}\n",
        mock.base_url()
    )
}

/// The one image these models take (a second is refused), and no mask.
fn single_image(sent: &Sent) -> &[u8] {
    assert_eq!(sent.images.len(), 1);
    assert!(sent.mask.is_none());
    &sent.images[0]
}

// ---------------------------------------------------------------------------------------------
// BFL
// ---------------------------------------------------------------------------------------------

/// Kind `bfl`: `POST {base}/{model}` with `x-key`, JSON with the image as bare base64
/// (`input_image`; `image` for FLUX.1 Fill, with the mask converted to white = edit); polls
/// `GET polling_url` with the key; downloads `result.sample` without it.
pub struct Bfl {
    model: String,
    fill: bool,
}

impl Bfl {
    /// The wire for a FLUX Kontext or FLUX.1 Fill `model`.
    pub fn new(model: &str) -> Self {
        let fill = model.starts_with("flux-pro-1.0-fill");
        assert!(
            fill || model.starts_with("flux-kontext"),
            "the bfl wire describes FLUX Kontext and Fill, not {model}"
        );
        Bfl {
            model: model.into(),
            fill,
        }
    }
}

impl Wire for Bfl {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bfl
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        polled_provider(name, "bfl", mock, BFL_KEY)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one image per job");
        let base = mock.base_url();
        mock.push(Reply::json(
            200,
            &json!({"id": "j1", "polling_url": format!("{base}/get_result?id=j1")}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"id": "j1", "status": "Pending", "result": null}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"id": "j1", "status": "Ready", "result": {"sample": format!("{base}/results/j1.png?sig=abc"), "seed": 42}}),
        ));
        mock.push(Reply::raw(200, "image/png", &images[0]));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(sent.images.len(), 1);
        let image = &sent.images[0];
        assert_eq!(recs.len(), 4, "submit, two polls, the download");
        let host = mock.addr.to_string();
        let submit = &recs[0];
        assert_eq!(
            (submit.method.as_str(), submit.path.clone()),
            ("POST", format!("/v1/{}", sent.model))
        );
        assert_wire_headers(
            submit,
            "application/json",
            &[
                ("host", Some(&host)),
                ("x-key", Some(BFL_KEY)),
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
        let body = json_body(submit);
        let mut want = json!({"prompt": sent.prompt});
        want[if self.fill { "image" } else { "input_image" }] = json!(b64(image));
        if sent.mask.is_some() {
            assert!(self.fill, "only Fill takes a mask");
            let got = body["mask"].as_str().expect("a converted mask");
            assert_converted_mask(&unb64(got), 255);
            want["mask"] = json!(got);
        }
        assert_eq!(body, want);
        for poll in &recs[1..3] {
            assert_bodiless(
                poll,
                "GET",
                "/v1/get_result?id=j1",
                Some("application/json"),
                &[("host", Some(&host)), ("x-key", Some(BFL_KEY))],
            );
        }
        assert_bodiless(
            &recs[3],
            "GET",
            "/v1/results/j1.png?sig=abc",
            None,
            &[("host", Some(&host))],
        );
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
            mask: if self.fill {
                Capability::Served
            } else {
                Capability::Refused { param: "mask" }
            },
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "type",
                value: if self.fill { "outpainting" } else { "inpainting" },
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(402, &json!({"detail": "Insufficient credits"})));
        UpstreamError {
            status: 402,
            message: "Insufficient credits".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fireworks
// ---------------------------------------------------------------------------------------------

/// Kind `fireworks`: `POST {base}/workflows/accounts/fireworks/models/{model}`, Bearer, JSON
/// with the image as a `data:` URL; polls `POST …/get_result {"id"}`; downloads the sample.
pub struct Fireworks {
    model: String,
}

impl Fireworks {
    /// The wire for a FLUX Kontext `model`.
    pub fn new(model: &str) -> Self {
        assert!(
            model.starts_with("flux-kontext"),
            "the fireworks wire describes FLUX Kontext, not {model}"
        );
        Fireworks { model: model.into() }
    }
}

impl Wire for Fireworks {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Fireworks
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        polled_provider(name, "fireworks", mock, FIREWORKS_KEY)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one image per job");
        let sample = format!("{}/results/f1.png", mock.base_url());
        mock.push(Reply::json(200, &json!({"request_id": "f1"})));
        mock.push(Reply::json(
            200,
            &json!({"id": "f1", "status": "Pending", "result": null}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"id": "f1", "status": "Ready", "result": {"sample": sample}}),
        ));
        mock.push(Reply::raw(200, "image/png", &images[0]));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        let image = single_image(sent);
        assert_eq!(recs.len(), 4, "submit, two polls, the download");
        let host = mock.addr.to_string();
        let auth = format!("Bearer {FIREWORKS_KEY}");
        let model_path = format!("/v1/workflows/accounts/fireworks/models/{}", sent.model);
        let json_headers = [
            ("host", Some(host.as_str())),
            ("authorization", Some(auth.as_str())),
            ("content-type", Some("application/json")),
            ("content-length", None),
        ];
        let submit = &recs[0];
        assert_eq!(
            (submit.method.as_str(), submit.path.as_str()),
            ("POST", model_path.as_str())
        );
        assert_wire_headers(submit, "application/json", &json_headers);
        assert_eq!(
            json_body(submit),
            json!({"prompt": sent.prompt, "input_image": png_data_url(image)})
        );
        for poll in &recs[1..3] {
            assert_eq!(
                (poll.method.as_str(), poll.path.clone()),
                ("POST", format!("{model_path}/get_result"))
            );
            assert_wire_headers(poll, "application/json", &json_headers);
            assert_eq!(json_body(poll), json!({"id": "f1"}));
        }
        assert_bodiless(&recs[3], "GET", "/v1/results/f1.png", None, &[("host", Some(&host))]);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
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
        mock.push(Reply::json(400, &json!({"error": "Invalid aspect ratio"})));
        UpstreamError {
            status: 400,
            message: "Invalid aspect ratio".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replicate
// ---------------------------------------------------------------------------------------------

/// Kind `replicate`: `POST {base}/models/{owner}/{name}/predictions`, Bearer, `Prefer: wait=60`,
/// `{"input":{prompt, input_image: data URL}}`; polls `GET urls.get`; downloads `output`.
pub struct Replicate {
    model: String,
}

impl Replicate {
    /// The wire for an `owner/name` `model` whose image key is the default `input_image`.
    pub fn new(model: &str) -> Self {
        assert!(
            model.contains('/') && !model.contains(':'),
            "the replicate wire describes owner/name models, not {model}"
        );
        Replicate { model: model.into() }
    }
}

impl Wire for Replicate {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Replicate
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        polled_provider(name, "replicate", mock, REPLICATE_KEY)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one image per prediction");
        let base = mock.base_url();
        let get = format!("{base}/predictions/p1");
        mock.push(Reply::json(
            201,
            &json!({"id": "p1", "status": "starting", "urls": {"get": get}}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"id": "p1", "status": "processing", "urls": {"get": get}}),
        ));
        mock.push(Reply::json(
            200,
            &json!({"id": "p1", "status": "succeeded", "output": [format!("{base}/files/out.png")], "urls": {"get": get}}),
        ));
        mock.push(Reply::raw(200, "image/png", &images[0]));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        let image = single_image(sent);
        assert_eq!(recs.len(), 4, "submit, two polls, the download");
        let host = mock.addr.to_string();
        let auth = format!("Bearer {REPLICATE_KEY}");
        let submit = &recs[0];
        assert_eq!(
            (submit.method.as_str(), submit.path.clone()),
            ("POST", format!("/v1/models/{}/predictions", sent.model))
        );
        assert_wire_headers(
            submit,
            "application/json",
            &[
                ("host", Some(&host)),
                ("authorization", Some(&auth)),
                ("prefer", Some("wait=60")),
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
        assert_eq!(
            json_body(submit),
            json!({"input": {"prompt": sent.prompt, "input_image": png_data_url(image)}})
        );
        for poll in &recs[1..3] {
            assert_bodiless(
                poll,
                "GET",
                "/v1/predictions/p1",
                Some("application/json"),
                &[("host", Some(&host)), ("authorization", Some(&auth))],
            );
        }
        assert_bodiless(&recs[3], "GET", "/v1/files/out.png", None, &[("host", Some(&host))]);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
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
        mock.push(Reply::raw(
            422,
            "application/problem+json",
            json!({"title": "Input validation failed", "detail": "- input.prompt: Invalid type", "status": 422})
                .to_string()
                .as_bytes(),
        ));
        UpstreamError {
            status: 422,
            message: "- input.prompt: Invalid type".into(),
        }
    }
}
