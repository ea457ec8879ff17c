//! The OpenAI-shaped inbound routes besides `/v1`: Bifrost's OpenAI base without `/v1`, the
//! framework prefixes (`/litellm`, `/langchain`, `/pydanticai`), Azure OpenAI's deployment path
//! and the models list, end to end: a real gateway in this process in front of the scripted mock
//! upstream, driven by a raw HTTP/1.1 client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use refract::codec::sse::SseDecoder;
use serde_json::Value;

const AZURE_KEY: &str = "azure-provider-key-routes";

/// The bases an OpenAI client may be pointed at, besides the root.
const BASES: [&str; 4] = ["/openai", "/litellm", "/langchain", "/pydanticai"];

/// A gateway in front of `mock`, with an Azure provider `az` whose `gpt-image-1` is deployed as
/// `prod-image`, a key serving only `gpt-image-1`.
fn gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: az
    kind: azure
    base_url: http://{addr}
    api_version: 2024-02-01
    deployments:
      gpt-image-1: prod-image
    keys:
      - {{name: k, value: {AZURE_KEY}, models: [gpt-image-1]}}
",
        addr = mock.addr
    );
    Gateway::start(&setup)
}

/// POSTs `form` to `path` with `headers` on a new connection and reads the answer.
fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], form: &Form) -> Response {
    let mut c = gw.connect();
    c.send(&post_head(path, headers, form, None));
    c.send(&form.body());
    c.read_response()
}

/// Checks an error answer: its status and Bifrost's shape with `code`.
fn assert_error(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["is_bifrost_error"], true, "{body}");
    assert_eq!(body["status_code"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body
}

/// The ids of a models list answer, after checking OpenAI's list shape.
fn listed(r: &Response) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let body = r.json();
    assert_eq!(body["object"], "list", "{body}");
    let data = body["data"].as_array().expect("data");
    data.iter()
        .map(|m| {
            assert_eq!(m["object"], "model", "{m}");
            assert!(m["created"].is_u64(), "{m}");
            let id = m["id"].as_str().expect("id").to_string();
            assert_eq!(m["owned_by"].as_str(), id.split('/').next(), "{m}");
            id
        })
        .collect()
}

#[test]
fn every_openai_base_serves_edits_with_and_without_v1() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    let mut paths = vec!["/openai/images/edits".to_string()];
    for base in &BASES[1..] {
        paths.push(format!("{base}/v1/images/edits"));
        paths.push(format!("{base}/images/edits"));
    }
    for path in &paths {
        let r = post(&gw, path, &[("authorization", &format!("Bearer {VK}"))], &valid_form());
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["data"][0]["b64_json"], "aW1hZ2UtMA==", "{path}");
        assert_eq!(body["extra_fields"]["provider"], "openai", "{path}");
    }
    let seen = mock.requests();
    assert_eq!(seen.len(), paths.len());
    for rec in seen {
        assert_eq!(rec.path, "/v1/images/edits");
        assert_eq!(parts_named(&rec.parts(), "model")[0].text(), "gpt-image-1");
    }
    // Each base is a route label: one edit on /openai, two on each framework base.
    let r = post(
        &gw,
        "/v1/images/edits",
        &[("authorization", &format!("Bearer {VK}"))],
        &valid_form(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for (route, n) in [
        ("openai", 1.0),
        ("litellm", 2.0),
        ("langchain", 2.0),
        ("pydanticai", 2.0),
        ("v1", 1.0),
    ] {
        assert_eq!(
            gw.metric_settled(&format!(
                "refract_route_requests_total{{route=\"{route}\",status=\"200\"}}"
            )),
            n,
            "{route}"
        );
    }
}

/// Under every base, a stream is framed as OpenAI's: image events, then `data: [DONE]`.
#[test]
fn every_openai_base_streams_in_openai_framing() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    for base in BASES {
        let path = format!("{base}/v1/images/edits");
        let form = valid_form().text("stream", "true");
        let r = post(&gw, &path, &[("x-bf-vk", VK)], &form);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
        let mut events = Vec::new();
        SseDecoder::new().feed(&r.body, &mut events).expect("an event stream");
        let names: Vec<Option<&str>> = events.iter().map(|e| e.event.as_deref()).collect();
        assert_eq!(
            names,
            [Some("image_edit.completed"), Some("image_edit.completed"), None],
            "{path}"
        );
        assert_eq!(events[2].data, "[DONE]", "{path}");
    }
    // The root keeps Bifrost's framing: no [DONE].
    let r = post(
        &gw,
        "/v1/images/edits",
        &[("x-bf-vk", VK)],
        &valid_form().text("stream", "true"),
    );
    assert!(!r.text().contains("[DONE]"), "{}", r.text());
}

