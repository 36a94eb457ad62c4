//! [`Timeline`]: the per-second headline values of every metric (its sub-series merged), and
//! the live numbers, in the form charts need. The journal builds it as it writes, and
//! replay rebuilds it from `timeseries.jsonl`; it holds no histograms, so that a long run
//! stays small in memory.

use std::collections::BTreeMap;

use punisher_metrics::snapshot::TREND_SCALE;
use punisher_metrics::{MetricKind, SeriesData, Snapshot, ValueType};
use serde::{Deserialize, Serialize};

use crate::live::LiveNumbers;

/// The values of one series (or one whole metric) over one interval. Which fields are set
/// depends on the kind: counter `count`, `rate`; gauge `value`, `min`, `max`, `at`; rate
/// `passes`, `total`, `rate`; trend `count`, `sum`, `rate`, `avg`, `min`, `max`, `p50`, `p90`,
/// `p95`, `p99`. Trend values are in the metric's unit (ms for times); `rate` of counters and
/// trends is per second; `rate` of a rate metric is the share of true samples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Values {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A gauge's time of its last value, Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Decimal text of the fields above whose JSON number serde_json would not read back
    /// bit for bit (its default float parser can be one ulp off for 17-digit numbers), so
    /// that replayed totals are exact. Only in the file; empty in memory.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub exact: BTreeMap<String, String>,
}

impl Values {
    fn floats_mut(&mut self) -> [(&'static str, &mut Option<f64>); 11] {
        [
            ("count", &mut self.count),
            ("sum", &mut self.sum),
            ("rate", &mut self.rate),
            ("avg", &mut self.avg),
            ("min", &mut self.min),
            ("max", &mut self.max),
            ("p50", &mut self.p50),
            ("p90", &mut self.p90),
            ("p95", &mut self.p95),
            ("p99", &mut self.p99),
            ("value", &mut self.value),
        ]
    }

    /// A copy for the file: with `exact` text for the numbers JSON would not round-trip.
    pub(crate) fn for_file(&self) -> Values {
        let mut out = self.clone();
        let mut exact = BTreeMap::new();
        for (name, v) in out.floats_mut() {
            if let Some(v) = *v {
                let back = serde_json::to_string(&v)
                    .ok()
                    .and_then(|s| serde_json::from_str::<f64>(&s).ok());
                if back.map(f64::to_bits) != Some(v.to_bits()) {
                    exact.insert(name.to_owned(), format!("{v:?}"));
                }
            }
        }
        out.exact = exact;
        out
    }

    /// After reading from the file: the `exact` texts replace their fields.
    pub(crate) fn apply_exact(&mut self) {
        let exact = std::mem::take(&mut self.exact);
        for (name, v) in self.floats_mut() {
            if let Some(parsed) = exact.get(name).and_then(|s| s.parse::<f64>().ok()) {
                *v = Some(parsed);
            }
        }
    }

    /// The headline values of `data` over an interval of `secs` seconds.
    pub fn of(data: &SeriesData, secs: f64) -> Values {
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        match data {
            SeriesData::Counter { sum } => Values {
                count: Some(*sum),
                rate: Some(per_sec(*sum)),
                ..Values::default()
            },
            SeriesData::Gauge {
                last,
                min,
                max,
                at_unix_ms,
            } => Values {
                value: Some(*last),
                min: Some(*min),
                max: Some(*max),
                at: Some(*at_unix_ms),
                ..Values::default()
            },
            SeriesData::Rate { passes, total } => Values {
                passes: Some(*passes),
                total: Some(*total),
                rate: Some(if *total > 0 {
                    *passes as f64 / *total as f64
                } else {
                    0.0
                }),
                ..Values::default()
            },
            SeriesData::Trend { hist, .. } => {
                let n = hist.len() as f64;
                let mut v = Values {
                    count: Some(n),
                    rate: Some(per_sec(n)),
                    ..Values::default()
                };
                if !hist.is_empty() {
                    let unit = |raw: u64| raw as f64 / TREND_SCALE;
                    let mean = hist.mean() / TREND_SCALE;
                    v.sum = Some(mean * n);
                    v.avg = Some(mean);
                    v.min = Some(unit(hist.min()));
                    v.max = Some(unit(hist.max()));
                    v.p50 = Some(unit(hist.value_at_quantile(0.50)));
                    v.p90 = Some(unit(hist.value_at_quantile(0.90)));
                    v.p95 = Some(unit(hist.value_at_quantile(0.95)));
                    v.p99 = Some(unit(hist.value_at_quantile(0.99)));
                }
                v
            }
        }
    }
}

/// One interval of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Interval start and end, Unix ms.
    pub ts: u64,
    pub end: u64,
    pub values: Values,
}

