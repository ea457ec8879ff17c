//! The price of an image edit: a table compiled once at config load (`pricing:` and the shipped
//! `conf/pricing.yaml`), asked once per successful attempt by the gateway ([`PriceTable::cost`])
//! and, later, by budgets before an attempt ([`PriceTable::worst_case`]).
//!
//! Money is integer micro-dollars ([`Micros`]) everywhere; decimal USD from the config is parsed
//! exactly ([`parse_usd`]), never through a float. An entry's `match` is a `*` wildcard pattern
//! (as `model_rules`), optionally scoped to a provider kind; the first matching entry wins. A
//! model no entry matches is priced by the table's default per image and reported as
//! unpriced, never free.
//!
//! Plain values only: nothing here knows Pingora.

use crate::config::ProviderKind;
use serde::Deserialize;

/// An amount of US dollars, in millionths.
pub type Micros = u64;

/// Micro-dollars in a dollar.
pub const MICROS_PER_USD: Micros = 1_000_000;

/// Tokens a token rate is quoted for (USD per 1M tokens).
const TOKENS_PER_RATE: u128 = 1_000_000;

/// One row of a [`PricePerImageBy`] table: the price of one image of `size` (any when `None`)
/// at `quality` (any when `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizedPrice {
    /// `WxH`, or `None` for any size.
    pub size: Option<String>,
    /// `low`/`medium`/`high`/`standard`/`hd`…, or `None` for any quality.
    pub quality: Option<String>,
    /// The price of one image.
    pub price: Micros,
}

/// Per-image prices by size and/or quality: the first row matching the request's size and
/// quality wins; a request that names neither (or matches no row) is priced by the most
/// expensive row (the provider chooses, so the estimate errs high).
pub type PricePerImageBy = Vec<SizedPrice>;

/// Token rates, in micro-dollars per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenRates {
    /// Text input tokens.
    pub text_input: Micros,
    /// Image input tokens.
    pub image_input: Micros,
    /// Output (image) tokens.
    pub image_output: Micros,
}

/// The token counts of an answer's `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// Text input tokens (`input_tokens_details.text_tokens`).
    pub text_input: u64,
    /// Image input tokens (`input_tokens_details.image_tokens`).
    pub image_input: u64,
    /// Output tokens (`output_tokens`).
    pub output: u64,
}

impl TokenUsage {
    /// Reads OpenAI's `usage` object: `input_tokens_details.{text_tokens,image_tokens}` and
    /// `output_tokens`. Without the details, every input token counts as an image token (the
    /// dearer input rate: an estimate that errs high). `None` without `input_tokens`.
    pub fn from_usage(usage: &serde_json::Value) -> Option<TokenUsage> {
        UsageCounts::deserialize(usage).ok()?.tokens()
    }
}

/// The counts of an answer's `usage` object (OpenAI's shape), read straight from its JSON
/// without building a `Value` (other members are skipped).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct UsageCounts {
    /// `input_tokens`.
    pub input_tokens: Option<u64>,
    /// `output_tokens`.
    pub output_tokens: Option<u64>,
    /// `total_tokens`.
    pub total_tokens: Option<u64>,
    /// `input_tokens_details`.
    pub input_tokens_details: Option<InputTokensDetails>,
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct InputTokensDetails {
    /// `text_tokens`.
    pub text_tokens: Option<u64>,
    /// `image_tokens`.
    pub image_tokens: Option<u64>,
}

impl UsageCounts {
    /// The token counts pricing reads ([`TokenUsage::from_usage`]'s rule).
    pub fn tokens(&self) -> Option<TokenUsage> {
        let input = self.input_tokens?;
        let (text_input, image_input) = match self.input_tokens_details {
            Some(d) => (d.text_tokens.unwrap_or(0), d.image_tokens.unwrap_or(0)),
            None => (0, input),
        };
        Some(TokenUsage {
            text_input,
            image_input,
            output: self.output_tokens.unwrap_or(0),
        })
    }
}

/// How an entry prices an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// The per-image price: flat, or by size/quality. Used when the answer has no token usage
    /// (or the entry has no token rates). `None` only for a tokens-only entry.
    pub per_image: Option<PerImage>,
    /// Token rates, used when the answer's `usage` has the counts.
    pub tokens: Option<TokenRates>,
}

