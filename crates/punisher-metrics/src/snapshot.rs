//! [`Snapshot`]: one interval's deltas per series, and their exact merge.
//!
//! Snapshots are what workers hand over every second and what agents send to the
//! controller; merging two of them is the same as having recorded everything into one.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::MetricsError;
use crate::series::{MetricKind, SeriesKey, ValueType};

/// Lowest value a trend histogram tracks: 1 µs (values are stored in µs).
pub const TREND_LOW: u64 = 1;
/// Highest value a trend histogram tracks: one hour in µs. Larger values are clamped.
pub const TREND_HIGH: u64 = 3_600_000_000;
/// Significant decimal digits of trend histograms.
pub const TREND_SIGFIG: u8 = 3;
/// Trend values are recorded in thousandths of their unit (µs for times in ms).
pub const TREND_SCALE: f64 = 1000.0;

/// A new, empty trend histogram with the bounds every snapshot shares (so merges are exact).
/// One that [`Snapshot::recycle`] gave back is reused when there is one.
pub fn new_trend_histogram() -> Box<Histogram<u64>> {
    if let Some(h) = spare_histograms().pop() {
        return h;
    }
    let mut h = Histogram::new_with_bounds(TREND_LOW, TREND_HIGH, TREND_SIGFIG)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"));
    h.auto(false);
    Box::new(h)
}

/// Empty trend histograms given back by [`Snapshot::recycle`]. A worker replaces each trend
/// it reports every second, and a fresh ~190 KB allocation came from pages the allocator had
/// given back to the kernel: page faults and page clearing were ~8% of an agent's CPU at
/// 300,000 viewers (perf). A reset of a resident one is a plain memset.
/// Boxed as in [`SeriesData::Trend`], so that they move in and out without a copy.
#[allow(clippy::vec_box)]
static SPARE_HISTOGRAMS: Mutex<Vec<Box<Histogram<u64>>>> = Mutex::new(Vec::new());
/// ~12 MB at most: more than the trend series an agent reports in a second.
const MAX_SPARE_HISTOGRAMS: usize = 64;

#[allow(clippy::vec_box)]
fn spare_histograms() -> std::sync::MutexGuard<'static, Vec<Box<Histogram<u64>>>> {
    SPARE_HISTOGRAMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Names the metric in a kind mismatch found by [`SeriesData::merge`].
fn with_metric(e: MetricsError, key: &SeriesKey) -> MetricsError {
    match e {
        MetricsError::KindMismatch { existing, new, .. } => MetricsError::KindMismatch {
            metric: key.metric.to_string(),
            existing,
            new,
        },
        e => e,
    }
}

/// Resets the trend histograms among `series` and keeps them, up to the pool's size.
fn give_back(series: impl IntoIterator<Item = SeriesData>) {
    let room = MAX_SPARE_HISTOGRAMS.saturating_sub(spare_histograms().len());
    let mut spare: Vec<Box<Histogram<u64>>> = series
        .into_iter()
        .filter_map(|data| match data {
            SeriesData::Trend { hist, .. } => Some(hist),
            _ => None,
        })
        .take(room)
        .collect();
    if spare.is_empty() {
        return;
    }
    // Reset outside the lock: the workers take from the pool meanwhile.
    for h in &mut spare {
        h.reset();
    }
    let mut pool = spare_histograms();
    let room = MAX_SPARE_HISTOGRAMS.saturating_sub(pool.len());
    pool.extend(spare.into_iter().take(room));
}

/// Converts a trend value (ms for times) to the histogram's integer unit, clamped to its range.
/// Returns `None` for NaN.
#[inline]
pub(crate) fn trend_units(value: f64) -> Option<u64> {
    if value.is_nan() {
        return None;
    }
    let scaled = (value * TREND_SCALE).round();
    // `as` saturates, and the clamp keeps 0 and negative values at the lowest bucket.
    Some((scaled as u64).clamp(TREND_LOW, TREND_HIGH))
}

