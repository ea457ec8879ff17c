//! Kind `azure` end to end: a real gateway in this process in front of a strict mock of Azure
//! OpenAI (path, api-version, deployment, `api-key` header, the multipart body byte for byte),
//! and in front of the built-in simulator for a streamed edit.
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on it in `tests/conformance`; this file keeps what is
//! specific to its wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::wire::azure::check_azure_request;
use common::*;
use refract::codec::sse::SseDecoder;
use serde_json::{json, Value};

const AZURE_KEY: &str = "azure-KEY-0123456789abcdef";
const ENTRA_TOKEN: &str = "entra-TOKEN-eyJ0eXAiOiJKV1Qi";

/// A gateway with provider `az` (deployments API, key auth) and `az1` (v1 API, Entra token),
/// both pointing at `mock`.
fn azure_gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: az
    kind: azure
    base_url: http://{addr}
    api_version: 2025-04-01-preview
    deployments:
      gpt-image-1: prod-image-deploy
    keys:
      - {{name: k, value: {AZURE_KEY}}}
  - name: az1
    kind: azure
    base_url: http://{addr}/openai/v1
    keys:
      - {{name: entra, value: {ENTRA_TOKEN}, auth: bearer}}
",
        addr = mock.addr
    );
    Gateway::start(&setup)
}

#[test]
fn deployments_api_with_api_key() {
    let mock = MockUpstream::start();
    let gw = azure_gateway(&mock);
    // Large enough (and `model` first) to be streamed upstream while it arrives.
    let image = big_png_like(300_000, 7);
    // OpenAI's convention (transparent = edit), so it goes as uploaded (an opaque mask is
    // converted to it: tests/conformance, azure::white_edit_mask).
    let mask = refract::imaging::encode_png(&refract::imaging::solid(4, 4, [0, 0, 0, 0])).unwrap();
    let form = Form::new()
        .text("model", "az/gpt-image-1")
        .text("prompt", "a red hat")
        .text("n", "2")
        .text("size", "1024x1024")
        .file("image", "in.png", "image/png", &image)
        .file("mask", "m.png", "image/png", &mask);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_azure_request(
        &mock.only_request(),
        "/openai/deployments/prod-image-deploy/images/edits?api-version=2025-04-01-preview",
        ("api-key", AZURE_KEY),
    );
    assert_eq!(parts_named(&parts, "model")[0].text(), "prod-image-deploy");
    assert_eq!(parts_named(&parts, "prompt")[0].text(), "a red hat");
    assert_eq!(parts_named(&parts, "n")[0].text(), "2");
    assert_eq!(parts_named(&parts, "image")[0].data, image, "the image byte for byte");
    assert_eq!(parts_named(&parts, "mask")[0].data, mask, "the mask byte for byte");
    let v = r.json();
    assert_eq!(v["data"][0]["b64_json"], "aW1hZ2UtMA==");
    assert_eq!(v["extra_fields"]["provider"], "az");
    assert_eq!(v["extra_fields"]["model_requested"], "gpt-image-1");
}

#[test]
fn v1_api_with_entra_token() {
    let mock = MockUpstream::start();
    let gw = azure_gateway(&mock);
    let image = tiny_png();
    let form =
        Form::new()
            .text("model", "az1/my-deploy")
            .text("prompt", "p")
            .file("image", "in.png", "image/png", &image);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_azure_request(
        &mock.only_request(),
        "/openai/v1/images/edits",
        ("authorization", &format!("Bearer {ENTRA_TOKEN}")),
    );
    assert_eq!(parts_named(&parts, "model")[0].text(), "my-deploy");
    assert_eq!(parts_named(&parts, "image")[0].data, image);
}

#[test]
fn content_filter_error_keeps_its_details() {
    let mock = MockUpstream::start();
    let gw = azure_gateway(&mock);
    mock.push(Reply::json(
        400,
        &json!({"error": {"code": "contentFilter", "message": "Your request was filtered", "param": "prompt", "type": null,
            "inner_error": {"code": "ResponsibleAIPolicyViolation", "content_filter_results": {"violence": {"filtered": true, "severity": "high"}}}}}),
    ));
    let form = Form::new().text("model", "az/gpt-image-1").text("prompt", "p").file(
        "image",
        "in.png",
        "image/png",
        &tiny_png(),
    );
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["is_bifrost_error"], false);
    assert_eq!(v["error"]["code"], "contentFilter");
    assert_eq!(v["error"]["message"], "Your request was filtered");
    assert_eq!(
        v["error"]["inner_error"]["content_filter_results"]["violence"]["severity"],
        "high"
    );
}

/// A streamed edit through an Azure provider backed by the simulator: partials then the
/// completed image, in order, well framed.
#[test]
fn streaming_through_azure() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.extra_providers =
        "  - name: az\n    kind: azure\n    base_url: http://{sim}\n    keys:\n      - {name: k, value: sim-azure-key}\n".into();
    let gw = Gateway::start(&setup);
    let form = Form::new()
        .text("model", "az/sim-image-1")
        .text("prompt", "stream me")
        .text("stream", "true")
        .text("partial_images", "2")
        .file("image", "in.png", "image/png", &tiny_png());
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).unwrap();
    assert_eq!(d.finish(), 0);
    let names: Vec<_> = evs.iter().map(|e| e.event.clone().unwrap_or_default()).collect();
    assert_eq!(
        names,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed"
        ]
    );
    for (i, e) in evs.iter().enumerate() {
        let v: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(v["sequence_number"], i as u64);
        assert_eq!(v["extra_fields"]["provider"], "az");
    }
}
