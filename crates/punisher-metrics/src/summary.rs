//! The end-of-run [`Summary`]: a model built from [`Totals`] and threshold outcomes, and
//! its two renderings, k6-like text and the `--summary-json` document
//! (schema: `crates/punisher-metrics/summary.schema.json`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::series::{MetricKind, SeriesKey, Tags, ValueType};
use crate::snapshot::SeriesData;
use crate::threshold::{Aggregation, Threshold, ThresholdOutcome};
use crate::totals::Totals;

/// The version of the JSON document; bump it when a field changes meaning or goes away.
pub const SUMMARY_VERSION: u32 = 1;

/// Trend percentiles always shown (more are added when thresholds ask for them).
const TREND_PERCENTILES: [f64; 3] = [90.0, 95.0, 99.0];

/// Metrics broken down per `name` tag in the per-request table.
const HTTP_DURATION: &str = "http_req_duration";
const HTTP_REQS: &str = "http_reqs";
const HTTP_FAILED: &str = "http_req_failed";

/// What the run was, for the summary's header and the JSON `meta` object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryMeta {
    /// The scenario file as given on the command line.
    pub scenario: String,
    /// The executor's kind, e.g. `constant-vus` (`punisher_core::Executor::kind`).
    pub executor: String,
    /// Wall-clock time of the run, setup and teardown excluded.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    pub vus_max: u64,
    /// When the load started, Unix milliseconds; 0 when unknown.
    pub started_unix_ms: u64,
    /// Why the run ended early (interrupted, a threshold's abortOnFail), if it did.
    pub interrupted: Option<String>,
}

