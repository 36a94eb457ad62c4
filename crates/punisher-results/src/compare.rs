//! `punisher compare A B`: the differences in percentiles and rates between two runs, and
//! whether B regressed beyond a tolerance. Runs are read from their `summary.json` (which
//! `punisher report` can rebuild from a journal), so that any two runs compare, old or new.
//!
//! B regressed when, beyond the tolerance, a latency percentile or average went up, an error
//! rate went up (or `checks` down), a throughput went down (requests, iterations, messages
//! and events per second), or when a threshold that passed in A fails in B.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use punisher_metrics::Summary;
use punisher_metrics::summary::fmt_time;
use serde_json::Value;

use crate::format::num;

/// How much worse B may be than A before it counts as a regression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Latency percentiles and averages of time trends: percent above A.
    pub latency_pct: f64,
    /// Error rates (`http_req_failed`, `*_failed`, `*_errors`, and `checks` downwards):
    /// percentage points.
    pub error_points: f64,
    /// Latency differences smaller than this (ms) never count: at sub-millisecond loopback
    /// latencies, +10% is noise.
    pub min_latency_ms: f64,
    /// Throughput (the per-second rate of [`THROUGHPUT_COUNTERS`]): percent below A.
    pub throughput_pct: f64,
}

/// Counters whose rate is a throughput: fewer per second is worse. Other counters (bytes,
/// errors, disconnects) are shown but not judged.
pub const THROUGHPUT_COUNTERS: &[&str] = &[
    "http_reqs",
    "iterations",
    "ws_msgs_sent",
    "ws_msgs_received",
    "socketio_events_sent",
    "socketio_events_received",
];

impl Tolerance {
    /// `--tolerance P`: latency +P %, error rates +P points, throughput -P %, ignoring
    /// latency moves under 1 ms.
    pub fn percent(p: f64) -> Tolerance {
        Tolerance {
            latency_pct: p,
            error_points: p,
            min_latency_ms: 1.0,
            throughput_pct: p,
        }
    }
}

/// One metric or sub-series of a run, as its summary gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// `trend`, `counter`, `rate` or `gauge`.
    pub kind: String,
    /// `time`, `data` or `default`.
    pub contains: String,
    pub values: BTreeMap<String, f64>,
}

/// One threshold's verdict in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdFigure {
    pub ok: bool,
    pub observed: Option<f64>,
}

/// The comparable figures of one run: its metrics and tagged sub-series, by name
/// (`http_req_duration`, `http_req_duration{name:vote}`), and its thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    /// How the run is named in the comparison (its run id or folder).
    pub label: String,
    pub entries: BTreeMap<String, Figures>,
    /// By (selector, expression), e.g. (`http_req_duration{name:vote}`, `p(99)<500`).
    pub thresholds: BTreeMap<(String, String), ThresholdFigure>,
}

impl RunFigures {
    /// Reads a `summary.json` document (the `metrics` and `series` objects).
    pub fn from_summary_json(label: &str, json: &Value) -> Result<RunFigures, String> {
        let mut entries = BTreeMap::new();
        let metrics = json
            .get("metrics")
            .and_then(Value::as_object)
            .ok_or("summary has no `metrics` object")?;
        let series = json.get("series").and_then(Value::as_object);
        for (name, m) in metrics.iter().chain(series.into_iter().flatten()) {
            let kind = m
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let contains = m
                .get("contains")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            let values = m
                .get("values")
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            entries.insert(
                name.clone(),
                Figures {
                    kind,
                    contains,
                    values,
                },
            );
        }
        let mut thresholds = BTreeMap::new();
        for t in json
            .get("thresholds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let text = |k: &str| t.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(metric), Some(expression), Some(ok)) = (
                text("metric"),
                text("expression"),
                t.get("ok").and_then(Value::as_bool),
            ) else {
                continue;
            };
            thresholds.insert(
                (metric, expression),
                ThresholdFigure {
                    ok,
                    observed: t.get("observed").and_then(Value::as_f64),
                },
            );
        }
        Ok(RunFigures {
            label: label.to_owned(),
            entries,
            thresholds,
        })
    }

    pub fn from_summary(label: &str, summary: &Summary) -> RunFigures {
        Self::from_summary_json(label, &summary.to_json()).unwrap_or(RunFigures {
            label: label.to_owned(),
            entries: BTreeMap::new(),
            thresholds: BTreeMap::new(),
        })
    }
}

