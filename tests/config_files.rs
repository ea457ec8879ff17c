//! The shipped config files validate, the demo config actually serves, and `refract check`
//! reports every problem of a broken file by YAML path with exit code 1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use refract::config::from_yaml_str_with_env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn conf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf")
}

/// The environment conf/refract.yaml documents as required, with fake values.
fn fake_env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-fake-openai-key".into()),
        "REFRACT_VK_TEAM_A" => Some("sk-bf-fake-team-a".into()),
        "REFRACT_ADMIN_KEY" => Some("sk-fake-admin".into()),
        "VERTEX_ACCESS_TOKEN" => Some("ya29.fake-vertex-token".into()),
        "AZURE_OPENAI_API_KEY" => Some("fake-azure-key".into()),
        "GEMINI_API_KEY" => Some("fake-gemini-key".into()),
        "AWS_ACCESS_KEY_ID" => Some("AKIDFAKE".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("fake-aws-secret".into()),
        "STABILITY_API_KEY"
        | "BFL_API_KEY"
        | "FIREWORKS_API_KEY"
        | "REPLICATE_API_TOKEN"
        | "HF_TOKEN"
        | "XAI_API_KEY" => Some(format!("fake-{}", name.to_ascii_lowercase())),
        _ => None,
    }
}

/// Every file in conf/ loads and validates (with the environment it documents).
#[test]
fn every_shipped_config_validates() {
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(conf_dir()).expect("conf/ exists") {
        let path = entry.expect("dir entry").path();
        if !path.is_file() {
            continue;
        }
        let mut text = std::fs::read_to_string(&path).expect("readable");
        if path.file_name().is_some_and(|n| n == "pricing.yaml") {
            // The shipped price table, not a gateway config: a config that names it as its
            // `pricing.file` must load.
            text = format!(
                "pricing:\n  file: {}\nproviders:\n  - name: openai\n    kind: openai\n    keys: [{{name: k, value: sk}}]\n",
                path.display()
            );
        }
        let config = from_yaml_str_with_env(&text, &fake_env)
            .unwrap_or_else(|e| panic!("{} does not validate:\n{e}", path.display()));
        assert!(!config.providers.is_empty(), "{}", path.display());
        assert!(!config.listeners.is_empty(), "{}", path.display());
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    assert!(
        checked.iter().any(|f| f == "demo.yaml") && checked.iter().any(|f| f == "refract.yaml"),
        "{checked:?}"
    );
}

/// conf/refract.yaml names exactly the environment variables it needs when they are unset.
#[test]
fn reference_config_needs_its_env_vars() {
    let text = std::fs::read_to_string(conf_dir().join("refract.yaml")).unwrap();
    let errors = from_yaml_str_with_env(&text, &|_| None).unwrap_err();
    // One problem per `env.NAME` the file uses outside comments, each naming its variable.
    let used: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once("env.").map(|(_, name)| name.trim()))
        .collect();
    assert!(used.len() >= 5, "{used:?}");
    assert_eq!(errors.0.len(), used.len(), "{errors}");
    for name in used {
        assert!(
            errors
                .to_string()
                .contains(&format!("environment variable {name} is not set")),
            "{name}: {errors}"
        );
    }
}

/// The demo config, moved to free ports, serves the request its header comment shows.
#[test]
fn demo_config_serves_its_documented_request() {
    let text = std::fs::read_to_string(conf_dir().join("demo.yaml")).unwrap();
    let (listen, metrics, sim) = (free_addr(), free_addr(), free_addr());
    let yaml = text
        .replace("127.0.0.1:8080", &listen.to_string())
        .replace("127.0.0.1:9091", &metrics.to_string())
        .replace("127.0.0.1:8090", &sim.to_string());
    assert!(yaml.contains(&sim.to_string()) && yaml.contains(&listen.to_string()));
    let config = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    let _server = refract::server::spawn(config).expect("spawn");
    wait_listening(listen);
    wait_listening(sim);
    let mask = refract::imaging::encode_png(&refract::imaging::solid(4, 4, [0, 0, 0, 0])).unwrap();
    // Every model the header comment names (Gemini takes no mask).
    for (model, with_mask) in [
        ("demo/sim-image-1", true),
        ("demo-azure/sim-image-1", true),
        ("demo-gemini/gemini-2.5-flash-image", false),
        ("demo-gemini/imagen-3.0-capability-001", true),
        ("demo-vertex/imagen-3.0-capability-001", true),
        ("demo-vertex/gemini-2.5-flash-image", false),
        ("demo-bedrock/amazon.nova-canvas-v1:0", true),
        ("demo-stability/stable-image-inpaint", true),
        ("demo-xai/grok-imagine-image", false),
        ("demo-huggingface/timbrooks/instruct-pix2pix", false),
        ("demo-bfl/flux-pro-1.0-fill", true),
        ("demo-fireworks/flux-kontext-pro", false),
        ("demo-replicate/black-forest-labs/flux-kontext-pro", false),
    ] {
        assert!(text.contains(model), "demo.yaml's comment names {model}");
        let mut form = Form::new().text("model", model).text("prompt", "paint it").file(
            "image",
            "input.png",
            "image/png",
            &tiny_png(),
        );
        if with_mask {
            form = form.file("mask", "mask.png", "image/png", &mask);
        }
        let mut c = Conn::open(listen);
        c.send(&post_head(
            "/v1/images/edits",
            &[("x-bf-vk", "sk-bf-demo")],
            &form,
            None,
        ));
        c.send(&form.body());
        let r = c.read_response();
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        assert_eq!(v["extra_fields"]["provider"], model.split('/').next().unwrap());
        assert!(v["data"][0]["b64_json"].is_string(), "{v}");
    }
}

