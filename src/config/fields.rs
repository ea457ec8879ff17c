//! The small toolkit the config walker is built from: a problem collector,
//! YAML path helpers, and [`Fields`], a view of one YAML mapping that hands
//! out typed values and, when finished, reports every key nobody asked for.
//!
//! Every getter reports what is wrong with a value to the shared [`Problems`]
//! and returns a harmless fallback (a default or `None`), so the walker
//! carries on and finds every problem in one pass.

use std::cell::RefCell;
use std::ops::RangeInclusive;
use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::{ConfigProblem, Secret};

/// Collects problems while the configuration is walked. Shared by reference
/// between all [`Fields`] views, hence the interior mutability.
#[derive(Debug, Default)]
pub(super) struct Problems(RefCell<Vec<ConfigProblem>>);

impl Problems {
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Records one problem at `path` (the empty path is shown as `(root)`).
    pub(super) fn add(&self, path: &str, message: impl Into<String>) {
        let path = if path.is_empty() { "(root)" } else { path };
        self.0.borrow_mut().push(ConfigProblem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// How many problems so far; comparing counts tells whether a getter
    /// accepted its value.
    pub(super) fn len(&self) -> usize {
        self.0.borrow().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }

    pub(super) fn into_vec(self) -> Vec<ConfigProblem> {
        self.0.into_inner()
    }
}

/// `parent.key`, or just `key` at the top level.
pub(super) fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent[index]`.
pub(super) fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// What a YAML value is, for "expected X, found Y" messages. Never includes
/// the value itself, which may be a secret.
pub(super) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a floating-point number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value (!tag)",
    }
}

/// "expected `what`, found ..." with a hint for values YAML typed
/// differently from what the user probably meant.
pub(super) fn type_error(what: &str, found: &Value) -> String {
    let hint = match found {
        Value::Number(_) | Value::Bool(_) if what == "a string" => " (quote it to make it a string)",
        Value::String(s) if what == "a boolean" && is_bool_word(s) => " (write true or false)",
        _ => "",
    };
    format!("expected {what}, found {}{hint}", kind_of(found))
}

fn is_bool_word(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    matches!(s.as_str(), "yes" | "no" | "on" | "off" | "y" | "n")
}

/// Edit distance between two short strings (keys, names), for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo
/// (or `word` is a prefix of it, like `grace_period` for `grace_period_seconds`).
pub(super) fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_ascii_lowercase();
    let limit = (1 + word.chars().count() / 4).min(3);
    candidates
        .into_iter()
        .filter_map(|c| {
            let d = distance(&lower, c);
            let close = d <= limit || (lower.len() >= 4 && c.starts_with(lower.as_str()));
            close.then_some((d, c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean 'x'?` or nothing.
pub(super) fn did_you_mean<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    suggest(word, candidates).map_or_else(String::new, |s| format!("; did you mean '{s}'?"))
}

/// One YAML mapping being read, with its path. Getters record which keys were
/// asked for; [`Fields::finish`] (or dropping it) reports the others as
/// unknown. When the value was not a mapping at all (already reported), every
/// getter quietly returns its fallback so one mistake is reported once.
pub(super) struct Fields<'a> {
    path: String,
    map: Option<&'a Mapping>,
    wrong_type: bool,
    asked: Vec<&'static str>,
    problems: &'a Problems,
    finished: bool,
}

impl<'a> Fields<'a> {
    /// Views `value` (at `path`) as a mapping. `null` is an empty mapping;
    /// any other non-mapping is reported.
    pub(super) fn new(value: &'a Value, path: impl Into<String>, problems: &'a Problems) -> Self {
        let mut fields = Self::empty(path, problems);
        match value {
            Value::Mapping(m) => fields.map = Some(m),
            Value::Null => {}
            other => {
                problems.add(&fields.path, type_error("a mapping", other));
                fields.wrong_type = true;
            }
        }
        fields
    }

    /// A view with no keys: every getter returns its default.
    pub(super) fn empty(path: impl Into<String>, problems: &'a Problems) -> Self {
        Fields {
            path: path.into(),
            map: None,
            wrong_type: false,
            asked: Vec::new(),
            problems,
            finished: false,
        }
    }