/// How a compared value is shown and judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds; judged against `latency_pct`.
    Millis,
    /// A share in `[0, 1]`, shown in percent; differences in points.
    Share,
    PerSecond,
    Plain,
}

/// One compared value.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Metric or sub-series name.
    pub name: String,
    /// `p50`, `p95`, `p99`, `avg`, `rate`, ...
    pub stat: String,
    pub a: f64,
    pub b: f64,
    pub unit: Unit,
    /// B is worse than A beyond the tolerance.
    pub regressed: bool,
}

impl Row {
    /// B minus A, in percent of A (`None` when A is 0).
    pub fn change_pct(&self) -> Option<f64> {
        (self.a != 0.0).then(|| (self.b - self.a) / self.a * 100.0)
    }
}

/// A threshold of both runs (or of one), and whether it flipped.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    pub metric: String,
    pub expression: String,
    /// `None`: the run had no such threshold.
    pub a: Option<ThresholdFigure>,
    pub b: Option<ThresholdFigure>,
    /// It passed in A and fails in B.
    pub regressed: bool,
}

/// The differences between two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub tolerance: Tolerance,
    pub rows: Vec<Row>,
    pub thresholds: Vec<ThresholdRow>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Whether any row regressed or any threshold flipped from pass to fail: `punisher
    /// compare` exits non-zero then.
    pub regressed: bool,
}

/// Whether a high rate is bad (`Some(true)`), a low one (`Some(false)`), or neither is known.
fn rate_direction(name: &str) -> Option<bool> {
    let metric = name.split('{').next().unwrap_or(name);
    if metric == "checks" {
        Some(false)
    } else if metric.ends_with("_failed")
        || metric.ends_with("_errors")
        || metric.ends_with("_error_rate")
        || metric.ends_with("_failures")
    {
        Some(true)
    } else {
        None
    }
}

/// Compares run B with run A.
pub fn compare(a: &RunFigures, b: &RunFigures, tolerance: &Tolerance) -> Comparison {
    let mut rows = Vec::new();
    let mut only_in_a = Vec::new();
    for (name, fa) in &a.entries {
        let Some(fb) = b.entries.get(name) else {
            only_in_a.push(name.clone());
            continue;
        };
        if fa.kind != fb.kind {
            continue;
        }
        let stats: &[(&str, &str)] = match fa.kind.as_str() {
            "trend" => &[
                ("med", "p50"),
                ("p(95)", "p95"),
                ("p(99)", "p99"),
                ("avg", "avg"),
            ],
            "counter" => &[("rate", "rate"), ("count", "count")],
            "rate" => &[("rate", "rate")],
            "gauge" => &[("max", "max")],
            _ => &[],
        };
        for (key, stat) in stats {
            let (Some(va), Some(vb)) = (fa.values.get(*key), fb.values.get(*key)) else {
                continue;
            };
            let (va, vb) = (*va, *vb);
            let (unit, regressed) = match fa.kind.as_str() {
                "trend" if fa.contains == "time" => {
                    let worse = vb > va * (1.0 + tolerance.latency_pct / 100.0)
                        && vb - va >= tolerance.min_latency_ms;
                    (Unit::Millis, worse)
                }
                "rate" => {
                    let points = (vb - va) * 100.0;
                    let worse = match rate_direction(name) {
                        Some(true) => points > tolerance.error_points,
                        Some(false) => -points > tolerance.error_points,
                        None => false,
                    };
                    (Unit::Share, worse)
                }
                "counter" if *stat == "rate" => {
                    let metric = name.split('{').next().unwrap_or(name);
                    let worse = THROUGHPUT_COUNTERS.contains(&metric)
                        && vb < va * (1.0 - tolerance.throughput_pct / 100.0);
                    (Unit::PerSecond, worse)
                }
                _ => (Unit::Plain, false),
            };
            rows.push(Row {
                name: name.clone(),
                stat: (*stat).to_owned(),
                a: va,
                b: vb,
                unit,
                regressed,
            });
        }
    }
    let only_in_b = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .cloned()
        .collect();
    let mut thresholds: Vec<ThresholdRow> = a
        .thresholds
        .keys()
        .chain(
            b.thresholds
                .keys()
                .filter(|k| !a.thresholds.contains_key(*k)),
        )
        .map(|key| {
            let (ta, tb) = (a.thresholds.get(key), b.thresholds.get(key));
            ThresholdRow {
                metric: key.0.clone(),
                expression: key.1.clone(),
                a: ta.cloned(),
                b: tb.cloned(),
                regressed: matches!((ta, tb), (Some(ta), Some(tb)) if ta.ok && !tb.ok),
            }
        })
        .collect();
    thresholds.sort_by(|x, y| (&x.metric, &x.expression).cmp(&(&y.metric, &y.expression)));
    let regressed = rows.iter().any(|r| r.regressed) || thresholds.iter().any(|t| t.regressed);
    Comparison {
        a: a.label.clone(),
        b: b.label.clone(),
        tolerance: *tolerance,
        rows,
        thresholds,
        only_in_a,
        only_in_b,
        regressed,
    }
}