/// The data of one series over an interval (or a whole run, in [`crate::Totals`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SeriesData {
    Counter {
        sum: f64,
    },
    /// Merge keeps the `last` with the latest `at_unix_ms` (ties: the larger value).
    Gauge {
        last: f64,
        min: f64,
        max: f64,
        at_unix_ms: u64,
    },
    Rate {
        passes: u64,
        total: u64,
    },
    /// Values in thousandths of their unit (µs for times), 1..=3_600_000_000, 3 digits.
    Trend {
        value_type: ValueType,
        hist: Box<Histogram<u64>>,
    },
}

impl SeriesData {
    pub fn kind(&self) -> MetricKind {
        match self {
            Self::Counter { .. } => MetricKind::Counter,
            Self::Gauge { .. } => MetricKind::Gauge,
            Self::Rate { .. } => MetricKind::Rate,
            Self::Trend { .. } => MetricKind::Trend,
        }
    }

    /// Adds `other` into `self` exactly. Errors (and changes nothing) when the kinds differ.
    pub fn merge(&mut self, other: &SeriesData) -> Result<(), MetricsError> {
        match (self, other) {
            (Self::Counter { sum }, Self::Counter { sum: o }) => *sum += o,
            (
                Self::Gauge {
                    last,
                    min,
                    max,
                    at_unix_ms,
                },
                Self::Gauge {
                    last: o_last,
                    min: o_min,
                    max: o_max,
                    at_unix_ms: o_at,
                },
            ) => {
                if *o_at > *at_unix_ms || (*o_at == *at_unix_ms && *o_last > *last) {
                    *last = *o_last;
                    *at_unix_ms = *o_at;
                }
                *min = min.min(*o_min);
                *max = max.max(*o_max);
            }
            (
                Self::Rate { passes, total },
                Self::Rate {
                    passes: p,
                    total: t,
                },
            ) => {
                *passes = passes.saturating_add(*p);
                *total = total.saturating_add(*t);
            }
            (Self::Trend { hist, .. }, Self::Trend { hist: o, .. }) => {
                hist.add(&**o)
                    .map_err(|e| MetricsError::Histogram(format!("{e:?}")))?;
            }
            (this, other) => {
                return Err(MetricsError::KindMismatch {
                    metric: String::new(),
                    existing: this.kind(),
                    new: other.kind(),
                });
            }
        }
        Ok(())
    }
}

/// One interval's deltas, from one worker, one agent, or merged from many.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub start_unix_ms: u64,
    pub end_unix_ms: u64,
    pub series: BTreeMap<SeriesKey, SeriesData>,
}

