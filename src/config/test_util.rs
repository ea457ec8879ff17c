//! Helpers shared by the tests of the config walker (`parse.rs`,
//! `providers.rs`).

use super::{from_yaml_str_with_env, Config, ConfigErrors};

pub(super) fn env(name: &str) -> Option<String> {
    match name {
        "KEY_A" => Some("sk-a-SECRET".to_string()),
        "VK_1" => Some("vk-1-SECRET".to_string()),
        "URL_SECRET" => Some("url-secret-of-32-bytes-for-hmac!".to_string()),
        _ => None,
    }
}

/// A valid provider section, to which a test appends its own lines.
pub(super) const PROVIDER: &str = "
providers:
  - name: openai
    kind: openai
    base_url: https://api.openai.com/v1
    keys:
      - name: primary
        value: env.KEY_A
";

pub(super) fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    from_yaml_str_with_env(yaml, &env)
}

pub(super) fn ok(yaml: &str) -> Config {
    load(yaml).unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
}

/// The problems as `path: message` lines.
pub(super) fn problems(yaml: &str) -> Vec<String> {
    match load(yaml) {
        Ok(_) => panic!("expected problems in:\n{yaml}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one problem, at `path`, whose message contains `fragment`.
pub(super) fn one_problem(yaml: &str, path: &str, fragment: &str) {
    let errors = load(yaml).expect_err("expected a problem");
    assert_eq!(errors.0.len(), 1, "expected one problem, got:\n{errors}");
    assert_eq!(errors.0[0].path, path, "{errors}");
    assert!(errors.0[0].message.contains(fragment), "{errors}");
}