fn refract_check(config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_refract"))
        .arg("check")
        .arg("-c")
        .arg(config)
        .env_remove("REFRACT_TEST_SURELY_UNSET")
        .output()
        .expect("run refract")
}

/// `refract check` on a broken file exits 1 and lists each problem by YAML path, no secret shown.
#[test]
fn check_lists_every_problem_by_path() {
    let broken = "\
server:
  thread: 4
limits:
  max_images: many
providers:
  - name: openai
    kind: openai
    base_url: ftp://api.example.com/v1
    keys:
      - name: a
        value: env.REFRACT_TEST_SURELY_UNSET
  - name: openai
    kind: openai
    base_url: https://api.example.com/v1
    keys:
      - name: b
        value: literal-SECRET-upstream-value
virtual_keys:
  - id: v
    key: sk-bf-SECRET-virtual
";
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, broken.as_bytes()).unwrap();
    let out = refract_check(file.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.starts_with(&format!("{}: 5 problem(s):", file.path().display())),
        "{stderr}"
    );
    for line in [
        "  server.thread: unknown key 'thread'",
        "  limits.max_images: expected an integer, found a string",
        "  providers[0].base_url: invalid URL: the scheme must be http or https",
        "  providers[0].keys[0].value: environment variable REFRACT_TEST_SURELY_UNSET is not set",
        "  providers[1].name: duplicate provider name 'openai' (same as providers[0])",
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("SECRET"), "a secret was printed:\n{stderr}");
    assert!(out.stdout.is_empty());
}