/// A per-image price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerImage {
    /// The same for every image (`per_image`).
    Flat(Micros),
    /// By size and/or quality (`per_image_by`).
    By(PricePerImageBy),
}

impl PerImage {
    /// The price of one image of `size`/`quality` (see [`PricePerImageBy`]).
    fn one(&self, size: Option<&str>, quality: Option<&str>) -> Micros {
        match self {
            PerImage::Flat(price) => *price,
            PerImage::By(rows) => {
                let fits = |want: &Option<String>, got: Option<&str>| match (want, got) {
                    (None, _) => true,
                    (Some(w), Some(g)) => w.eq_ignore_ascii_case(g),
                    (Some(_), None) => false,
                };
                rows.iter()
                    .find(|r| fits(&r.size, size) && fits(&r.quality, quality))
                    .map(|r| r.price)
                    .unwrap_or_else(|| self.most(size, quality))
            }
        }
    }

    /// The most one image of `size`/`quality` may cost: the dearest row that could apply
    /// (rows for another size or quality than the one asked are left out).
    fn most(&self, size: Option<&str>, quality: Option<&str>) -> Micros {
        match self {
            PerImage::Flat(price) => *price,
            PerImage::By(rows) => {
                let may = |want: &Option<String>, got: Option<&str>| match (want, got) {
                    (Some(w), Some(g)) => w.eq_ignore_ascii_case(g),
                    _ => true,
                };
                let fitting = rows
                    .iter()
                    .filter(|r| may(&r.size, size) && may(&r.quality, quality))
                    .map(|r| r.price)
                    .max();
                fitting.or_else(|| rows.iter().map(|r| r.price).max()).unwrap_or(0)
            }
        }
    }
}

/// One entry of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceEntry {
    /// The bare-model pattern (`*` matches any run of characters).
    pub pattern: String,
    /// Only for providers of this kind, when set.
    pub kind: Option<ProviderKind>,
    /// The price.
    pub price: Price,
}

/// The compiled price table: operators' entries first, then the shipped ones, and the default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceTable {
    /// Entries in precedence order.
    pub entries: Vec<PriceEntry>,
    /// The per-image price of a model no entry matches.
    pub default: Micros,
}

/// What is priced: one successful attempt's answer.
#[derive(Debug, Clone, Copy)]
pub struct PriceQuery<'a> {
    /// The serving provider's kind.
    pub kind: ProviderKind,
    /// The serving candidate's bare model.
    pub model: &'a str,
    /// Images delivered.
    pub images: u32,
    /// `size`, when asked.
    pub size: Option<&'a str>,
    /// `quality`, when asked.
    pub quality: Option<&'a str>,
    /// The answer's token counts, when it reported them.
    pub usage: Option<TokenUsage>,
}

/// An answer's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The cost.
    pub micros: Micros,
    /// No entry matched: priced by the table's default.
    pub unpriced: bool,
}

impl PriceTable {
    /// A table with only a default.
    pub fn with_default(default: Micros) -> PriceTable {
        PriceTable {
            entries: Vec::new(),
            default,
        }
    }

    /// The first entry for `model` at a provider of `kind`.
    pub fn entry(&self, kind: ProviderKind, model: &str) -> Option<&PriceEntry> {
        self.entries
            .iter()
            .find(|e| e.kind.is_none_or(|k| k == kind) && crate::config::glob_match(&e.pattern, model))
    }

    /// Whether pricing `model` at `kind` reads the answer's token usage.
    pub fn wants_usage(&self, kind: ProviderKind, model: &str) -> bool {
        self.entry(kind, model).is_some_and(|e| e.price.tokens.is_some())
    }

