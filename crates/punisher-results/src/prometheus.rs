//! The merged metrics in Prometheus text exposition format (version 0.0.4), with the
//! conventional names: `punisher_` prefix, `_total` counters, durations in seconds as
//! histograms, bytes as `_bytes`. Serving it (`--prometheus 127.0.0.1:9464`) is the caller's
//! job: put [`render`] behind a `GET /metrics` route with [`CONTENT_TYPE`].
//!
//! | punisher metric | Prometheus families |
//! |---|---|
//! | counter `http_reqs` | `punisher_http_reqs_total` (`data_sent`: `punisher_data_sent_bytes_total`) |
//! | gauge `x` | `punisher_x` |
//! | rate `http_req_failed` | `punisher_http_req_failed_true_total`, `punisher_http_req_failed_samples_total` (counters), `punisher_http_req_failed_ratio` (gauge, whole run) |
//! | time trend `http_req_duration` | histogram `punisher_http_req_duration_seconds` (`_bucket{le}`, `_sum`, `_count`) |
//! | other trend `x` | histogram `punisher_x` (`punisher_x_bytes` for data) on powers of ten |
//! | live numbers | `punisher_vus`, `punisher_vus_target`, `punisher_open_connections`, `punisher_open_sockets`, `punisher_agents` |
//!
//! Tags become labels (names sanitized; `le` and names starting with `__` get a `tag_`
//! prefix). Buckets are counted from the HDR histograms at their 3-digit resolution.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use punisher_metrics::snapshot::TREND_SCALE;
use punisher_metrics::{SeriesData, Tags, Totals, ValueType};

use crate::live::LiveNumbers;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of duration buckets, in seconds.
pub const TIME_BUCKETS_SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Upper bounds of buckets of other trends, in their unit.
pub const VALUE_BUCKETS: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// One sample to add: name suffix (`_bucket`), labels text, an extra label (`le`), value.
type Sample<'a> = (&'a str, &'a str, Option<(&'a str, String)>, f64);

struct Family {
    kind: &'static str,
    help: String,
    lines: Vec<String>,
    /// Sample names with label sets already written: a second one would be invalid.
    seen: BTreeSet<String>,
}

#[derive(Default)]
struct Exposition {
    families: BTreeMap<String, Family>,
}

impl Exposition {
    /// Adds samples to family `name`. Samples are `(suffix, labels, extra label, value)`.
    /// A family name already used with another type keeps its first type; the samples of
    /// the second are dropped rather than making the whole page invalid.
    fn add(&mut self, name: &str, kind: &'static str, help: &str, samples: &[Sample<'_>]) {
        let family = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                kind,
                help: help.to_owned(),
                lines: Vec::new(),
                seen: BTreeSet::new(),
            });
        if family.kind != kind {
            return;
        }
        // All samples of one series go in, or none (a histogram must stay whole).
        let rendered: Vec<(String, String)> = samples
            .iter()
            .map(|(suffix, labels, extra, value)| {
                let mut all = labels.to_string();
                if let Some((k, v)) = extra {
                    if !all.is_empty() {
                        all.push(',');
                    }
                    let _ = write!(all, "{k}=\"{}\"", escape_label(v));
                }
                let head = if all.is_empty() {
                    format!("{name}{suffix}")
                } else {
                    format!("{name}{suffix}{{{all}}}")
                };
                let line = format!("{head} {}", number(*value));
                (head, line)
            })
            .collect();
        if rendered.iter().any(|(head, _)| family.seen.contains(head)) {
            return;
        }
        for (head, line) in rendered {
            family.seen.insert(head);
            family.lines.push(line);
        }
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for (name, f) in self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for line in f.lines {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }
}