#[test]
fn unknown_sub_paths_are_404_and_wrong_methods_405_in_bifrost_shape() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    for base in BASES {
        for path in [
            format!("{base}/v1/chat/completions"),
            format!("{base}/v1/images/generations"),
            format!("{base}/images/edits/more"),
            format!("{base}/openai/deployments/d/chat/completions"),
        ] {
            let r = post(&gw, &path, &[("x-bf-vk", VK)], &valid_form());
            assert_error(&r, 404, "not_found");
        }
        let r = Gateway::call(gw.addr, "GET", &format!("{base}/images/edits"), &[("x-bf-vk", VK)]);
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow").as_deref(), Some("POST"));
        let r = Gateway::call(gw.addr, "POST", &format!("{base}/v1/models"), &[("x-bf-vk", VK)]);
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow").as_deref(), Some("GET"));
    }
    // Async image edits: at the root and under /openai, not under the framework prefixes.
    for base in ["/litellm", "/langchain", "/pydanticai"] {
        let r = post(
            &gw,
            &format!("{base}/v1/async/images/edits"),
            &[("x-bf-vk", VK)],
            &valid_form(),
        );
        assert_error(&r, 404, "not_found");
    }
    assert_eq!(mock.received(), 0, "no route may reach the provider");
}

/// `/openai/async/images/edits` is `/openai/v1/async/images/edits`: a job, then its result.
#[test]
fn openai_base_without_v1_submits_and_polls_jobs() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    let r = post(&gw, "/openai/async/images/edits", &[("x-bf-vk", VK)], &valid_form());
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().expect("job id").to_string();
    let mut last = None;
    wait_until("the job completes", || {
        let r = Gateway::call(
            gw.addr,
            "GET",
            &format!("/openai/async/images/edits/{id}"),
            &[("x-bf-vk", VK)],
        );
        let done = r.status == 200;
        last = Some(r);
        done
    });
    let body = last.unwrap().json();
    assert_eq!(body["status"], "completed", "{body}");
}

#[test]
fn models_list_what_the_key_may_use_under_every_base() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let mut paths = vec!["/v1/models".to_string(), "/models".to_string()];
    for base in BASES {
        paths.push(format!("{base}/v1/models"));
        paths.push(format!("{base}/models"));
    }
    for path in &paths {
        // team-a may use everything: the models the config names (openai's keys serve any
        // model, so none is named there).
        let r = Gateway::call(gw.addr, "GET", path, &[("authorization", &format!("Bearer {VK}"))]);
        assert_eq!(listed(&r), ["az/gpt-image-1"], "{path}");
        // restricted may use openai/gpt-image-1 only, which its own entry names.
        let r = Gateway::call(gw.addr, "GET", path, &[("x-api-key", VK_RESTRICTED)]);
        assert_eq!(listed(&r), ["openai/gpt-image-1"], "{path}");
        let r = Gateway::call(gw.addr, "GET", path, &[]);
        assert_error(&r, 401, "virtual_key_required");
        let r = Gateway::call(gw.addr, "GET", path, &[("x-bf-vk", VK_DISABLED)]);
        assert_eq!(r.status, 401, "{}", r.text());
    }
}

#[test]
fn one_model_by_its_encoded_id() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let get = |path: &str, key: &str| Gateway::call(gw.addr, "GET", path, &[("x-bf-vk", key)]);
    for path in [
        "/v1/models/openai%2Fgpt-image-1",
        "/litellm/models/openai%2Fgpt-image-1",
    ] {
        let r = get(path, VK_RESTRICTED);
        assert_eq!(r.status, 200, "{}", r.text());
        let m = r.json();
        assert_eq!(
            (m["id"].as_str(), m["object"].as_str()),
            (Some("openai/gpt-image-1"), Some("model"))
        );
        assert_eq!(m["owned_by"], "openai");
    }
    // Any model of a provider whose keys serve any, for a key that may use it.
    assert_eq!(get("/v1/models/openai%2Fdall-e-2", VK).status, 200);
    for (path, key) in [
        ("/v1/models/openai%2Fdall-e-2", VK_RESTRICTED),
        ("/v1/models/az%2Fdall-e-2", VK),
        ("/v1/models/nope%2Fm", VK),
        ("/v1/models/no-provider", VK),
        ("/v1/models/bad%zz", VK),
    ] {
        assert_error(&get(path, key), 404, "model_not_found");
    }
    assert_error(
        &Gateway::call(gw.addr, "GET", "/v1/models/openai%2Fgpt-image-1", &[]),
        401,
        "virtual_key_required",
    );
}

