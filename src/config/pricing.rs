//! The `pricing` section: the operator's `models` entries first, then the table of `file` (the
//! shipped `conf/pricing.yaml`, built in, when no file is given), and `default` (the
//! operator's, else the file's). Compiled into a [`PriceTable`] once, at config load.

use serde_yaml::Value;

use super::fields::{type_error, Fields, Problems};
use super::{PricingSource, ProviderKind};
use crate::pricing::{parse_usd, PerImage, Price, PriceEntry, PriceTable, SizedPrice, TokenRates};

/// The shipped price table, used when `pricing.file` is not given.
pub const BUILT_IN: &str = include_str!("../../conf/pricing.yaml");

/// The path problems in the built-in table are reported at (a bug of the build, caught by a
/// test).
const BUILT_IN_PATH: &str = "pricing.file (built-in conf/pricing.yaml)";

/// The `pricing` section, compiled, with where its entries came from.
pub(super) fn pricing(mut f: Fields<'_>) -> (PriceTable, PricingSource) {
    let problems = f.problems();
    let mut entries = models(&mut f);
    let default = f.get("default");
    let default = money(&f, "default", default);
    let file = f.opt_str("file").map(str::to_string);
    let file_path = f.path_of("file");
    f.finish();
    let source = PricingSource {
        own_entries: entries.len(),
        file: file.clone(),
    };
    let (file_entries, file_default) = match file {
        Some(name) => match std::fs::read_to_string(&name) {
            Ok(text) => table_text(&text, &file_path, problems),
            Err(e) => {
                problems.add(&file_path, format!("cannot read {name}: {e}"));
                (Vec::new(), None)
            }
        },
        None => table_text(BUILT_IN, BUILT_IN_PATH, problems),
    };
    entries.extend(file_entries);
    let default = default.or(file_default).unwrap_or_else(|| {
        problems.add("pricing.default", "missing: the price file has no default either");
        0
    });
    (PriceTable { entries, default }, source)
}

/// The entries and default of a price file's text (`models`, `default`), problems at `path`.
fn table_text(text: &str, path: &str, problems: &Problems) -> (Vec<PriceEntry>, Option<u64>) {
    let value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            problems.add(path, e.to_string());
            return (Vec::new(), None);
        }
    };
    let mut f = Fields::new(&value, path, problems);
    let entries = models(&mut f);
    let default = f.get("default");
    let default = default.and_then(|v| money(&f, "default", Some(v)));
    f.finish();
    (entries, default)
}

/// An amount of USD under `key`: a YAML number or a string, parsed exactly.
pub(super) fn money(f: &Fields<'_>, key: &str, value: Option<&Value>) -> Option<u64> {
    let text = match value? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => {
            f.report(key, type_error("an amount of USD (e.g. 0.04)", other));
            return None;
        }
    };
    parse_usd(&text).map_err(|e| f.report(key, e)).ok()
}

/// A required amount of USD under `key`.
fn req_money(f: &mut Fields<'_>, key: &'static str) -> Option<u64> {
    let value = f.req(key);
    money(f, key, value)
}

/// The `models` list of price entries.
fn models(f: &mut Fields<'_>) -> Vec<PriceEntry> {
    let problems = f.problems();
    let Some(items) = f.opt_list("models") else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|(path, value)| entry(Fields::new(value, path, problems)))
        .collect()
}

/// One price entry: `match`, optional `kind`, and its price forms (`per_image` or
/// `per_image_by`, and/or `tokens`); `source` and `note` are documentation.
fn entry(mut e: Fields<'_>) -> Option<PriceEntry> {
    let pattern = e.req_str("match").map(str::to_string);
    let kind = match e.opt_str("kind") {
        Some(name) => match ProviderKind::from_name(name) {
            Some(kind) => Some(kind),
            None => {
                let names = ProviderKind::ALL.iter().map(|k| k.as_str());
                e.report(
                    "kind",
                    format!(
                        "unknown provider kind '{name}'{}",
                        super::fields::did_you_mean(name, names)
                    ),
                );
                None
            }
        },
        None => None,
    };
    let _ = e.opt_str("source");
    let _ = e.opt_str("note");
    let flat = if e.has("per_image") {
        req_money(&mut e, "per_image").map(PerImage::Flat)
    } else {
        None
    };
    let by = per_image_by(&mut e);
    let tokens = e.opt_obj("tokens").and_then(tokens);
    let per_image = match (flat, by) {
        (Some(_), Some(_)) => {
            e.report("per_image_by", "give per_image or per_image_by, not both");
            None
        }
        (flat, by) => flat.or(by),
    };
    if per_image.is_none() && tokens.is_none() && !e.has("per_image") && !e.has("per_image_by") && !e.has("tokens") {
        e.report(
            "match",
            "the entry has no price: give per_image, per_image_by or tokens",
        );
    }
    e.finish();
    Some(PriceEntry {
        pattern: pattern?,
        kind,
        price: Price { per_image, tokens },
    })
}