/// Renders the run's totals (cumulative since the start, as Prometheus expects) and the
/// live numbers.
pub fn render(totals: &Totals, live: Option<&LiveNumbers>) -> String {
    let mut exp = Exposition::default();
    if let Some(live) = live {
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "punisher_vus",
                "Users active now.",
                Some(live.users_active as f64),
            ),
            (
                "punisher_vus_target",
                "Users the schedule asks for now.",
                Some(live.users_target as f64),
            ),
            (
                "punisher_open_connections",
                "Open connections now.",
                live.open_connections.map(|v| v as f64),
            ),
            (
                "punisher_open_sockets",
                "Open WebSocket and Socket.IO sessions now.",
                live.open_sockets.map(|v| v as f64),
            ),
            (
                "punisher_agents",
                "Agents reporting.",
                Some(f64::from(live.agents)),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                exp.add(name, "gauge", help, &[("", "", None, v)]);
            }
        }
    }
    for (key, data) in totals.series() {
        let base = format!("punisher_{}", sanitize_name(&key.metric));
        let labels = labels(&key.tags);
        let help = format!("punisher metric {}.", key.metric);
        match data {
            SeriesData::Counter { sum } => {
                let bytes = matches!(&*key.metric, "data_sent" | "data_received");
                let mut name = base.clone();
                if bytes && !name.ends_with("_bytes") {
                    name.push_str("_bytes");
                }
                if !name.ends_with("_total") {
                    name.push_str("_total");
                }
                exp.add(&name, "counter", &help, &[("", &labels, None, *sum)]);
            }
            SeriesData::Gauge { last, .. } => {
                exp.add(&base, "gauge", &help, &[("", &labels, None, *last)]);
            }
            SeriesData::Rate { passes, total } => {
                exp.add(
                    &format!("{base}_true_total"),
                    "counter",
                    &format!("Samples of {} that were true.", key.metric),
                    &[("", &labels, None, *passes as f64)],
                );
                exp.add(
                    &format!("{base}_samples_total"),
                    "counter",
                    &format!("Samples of {}.", key.metric),
                    &[("", &labels, None, *total as f64)],
                );
                let ratio = if *total > 0 {
                    *passes as f64 / *total as f64
                } else {
                    0.0
                };
                exp.add(
                    &format!("{base}_ratio"),
                    "gauge",
                    &format!("Share of true samples of {} over the run.", key.metric),
                    &[("", &labels, None, ratio)],
                );
            }
            SeriesData::Trend { value_type, hist } => {
                // Bounds in the family's unit, and the factor from histogram units to it.
                let (name, bounds, per_unit): (String, &[f64], f64) = match value_type {
                    ValueType::Time => (
                        format!("{base}_seconds"),
                        &TIME_BUCKETS_SECONDS,
                        TREND_SCALE * 1000.0,
                    ),
                    ValueType::Data => (format!("{base}_bytes"), &VALUE_BUCKETS, TREND_SCALE),
                    ValueType::Default => (base.clone(), &VALUE_BUCKETS, TREND_SCALE),
                };
                let mut counts = vec![0u64; bounds.len()];
                let mut sum = 0.0;
                for v in hist.iter_recorded() {
                    let value = hist.median_equivalent(v.value_iterated_to()) as f64 / per_unit;
                    let n = v.count_at_value();
                    sum += value * n as f64;
                    if let Some(i) = bounds.iter().position(|b| value <= *b) {
                        counts[i] += n;
                    }
                }
                let mut samples: Vec<Sample<'_>> = Vec::with_capacity(bounds.len() + 3);
                let mut cumulative = 0u64;
                for (b, c) in bounds.iter().zip(&counts) {
                    cumulative += c;
                    samples.push((
                        "_bucket",
                        labels.as_str(),
                        Some(("le", number(*b))),
                        cumulative as f64,
                    ));
                }
                let count = hist.len() as f64;
                samples.push((
                    "_bucket",
                    labels.as_str(),
                    Some(("le", "+Inf".to_owned())),
                    count,
                ));
                samples.push(("_sum", labels.as_str(), None, sum));
                samples.push(("_count", labels.as_str(), None, count));
                exp.add(&name, "histogram", &help, &samples);
            }
        }
    }
    exp.finish()
}

/// A metric name: `[a-zA-Z0-9_:]`, anything else `_` (the `punisher_` prefix makes the
/// first character valid).
fn sanitize_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn label_name(k: &str) -> String {
    let mut name: String = k
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty()
        || name.starts_with(|c: char| c.is_ascii_digit())
        || name.starts_with("__")
        || name == "le"
        || name == "quantile"
    {
        name.insert_str(0, "tag_");
    }
    name
}

/// `k="v",...` for a tag set; a key that sanitizes to one already used is dropped.
fn labels(tags: &Tags) -> String {
    let mut out = String::new();
    let mut used = BTreeSet::new();
    for (k, v) in tags.iter() {
        let name = label_name(k);
        if !used.insert(name.clone()) {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"{}\"", escape_label(v));
    }
    out
}

fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert_eq!(sanitize_name("my-trend.x"), "my_trend_x");
        assert_eq!(label_name("le"), "tag_le");
        assert_eq!(label_name("__name__"), "tag___name__");
        assert_eq!(label_name("9a"), "tag_9a");
        assert_eq!(label_name("group"), "group");
        assert_eq!(
            labels(&Tags::new([("name", "a\"b\\c\nd"), ("na-me", "dup")])),
            r#"na_me="dup",name="a\"b\\c\nd""#
        );
        assert_eq!(number(0.0025), "0.0025");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(3.0), "3");
    }
}