/// One metric over time, its sub-series merged.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricTimeline {
    pub kind: MetricKind,
    /// Set for trends.
    pub value_type: Option<ValueType>,
    pub points: Vec<Point>,
}

/// The live numbers at the end of one second.
#[derive(Debug, Clone, PartialEq)]
pub struct LivePoint {
    pub ts: u64,
    pub end: u64,
    pub live: LiveNumbers,
}

/// Per-second values of every metric and the live numbers of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    pub metrics: BTreeMap<String, MetricTimeline>,
    pub live: Vec<LivePoint>,
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline::default()
    }

    pub fn metric(&self, name: &str) -> Option<&MetricTimeline> {
        self.metrics.get(name)
    }

    /// The earliest interval start, Unix ms.
    pub fn start_unix_ms(&self) -> Option<u64> {
        let live = self.live.first().map(|p| p.ts);
        let metrics = self
            .metrics
            .values()
            .filter_map(|m| m.points.first().map(|p| p.ts));
        live.into_iter().chain(metrics).min()
    }

    /// Adds one second: every metric of `snapshot` merged over its sub-series, and `live`.
    /// Returns the merged data per metric (the journal writes it too).
    pub fn push_second(
        &mut self,
        snapshot: &Snapshot,
        live: &LiveNumbers,
    ) -> BTreeMap<String, SeriesData> {
        let merged = merge_by_metric(snapshot);
        let secs = interval_secs(snapshot.start_unix_ms, snapshot.end_unix_ms);
        for (metric, data) in &merged {
            self.push_point(
                metric,
                data.kind(),
                value_type(data),
                Point {
                    ts: snapshot.start_unix_ms,
                    end: snapshot.end_unix_ms,
                    values: Values::of(data, secs),
                },
            );
        }
        self.live.push(LivePoint {
            ts: snapshot.start_unix_ms,
            end: snapshot.end_unix_ms,
            live: live.clone(),
        });
        merged
    }

    pub(crate) fn push_point(
        &mut self,
        metric: &str,
        kind: MetricKind,
        value_type: Option<ValueType>,
        point: Point,
    ) {
        self.metrics
            .entry(metric.to_owned())
            .or_insert_with(|| MetricTimeline {
                kind,
                value_type,
                points: Vec::new(),
            })
            .points
            .push(point);
    }
}

pub(crate) fn interval_secs(start: u64, end: u64) -> f64 {
    end.saturating_sub(start) as f64 / 1000.0
}

pub(crate) fn value_type(data: &SeriesData) -> Option<ValueType> {
    match data {
        SeriesData::Trend { value_type, .. } => Some(*value_type),
        _ => None,
    }
}

/// Every metric of `snapshot` with its sub-series merged. A sub-series of another kind
/// (which a merge upstream would have refused) is left out rather than failing the second.
pub(crate) fn merge_by_metric(snapshot: &Snapshot) -> BTreeMap<String, SeriesData> {
    let mut out: BTreeMap<String, SeriesData> = BTreeMap::new();
    for (key, data) in &snapshot.series {
        match out.get_mut(&*key.metric) {
            Some(acc) => {
                let _ = acc.merge(data);
            }
            None => {
                out.insert(key.metric.to_string(), data.clone());
            }
        }
    }
    out
}