/// `per_image_by`: a non-empty list of `{size?, quality?, price}`.
fn per_image_by(e: &mut Fields<'_>) -> Option<PerImage> {
    let problems = e.problems();
    let items = e.opt_list("per_image_by")?;
    if items.is_empty() {
        e.report("per_image_by", "must have at least one entry");
        return None;
    }
    let rows: Vec<SizedPrice> = items
        .into_iter()
        .filter_map(|(path, value)| {
            let mut r = Fields::new(value, path, problems);
            let size = r.opt_str("size").map(str::to_string);
            let quality = r.opt_str("quality").map(str::to_string);
            let price = req_money(&mut r, "price");
            r.finish();
            Some(SizedPrice {
                size,
                quality,
                price: price?,
            })
        })
        .collect();
    Some(PerImage::By(rows))
}

/// `tokens`: USD per 1M tokens of text input, image input and image output.
fn tokens(mut t: Fields<'_>) -> Option<TokenRates> {
    let text_input = req_money(&mut t, "text_input");
    let image_input = req_money(&mut t, "image_input");
    let image_output = req_money(&mut t, "image_output");
    t.finish();
    Some(TokenRates {
        text_input: text_input?,
        image_input: image_input?,
        image_output: image_output?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::from_yaml_str_with_env;
    use crate::config::ProviderKind;
    use crate::pricing::{PerImage, PriceQuery};

    const BASE: &str = "providers:\n  - name: openai\n    kind: openai\n    keys: [{name: k, value: sk}]\n";

    fn load(pricing: &str) -> Result<crate::config::Config, String> {
        from_yaml_str_with_env(&format!("{BASE}{pricing}"), &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn the_built_in_table_loads_and_operators_come_first() {
        let config = load("").unwrap();
        assert!(config.pricing.entries.len() >= 12, "{:?}", config.pricing.entries.len());
        assert!(config.pricing.default > 0, "an unknown model is never free");
        let config = load(
            "pricing:\n  default: 0.5\n  models:\n    - match: \"gpt-image-1*\"\n      per_image: 0.01\n      source: mine\n    - {match: tiny, per_image: 0.00001}\n",
        )
        .unwrap();
        assert_eq!(config.pricing.default, 500_000);
        let entry = config.pricing.entry(ProviderKind::OpenAi, "gpt-image-1").unwrap();
        assert_eq!(entry.price.per_image, Some(PerImage::Flat(10_000)));
        let tiny = config.pricing.entry(ProviderKind::OpenAi, "tiny").unwrap();
        assert_eq!(
            tiny.price.per_image,
            Some(PerImage::Flat(10)),
            "0.00001 as YAML prints it (1e-5)"
        );
        // The shipped entries follow.
        assert!(config.pricing.entry(ProviderKind::OpenAi, "dall-e-2").is_some());
        let q = PriceQuery {
            kind: ProviderKind::OpenAi,
            model: "dall-e-2",
            images: 2,
            size: Some("1024x1024"),
            quality: None,
            usage: None,
        };
        assert_eq!(config.pricing.cost(&q).micros, 40_000);
    }

    /// One image of the built-in table's price for `model` at `kind`, `size` and `quality`.
    fn shipped(kind: ProviderKind, model: &str, size: Option<&str>, quality: Option<&str>) -> u64 {
        let config = load("").unwrap();
        let q = PriceQuery {
            kind,
            model,
            images: 1,
            size,
            quality,
            usage: None,
        };
        let cost = config.pricing.cost(&q);
        assert!(!cost.unpriced, "{model} has a shipped entry");
        cost.micros
    }

    #[test]
    fn stability_edits_are_five_credits_at_a_cent() {
        // Inpaint and remove-background: 5 credits since 2025-08-01, 1 credit = $0.01.
        assert_eq!(shipped(ProviderKind::Stability, "stable-image", None, None), 50_000);
        // Bedrock's Stability services are estimated at the direct API's price.
        let bedrock = "us.stability.stable-image-inpaint-v1:0";
        assert_eq!(shipped(ProviderKind::Bedrock, bedrock, None, None), 50_000);
    }

    #[test]
    fn grok_imagine_image_is_two_cents_and_quality_five() {
        assert_eq!(shipped(ProviderKind::Xai, "grok-imagine-image", None, None), 20_000);
        let quality = "grok-imagine-image-quality";
        assert_eq!(shipped(ProviderKind::Xai, quality, None, None), 50_000);
    }

    #[test]
    fn imagen_is_priced_by_tier_and_editing() {
        let vertex = ProviderKind::Vertex;
        assert_eq!(shipped(vertex, "imagen-4.0-fast-generate-001", None, None), 20_000);
        assert_eq!(shipped(vertex, "imagen-4.0-generate-001", None, None), 40_000);
        assert_eq!(shipped(vertex, "imagen-4.0-ultra-generate-001", None, None), 60_000);
        // Imagen 3 editing: the $0.05 estimate (third-party figures, see the entry).
        assert_eq!(shipped(vertex, "imagen-3.0-capability-001", None, None), 50_000);
    }

    #[test]
    fn gemini_image_models_are_priced_per_image() {
        let gemini = ProviderKind::Gemini;
        // 1290 output tokens at $30/1M.
        assert_eq!(shipped(gemini, "gemini-2.5-flash-image", None, None), 39_000);
        // Gemini 3 Pro Image: $0.134 per 1K/2K image, $0.24 per 4K (and when no size is asked).
        let pro = "gemini-3-pro-image-preview";
        assert_eq!(shipped(gemini, pro, Some("1024x1024"), None), 134_000);
        assert_eq!(shipped(gemini, pro, None, None), 240_000);
        assert_eq!(shipped(gemini, pro, Some("4096x4096"), None), 240_000);
    }

    #[test]
    fn published_examples_of_unchanged_families_still_hold() {
        let bedrock = ProviderKind::Bedrock;
        let titan = "amazon.titan-image-generator-v2:0";
        assert_eq!(shipped(bedrock, titan, Some("1024x1024"), Some("premium")), 12_000);
        assert_eq!(shipped(bedrock, titan, Some("512x512"), Some("standard")), 8_000);
        let nova = "amazon.nova-canvas-v1:0";
        assert_eq!(shipped(bedrock, nova, Some("1024x1024"), Some("standard")), 40_000);
        assert_eq!(shipped(ProviderKind::Bfl, "flux-kontext-pro", None, None), 40_000);
        assert_eq!(shipped(ProviderKind::Bfl, "flux-pro-1.0-fill", None, None), 50_000);
        let replicate = "black-forest-labs/flux-kontext-max";
        assert_eq!(shipped(ProviderKind::Replicate, replicate, None, None), 80_000);
        let mini = "gpt-image-1-mini";
        assert_eq!(
            shipped(ProviderKind::OpenAi, mini, Some("1024x1536"), Some("high")),
            52_000
        );
    }

    #[test]
    fn problems_are_reported_with_their_paths() {
        let e = load(
            "pricing:\n  colour: red\n  default: -1\n  models:\n    - match: a\n      per_image: -0.04\n    - match: b\n      per_image_by: [{size: 1x1, price: 0.1, extra: 1}]\n      tokens: {text_input: 1, image_input: 2}\n    - match: c\n      kind: opneai\n      per_image: 0.0000001\n    - match: d\n",
        )
        .unwrap_err();
        for want in [
            "pricing.colour",
            "pricing.default: '-1' is negative",
            "pricing.models[0].per_image: '-0.04' is negative",
            "pricing.models[1].per_image_by[0].extra",
            "pricing.models[1].tokens.image_output: missing",
            "pricing.models[2].kind: unknown provider kind 'opneai'",
            "pricing.models[2].per_image: '1e-7' is more precise",
            "pricing.models[3].match: the entry has no price",
        ] {
            assert!(e.contains(want), "{want} not in {e}");
        }
    }

    #[test]
    fn print_shows_the_section_as_written_and_loads_again() {
        let yaml = format!(
            "{BASE}pricing:\n  models:\n    - {{match: \"house-*\", kind: openai, per_image: 0.03}}\n    - {{match: tok, tokens: {{text_input: 1.25, image_input: 2, image_output: 8}}}}\n"
        );
        let config = from_yaml_str_with_env(&yaml, &|_| None).unwrap();
        let out = crate::config::effective_yaml(&config, &yaml).unwrap();
        for expected in [
            "match: house-*",
            "kind: openai",
            "per_image: '0.03'",
            "text_input: '1.25'",
            "default: '0.04'",
            "file: null",
        ] {
            assert!(
                out.lines().any(|l| l.trim_start_matches(['-', ' ']) == expected),
                "{expected:?} missing:\n{out}"
            );
        }
        assert!(
            !out.contains("dall-e-2"),
            "the built-in entries are not repeated:\n{out}"
        );
        let again = from_yaml_str_with_env(&out, &|_| None).unwrap();
        assert_eq!(again.pricing, config.pricing);
    }

    #[test]
    fn a_price_file_replaces_the_built_in_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.yaml");
        std::fs::write(
            &path,
            "default: 0.1\nmodels:\n  - {match: \"x*\", per_image: \"0.25\"}\n",
        )
        .unwrap();
        let config = load(&format!("pricing:\n  file: {}\n", path.display())).unwrap();
        assert_eq!(config.pricing.entries.len(), 1);
        assert_eq!(config.pricing.default, 100_000);
        let e = load("pricing:\n  file: /nonexistent/p.yaml\n").unwrap_err();
        assert!(e.contains("pricing.file: cannot read"), "{e}");
    }
}
