//! Kind `bedrock`: `InvokeModel` JSON `POST {base}/model/{model id, percent-encoded}/invoke`,
//! SigV4-signed (checked here by an independent verifier); Titan Image Generator v2 / Nova
//! Canvas bodies (`IMAGE_VARIATION` without a mask, `INPAINTING` with one, the mask converted to
//! black = edit); synthesized streams.

use super::{
    assert_converted_mask, assert_wire_headers, b64, json_body, unb64, Abilities, Capability, Refusal, Sent, Streams,
    UpstreamError, Wire,
};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The AWS access key id of the test providers.
pub const ACCESS_KEY: &str = "AKIDE2ETEST";
/// Its secret.
pub const SECRET: &str = "e2e/SECRET+key/0123456789abcdefghijklmnopq";

/// HMAC-SHA256 (RFC 2104) on top of `sha2`.
fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(data).finalize();
    Sha256::new().chain_update(&opad).chain_update(inner).finalize().into()
}

/// Percent-encodes every byte but unreserved ones and `/`.
fn encode_path(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Verifies `r`'s SigV4 signature for [`ACCESS_KEY`] and `secret` as AWS would; returns the
/// signed header names.
pub fn verify_sigv4(r: &Recorded, secret: &str, region: &str) -> Vec<String> {
    let auth = r.header("authorization").expect("Authorization");
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .unwrap_or_else(|| panic!("{auth}"));
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {auth}"))
            .to_string()
    };
    let credential = field("Credential");
    let signed: Vec<String> = field("SignedHeaders").split(';').map(str::to_string).collect();
    let signature = field("Signature");
    let date = r.header("x-amz-date").expect("x-amz-date");
    let scope: Vec<&str> = credential.split('/').collect();
    assert_eq!(
        scope,
        [ACCESS_KEY, &date[..8], region, "bedrock", "aws4_request"],
        "{credential}"
    );
    for required in ["host", "x-amz-date", "content-type", "accept"] {
        assert!(signed.iter().any(|h| h == required), "{required} signed: {signed:?}");
    }
    let mut sorted = signed.clone();
    sorted.sort();
    assert_eq!(sorted, signed, "signed headers sorted");
    let mut canonical = format!("{}\n{}\n\n", r.method, encode_path(&r.path));
    for name in &signed {
        let value = r
            .header(name)
            .unwrap_or_else(|| panic!("signed header {name} not sent"));
        canonical.push_str(&format!("{name}:{}\n", value.trim()));
    }
    canonical.push_str(&format!(
        "\n{}\n{}",
        signed.join(";"),
        hex::encode(Sha256::digest(&r.body))
    ));
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{}/{region}/bedrock/aws4_request\n{}",
        &date[..8],
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), &date.as_bytes()[..8]);
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, b"bedrock");
    let k = hmac(&k, b"aws4_request");
    assert_eq!(
        hex::encode(hmac(&k, to_sign.as_bytes())),
        signature,
        "SigV4 signature; canonical request:\n{canonical}"
    );
    signed
}

/// The JSON body of a recorded request, after the checks every request passes.
pub fn body_json(r: &Recorded) -> Value {
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(r.header("accept").as_deref(), Some("application/json"));
    json_body(r)
}

/// Percent-encodes a model id for the path as the adapter does once (`:` → `%3A`).
fn model_path(model: &str) -> String {
    format!("/br/model/{}/invoke", model.replace(':', "%3A"))
}

/// Checks a signed `InvokeModel` request for `model` (path, the SigV4 signature by an
/// independent verifier, the exact headers); returns its JSON body.
pub fn check_signed(rec: &Recorded, mock: &MockUpstream, model: &str) -> Value {
    assert_eq!(rec.path, model_path(model));
    let v = body_json(rec);
    let signed = verify_sigv4(rec, SECRET, "us-east-1");
    assert_eq!(signed, ["accept", "content-type", "host", "x-amz-date"]);
    let host = mock.addr.to_string();
    assert_wire_headers(
        rec,
        "application/json",
        &[
            ("host", Some(&host)),
            ("content-type", Some("application/json")),
            ("x-amz-date", None),
            ("authorization", None),
            ("content-length", None),
        ],
    );
    v
}

