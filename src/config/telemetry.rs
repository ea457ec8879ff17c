//! The `log` and `tracing` sections: how the gateway logs (level, text or JSON lines,
//! per-module filters) and where it sends its traces (OTLP/HTTP). Read at startup by
//! `main.rs` (see `crate::telemetry`); a reload applies a changed `log` level and filters.

use super::fields::{child, type_error, Fields, Problems};
use serde_yaml::Value;

/// A log level, as written in `log.level` and `log.filters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `error`
    Error,
    /// `warn`
    Warn,
    /// `info`
    Info,
    /// `debug`
    Debug,
    /// `trace`
    Trace,
}

impl LogLevel {
    const NAMES: [(&'static str, LogLevel); 5] = [
        ("error", LogLevel::Error),
        ("warn", LogLevel::Warn),
        ("info", LogLevel::Info),
        ("debug", LogLevel::Debug),
        ("trace", LogLevel::Trace),
    ];

    /// Its name in the config (and in an `EnvFilter` directive).
    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, level)| *level == self)
            .map_or("info", |(name, _)| name)
    }

    fn parse(text: &str) -> Option<LogLevel> {
        Self::NAMES
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, level)| *level)
    }
}

/// How log lines are written (`log.format`), on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `text`: a human-readable line, fields as `key=value`.
    Text,
    /// `json`: one JSON object per line.
    Json,
}

impl LogFormat {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The `log` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The level of every module without a filter of its own (`info`).
    pub level: LogLevel,
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// Per-module levels, by target or module path (`pingora_core: warn`), in file order.
    pub filters: Vec<(String, LogLevel)>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: LogLevel::Info,
            format: LogFormat::Text,
            filters: Vec::new(),
        }
    }
}

impl LogSettings {
    /// The `EnvFilter` directives these settings mean: `level,target=level,…`.
    pub fn directives(&self) -> String {
        let mut out = self.level.as_str().to_string();
        for (target, level) in &self.filters {
            out.push(',');
            out.push_str(target);
            out.push('=');
            out.push_str(level.as_str());
        }
        out
    }
}

/// The `tracing` section, when it names an `otlp_endpoint` (otherwise no traces are made).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans are POSTed, OTLP/HTTP protobuf (`http://127.0.0.1:4318/v1/traces`).
    pub otlp_endpoint: String,
    /// The share of new traces recorded, 0..=1 (default 1); parent-based: a client's sampled
    /// `traceparent` is always honoured, an unsampled one never.
    pub sample_ratio: f64,
    /// The `service.name` resource attribute (default `refract`).
    pub service_name: String,
}

/// The `log` section (absent = the defaults).
pub(super) fn log(mut f: Fields<'_>) -> LogSettings {
    let d = LogSettings::default();
    let level = match f.opt_str("level") {
        Some(text) => level_of(f.problems(), &f.path_of("level"), text).unwrap_or(d.level),
        None => d.level,
    };
    let format = match f.opt_str("format") {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            f.report("format", format!("unknown format '{other}' (allowed: text, json)"));
            d.format
        }
    };
    let filters = filters(&mut f);
    f.finish();
    LogSettings { level, format, filters }
}

/// `log.filters`: a mapping of targets to levels.
fn filters(f: &mut Fields<'_>) -> Vec<(String, LogLevel)> {
    let Some(value) = f.get("filters") else {
        return Vec::new();
    };
    let Value::Mapping(map) = value else {
        f.report("filters", type_error("a mapping", value));
        return Vec::new();
    };
    let path = f.path_of("filters");
    let problems = f.problems();
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(target) = k.as_str() else {
            f.report("filters", "keys must be strings (module paths)");
            continue;
        };
        let valid_target = !target.is_empty()
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.'));
        if !valid_target {
            problems.add(
                &child(&path, target),
                "must be a module path or log target (letters, digits, _ : - .)",
            );
            continue;
        }
        match v {
            Value::String(text) => {
                if let Some(level) = level_of(problems, &child(&path, target), text) {
                    out.push((target.to_string(), level));
                }
            }
            other => problems.add(
                &child(&path, target),
                type_error("a level (error, warn, info, debug, trace)", other),
            ),
        }
    }
    out
}