impl Snapshot {
    pub fn empty(start_unix_ms: u64, end_unix_ms: u64) -> Snapshot {
        Snapshot {
            start_unix_ms,
            end_unix_ms,
            series: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Adds `other` into `self` exactly (histograms are added, never averaged). The interval
    /// becomes the union of both. A series whose kind differs between the two is an error,
    /// and then `self` is left unchanged.
    pub fn merge(&mut self, other: &Snapshot) -> Result<(), MetricsError> {
        self.check_kinds(other)?;
        for (key, data) in &other.series {
            match self.series.entry(key.clone()) {
                Entry::Vacant(v) => {
                    v.insert(data.clone());
                }
                Entry::Occupied(mut o) => {
                    o.get_mut().merge(data).map_err(|e| with_metric(e, key))?
                }
            }
        }
        self.widen(other.start_unix_ms, other.end_unix_ms);
        Ok(())
    }

    /// [`merge`](Self::merge) that takes `other` by value: a series new to `self` is moved in
    /// instead of copied. A trend's histogram is ~190 KB, so an agent that merges each
    /// worker's snapshot into an empty second saves a copy per trend series and second. The
    /// histograms added into existing series go back to the pool (see [`Snapshot::recycle`]).
    pub fn merge_owned(&mut self, other: Snapshot) -> Result<(), MetricsError> {
        self.check_kinds(&other)?;
        let (start, end) = (other.start_unix_ms, other.end_unix_ms);
        let mut merged_away = Vec::new();
        for (key, data) in other.series {
            match self.series.get_mut(&key) {
                Some(mine) => {
                    mine.merge(&data).map_err(|e| with_metric(e, &key))?;
                    merged_away.push(data);
                }
                None => {
                    self.series.insert(key, data);
                }
            }
        }
        give_back(merged_away);
        self.widen(start, end);
        Ok(())
    }

    /// Drops the snapshot, keeping its trend histograms (reset) for the next
    /// [`new_trend_histogram`] of this process. For a snapshot that was sent or merged and
    /// is done with, on a path that runs every second.
    pub fn recycle(self) {
        give_back(self.series.into_values());
    }

    /// Checks every kind before anything is merged, so that a bad snapshot leaves no
    /// half-merged state behind.
    fn check_kinds(&self, other: &Snapshot) -> Result<(), MetricsError> {
        for (key, data) in &other.series {
            if let Some(mine) = self.series.get(key)
                && mine.kind() != data.kind()
            {
                return Err(MetricsError::KindMismatch {
                    metric: key.metric.to_string(),
                    existing: mine.kind(),
                    new: data.kind(),
                });
            }
        }
        Ok(())
    }

    /// Extends the interval to cover `[start, end]`. An empty snapshot whose interval is
    /// `0..0` takes the other interval as is.
    pub(crate) fn widen(&mut self, start: u64, end: u64) {
        if self.start_unix_ms == 0 && self.end_unix_ms == 0 {
            self.start_unix_ms = start;
            self.end_unix_ms = end;
        } else {
            self.start_unix_ms = self.start_unix_ms.min(start);
            self.end_unix_ms = self.end_unix_ms.max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::Tags;

    fn gauge(last: f64, min: f64, max: f64, at: u64) -> SeriesData {
        SeriesData::Gauge {
            last,
            min,
            max,
            at_unix_ms: at,
        }
    }

    #[test]
    fn gauge_merge_keeps_latest_then_larger() {
        let cases = [
            // (a, b, expected)
            (
                gauge(5.0, 1.0, 9.0, 10),
                gauge(3.0, 2.0, 4.0, 20),
                gauge(3.0, 1.0, 9.0, 20),
            ),
            (
                gauge(5.0, 1.0, 9.0, 30),
                gauge(3.0, 0.5, 4.0, 20),
                gauge(5.0, 0.5, 9.0, 30),
            ),
            (
                gauge(5.0, 5.0, 5.0, 20),
                gauge(7.0, 7.0, 7.0, 20),
                gauge(7.0, 5.0, 7.0, 20),
            ),
            (
                gauge(7.0, 7.0, 7.0, 20),
                gauge(5.0, 5.0, 5.0, 20),
                gauge(7.0, 5.0, 7.0, 20),
            ),
        ];
        for (a, b, expected) in cases {
            let mut m = a.clone();
            m.merge(&b).unwrap();
            assert_eq!(m, expected, "{a:?} + {b:?}");
            // Gauge merge is commutative.
            let mut m = b.clone();
            m.merge(&a).unwrap();
            assert_eq!(m, expected, "{b:?} + {a:?}");
        }
    }

    #[test]
    fn kind_mismatch_leaves_snapshot_unchanged() {
        let key = SeriesKey::new("x", Tags::empty());
        let other_key = SeriesKey::new("y", Tags::empty());
        let mut a = Snapshot::empty(1, 2);
        a.series
            .insert(key.clone(), SeriesData::Counter { sum: 1.0 });
        let mut b = Snapshot::empty(1, 2);
        b.series.insert(
            key.clone(),
            SeriesData::Rate {
                passes: 1,
                total: 1,
            },
        );
        b.series.insert(other_key, SeriesData::Counter { sum: 1.0 });
        let before = a.clone();
        let e = a.merge(&b).unwrap_err();
        assert!(e.to_string().contains("x"), "{e}");
        assert_eq!(a, before);
        let e = a.merge_owned(b).unwrap_err();
        assert!(e.to_string().contains("x"), "{e}");
        assert_eq!(a, before);
    }

    #[test]
    fn trend_units_clamp_and_round() {
        assert_eq!(trend_units(f64::NAN), None);
        assert_eq!(trend_units(-5.0), Some(TREND_LOW));
        assert_eq!(trend_units(0.0), Some(TREND_LOW));
        assert_eq!(trend_units(1.2344), Some(1234));
        assert_eq!(trend_units(1.2346), Some(1235));
        assert_eq!(trend_units(f64::INFINITY), Some(TREND_HIGH));
        assert_eq!(trend_units(1e300), Some(TREND_HIGH));
    }
}