/// The `providers:` entry of a bedrock provider `name` at `mock`'s `/br`, IAM keys in
/// `us-east-1`.
fn provider_entry(name: &str, mock: &MockUpstream) -> String {
    format!(
        "  - name: {name}\n    kind: bedrock\n    region: us-east-1\n    base_url: http://{}/br\n    keys:\n      - name: iam\n        aws_access_key_id: {ACCESS_KEY}\n        aws_secret_access_key: {SECRET}\n",
        mock.addr
    )
}

/// Kind `bedrock` with a Titan Image Generator v2 or Nova Canvas model, IAM keys in
/// `us-east-1`, `base_url` the mock's `/br`.
pub struct Bedrock {
    model: String,
}

impl Bedrock {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        assert!(
            model.contains("amazon.titan-image") || model.contains("amazon.nova-canvas"),
            "the bedrock wire describes Titan v2 and Nova Canvas, not {model}"
        );
        Bedrock { model: model.into() }
    }
}

impl Wire for Bedrock {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        provider_entry(name, mock)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        let items: Vec<String> = images.iter().map(|p| b64(p)).collect();
        mock.push(Reply::json(200, &json!({"images": items, "error": null})));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        let v = check_signed(rec, mock, &sent.model);
        let want = match &sent.mask {
            None => {
                let images: Vec<String> = sent.images.iter().map(|p| b64(p)).collect();
                json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": images, "text": sent.prompt},
                    "imageGenerationConfig": {"numberOfImages": 1}})
            }
            Some(_) => {
                let got = v["inPaintingParams"]["maskImage"].as_str().expect("a converted mask");
                assert_converted_mask(&unb64(got), 0);
                json!({"taskType": "INPAINTING", "inPaintingParams": {"image": b64(&sent.images[0]),
                    "text": sent.prompt, "maskImage": got}, "imageGenerationConfig": {"numberOfImages": 1}})
            }
        };
        assert_eq!(v, want);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
            mask: Capability::Served,
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "n",
                value: "6",
                param: "n",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        let message = "Malformed input request: #/textToImageParams: extraneous key [x] is not permitted";
        mock.push(Reply::json(400, &json!({"message": message})));
        UpstreamError {
            status: 400,
            message: message.into(),
        }
    }
}

/// Kind `bedrock` with a Stability inpaint service (`stability.stable-image-inpaint-*`): a
/// flat body (`image`, `mask` converted to white = edit, `prompt`, `output_format`), one image
/// per call.
pub struct BedrockStability {
    model: String,
}

impl BedrockStability {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        assert!(
            model.contains("stability.stable-image-inpaint"),
            "not a Stability inpaint model: {model}"
        );
        BedrockStability { model: model.into() }
    }
}

impl Wire for BedrockStability {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Bedrock
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        provider_entry(name, mock)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        assert_eq!(images.len(), 1, "one image per call");
        mock.push(Reply::json(
            200,
            &json!({"images": [b64(&images[0])], "seeds": [9], "finish_reasons": [null]}),
        ));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let v = check_signed(&recs[0], mock, &sent.model);
        let mut want = json!({"image": b64(&sent.images[0]), "prompt": sent.prompt, "output_format": "png"});
        if sent.mask.is_some() {
            let got = v["mask"].as_str().expect("a converted mask");
            assert_converted_mask(&unb64(got), 255);
            want["mask"] = json!(got);
        }
        assert_eq!(v, want);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Refused { param: "image" },
            mask: Capability::Served,
            streams: Streams::Synthesized,
            refusal: Refusal {
                field: "type",
                value: "outpainting",
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        let message = "Malformed input request: #: required key [prompt] not found";
        mock.push(Reply::json(400, &json!({"message": message})));
        UpstreamError {
            status: 400,
            message: message.into(),
        }
    }
}