/// `text` as a level, or `None` (reported at `path`).
fn level_of(problems: &Problems, path: &str, text: &str) -> Option<LogLevel> {
    let level = LogLevel::parse(text);
    if level.is_none() {
        problems.add(
            path,
            format!("unknown level '{text}' (allowed: error, warn, info, debug, trace)"),
        );
    }
    level
}

/// The `tracing` section: `None` when absent or without an `otlp_endpoint`.
pub(super) fn tracing(mut f: Fields<'_>) -> Option<TracingSettings> {
    let endpoint = f.opt_str("otlp_endpoint").and_then(|text| match url::Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Some(text.to_string()),
        Ok(_) => {
            f.report("otlp_endpoint", "must be an http:// or https:// URL with a host");
            None
        }
        Err(e) => {
            f.report("otlp_endpoint", format!("not a URL: {e}"));
            None
        }
    });
    let sample_ratio = match f.get("sample_ratio") {
        None => 1.0,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (0.0..=1.0).contains(&v) => v,
            _ => {
                f.report("sample_ratio", format!("must be between 0 and 1, found {n}"));
                1.0
            }
        },
        Some(other) => {
            f.report("sample_ratio", type_error("a number", other));
            1.0
        }
    };
    let service_name = f.opt_str("service_name").unwrap_or("refract").to_string();
    f.finish();
    endpoint.map(|otlp_endpoint| TracingSettings {
        otlp_endpoint,
        sample_ratio,
        service_name,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{ok, one_problem, PROVIDER};
    use super::*;

    #[test]
    fn defaults_when_absent() {
        let c = ok(PROVIDER);
        assert_eq!(c.log, LogSettings::default());
        assert_eq!(c.log.directives(), "info");
        assert!(c.tracing.is_none());
    }

    #[test]
    fn log_and_tracing_are_read() {
        let c = ok(&format!(
            "log:\n  level: debug\n  format: json\n  filters:\n    pingora_core: warn\n    refract::access: info\n\
             tracing:\n  otlp_endpoint: http://127.0.0.1:4318/v1/traces\n  sample_ratio: 0.25\n  service_name: edge\n{PROVIDER}"
        ));
        assert_eq!(c.log.level, LogLevel::Debug);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.directives(), "debug,pingora_core=warn,refract::access=info");
        let t = c.tracing.unwrap();
        assert_eq!(t.otlp_endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(t.sample_ratio, 0.25);
        assert_eq!(t.service_name, "edge");
    }

    #[test]
    fn tracing_without_endpoint_is_off() {
        let c = ok(&format!("tracing:\n  sample_ratio: 1\n{PROVIDER}"));
        assert!(c.tracing.is_none());
    }

    #[test]
    fn problems_have_paths() {
        one_problem(
            &format!("log:\n  level: loud\n{PROVIDER}"),
            "log.level",
            "unknown level 'loud'",
        );
        one_problem(
            &format!("log:\n  format: xml\n{PROVIDER}"),
            "log.format",
            "unknown format",
        );
        one_problem(&format!("log:\n  colour: red\n{PROVIDER}"), "log.colour", "unknown key");
        one_problem(
            &format!("log:\n  filters:\n    pingora_core: chatty\n{PROVIDER}"),
            "log.filters.pingora_core",
            "unknown level",
        );
        one_problem(
            &format!("log:\n  filters:\n    \"a=b\": info\n{PROVIDER}"),
            "log.filters.a=b",
            "module path",
        );
        one_problem(&format!("log:\n  filters: [1]\n{PROVIDER}"), "log.filters", "a mapping");
        one_problem(
            &format!("tracing:\n  otlp_endpoint: ftp://x/v1/traces\n{PROVIDER}"),
            "tracing.otlp_endpoint",
            "http://",
        );
        one_problem(
            &format!("tracing:\n  otlp_endpoint: http://x:4318/v1/traces\n  sample_ratio: 2\n{PROVIDER}"),
            "tracing.sample_ratio",
            "between 0 and 1",
        );
        one_problem(
            &format!("tracing:\n  otlp_endpoint: http://x:4318/v1/traces\n  endpoint: x\n{PROVIDER}"),
            "tracing.endpoint",
            "unknown key",
        );
    }
}
