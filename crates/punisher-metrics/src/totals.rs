//! [`Totals`]: snapshots accumulated over a run (or a window), queried by metric and tag
//! filter for thresholds, status lines and the summary.

use std::time::Duration;

use crate::MetricsError;
use crate::series::{SeriesKey, Tags};
use crate::snapshot::{SeriesData, Snapshot};

/// Running totals of a whole run: every series merged over every snapshot added.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    inner: Snapshot,
    /// Whether a snapshot was added: an empty `Snapshot` uses `0..0` as "no interval yet".
    any: bool,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::empty(0, 0)
    }
}

impl Totals {
    pub fn new() -> Totals {
        Totals::default()
    }

    /// Merges `snapshot` in. On a kind mismatch nothing is added and the error says which
    /// metric.
    pub fn add(&mut self, snapshot: &Snapshot) -> Result<(), MetricsError> {
        if !self.any {
            self.inner.start_unix_ms = snapshot.start_unix_ms;
            self.inner.end_unix_ms = snapshot.end_unix_ms;
            self.any = true;
        }
        self.inner.merge(snapshot)
    }

    /// Every series, in key order (metric, then tags).
    pub fn series(&self) -> impl Iterator<Item = (&SeriesKey, &SeriesData)> {
        self.inner.series.iter()
    }

    /// The series of one metric, in tag order.
    pub fn metric_series<'a>(
        &'a self,
        metric: &'a str,
    ) -> impl Iterator<Item = (&'a SeriesKey, &'a SeriesData)> + 'a {
        let from = SeriesKey::new(metric, Tags::empty());
        self.inner
            .series
            .range(from..)
            .take_while(move |(k, _)| &*k.metric == metric)
    }

    /// The distinct metric names, sorted.
    pub fn metrics(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.inner.series.keys().map(|k| &*k.metric).collect();
        names.dedup();
        names
    }

    /// Merge of every series of `metric` whose tags contain all of `filter`; `None` when no
    /// series matches.
    pub fn aggregate(&self, metric: &str, filter: &Tags) -> Option<SeriesData> {
        let mut out: Option<SeriesData> = None;
        for (key, data) in self.metric_series(metric) {
            if !key.tags.contains_all(filter) {
                continue;
            }
            match &mut out {
                None => out = Some(data.clone()),
                // A metric has one kind in a consistent run; a series of another kind (which
                // `add` would have refused) is skipped rather than reported twice.
                Some(acc) => {
                    let _ = acc.merge(data);
                }
            }
        }
        out
    }

    /// From the first snapshot's start to the last snapshot's end (for per-second rates).
    pub fn elapsed(&self) -> Duration {
        Duration::from_millis(
            self.inner
                .end_unix_ms
                .saturating_sub(self.inner.start_unix_ms),
        )
    }

    /// The accumulated data as one snapshot (e.g. to encode a run's totals).
    pub fn as_snapshot(&self) -> &Snapshot {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Recorder;
    use crate::series::{MetricKind, ValueType};

    #[test]
    fn aggregate_with_tag_filters() {
        let mut r = Recorder::new();
        let mut ids = Vec::new();
        for (name, status, n) in [("vote", "200", 3), ("vote", "409", 2), ("info", "200", 5)] {
            let tags = Tags::new([("name", name), ("status", status)]);
            let id = r
                .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
                .unwrap();
            ids.push((id, n));
        }
        let other = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "http_reqs_x",
                &Tags::empty(),
            )
            .unwrap();
        for (id, n) in &ids {
            r.add_counter(*id, *n as f64);
        }
        r.add_counter(other, 100.0);
        let mut totals = Totals::new();
        totals.add(&r.take_snapshot(1_000, 2_000)).unwrap();
        r.add_counter(ids[0].0, 1.0);
        totals.add(&r.take_snapshot(2_000, 3_000)).unwrap();
        assert_eq!(totals.elapsed(), Duration::from_secs(2));

        let count = |filter: &[(&str, &str)]| match totals
            .aggregate("http_reqs", &Tags::new(filter.iter().copied()))
        {
            Some(SeriesData::Counter { sum }) => Some(sum),
            None => None,
            other => panic!("{other:?}"),
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], Option<f64>);
        let cases: &[Case<'_>] = &[
            (&[], Some(11.0)),
            (&[("name", "vote")], Some(6.0)),
            (&[("status", "200")], Some(9.0)),
            (&[("name", "vote"), ("status", "409")], Some(2.0)),
            (&[("name", "nope")], None),
            (&[("method", "GET")], None),
        ];
        for (filter, expect) in cases {
            assert_eq!(count(filter), *expect, "{filter:?}");
        }
        assert_eq!(totals.metrics(), vec!["http_reqs", "http_reqs_x"]);
        assert!(totals.aggregate("http_req", &Tags::empty()).is_none());
    }
}