    /// The cost of a successful answer: its token usage at the entry's token rates when both
    /// are there, else the per-image price × images; the default per image when no entry
    /// matches.
    pub fn cost(&self, q: &PriceQuery<'_>) -> Cost {
        let images = u64::from(q.images);
        let Some(entry) = self.entry(q.kind, q.model) else {
            return Cost {
                micros: self.default.saturating_mul(images),
                unpriced: true,
            };
        };
        let micros = match (entry.price.tokens, q.usage, &entry.price.per_image) {
            (Some(rates), Some(usage), _) => token_cost(rates, usage),
            (_, _, Some(per_image)) => per_image.one(q.size, q.quality).saturating_mul(images),
            (_, _, None) => self.default.saturating_mul(images),
        };
        Cost {
            micros,
            unpriced: false,
        }
    }

    /// The most an attempt asking `q` (its model, kind, images, size and quality; its usage
    /// is not known yet and ignored) may cost, for a reservation before the call: the dearest
    /// per-image price that may apply × images (a tokens-only entry, or an unknown model, at
    /// the default per image).
    pub fn worst_case(&self, q: &PriceQuery<'_>) -> Micros {
        let one = self
            .entry(q.kind, q.model)
            .and_then(|e| e.price.per_image.as_ref())
            .map_or(self.default, |p| p.most(q.size, q.quality));
        one.saturating_mul(u64::from(q.images))
    }
}

/// Tokens × rates, rounded to the nearest micro-dollar.
fn token_cost(rates: TokenRates, usage: TokenUsage) -> Micros {
    let part = |tokens: u64, rate: Micros| u128::from(tokens) * u128::from(rate);
    let total = part(usage.text_input, rates.text_input)
        + part(usage.image_input, rates.image_input)
        + part(usage.output, rates.image_output);
    let rounded = (total + TOKENS_PER_RATE / 2) / TOKENS_PER_RATE;
    Micros::try_from(rounded).unwrap_or(Micros::MAX)
}

/// Parses a decimal USD amount (`0.04`, `40`, `"0.011"`, and `1e-5` as a YAML float prints it)
/// into micro-dollars, exactly: at most six decimals, never negative.
pub fn parse_usd(text: &str) -> Result<Micros, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a decimal amount of USD (e.g. 0.04)");
    if text.starts_with('-') {
        return Err(format!("'{text}' is negative: prices must be 0 or more"));
    }
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().map_err(|_| bad())?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // The digits, and how many of them are decimals once the exponent is applied.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let mut decimals = i64::try_from(fraction.len()).map_err(|_| bad())? - i64::from(exponent);
    let mut digits = digits.to_string();
    while decimals > 0 && digits.ends_with('0') {
        digits.pop();
        decimals -= 1;
    }
    if digits.is_empty() {
        return Ok(0);
    }
    if decimals > 6 {
        return Err(format!("'{text}' is more precise than a micro-dollar (6 decimals)"));
    }
    let scale = u32::try_from(6 - decimals).map_err(|_| format!("'{text}' is too large"))?;
    let value: Micros = digits.parse().map_err(|_| format!("'{text}' is too large"))?;
    10u64
        .checked_pow(scale)
        .and_then(|s| value.checked_mul(s))
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// An amount of micro-dollars shown as USD: a JSON number with up to six decimals (`0.0425`,
/// `0`, `1.5`), for `extra_fields.cost` and the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usd(pub Micros);

impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.0 / MICROS_PER_USD;
        let mut fraction = self.0 % MICROS_PER_USD;
        write!(f, "{whole}")?;
        if fraction == 0 {
            return Ok(());
        }
        let mut digits = 6;
        while fraction.is_multiple_of(10) {
            fraction /= 10;
            digits -= 1;
        }
        write!(f, ".{fraction:0digits$}")
    }
}