    /// The path of this mapping, e.g. `providers[0]`.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    /// The path of one of its keys, e.g. `providers[0].name`.
    pub(super) fn path_of(&self, key: &str) -> String {
        child(&self.path, key)
    }

    pub(super) fn problems(&self) -> &'a Problems {
        self.problems
    }

    /// Reports a problem about `key` of this mapping.
    pub(super) fn report(&self, key: &str, message: impl Into<String>) {
        self.problems.add(&self.path_of(key), message);
    }

    /// The value of `key`, `None` when absent or null. Marks `key` as known.
    pub(super) fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        match self.map?.get(key)? {
            Value::Null => None,
            v => Some(v),
        }
    }

    /// Whether `key` is present with a non-null value. Marks `key` as known.
    pub(super) fn has(&mut self, key: &'static str) -> bool {
        self.get(key).is_some()
    }

    /// Reports `key` as missing, unless this view had the wrong type (then
    /// that one problem is enough).
    pub(super) fn missing(&self, key: &str) {
        if !self.wrong_type {
            self.report(key, "missing required key");
        }
    }

    /// A required value: reports it when missing.
    pub(super) fn req(&mut self, key: &'static str) -> Option<&'a Value> {
        let value = self.get(key);
        if value.is_none() {
            self.missing(key);
        }
        value
    }

    fn as_str(&self, key: &str, value: &'a Value) -> Option<&'a str> {
        match value {
            Value::String(s) if s.is_empty() => {
                self.report(key, "must not be empty");
                None
            }
            Value::String(s) => Some(s),
            other => {
                self.report(key, type_error("a string", other));
                None
            }
        }
    }

    /// A required non-empty string.
    pub(super) fn req_str(&mut self, key: &'static str) -> Option<&'a str> {
        let value = self.req(key)?;
        self.as_str(key, value)
    }

    /// An optional non-empty string.
    pub(super) fn opt_str(&mut self, key: &'static str) -> Option<&'a str> {
        let value = self.get(key)?;
        self.as_str(key, value)
    }

    /// An optional boolean.
    pub(super) fn opt_bool(&mut self, key: &'static str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.report(key, type_error("a boolean", other));
                default
            }
        }
    }

    /// An integer within `range`, or `None` (reported) when it is not one.
    pub(super) fn int_in(&self, key: &str, value: &Value, range: &RangeInclusive<u64>) -> Option<u64> {
        let (lo, hi) = (range.start(), range.end());
        let out_of_range = |found: &dyn std::fmt::Display| {
            self.report(key, format!("must be between {lo} and {hi}, found {found}"));
            None
        };
        match value {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) if range.contains(&v) => Some(v),
                (Some(v), _) => out_of_range(&v),
                (None, Some(v)) => out_of_range(&v),
                _ => {
                    self.report(key, type_error("an integer", value));
                    None
                }
            },
            other => {
                self.report(key, type_error("an integer", other));
                None
            }
        }
    }

    /// An optional integer within `range`, `default` when absent.
    pub(super) fn opt_u64(&mut self, key: &'static str, default: u64, range: RangeInclusive<u64>) -> u64 {
        match self.get(key) {
            None => default,
            Some(v) => self.int_in(key, v, &range).unwrap_or(default),
        }
    }

    /// [`Fields::opt_u64`] for sizes and counts held as `usize`.
    pub(super) fn opt_usize(&mut self, key: &'static str, default: usize, range: RangeInclusive<u64>) -> usize {
        let fallback = u64::try_from(default).unwrap_or(u64::MAX);
        usize::try_from(self.opt_u64(key, fallback, range)).unwrap_or(default)
    }

    /// [`Fields::opt_u64`] for a `…_ms` key held as a [`Duration`]; `range` is in milliseconds.
    pub(super) fn opt_millis(&mut self, key: &'static str, default: Duration, range: RangeInclusive<u64>) -> Duration {
        match self.get(key) {
            None => default,
            Some(v) => self.int_in(key, v, &range).map_or(default, Duration::from_millis),
        }
    }

    /// An optional number that is finite and greater than zero (integers are
    /// accepted).
    pub(super) fn opt_positive_f64(&mut self, key: &'static str, default: f64) -> f64 {
        match self.get(key) {
            None => default,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v.is_finite() && v > 0.0 => v,
                _ => {
                    self.report(key, format!("must be a finite number greater than 0, found {n}"));
                    default
                }
            },
            Some(other) => {
                self.report(key, type_error("a number", other));
                default
            }
        }
    }

    /// An optional list: each element with its path. `None` when absent, or
    /// when it is not a list (reported).
    pub(super) fn opt_list(&mut self, key: &'static str) -> Option<Vec<(String, &'a Value)>> {
        match self.get(key)? {
            Value::Sequence(items) => {
                let path = self.path_of(key);
                Some(items.iter().enumerate().map(|(i, v)| (item(&path, i), v)).collect())
            }
            other => {
                self.report(key, type_error("a list", other));
                None
            }
        }
    }

    /// A required list with at least one element.
    pub(super) fn req_list(&mut self, key: &'static str) -> Option<Vec<(String, &'a Value)>> {
        if !self.has(key) {
            self.missing(key);
            return None;
        }
        let list = self.opt_list(key)?;
        if list.is_empty() {
            self.report(key, "must have at least one entry");
            return None;
        }
        Some(list)
    }

    /// An optional, non-empty list of non-empty strings. Bad elements are
    /// reported and skipped. `what` names the entries in the empty-list
    /// message ("omit it to allow every {what}").
    pub(super) fn opt_str_list(&mut self, key: &'static str, what: &str) -> Option<Vec<(String, String)>> {
        let list = self.opt_list(key)?;
        if list.is_empty() {
            self.report(key, format!("must not be empty (omit it to allow every {what})"));
            return Some(Vec::new());
        }
        let strings = list
            .into_iter()
            .filter_map(|(path, v)| match v {
                Value::String(s) if !s.is_empty() => Some((path, s.clone())),
                Value::String(_) => {
                    self.problems.add(&path, "must not be empty");
                    None
                }
                other => {
                    self.problems.add(&path, type_error("a string", other));
                    None
                }
            })
            .collect();
        Some(strings)
    }

    /// An optional mapping of strings to non-empty strings, in file order.
    pub(super) fn opt_str_map(&mut self, key: &'static str) -> Option<Vec<(String, String)>> {
        let value = self.get(key)?;
        let Value::Mapping(map) = value else {
            self.report(key, type_error("a mapping", value));
            return None;
        };
        let mut pairs = Vec::new();
        for (k, v) in map {
            let Some(k) = k.as_str() else {
                self.report(key, "keys must be strings");
                continue;
            };
            match v {
                Value::String(s) if !s.is_empty() => pairs.push((k.to_string(), s.clone())),
                other => self
                    .problems
                    .add(&child(&self.path_of(key), k), type_error("a non-empty string", other)),
            }
        }
        Some(pairs)
    }

    /// An optional nested mapping, `None` when absent or null.
    pub(super) fn opt_obj(&mut self, key: &'static str) -> Option<Fields<'a>> {
        let value = self.get(key)?;
        Some(Fields::new(value, self.path_of(key), self.problems))
    }

    /// A nested mapping whose keys all have defaults: absent gives an empty
    /// view, so the caller reads defaults the same way it reads values.
    pub(super) fn section(&mut self, key: &'static str) -> Fields<'a> {
        match self.get(key) {
            Some(value) => Fields::new(value, self.path_of(key), self.problems),
            None => Fields::empty(self.path_of(key), self.problems),
        }
    }

    /// A required secret: a literal, or `env.NAME` for the value of
    /// environment variable NAME. Messages never contain the secret.
    pub(super) fn req_secret(&mut self, key: &'static str, env: &dyn Fn(&str) -> Option<String>) -> Option<Secret> {
        let text = self.req_str(key)?;
        let (value, source) = match text.strip_prefix("env.") {
            Some(name) => {
                if !is_env_name(name) {
                    self.report(
                        key,
                        "'env.' must be followed by an environment variable name \
                         (letters, digits and '_', not starting with a digit)",
                    );
                    return None;
                }
                match env(name) {
                    Some(v) if v.is_empty() => {
                        self.report(key, format!("environment variable {name} is empty"));
                        return None;
                    }
                    Some(v) => (v, format!("environment variable {name}")),
                    None => {
                        self.report(key, format!("environment variable {name} is not set"));
                        return None;
                    }
                }
            }
            None => (text.to_string(), "the value".to_string()),
        };
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            self.report(
                key,
                format!("{source} must contain only printable ASCII characters, without spaces or line breaks"),
            );
            return None;
        }
        Some(Secret::new(value))
    }

    /// Reports the keys nobody asked for. Called by `Drop` too; calling it
    /// explicitly just makes the place of those reports obvious.
    pub(super) fn finish(mut self) {
        self.report_unknown();
    }

    fn report_unknown(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let Some(map) = self.map else { return };
        for key in map.keys() {
            match key {
                Value::String(k) if self.asked.contains(&k.as_str()) => {}
                Value::String(k) => {
                    let hint = match suggest(k, self.asked.iter().copied()) {
                        Some(s) => format!("; did you mean '{s}'?"),
                        None => format!(" (known keys: {})", self.asked.join(", ")),
                    };
                    self.problems.add(&self.path_of(k), format!("unknown key '{k}'{hint}"));
                }
                other => self.problems.add(
                    &self.path,
                    format!("keys must be strings, found {} key", kind_of(other)),
                ),
            }
        }
    }
}