/// Azure OpenAI's deployment path, as `AzureOpenAI(azure_endpoint=<gateway>)` sends it: the
/// deployment names the model (an alias from `deployments`), whatever the form's `model` says;
/// the key comes in `api-key`.
#[test]
fn azure_deployment_path_routes_by_the_deployment() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    let form = Form::new()
        .text("model", "what-the-form-says")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &tiny_png());
    for path in [
        "/openai/deployments/prod-image/images/edits?api-version=2025-04-01-preview",
        // Bifrost's documented form, azure_endpoint=<gateway>/openai.
        "/openai/openai/deployments/prod-image/images/edits?api-version=2025-04-01-preview",
        "/litellm/openai/deployments/gpt-image-1/images/edits",
    ] {
        let r = post(&gw, path, &[("api-key", VK)], &form);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let body = r.json();
        assert_eq!(body["extra_fields"]["provider"], "az", "{body}");
        let rec = mock.requests().pop().unwrap();
        assert_eq!(
            rec.path,
            "/openai/deployments/prod-image/images/edits?api-version=2024-02-01"
        );
        assert_eq!(rec.header("api-key").as_deref(), Some(AZURE_KEY));
        // Azure's adapter names the deployment as the model; never the form's `model`.
        assert_eq!(parts_named(&rec.parts(), "model")[0].text(), "prod-image");
    }
}

/// A `provider/model` deployment (URL-encoded, as the SDK sends it) overrides the form's model.
#[test]
fn a_provider_model_deployment_overrides_the_forms_model() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    let form = Form::new()
        .text("prompt", "make it blue")
        .text("model", "other/dall-e-2")
        .file("image", "in.png", "image/png", &tiny_png());
    let r = post(
        &gw,
        "/openai/deployments/openai%2Fgpt-image-1/images/edits?api-version=x",
        &[("authorization", &format!("Bearer {VK}"))],
        &form,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "openai");
    let rec = mock.only_request();
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}")));
    assert_eq!(parts_named(&rec.parts(), "model")[0].text(), "gpt-image-1");
}

#[test]
fn azure_deployment_path_refusals() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let path = |d: &str| format!("/openai/deployments/{d}/images/edits?api-version=2024-02-01");
    // No key: 401 before the deployment is looked at.
    assert_error(
        &post(&gw, &path("unknown"), &[], &valid_form()),
        401,
        "virtual_key_required",
    );
    assert_error(
        &post(&gw, &path("unknown"), &[("api-key", VK)], &valid_form()),
        404,
        "deployment_not_found",
    );
    // The restricted key may use openai/gpt-image-1 only.
    assert_error(
        &post(&gw, &path("prod-image"), &[("api-key", VK_RESTRICTED)], &valid_form()),
        403,
        "provider_blocked",
    );
    assert_error(
        &post(&gw, &path("nope%2Fm"), &[("api-key", VK)], &valid_form()),
        400,
        "unknown_provider",
    );
    let r = Gateway::call(gw.addr, "GET", &path("prod-image"), &[("api-key", VK)]);
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(mock.received(), 0);
}

/// A large upload on the deployment path streams upstream from its first part (the model is
/// known from the path), and arrives byte for byte.
#[test]
fn a_large_upload_on_the_deployment_path_streams_upstream() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.always(Reply::json(200, &default_success()));
    let image = big_png_like(600_000, 3);
    let form = Form::new()
        .text("prompt", "make it blue")
        .file("image", "big.png", "image/png", &image)
        .text("model", "ignored");
    let r = post(
        &gw,
        "/openai/deployments/prod-image/images/edits",
        &[("api-key", VK)],
        &form,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_eq!(
        rec.header("transfer-encoding").as_deref(),
        Some("chunked"),
        "streamed upstream"
    );
    let parts = rec.parts();
    assert_eq!(parts_named(&parts, "model")[0].text(), "prod-image");
    let sent = parts
        .iter()
        .find(|p| p.data.len() == image.len())
        .expect("the image part");
    assert!(sent.data == image, "the image must arrive byte for byte");
}