/// What a successful answer cost, as the gateway reports it (`extra_fields.cost`, the access
/// log's `cost=`, the cost and image metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerCost {
    /// The cost.
    pub micros: Micros,
    /// Images delivered.
    pub images: u32,
    /// No price entry matched: priced by the table's default.
    pub unpriced: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: Option<&str>, quality: Option<&str>, usd: &str) -> SizedPrice {
        SizedPrice {
            size: size.map(str::to_string),
            quality: quality.map(str::to_string),
            price: parse_usd(usd).unwrap(),
        }
    }

    fn entry(
        pattern: &str,
        kind: Option<ProviderKind>,
        per_image: Option<PerImage>,
        tokens: Option<TokenRates>,
    ) -> PriceEntry {
        PriceEntry {
            pattern: pattern.into(),
            kind,
            price: Price { per_image, tokens },
        }
    }

    fn gpt_image_1() -> PriceEntry {
        let by = ["low", "medium", "high"]
            .into_iter()
            .zip([("0.011", "0.016"), ("0.042", "0.063"), ("0.167", "0.25")])
            .flat_map(|(q, (square, tall))| {
                [
                    row(Some("1024x1024"), Some(q), square),
                    row(Some("1024x1536"), Some(q), tall),
                    row(Some("1536x1024"), Some(q), tall),
                ]
            })
            .collect();
        entry(
            "gpt-image-1*",
            None,
            Some(PerImage::By(by)),
            Some(TokenRates {
                text_input: parse_usd("5").unwrap(),
                image_input: parse_usd("10").unwrap(),
                image_output: parse_usd("40").unwrap(),
            }),
        )
    }

    fn query<'a>(model: &'a str, images: u32) -> PriceQuery<'a> {
        PriceQuery {
            kind: ProviderKind::OpenAi,
            model,
            images,
            size: None,
            quality: None,
            usage: None,
        }
    }

    #[test]
    fn decimal_usd_is_parsed_exactly() {
        assert_eq!(parse_usd("0.04"), Ok(40_000));
        assert_eq!(parse_usd("40"), Ok(40_000_000));
        assert_eq!(parse_usd("0.000001"), Ok(1));
        assert_eq!(parse_usd(".5"), Ok(500_000));
        assert_eq!(parse_usd("2.50"), Ok(2_500_000));
        assert_eq!(parse_usd("0.0100000"), Ok(10_000), "trailing zeros are not precision");
        assert!(parse_usd("0.0000001").unwrap_err().contains("micro-dollar"));
        assert!(parse_usd("-0.01").unwrap_err().contains("negative"));
        assert_eq!(parse_usd("1e-5"), Ok(10), "a YAML float prints small amounts so");
        assert_eq!(parse_usd("2.5E1"), Ok(25_000_000));
        assert!(parse_usd("1e-7").unwrap_err().contains("micro-dollar"));
        assert!(parse_usd("1e").is_err());
        assert_eq!(parse_usd("0"), Ok(0));
        assert_eq!(parse_usd("000.000"), Ok(0));
        assert!(parse_usd("").is_err());
        assert!(parse_usd(".").is_err());
        assert!(parse_usd("$1").is_err());
        assert!(parse_usd("99999999999999999999").is_err());
    }

    #[test]
    fn usd_is_written_with_six_decimals_at_most() {
        let usd = |m| Usd(m).to_string();
        assert_eq!(usd(0), "0");
        assert_eq!(usd(40_000), "0.04");
        assert_eq!(usd(166_400), "0.1664");
        assert_eq!(usd(1), "0.000001");
        assert_eq!(usd(1_500_000), "1.5");
        assert_eq!(usd(12_000_010), "12.00001");
    }

    #[test]
    fn gpt_image_1_is_priced_from_its_usage() {
        // 1024x1024 high: 4160 output tokens at $40/1M = $0.1664; a 50-token prompt at $5/1M
        // and a 323-token input image at $10/1M add $0.00025 + $0.00323.
        let table = PriceTable {
            entries: vec![gpt_image_1()],
            default: 40_000,
        };
        let usage: serde_json::Value = serde_json::json!({
            "input_tokens": 373, "output_tokens": 4160, "total_tokens": 4533,
            "input_tokens_details": {"text_tokens": 50, "image_tokens": 323}
        });
        let q = PriceQuery {
            usage: TokenUsage::from_usage(&usage),
            ..query("gpt-image-1", 1)
        };
        assert_eq!(
            table.cost(&q),
            Cost {
                micros: 166_400 + 250 + 3_230,
                unpriced: false
            }
        );
        // Without the details, the input is counted at the image rate.
        let plain = serde_json::json!({"input_tokens": 100, "output_tokens": 272});
        let q = PriceQuery {
            usage: TokenUsage::from_usage(&plain),
            ..query("gpt-image-1", 1)
        };
        assert_eq!(table.cost(&q).micros, 10_880 + 1_000);
        // Without usage: the per-image estimate by size and quality, × n.
        let q = PriceQuery {
            size: Some("1024x1536"),
            quality: Some("medium"),
            ..query("gpt-image-1", 2)
        };
        assert_eq!(table.cost(&q).micros, 2 * 63_000);
        // Neither size nor quality: the dearest row.
        assert_eq!(table.cost(&query("gpt-image-1-mini", 1)).micros, 250_000);
    }

    #[test]
    fn dall_e_2_by_size_times_n() {
        let table = PriceTable {
            entries: vec![entry(
                "dall-e-2",
                None,
                Some(PerImage::By(vec![
                    row(Some("256x256"), None, "0.016"),
                    row(Some("512x512"), None, "0.018"),
                    row(Some("1024x1024"), None, "0.02"),
                ])),
                None,
            )],
            default: 1,
        };
        let q = PriceQuery {
            size: Some("1024x1024"),
            ..query("dall-e-2", 3)
        };
        assert_eq!(table.cost(&q).micros, 60_000);
        let q = PriceQuery {
            size: Some("256x256"),
            ..query("dall-e-2", 2)
        };
        assert_eq!(table.cost(&q).micros, 32_000);
        assert_eq!(table.worst_case(&query("dall-e-2", 4)), 80_000);
        let q = PriceQuery {
            size: Some("512x512"),
            ..query("dall-e-2", 4)
        };
        assert_eq!(table.worst_case(&q), 72_000);
    }

    #[test]
    fn first_match_wins_and_kinds_scope_entries() {
        let table = PriceTable {
            entries: vec![
                entry("flux-kontext-max", None, Some(PerImage::Flat(80_000)), None),
                entry(
                    "flux-kontext-*",
                    Some(ProviderKind::Fireworks),
                    Some(PerImage::Flat(1)),
                    None,
                ),
                entry("flux-kontext-*", None, Some(PerImage::Flat(40_000)), None),
            ],
            default: 7,
        };
        let at = |kind, model| {
            table.cost(&PriceQuery {
                kind,
                ..query(model, 1)
            })
        };
        assert_eq!(at(ProviderKind::Bfl, "flux-kontext-max").micros, 80_000);
        assert_eq!(at(ProviderKind::Bfl, "flux-kontext-pro").micros, 40_000);
        assert_eq!(at(ProviderKind::Fireworks, "flux-kontext-pro").micros, 1);
        assert_eq!(
            at(ProviderKind::Bfl, "other"),
            Cost {
                micros: 7,
                unpriced: true
            }
        );
    }

    #[test]
    fn worst_case_of_every_form() {
        let table = PriceTable {
            entries: vec![
                gpt_image_1(),
                entry("flat", None, Some(PerImage::Flat(40_000)), None),
                entry("tokens-only", None, None, Some(TokenRates::default())),
            ],
            default: 50_000,
        };
        let worst = |model, n, size, quality| {
            table.worst_case(&PriceQuery {
                size,
                quality,
                ..query(model, n)
            })
        };
        assert_eq!(worst("flat", 3, None, None), 120_000);
        assert_eq!(worst("gpt-image-1", 2, None, None), 500_000);
        assert_eq!(worst("gpt-image-1", 1, Some("1024x1024"), None), 167_000);
        assert_eq!(worst("gpt-image-1", 1, Some("1024x1024"), Some("low")), 11_000);
        assert_eq!(worst("gpt-image-1", 1, Some("999x999"), None), 250_000);
        assert_eq!(worst("tokens-only", 2, None, None), 100_000);
        assert_eq!(worst("unknown", 2, None, None), 100_000);
    }

    #[test]
    fn token_costs_round_to_the_nearest_micro_dollar() {
        let rates = TokenRates {
            text_input: 5_000_000,
            image_input: 0,
            image_output: 0,
        };
        let usage = |t| TokenUsage {
            text_input: t,
            ..Default::default()
        };
        assert_eq!(token_cost(rates, usage(1)), 5);
        assert_eq!(
            token_cost(
                TokenRates {
                    text_input: 300_000,
                    ..rates
                },
                usage(5)
            ),
            2
        );
    }
}
