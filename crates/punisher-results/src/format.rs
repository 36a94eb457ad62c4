//! Number formatting shared by the text renderers.

use punisher_metrics::summary::fmt_time;

/// A plain number: integers without decimals, others with two (or more when tiny).
pub(crate) fn num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// A threshold's observed value as people read it: times for time aggregations on trends
/// (`p(95)`, `avg`, ...), percentages for `rate` of a rate metric, plain numbers otherwise.
pub(crate) fn observed(
    expression: &str,
    value: f64,
    is_time_trend: bool,
    is_rate_metric: bool,
) -> String {
    let agg = expression
        .split(|c: char| "<>=!".contains(c))
        .next()
        .unwrap_or("")
        .trim()
        .replace(' ', "");
    let shown = match agg.as_str() {
        "count" => num(value),
        "rate" if is_rate_metric => format!("{:.2}%", value * 100.0),
        "rate" => format!("{}/s", num(value)),
        _ if is_time_trend => fmt_time(value),
        _ => num(value),
    };
    format!("{agg}={shown}")
}

/// Seconds since the start as `m:ss` (or `h:mm:ss`).
pub(crate) fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}