impl Drop for Fields<'_> {
    fn drop(&mut self) {
        self.report_unknown();
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn messages(problems: Problems) -> Vec<String> {
        problems.into_vec().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn distance_and_suggestions() {
        assert_eq!(distance("thread", "threads"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(suggest("thread", ["threads", "pid_file"]), Some("threads"));
        assert_eq!(
            suggest("grace_period", ["grace_period_seconds"]),
            Some("grace_period_seconds")
        );
        assert_eq!(suggest("Threads", ["threads"]), Some("threads"));
        assert_eq!(suggest("zzz", ["threads", "pid_file"]), None);
        assert_eq!(did_you_mean("opnai", ["openai"]), "; did you mean 'openai'?");
        assert_eq!(did_you_mean("x", ["openai"]), "");
    }

    #[test]
    fn unknown_keys_reported_on_finish_and_on_drop() {
        let value = yaml("threads: 2\nthread: 3\nzzz: 1\n7: x\n");
        let problems = Problems::new();
        {
            let mut f = Fields::new(&value, "server", &problems);
            assert_eq!(f.opt_u64("threads", 1, 1..=9), 2);
            f.has("pid_file");
            // dropped here without finish()
        }
        assert_eq!(
            messages(problems),
            [
                "server.thread: unknown key 'thread'; did you mean 'threads'?",
                "server.zzz: unknown key 'zzz' (known keys: threads, pid_file)",
                "server: keys must be strings, found an integer key",
            ]
        );
    }

    #[test]
    fn non_mapping_is_reported_once_and_getters_stay_quiet() {
        let value = yaml("[1, 2]");
        let problems = Problems::new();
        let mut f = Fields::new(&value, "limits", &problems);
        assert_eq!(f.opt_u64("max_images", 16, 1..=64), 16);
        assert_eq!(f.req_str("name"), None);
        f.finish();
        assert_eq!(messages(problems), ["limits: expected a mapping, found a list"]);
    }

    #[test]
    fn null_value_means_absent() {
        let value = yaml("threads:\nname: ~\n");
        let problems = Problems::new();
        let mut f = Fields::new(&value, "", &problems);
        assert_eq!(f.opt_u64("threads", 2, 1..=9), 2);
        assert_eq!(f.req_str("name"), None);
        f.finish();
        assert_eq!(messages(problems), ["name: missing required key"]);
    }

    #[test]
    fn integer_getter_reports_every_bad_shape() {
        let value = yaml("a: -3\nb: 1.5\nc: '7'\nd: 18446744073709551615\ne: true\nf: 0\n");
        let problems = Problems::new();
        let mut f = Fields::new(&value, "x", &problems);
        for key in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(f.opt_u64(key, 5, 1..=10), 5, "{key}");
        }
        f.finish();
        assert_eq!(
            messages(problems),
            [
                "x.a: must be between 1 and 10, found -3",
                "x.b: expected an integer, found a floating-point number",
                "x.c: expected an integer, found a string",
                "x.d: must be between 1 and 10, found 18446744073709551615",
                "x.e: expected an integer, found a boolean",
                "x.f: must be between 1 and 10, found 0",
            ]
        );
    }

    #[test]
    fn string_bool_and_float_getters() {
        let value = yaml("s: 12\nt: ''\nb: yes\nw: 0\nv: .inf\nu: 2\nl: x\n");
        let problems = Problems::new();
        let mut f = Fields::new(&value, "", &problems);
        assert_eq!(f.opt_str("s"), None);
        assert_eq!(f.req_str("t"), None);
        assert!(!f.opt_bool("b", false));
        assert_eq!(f.opt_positive_f64("w", 1.0), 1.0);
        assert_eq!(f.opt_positive_f64("v", 1.0), 1.0);
        assert_eq!(f.opt_positive_f64("u", 1.0), 2.0);
        assert!(f.opt_list("l").is_none());
        f.finish();
        assert_eq!(
            messages(problems),
            [
                "s: expected a string, found an integer (quote it to make it a string)",
                "t: must not be empty",
                "b: expected a boolean, found a string (write true or false)",
                "w: must be a finite number greater than 0, found 0",
                "v: must be a finite number greater than 0, found .inf",
                "l: expected a list, found a string",
            ]
        );
    }

    #[test]
    fn string_lists() {
        let value = yaml("a: [x, 1, '', y]\nb: []\n");
        let problems = Problems::new();
        let mut f = Fields::new(&value, "k", &problems);
        let a = f.opt_str_list("a", "model").unwrap();
        assert_eq!(
            a,
            [
                ("k.a[0]".to_string(), "x".to_string()),
                ("k.a[3]".to_string(), "y".to_string())
            ]
        );
        assert_eq!(f.opt_str_list("b", "model"), Some(Vec::new()));
        assert_eq!(f.opt_str_list("c", "model"), None);
        f.finish();
        assert_eq!(
            messages(problems),
            [
                "k.a[1]: expected a string, found an integer (quote it to make it a string)",
                "k.a[2]: must not be empty",
                "k.b: must not be empty (omit it to allow every model)",
            ]
        );
    }

    #[test]
    fn secrets_resolve_and_never_leak() {
        let value = yaml("a: env.SET\nb: env.UNSET\nc: env.1BAD\nd: literal-secret\ne: 'has space'\nf: env.EMPTY\n");
        let env = |name: &str| match name {
            "SET" => Some("from-env".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let problems = Problems::new();
        let mut f = Fields::new(&value, "p", &problems);
        assert_eq!(f.req_secret("a", &env).unwrap().expose(), "from-env");
        assert!(f.req_secret("b", &env).is_none());
        assert!(f.req_secret("c", &env).is_none());
        assert_eq!(f.req_secret("d", &env).unwrap().expose(), "literal-secret");
        assert!(f.req_secret("e", &env).is_none());
        assert!(f.req_secret("f", &env).is_none());
        assert!(f.req_secret("g", &env).is_none());
        f.finish();
        let all = messages(problems);
        assert_eq!(all.len(), 5, "{all:?}");
        assert_eq!(all[0], "p.b: environment variable UNSET is not set");
        assert!(all[1].starts_with("p.c: 'env.' must be followed by"));
        assert!(all[2].starts_with("p.e: the value must contain only printable ASCII"));
        assert_eq!(all[3], "p.f: environment variable EMPTY is empty");
        assert_eq!(all[4], "p.g: missing required key");
        assert!(!all.join("\n").contains("has space"));
    }

    #[test]
    fn env_names() {
        assert!(is_env_name("OPENAI_API_KEY"));
        assert!(is_env_name("_x1"));
        assert!(!is_env_name(""));
        assert!(!is_env_name("1A"));
        assert!(!is_env_name("A-B"));
    }
}
