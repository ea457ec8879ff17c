//! Sizes: `size` as width and height, and `WxH` mapped to the nearest aspect ratio a provider
//! takes (Gemini's `imageConfig`, FLUX's `aspect_ratio`, xAI's `aspect_ratio` from its own
//! table). Run while an adapter builds a request; a size no ratio fits is refused there.

use crate::error::GatewayError;

/// `size` as `(width, height)` when it is `WxH` (`None` for `auto` or no size). The form has
/// validated it already; adapters call this when they map the size to their own fields.
pub fn size_wxh(size: Option<&str>) -> Option<(u32, u32)> {
    size.and_then(|s| s.split_once('x'))
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
}

/// `imageConfig.aspectRatio` values Gemini accepts, with their width/height ratio (also the
/// common ratios FLUX's `aspect_ratio` takes).
const ASPECT_RATIOS: [(&str, f64); 14] = [
    ("1:1", 1.0),
    ("1:4", 0.25),
    ("4:1", 4.0),
    ("1:8", 0.125),
    ("8:1", 8.0),
    ("2:3", 2.0 / 3.0),
    ("3:2", 1.5),
    ("3:4", 0.75),
    ("4:3", 4.0 / 3.0),
    ("4:5", 0.8),
    ("5:4", 1.25),
    ("9:16", 9.0 / 16.0),
    ("16:9", 16.0 / 9.0),
    ("21:9", 21.0 / 9.0),
];

/// How far (relative) a requested ratio may be from the nearest supported one.
const RATIO_TOLERANCE: f64 = 0.05;

/// The `imageConfig` entries for `size`: `(aspectRatio, imageSize)`, `None` for `auto` or no
/// size. Called when the request is built; `Err` (400 naming `size`) when `WxH` is not within
/// 5 % of a supported ratio.
pub fn image_config_for_size(
    size: Option<&str>,
    provider: &str,
) -> Result<Option<(&'static str, &'static str)>, GatewayError> {
    let Some(size) = size.filter(|s| *s != "auto") else {
        return Ok(None);
    };
    let refuse = |why: &str| GatewayError::Unsupported {
        provider: provider.to_string(),
        param: "size".into(),
        message: format!("size={size}: {why}"),
    };
    let (w, h) = size_wxh(Some(size)).ok_or_else(|| refuse("expected WxH or auto"))?;
    let ratio = f64::from(w) / f64::from(h);
    let (name, nearest) = nearest_ratio(ratio, &ASPECT_RATIOS);
    if (ratio / nearest).ln().abs() > RATIO_TOLERANCE.ln_1p() {
        let names: Vec<&str> = ASPECT_RATIOS.iter().map(|r| r.0).collect();
        return Err(refuse(&format!(
            "the aspect ratio is not within 5 % of a Gemini ratio ({})",
            names.join(", ")
        )));
    }
    let long = w.max(h);
    let image_size = match long {
        0..=1024 => "1K",
        1025..=2048 => "2K",
        _ => "4K",
    };
    Ok(Some((name, image_size)))
}

/// The entry of `table` (name, width/height) nearest to `ratio` on a log scale (`1:1` when the
/// table is empty).
pub fn nearest_ratio(ratio: f64, table: &[(&'static str, f64)]) -> (&'static str, f64) {
    table
        .iter()
        .copied()
        .min_by(|a, b| (ratio / a.1).ln().abs().total_cmp(&(ratio / b.1).ln().abs()))
        .unwrap_or(("1:1", 1.0))
}