fn show(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Millis => fmt_time(v),
        Unit::Share => format!("{:.2}%", v * 100.0),
        Unit::PerSecond => format!("{}/s", num(v)),
        Unit::Plain => num(v),
    }
}

impl Comparison {
    pub fn regressions(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.regressed)
    }

    /// Thresholds that passed in A and fail in B.
    pub fn flipped_thresholds(&self) -> impl Iterator<Item = &ThresholdRow> {
        self.thresholds.iter().filter(|t| t.regressed)
    }

    /// A table for the terminal, then the verdict.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let t = &self.tolerance;
        let _ = writeln!(
            out,
            "A: {}\nB: {}\ntolerance: latency +{}% (moves under {} ignored), error rates +{} points, \
             throughput -{}%\n",
            self.a,
            self.b,
            num(t.latency_pct),
            fmt_time(t.min_latency_ms),
            num(t.error_points),
            num(t.throughput_pct)
        );
        let mut table: Vec<[String; 6]> =
            vec![["metric", "stat", "A", "B", "change", ""].map(str::to_owned)];
        for r in &self.rows {
            let change = match r.unit {
                Unit::Share => format!("{:+.2} pts", (r.b - r.a) * 100.0),
                _ => r.change_pct().map_or_else(
                    || if r.b == r.a { "=".into() } else { "new".into() },
                    |p| format!("{p:+.1}%"),
                ),
            };
            table.push([
                r.name.clone(),
                r.stat.clone(),
                show(r.unit, r.a),
                show(r.unit, r.b),
                change,
                if r.regressed {
                    "REGRESSED".into()
                } else {
                    String::new()
                },
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| {
                table
                    .iter()
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &table {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let pad = widths[c] - cell.chars().count();
                if c < 2 || c == 5 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
                line.push_str("  ");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(out, "\nthresholds (A -> B):");
            let verdict = |t: &Option<ThresholdFigure>| match t {
                None => "-".to_owned(),
                Some(t) => {
                    let word = if t.ok { "PASS" } else { "FAIL" };
                    match t.observed {
                        Some(v) => format!("{word} ({})", num(v)),
                        None => format!("{word} (no data)"),
                    }
                }
            };
            for t in &self.thresholds {
                let note = if t.regressed {
                    "  REGRESSED: passed in A, fails in B"
                } else if matches!((&t.a, &t.b), (Some(a), Some(b)) if !a.ok && b.ok) {
                    "  fixed"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  {} '{}'  {} -> {}{note}",
                    t.metric,
                    t.expression,
                    verdict(&t.a),
                    verdict(&t.b)
                );
            }
        }
        if !self.only_in_a.is_empty() {
            let _ = writeln!(out, "\nonly in A: {}", self.only_in_a.join(", "));
        }
        if !self.only_in_b.is_empty() {
            let _ = writeln!(out, "\nonly in B: {}", self.only_in_b.join(", "));
        }
        let n = self.regressions().count();
        let flipped = self.flipped_thresholds().count();
        if self.regressed {
            let mut what = Vec::new();
            if n > 0 {
                what.push(format!(
                    "B is worse than A beyond tolerance in {n} value(s)"
                ));
            }
            if flipped > 0 {
                what.push(format!("{flipped} threshold(s) passed in A and fail in B"));
            }
            let _ = writeln!(out, "\nREGRESSED: {}", what.join("; "));
        } else {
            let _ = writeln!(out, "\nOK: no regression beyond tolerance");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(p50: f64, p99: f64, failed: f64, checks: f64, rps: f64) -> RunFigures {
        let doc = json!({
            "metrics": {
                "http_req_duration": {"type": "trend", "contains": "time",
                    "values": {"med": p50, "p(95)": p99 * 0.9, "p(99)": p99, "avg": p50, "max": p99 * 2.0}},
                "http_req_failed": {"type": "rate", "contains": "default", "values": {"rate": failed}},
                "checks": {"type": "rate", "contains": "default", "values": {"rate": checks}},
                "http_reqs": {"type": "counter", "contains": "default", "values": {"count": rps * 10.0, "rate": rps}},
                "custom_rate": {"type": "rate", "contains": "default", "values": {"rate": failed}},
            },
            "series": {
                "http_req_duration{name:vote}": {"type": "trend", "contains": "time",
                    "values": {"med": p50, "p(95)": p99, "p(99)": p99, "avg": p50}},
            }
        });
        RunFigures::from_summary_json("x", &doc).unwrap()
    }

    fn regressed_rows(c: &Comparison) -> Vec<(String, String)> {
        c.regressions()
            .map(|r| (r.name.clone(), r.stat.clone()))
            .collect()
    }

    #[test]
    fn judges_latency_errors_and_checks() {
        let tol = Tolerance::percent(10.0);
        let a = run(10.0, 100.0, 0.01, 1.0, 100.0);
        // Same run: no regression.
        let same = compare(&a, &a, &tol);
        assert!(!same.regressed);
        assert_eq!(same.rows.len(), 4 + 1 + 1 + 2 + 1 + 4);

        // p99 +9% is within, +11% beyond.
        assert!(!compare(&a, &run(10.0, 109.0, 0.01, 1.0, 100.0), &tol).regressed);
        let c = compare(&a, &run(10.0, 111.0, 0.01, 1.0, 100.0), &tol);
        assert_eq!(
            regressed_rows(&c),
            vec![
                ("http_req_duration".into(), "p95".into()),
                ("http_req_duration".into(), "p99".into()),
                ("http_req_duration{name:vote}".into(), "p95".into()),
                ("http_req_duration{name:vote}".into(), "p99".into()),
            ]
        );
        // Faster is never a regression, nor is more throughput.
        assert!(!compare(&a, &run(5.0, 50.0, 0.0, 1.0, 300.0), &tol).regressed);
        // Error rate +9 points within, +11 beyond; a custom rate's direction is unknown.
        assert!(!compare(&a, &run(10.0, 100.0, 0.10, 1.0, 100.0), &tol).regressed);
        let c = compare(&a, &run(10.0, 100.0, 0.12, 1.0, 100.0), &tol);
        assert_eq!(
            regressed_rows(&c),
            vec![("http_req_failed".into(), "rate".into())]
        );
        // Checks going down is a regression.
        let c = compare(&a, &run(10.0, 100.0, 0.01, 0.85, 100.0), &tol);
        assert_eq!(regressed_rows(&c), vec![("checks".into(), "rate".into())]);
        let text = c.render_text();
        assert!(text.contains("REGRESSED"), "{text}");
        assert!(text.contains("-15.00 pts"), "{text}");
    }

    #[test]
    fn a_throughput_drop_beyond_tolerance_regresses() {
        let tol = Tolerance::percent(10.0);
        let a = run(10.0, 100.0, 0.0, 1.0, 100.0);
        // -9% req/s within, -11% beyond.
        assert!(!compare(&a, &run(10.0, 100.0, 0.0, 1.0, 91.0), &tol).regressed);
        let c = compare(&a, &run(10.0, 100.0, 0.0, 1.0, 89.0), &tol);
        assert_eq!(
            regressed_rows(&c),
            vec![("http_reqs".into(), "rate".into())]
        );
        let text = c.render_text();
        assert!(text.contains("throughput -10%"), "{text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("http_reqs ") && l.contains("rate"))
            .unwrap();
        assert!(
            line.contains("-11.0%") && line.ends_with("REGRESSED"),
            "{line}"
        );
        // Iterations count too, tagged sub-series as well; other counters are only shown.
        let mut b = a.clone();
        for (name, rate) in [("iterations{scenario:x}", 5.0), ("data_received", 1.0)] {
            let f = Figures {
                kind: "counter".into(),
                contains: "default".into(),
                values: BTreeMap::from([("rate".to_owned(), rate)]),
            };
            let mut fa = f.clone();
            fa.values.insert("rate".into(), rate * 2.0);
            let mut a2 = a.clone();
            a2.entries.insert(name.into(), fa);
            b.entries.insert(name.into(), f);
            let c = compare(&a2, &b, &tol);
            assert_eq!(
                c.regressed,
                name.starts_with("iterations"),
                "{name}: {:?}",
                regressed_rows(&c)
            );
            b.entries.remove(name);
        }
    }

    fn with_threshold(mut r: RunFigures, ok: bool, observed: f64) -> RunFigures {
        r.thresholds.insert(
            ("http_req_duration".into(), "p(95)<100".into()),
            ThresholdFigure {
                ok,
                observed: Some(observed),
            },
        );
        r
    }

    #[test]
    fn a_threshold_that_flips_from_pass_to_fail_regresses() {
        // Latencies far apart but a tolerance that forgives them: only the flip counts.
        let tol = Tolerance::percent(1000.0);
        let a = with_threshold(run(10.0, 90.0, 0.0, 1.0, 100.0), true, 81.0);
        let b = with_threshold(run(10.0, 120.0, 0.0, 1.0, 100.0), false, 108.0);
        let c = compare(&a, &b, &tol);
        assert!(c.regressed);
        assert_eq!(c.regressions().count(), 0);
        assert_eq!(c.flipped_thresholds().count(), 1);
        let text = c.render_text();
        assert!(
            text.contains(
                "http_req_duration 'p(95)<100'  PASS (81) -> FAIL (108)  REGRESSED: passed in A, fails in B"
            ),
            "{text}"
        );
        assert!(
            text.contains("REGRESSED: 1 threshold(s) passed in A and fail in B"),
            "{text}"
        );
        // The other way round is a fix, not a regression; a threshold only B has is shown.
        let c = compare(&b, &a, &tol);
        assert!(!c.regressed);
        assert!(c.render_text().contains("FAIL (108) -> PASS (81)  fixed"));
        let c = compare(&run(10.0, 90.0, 0.0, 1.0, 100.0), &b, &tol);
        assert!(!c.regressed);
        assert!(
            c.render_text().contains("-> FAIL (108)"),
            "{}",
            c.render_text()
        );
        // Read from summary.json's `thresholds` array.
        let doc = json!({"metrics": {}, "thresholds": [
            {"metric": "checks", "expression": "rate>0.9", "ok": false, "observed": 0.5,
             "no_data": false, "abort_on_fail": false}
        ]});
        let r = RunFigures::from_summary_json("x", &doc).unwrap();
        assert_eq!(
            r.thresholds[&("checks".to_owned(), "rate>0.9".to_owned())],
            ThresholdFigure {
                ok: false,
                observed: Some(0.5)
            }
        );
    }

    #[test]
    fn sub_millisecond_noise_is_not_a_regression() {
        let tol = Tolerance::percent(10.0);
        let a = run(0.2, 0.5, 0.0, 1.0, 100.0);
        let b = run(0.4, 0.9, 0.0, 1.0, 100.0);
        assert!(!compare(&a, &b, &tol).regressed);
        let strict = Tolerance {
            min_latency_ms: 0.0,
            ..tol
        };
        assert!(compare(&a, &b, &strict).regressed);
    }

    #[test]
    fn lists_series_only_in_one_run() {
        let a = run(10.0, 100.0, 0.0, 1.0, 100.0);
        let mut b = a.clone();
        b.entries.remove("checks");
        b.entries
            .insert("ws_sessions".into(), a.entries["http_reqs"].clone());
        let c = compare(&a, &b, &Tolerance::percent(5.0));
        assert_eq!(c.only_in_a, vec!["checks".to_owned()]);
        assert_eq!(c.only_in_b, vec!["ws_sessions".to_owned()]);
        let text = c.render_text();
        assert!(text.contains("only in A: checks"), "{text}");
        assert!(text.contains("OK: no regression"), "{text}");
        assert!(RunFigures::from_summary_json("bad", &json!({"x": 1})).is_err());
    }
}