impl SummaryMeta {
    pub fn new(
        scenario: impl Into<String>,
        executor: impl Into<String>,
        duration: Duration,
        vus_max: u64,
    ) -> SummaryMeta {
        SummaryMeta {
            scenario: scenario.into(),
            executor: executor.into(),
            duration,
            vus_max,
            started_unix_ms: 0,
            interrupted: None,
        }
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One metric (or one tagged sub-series) reduced to its headline values.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSummary {
    #[serde(rename = "type")]
    pub kind: MetricKind,
    /// `time`, `data` or `default`: how values are shown.
    pub contains: ValueType,
    /// Trend: avg, min, med, max, p(N), count (times in ms). Counter: count, rate (per
    /// second). Rate: rate, passes, fails. Gauge: value, min, max.
    pub values: BTreeMap<String, f64>,
    /// Thresholds on exactly this selector: expression -> ok.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub thresholds: BTreeMap<String, ThresholdOk>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdOk {
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckSummary {
    pub name: String,
    /// The group the check ran in, `""` at top level.
    pub group: String,
    pub passes: u64,
    pub fails: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdSummary {
    /// The selector as written, e.g. `http_req_duration{name:vote}`.
    pub metric: String,
    pub expression: String,
    pub ok: bool,
    pub observed: Option<f64>,
    pub no_data: bool,
    pub abort_on_fail: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The end-of-run summary: model + renderers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub version: u32,
    pub meta: SummaryMeta,
    pub metrics: BTreeMap<String, MetricSummary>,
    pub checks: Vec<CheckSummary>,
    pub thresholds: Vec<ThresholdSummary>,
    /// Tagged sub-series: those thresholds select, and `http_req_duration`, `http_reqs`,
    /// `http_req_failed` per `name` tag. Keyed `metric{tag:value}`.
    pub series: BTreeMap<String, MetricSummary>,
    /// Values of the `name` tag of HTTP requests, sorted (rows of the per-request table).
    #[serde(skip)]
    pub request_names: Vec<String>,
}

/// The value type a metric is shown with. Counters do not carry one in snapshots, so the
/// built-in byte counters are known by name.
fn contains_of(metric: &str, data: &SeriesData) -> ValueType {
    match data {
        SeriesData::Trend { value_type, .. } => *value_type,
        _ if matches!(metric, "data_sent" | "data_received") => ValueType::Data,
        _ => ValueType::Default,
    }
}

fn percentile_key(p: f64) -> String {
    Aggregation::Percentile(p).to_string()
}

fn metric_summary(
    metric: &str,
    data: &SeriesData,
    elapsed: Duration,
    extra_percentiles: &[f64],
) -> MetricSummary {
    let mut values = BTreeMap::new();
    let mut put = |k: &str, agg: Aggregation| {
        if let Some(v) = agg.observe(data, elapsed) {
            values.insert(k.to_owned(), v);
        }
    };
    match data {
        SeriesData::Trend { .. } => {
            put("avg", Aggregation::Avg);
            put("min", Aggregation::Min);
            put("med", Aggregation::Med);
            put("max", Aggregation::Max);
            put("count", Aggregation::Count);
            for p in TREND_PERCENTILES.iter().chain(extra_percentiles) {
                put(&percentile_key(*p), Aggregation::Percentile(*p));
            }
        }
        SeriesData::Counter { .. } => {
            put("count", Aggregation::Count);
            put("rate", Aggregation::Rate);
        }
        SeriesData::Rate { passes, total } => {
            values.insert(
                "rate".into(),
                if *total > 0 {
                    *passes as f64 / *total as f64
                } else {
                    0.0
                },
            );
            values.insert("passes".into(), *passes as f64);
            values.insert("fails".into(), (total - passes) as f64);
        }
        SeriesData::Gauge { .. } => {
            put("value", Aggregation::Value);
            put("min", Aggregation::Min);
            put("max", Aggregation::Max);
        }
    }
    MetricSummary {
        kind: data.kind(),
        contains: contains_of(metric, data),
        values,
        thresholds: BTreeMap::new(),
    }
}

impl Summary {
    pub fn build(
        totals: &Totals,
        thresholds: &[(Threshold, ThresholdOutcome)],
        meta: SummaryMeta,
    ) -> Summary {
        let elapsed = totals.elapsed();
        // Percentiles that thresholds ask for, per selector, so that the summary shows them.
        let mut extra: BTreeMap<SeriesKey, Vec<f64>> = BTreeMap::new();
        for (t, _) in thresholds {
            if let Aggregation::Percentile(p) = t.aggregation
                && !TREND_PERCENTILES.contains(&p)
            {
                let list = extra.entry(t.selector_key()).or_default();
                if !list.contains(&p) {
                    list.push(p);
                }
            }
        }
        let extra_for = |key: &SeriesKey| extra.get(key).cloned().unwrap_or_default();

        let mut metrics = BTreeMap::new();
        for metric in totals.metrics() {
            if let Some(data) = totals.aggregate(metric, &Tags::empty()) {
                let key = SeriesKey::new(metric, Tags::empty());
                metrics.insert(
                    metric.to_owned(),
                    metric_summary(metric, &data, elapsed, &extra_for(&key)),
                );
            }
        }

        let mut series = BTreeMap::new();
        let add_series = |series: &mut BTreeMap<String, MetricSummary>, key: &SeriesKey| {
            let name = key.to_string();
            if series.contains_key(&name) {
                return;
            }
            if let Some(data) = totals.aggregate(&key.metric, &key.tags) {
                series.insert(
                    name,
                    metric_summary(&key.metric, &data, elapsed, &extra_for(key)),
                );
            }
        };
        let mut request_names = BTreeSet::new();
        for metric in [HTTP_DURATION, HTTP_REQS, HTTP_FAILED] {
            for (key, _) in totals.metric_series(metric) {
                if let Some(name) = key.tags.get("name") {
                    request_names.insert(name.to_owned());
                }
            }
        }
        for name in &request_names {
            for metric in [HTTP_DURATION, HTTP_REQS, HTTP_FAILED] {
                add_series(
                    &mut series,
                    &SeriesKey::new(metric, Tags::new([("name", name.as_str())])),
                );
            }
        }

        let mut threshold_list = Vec::with_capacity(thresholds.len());
        for (t, outcome) in thresholds {
            let key = t.selector_key();
            let expression = t.spec.expression.trim().to_owned();
            let entry = if key.tags.is_empty() {
                metrics.get_mut(&*key.metric)
            } else {
                add_series(&mut series, &key);
                series.get_mut(&key.to_string())
            };
            if let Some(entry) = entry {
                let ok = entry
                    .thresholds
                    .entry(expression.clone())
                    .or_insert(ThresholdOk { ok: true });
                ok.ok &= outcome.passed;
            }
            threshold_list.push(ThresholdSummary {
                metric: t.spec.selector.trim().to_owned(),
                expression,
                ok: outcome.passed,
                observed: outcome.observed,
                no_data: outcome.no_data,
                abort_on_fail: t.spec.abort_on_fail,
                error: outcome.error.clone(),
            });
        }

        let mut checks: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (key, data) in totals.metric_series("checks") {
            let SeriesData::Rate { passes, total } = data else {
                continue;
            };
            let name = key.tags.get("check").unwrap_or("").to_owned();
            let group = key.tags.get("group").unwrap_or("").to_owned();
            let c = checks.entry((group, name)).or_default();
            c.0 += passes;
            c.1 += total - passes;
        }
        let checks = checks
            .into_iter()
            .map(|((group, name), (passes, fails))| CheckSummary {
                name,
                group,
                passes,
                fails,
            })
            .collect();

        Summary {
            version: SUMMARY_VERSION,
            meta,
            metrics,
            checks,
            thresholds: threshold_list,
            series,
            request_names: request_names.into_iter().collect(),
        }
    }

    /// Whether every threshold passed.
    pub fn passed(&self) -> bool {
        self.thresholds.iter().all(|t| t.ok)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// A k6-like end-of-test summary. Deterministic: the same model renders the same text.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.meta;
        writeln!(
            out,
            "  scenario: {}  executor: {}  duration: {}  max users: {}",
            m.scenario,
            m.executor,
            fmt_time(m.duration.as_secs_f64() * 1000.0),
            m.vus_max
        )?;
        if let Some(why) = &m.interrupted {
            writeln!(out, "  interrupted: {why}")?;
        }
        if !self.thresholds.is_empty() {
            writeln!(out, "\n  █ THRESHOLDS")?;
            let mut current: Option<&str> = None;
            for t in &self.thresholds {
                if current != Some(t.metric.as_str()) {
                    writeln!(out, "\n    {}", t.metric)?;
                    current = Some(&t.metric);
                }
                let mark = if t.ok { '✓' } else { '✗' };
                let observed = self.threshold_observed(t);
                writeln!(out, "    {mark} '{}' {observed}", t.expression)?;
            }
        }

        writeln!(out, "\n  █ TOTAL RESULTS\n")?;
        if !self.checks.is_empty() {
            let mut group: Option<&str> = None;
            for c in &self.checks {
                if group != Some(c.group.as_str()) {
                    if !c.group.is_empty() {
                        writeln!(out, "\n    █ {}\n", c.group)?;
                    }
                    group = Some(&c.group);
                }
                if c.fails == 0 {
                    writeln!(out, "    ✓ {}", c.name)?;
                } else {
                    let total = c.passes + c.fails;
                    let pct = (c.passes as f64 * 100.0 / total as f64).floor();
                    writeln!(out, "    ✗ {}", c.name)?;
                    writeln!(out, "     ↳  {pct}% — ✓ {} / ✗ {}", c.passes, c.fails)?;
                }
            }
            writeln!(out)?;
        }

        // Sub-series shown under their metric: the ones thresholds select.
        let mut rows: Vec<(String, String)> = Vec::new();
        for (name, metric) in &self.metrics {
            rows.push((name.clone(), format_values(metric)));
            let prefix = format!("{name}{{");
            for (key, sub) in self.series.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                if !sub.thresholds.is_empty() {
                    let tags = &key[name.len()..];
                    rows.push((format!("  {tags}"), format_values(sub)));
                }
            }
        }
        let width = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(28)
            + 3;
        for (name, values) in &rows {
            let dots = width - name.chars().count();
            writeln!(out, "    {name}{}: {values}", ".".repeat(dots))?;
        }

        if !self.request_names.is_empty() {
            writeln!(out, "\n  █ HTTP REQUESTS BY NAME\n")?;
            let mut table: Vec<[String; 8]> = vec![
                [
                    "name", "count", "req/s", "p50", "p95", "p99", "max", "failed",
                ]
                .map(str::to_owned),
            ];
            for name in &self.request_names {
                let get = |metric: &str| self.series.get(&format!("{metric}{{name:{name}}}"));
                let v =
                    |m: Option<&MetricSummary>, k: &str| m.and_then(|m| m.values.get(k)).copied();
                let d = get(HTTP_DURATION);
                let reqs = get(HTTP_REQS);
                let failed = get(HTTP_FAILED);
                let time = |k: &str| v(d, k).map_or("-".to_owned(), fmt_time);
                let failures = match (v(failed, "passes"), v(failed, "rate")) {
                    (Some(n), Some(r)) => format!("{n:.0} ({:.2}%)", r * 100.0),
                    _ => "-".to_owned(),
                };
                table.push([
                    name.clone(),
                    v(reqs, "count")
                        .or(v(d, "count"))
                        .map_or("-".to_owned(), fmt_count),
                    v(reqs, "rate").map_or("-".to_owned(), |r| format!("{r:.2}")),
                    time("med"),
                    time("p(95)"),
                    time("p(99)"),
                    time("max"),
                    failures,
                ]);
            }
            let widths: Vec<usize> = (0..8)
                .map(|c| {
                    table
                        .iter()
                        .map(|r| r[c].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in &table {
                let mut line = String::from("    ");
                for (c, cell) in row.iter().enumerate() {
                    let pad = widths[c] - cell.chars().count();
                    if c == 0 {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    } else {
                        line.push_str("  ");
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    }
                }
                writeln!(out, "{}", line.trim_end())?;
            }
        }
        Ok(())
    }

    fn threshold_observed(&self, t: &ThresholdSummary) -> String {
        if let Some(e) = &t.error {
            return format!("error: {e}");
        }
        let Some(v) = t.observed else {
            return "no data".to_owned();
        };
        let agg = t
            .expression
            .split(|c: char| "<>=!".contains(c))
            .next()
            .unwrap_or("")
            .trim()
            .replace(' ', "");
        let entry = if t.metric.contains('{') {
            self.series.get(&t.metric.replace(' ', ""))
        } else {
            self.metrics.get(&t.metric)
        };
        let kind = entry.map(|e| (e.kind, e.contains));
        let shown = match (agg.as_str(), kind) {
            ("count", _) => fmt_count(v),
            ("rate", Some((MetricKind::Counter, _))) => format!("{v:.2}/s"),
            ("rate", _) => format!("{:.2}%", v * 100.0),
            (_, Some((MetricKind::Trend, ValueType::Time))) => fmt_time(v),
            (_, Some((_, ValueType::Data))) => fmt_data(v),
            _ => fmt_number(v),
        };
        let suffix = if t.no_data { " (no data)" } else { "" };
        format!("{agg}={shown}{suffix}")
    }
}

fn format_values(m: &MetricSummary) -> String {
    let get = |k: &str| m.values.get(k).copied().unwrap_or(0.0);
    let show = |v: f64| match m.contains {
        ValueType::Time => fmt_time(v),
        ValueType::Data => fmt_data(v),
        ValueType::Default => fmt_number(v),
    };
    match m.kind {
        MetricKind::Trend => {
            let mut s = format!(
                "avg={} min={} med={} max={}",
                show(get("avg")),
                show(get("min")),
                show(get("med")),
                show(get("max"))
            );
            let mut ps: Vec<(f64, &String)> = m
                .values
                .keys()
                .filter_map(|k| {
                    let inner = k.strip_prefix("p(")?.strip_suffix(')')?;
                    Some((inner.parse::<f64>().ok()?, k))
                })
                .collect();
            ps.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, k) in ps {
                let _ = write!(s, " {k}={}", show(get(k)));
            }
            s
        }
        MetricKind::Counter => match m.contains {
            ValueType::Data => format!("{} {}/s", fmt_data(get("count")), fmt_data(get("rate"))),
            _ => format!("{:<8} {:.2}/s", fmt_count(get("count")), get("rate")),
        },
        MetricKind::Rate => {
            let (passes, fails) = (get("passes"), get("fails"));
            format!(
                "{:.2}% {} out of {}",
                get("rate") * 100.0,
                fmt_count(passes),
                fmt_count(passes + fails)
            )
        }
        MetricKind::Gauge => format!(
            "{:<8} min={} max={}",
            show(get("value")),
            show(get("min")),
            show(get("max"))
        ),
    }
}

/// Milliseconds as µs, ms, s or minutes, with two decimals.
pub fn fmt_time(ms: f64) -> String {
    if ms == 0.0 {
        "0s".to_owned()
    } else if ms < 1.0 {
        format!("{:.2}µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.2}ms")
    } else if ms < 60_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        let minutes = (ms / 60_000.0).floor();
        format!("{minutes:.0}m{:.2}s", (ms - minutes * 60_000.0) / 1000.0)
    }
}

/// Bytes in B, kB, MB or GB (powers of 1000, as k6).
pub fn fmt_data(bytes: f64) -> String {
    if bytes < 1e3 {
        format!("{bytes:.0} B")
    } else if bytes < 1e6 {
        format!("{:.1} kB", bytes / 1e3)
    } else if bytes < 1e9 {
        format!("{:.1} MB", bytes / 1e6)
    } else {
        format!("{:.1} GB", bytes / 1e9)
    }
}

fn fmt_count(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn fmt_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let cases = [
            (0.0, "0s"),
            (0.0125, "12.50µs"),
            (1.234, "1.23ms"),
            (999.0, "999.00ms"),
            (1500.0, "1.50s"),
            (61_500.0, "1m1.50s"),
        ];
        for (ms, expect) in cases {
            assert_eq!(fmt_time(ms), expect);
        }
        assert_eq!(fmt_data(512.0), "512 B");
        assert_eq!(fmt_data(1234.0), "1.2 kB");
        assert_eq!(fmt_data(12_345_678.0), "12.3 MB");
    }
}