/// `refract check` on conf/demo.yaml exits 0 and says ok.
#[test]
fn check_accepts_the_demo_config() {
    let out = refract_check(&conf_dir().join("demo.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.trim_end().ends_with(": ok"), "{stdout}");
}

/// `refract check` on a file that does not exist exits 1 naming it.
#[test]
fn check_reports_a_missing_file() {
    let missing = std::env::temp_dir().join(format!("refract-no-such-config-{}.yaml", std::process::id()));
    let out = refract_check(&missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(file): cannot read"), "{stderr}");
}

/// docs/providers.md's capability table is exactly what `refract providers` prints.
#[test]
fn docs_provider_table_is_generated() {
    let out = Command::new(env!("CARGO_BIN_EXE_refract"))
        .arg("providers")
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    assert!(generated.starts_with("| kind | models |"), "{generated}");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/providers.md")).unwrap();
    let begin = readme.find("<!-- providers:begin -->\n").expect("begin marker") + "<!-- providers:begin -->\n".len();
    let end = readme.find("<!-- providers:end -->").expect("end marker");
    assert_eq!(
        &readme[begin..end],
        generated,
        "docs/providers.md's provider table is stale: paste the output of `cargo run -- providers` between the markers"
    );
}

/// `refract providers -c FILE --json` lists the file's providers as configured (kind, base URL,
/// models, aliases, key count, fallback chains, retries, breaker, timeouts) and never a key:
/// neither a value, nor an AWS credential, nor the environment variable it came from.
#[test]
fn providers_json_lists_the_configured_providers_without_secrets() {
    let yaml = "\
providers:
  - name: main
    kind: openai
    retries: 2
    circuit_breaker: {failures: 3, open_ms: 1000}
    first_byte_timeout_ms: 90000
    keys:
      - {name: a, value: env.REFRACT_TEST_PROVIDERS_KEY_A, models: [gpt-image-1], weight: 3}
      - {name: b, value: literal-SECRET-upstream-b, models: [gpt-image-1, dall-e-2]}
    model_rules:
      - {match: 'gpt-image-*', fallbacks: [az/gpt-image-1, aws/amazon.nova-canvas-v1:0]}
  - name: az
    kind: azure
    base_url: https://res.openai.azure.com
    deployments: {gpt-image-1: prod-image}
    keys: [{name: k, value: env.REFRACT_TEST_PROVIDERS_KEY_AZ}]
  - name: aws
    kind: bedrock
    region: eu-west-1
    keys:
      - {name: iam, aws_access_key_id: AKIDSECRETLITERAL, aws_secret_access_key: env.REFRACT_TEST_PROVIDERS_AWS}
virtual_keys:
  - {id: app, key: sk-bf-SECRET-virtual}
";
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).unwrap();
    let providers_of = |json: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_refract"));
        command.arg("providers");
        if json {
            command.arg("--json");
        }
        command
            .arg("-c")
            .arg(file.path())
            .env("REFRACT_TEST_PROVIDERS_KEY_A", "sk-SECRET-env-a")
            .env("REFRACT_TEST_PROVIDERS_KEY_AZ", "SECRET-azure-env")
            .env("REFRACT_TEST_PROVIDERS_AWS", "SECRET-aws-env")
            .output()
            .expect("run refract")
    };
    let out = providers_of(true);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for leak in ["SECRET", "REFRACT_TEST_PROVIDERS", "AKID", "env."] {
        assert!(!stdout.contains(leak), "{leak:?} leaked:\n{stdout}");
    }
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let providers = doc["providers"].as_array().unwrap();
    let names: Vec<&str> = providers.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["main", "az", "aws"]);
    let main = &providers[0];
    assert_eq!(main["kind"], "openai");
    assert_eq!(main["base_url"], "https://api.openai.com/v1");
    assert_eq!(main["models"], serde_json::json!(["gpt-image-1", "dall-e-2"]));
    assert_eq!(main["keys"], 2);
    assert_eq!(
        main["key_names"],
        serde_json::json!([{"name": "a", "weight": 3.0}, {"name": "b", "weight": 1.0}])
    );
    assert_eq!(
        main["fallbacks"],
        serde_json::json!([{"match": "gpt-image-*", "fallbacks": ["az/gpt-image-1", "aws/amazon.nova-canvas-v1:0"]}])
    );
    assert_eq!(main["retries"], 2);
    assert_eq!(
        main["circuit_breaker"],
        serde_json::json!({"failures": 3, "open_ms": 1000})
    );
    assert_eq!(main["timeouts_ms"]["first_byte"], 90000);
    assert_eq!(main["timeouts_ms"]["total"], 600000);
    assert_eq!(main["polled"], false);
    let az = &providers[1];
    assert_eq!(az["kind"], "azure");
    assert_eq!(az["base_url"], "https://res.openai.azure.com");
    assert_eq!(az["deployments"], serde_json::json!({"gpt-image-1": "prod-image"}));
    assert_eq!(az["models"], serde_json::json!(["*"]));
    assert_eq!(az["circuit_breaker"], serde_json::Value::Null);
    let aws = &providers[2];
    assert_eq!(aws["kind"], "bedrock");
    assert_eq!(aws["base_url"], "https://bedrock-runtime.eu-west-1.amazonaws.com");
    assert_eq!(aws["keys"], 1);

    // Without --json: the same providers as a Markdown table, one row each, no secret either.
    let table = providers_of(false);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(!table.contains("SECRET") && !table.contains("AKID"), "{table}");
    assert!(table.starts_with("| provider | kind |"), "{table}");
    assert!(
        table.contains("| main | `openai` | https://api.openai.com/v1 | gpt-image-1, dall-e-2 | 2 | gpt-image-*: az/gpt-image-1, aws/amazon.nova-canvas-v1:0 | 2 | 3 failures, open 1000 ms |"),
        "{table}"
    );
    assert!(table.contains("gpt-image-1 → prod-image"), "{table}");
    assert_eq!(table.lines().count(), 2 + 3, "{table}");
}

/// `refract providers --json` without a config: one object per kind and model family, the
/// same rows as the Markdown table, every kind present.
#[test]
fn providers_json_without_config_lists_every_kind() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_refract"))
            .args(args)
            .output()
            .expect("run refract");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let rows: Vec<serde_json::Value> = serde_json::from_str(&run(&["providers", "--json"])).unwrap();
    let table = run(&["providers"]);
    assert_eq!(rows.len(), table.lines().count() - 2, "one JSON row per table row");
    for kind in refract::config::ProviderKind::ALL {
        assert!(
            rows.iter().any(|r| r["kind"] == kind.as_str()),
            "{} missing",
            kind.as_str()
        );
    }
    let openai = rows.iter().find(|r| r["kind"] == "openai").unwrap();
    assert_eq!(openai["mask"], true);
    assert_eq!(openai["max_n"], 10);
    assert_eq!(openai["stream"], "native");
}

/// `refract providers | head -1`: a reader that leaves early ends the command quietly (exit 0,
/// no panic), as it does for any Unix tool.
#[test]
fn providers_output_to_a_closed_pipe_is_not_a_panic() {
    use std::process::Stdio;
    for args in [&["providers"][..], &["providers", "--json"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_refract"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end at once: the command's first write meets a closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
