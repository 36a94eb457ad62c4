//! [`Recorder`]: a worker's local store of series. Recording is an index into a `Vec`: no
//! hashing, no allocation, no lock. [`Recorder::take_snapshot`] moves the interval out.

use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::MetricsError;
use crate::series::{MetricKind, SeriesKey, Tags, ValueType};
use crate::snapshot::{SeriesData, Snapshot, new_trend_histogram, trend_units};

/// A handle on one series of one [`Recorder`]; meaningless for any other recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesId(u32);

enum Cell {
    Counter(f64),
    Gauge { last: f64, min: f64, max: f64 },
    Rate { passes: u64, total: u64 },
    Trend(Box<Histogram<u64>>),
}

struct Slot {
    key: SeriesKey,
    value_type: ValueType,
    /// Whether anything was recorded since the last snapshot; only those series are sent.
    touched: bool,
    cell: Cell,
}

struct MetricEntry {
    kind: MetricKind,
    value_type: ValueType,
    by_tags: HashMap<Tags, SeriesId>,
}

/// Per-worker recorder: no locks, no channels. Interns series once; recording is an index.
#[derive(Default)]
pub struct Recorder {
    slots: Vec<Slot>,
    metrics: HashMap<Arc<str>, MetricEntry>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Interns `(kind, metric, tags)`: the same inputs give the same id. A metric keeps the
    /// value type of its first registration. Errors when `metric` was already registered
    /// with another kind (a script doing `new Trend('x')` and `new Counter('x')`).
    pub fn series(
        &mut self,
        kind: MetricKind,
        value_type: ValueType,
        metric: &str,
        tags: &Tags,
    ) -> Result<SeriesId, MetricsError> {
        if let Some(entry) = self.metrics.get(metric) {
            if entry.kind != kind {
                return Err(MetricsError::KindMismatch {
                    metric: metric.to_owned(),
                    existing: entry.kind,
                    new: kind,
                });
            }
            if let Some(id) = entry.by_tags.get(tags) {
                return Ok(*id);
            }
        }
        if metric.is_empty() {
            return Err(MetricsError::InvalidName(metric.to_owned()));
        }
        let index = u32::try_from(self.slots.len()).map_err(|_| MetricsError::TooManySeries)?;
        let id = SeriesId(index);
        let (name, value_type) = match self.metrics.get_key_value(metric) {
            Some((name, entry)) => (name.clone(), entry.value_type),
            None => (Arc::<str>::from(metric), value_type),
        };
        let entry = self
            .metrics
            .entry(name.clone())
            .or_insert_with(|| MetricEntry {
                kind,
                value_type,
                by_tags: HashMap::new(),
            });
        entry.by_tags.insert(tags.clone(), id);
        self.slots.push(Slot {
            key: SeriesKey {
                metric: name,
                tags: tags.clone(),
            },
            value_type,
            touched: false,
            cell: empty_cell(kind),
        });
        Ok(id)
    }

    /// The number of interned series.
    pub fn series_count(&self) -> usize {
        self.slots.len()
    }

    /// Records a trend value (ms for time trends). Stored as `round(value * 1000)`, clamped
    /// to `[1, 3.6e9]`; NaN is ignored.
    #[inline]
    pub fn add_trend(&mut self, id: SeriesId, value: f64) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        match &mut slot.cell {
            Cell::Trend(h) => {
                if let Some(v) = trend_units(value) {
                    h.saturating_record(v);
                    slot.touched = true;
                }
            }
            _ => debug_assert!(false, "add_trend on a {} series", slot.key),
        }
    }

    #[inline]
    pub fn add_counter(&mut self, id: SeriesId, value: f64) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        match &mut slot.cell {
            Cell::Counter(sum) => {
                if !value.is_nan() {
                    *sum += value;
                    slot.touched = true;
                }
            }
            _ => debug_assert!(false, "add_counter on a {} series", slot.key),
        }
    }

    #[inline]
    pub fn add_rate(&mut self, id: SeriesId, pass: bool) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        match &mut slot.cell {
            Cell::Rate { passes, total } => {
                *passes += u64::from(pass);
                *total += 1;
                slot.touched = true;
            }
            _ => debug_assert!(false, "add_rate on a {} series", slot.key),
        }
    }

    #[inline]
    pub fn set_gauge(&mut self, id: SeriesId, value: f64) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        match &mut slot.cell {
            Cell::Gauge { last, min, max } => {
                if !value.is_nan() {
                    *last = value;
                    *min = min.min(value);
                    *max = max.max(value);
                    slot.touched = true;
                }
            }
            _ => debug_assert!(false, "set_gauge on a {} series", slot.key),
        }
    }

    /// Moves out everything recorded since the last call (an interval delta) and resets.
    /// Only series that got data in the interval are included. Gauges are stamped with
    /// `end_unix_ms`, the moment the interval's last value is known to hold.
    pub fn take_snapshot(&mut self, start_unix_ms: u64, end_unix_ms: u64) -> Snapshot {
        let mut snapshot = Snapshot::empty(start_unix_ms, end_unix_ms);
        for slot in &mut self.slots {
            if !slot.touched {
                continue;
            }
            slot.touched = false;
            let data = match &mut slot.cell {
                Cell::Counter(sum) => SeriesData::Counter {
                    sum: std::mem::take(sum),
                },
                Cell::Gauge { last, min, max } => {
                    let data = SeriesData::Gauge {
                        last: *last,
                        min: *min,
                        max: *max,
                        at_unix_ms: end_unix_ms,
                    };
                    // A gauge's min and max are per interval; its value carries over.
                    *min = f64::INFINITY;
                    *max = f64::NEG_INFINITY;
                    data
                }
                Cell::Rate { passes, total } => SeriesData::Rate {
                    passes: std::mem::take(passes),
                    total: std::mem::take(total),
                },
                // A fresh zeroed allocation costs about what resetting the old histogram would
                // (the counts array is ~190 KB either way) and the old one leaves with the
                // snapshot, so nothing is copied.
                Cell::Trend(h) => SeriesData::Trend {
                    value_type: slot.value_type,
                    hist: std::mem::replace(h, new_trend_histogram()),
                },
            };
            snapshot.series.insert(slot.key.clone(), data);
        }
        snapshot
    }
}

