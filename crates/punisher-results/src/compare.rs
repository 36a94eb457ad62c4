//! `punisher compare A B`: the differences in percentiles and rates between two runs, and
//! whether B regressed beyond a tolerance. Runs are read from their `summary.json` (which
//! `punisher report` can rebuild from a journal), so that any two runs compare, old or new.

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
}

impl Tolerance {
    /// `--tolerance P`: latency +P %, error rates +P points, ignoring latency moves under 1 ms.
    pub fn percent(p: f64) -> Tolerance {
        Tolerance {
            latency_pct: p,
            error_points: p,
            min_latency_ms: 1.0,
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

/// The comparable figures of one run: its metrics and tagged sub-series, by name
/// (`http_req_duration`, `http_req_duration{name:vote}`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    /// How the run is named in the comparison (its run id or folder).
    pub label: String,
    pub entries: BTreeMap<String, Figures>,
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
        Ok(RunFigures {
            label: label.to_owned(),
            entries,
        })
    }

    pub fn from_summary(label: &str, summary: &Summary) -> RunFigures {
        Self::from_summary_json(label, &summary.to_json()).unwrap_or(RunFigures {
            label: label.to_owned(),
            entries: BTreeMap::new(),
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

/// The differences between two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub tolerance: Tolerance,
    pub rows: Vec<Row>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// Whether any row regressed: `punisher compare` exits non-zero then.
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
                "counter" if *stat == "rate" => (Unit::PerSecond, false),
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
    let regressed = rows.iter().any(|r| r.regressed);
    Comparison {
        a: a.label.clone(),
        b: b.label.clone(),
        tolerance: *tolerance,
        rows,
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

    /// A table for the terminal, then the verdict.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let t = &self.tolerance;
        let _ = writeln!(
            out,
            "A: {}\nB: {}\ntolerance: latency +{}% (moves under {} ignored), error rates +{} points\n",
            self.a,
            self.b,
            num(t.latency_pct),
            fmt_time(t.min_latency_ms),
            num(t.error_points)
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
        if !self.only_in_a.is_empty() {
            let _ = writeln!(out, "\nonly in A: {}", self.only_in_a.join(", "));
        }
        if !self.only_in_b.is_empty() {
            let _ = writeln!(out, "\nonly in B: {}", self.only_in_b.join(", "));
        }
        let n = self.regressions().count();
        if self.regressed {
            let _ = writeln!(
                out,
                "\nREGRESSED: B is worse than A beyond tolerance in {n} value(s)"
            );
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
        // Faster is never a regression, and lower throughput is only reported.
        assert!(!compare(&a, &run(5.0, 50.0, 0.0, 1.0, 10.0), &tol).regressed);
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