fn empty_cell(kind: MetricKind) -> Cell {
    match kind {
        MetricKind::Counter => Cell::Counter(0.0),
        MetricKind::Gauge => Cell::Gauge {
            last: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        },
        MetricKind::Rate => Cell::Rate {
            passes: 0,
            total: 0,
        },
        MetricKind::Trend => Cell::Trend(new_trend_histogram()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_and_kind_conflicts() {
        let mut r = Recorder::new();
        let t = Tags::new([("name", "a")]);
        let a = r
            .series(MetricKind::Trend, ValueType::Time, "d", &t)
            .unwrap();
        let b = r
            .series(MetricKind::Trend, ValueType::Time, "d", &t)
            .unwrap();
        let c = r
            .series(MetricKind::Trend, ValueType::Time, "d", &Tags::empty())
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let e = r
            .series(MetricKind::Counter, ValueType::Default, "d", &t)
            .unwrap_err();
        assert!(e.to_string().contains("already"), "{e}");
        assert!(
            r.series(MetricKind::Counter, ValueType::Default, "", &t)
                .is_err()
        );
        assert_eq!(r.series_count(), 2);
    }

    #[test]
    fn snapshot_holds_the_interval_only() {
        let mut r = Recorder::new();
        let t = Tags::empty();
        let d = r
            .series(MetricKind::Trend, ValueType::Time, "d", &t)
            .unwrap();
        let c = r
            .series(MetricKind::Counter, ValueType::Default, "c", &t)
            .unwrap();
        let g = r
            .series(MetricKind::Gauge, ValueType::Default, "g", &t)
            .unwrap();
        let q = r
            .series(MetricKind::Rate, ValueType::Default, "q", &t)
            .unwrap();
        let _unused = r
            .series(MetricKind::Counter, ValueType::Default, "u", &t)
            .unwrap();
        r.add_trend(d, 1.5);
        r.add_trend(d, f64::NAN);
        r.add_trend(d, 7_200_000.0);
        r.add_counter(c, 2.0);
        r.add_counter(c, 3.0);
        r.set_gauge(g, 4.0);
        r.set_gauge(g, 2.0);
        r.add_rate(q, true);
        r.add_rate(q, false);
        let s = r.take_snapshot(1000, 2000);
        assert_eq!(s.series.len(), 4);
        let get = |s: &Snapshot, m: &str| s.series[&SeriesKey::new(m, Tags::empty())].clone();
        match get(&s, "d") {
            SeriesData::Trend { hist, value_type } => {
                assert_eq!(value_type, ValueType::Time);
                assert_eq!(hist.len(), 2);
                assert_eq!(hist.min(), 1500);
                assert!(hist.equivalent(hist.max(), 3_600_000_000));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(get(&s, "c"), SeriesData::Counter { sum: 5.0 });
        assert_eq!(
            get(&s, "g"),
            SeriesData::Gauge {
                last: 2.0,
                min: 2.0,
                max: 4.0,
                at_unix_ms: 2000
            }
        );
        assert_eq!(
            get(&s, "q"),
            SeriesData::Rate {
                passes: 1,
                total: 2
            }
        );
        // The next interval starts empty.
        let s = r.take_snapshot(2000, 3000);
        assert!(s.series.is_empty());
        r.add_trend(d, 3.0);
        let s = r.take_snapshot(3000, 4000);
        match get(&s, "d") {
            SeriesData::Trend { hist, .. } => assert_eq!(hist.len(), 1),
            other => panic!("{other:?}"),
        }
    }
}
