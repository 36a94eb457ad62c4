//! The controller's bulk merge: [`Accumulator`] adds encoded snapshots into flat count
//! arrays (an addition per bin, no histogram bookkeeping) and builds the histograms once at
//! the end; [`merge_many`] shards a tick's messages across threads and combines the parts.
//! Also the ordered join of a message's sorted series with a sorted map, shared with
//! [`crate::SnapshotDecoder::merge_into`].

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::MetricsError;
use crate::codec::{Parsed, Pending, SnapshotDecoder, value_for_index};
use crate::series::{MetricKind, SeriesKey, ValueType};
use crate::snapshot::{SeriesData, Snapshot, new_trend_histogram};

/// A map value whose kind can be checked against a pending series.
pub(crate) trait JoinSlot {
    fn kind(&self) -> MetricKind;
}

/// Whether to walk the whole map alongside the message (both sorted: a few pointer
/// comparisons per series) rather than search it once per series. Walking wins unless the
/// map is much larger than the message.
fn walk(map_len: usize, n: usize) -> bool {
    map_len <= 4 * n + 16
}

fn mismatch(key: &SeriesKey, existing: MetricKind, new: MetricKind) -> MetricsError {
    MetricsError::KindMismatch {
        metric: key.metric.to_string(),
        existing,
        new,
    }
}

/// Errors if a pending series has another kind than the same series in `map`.
pub(crate) fn check_join<V: JoinSlot>(
    map: &BTreeMap<SeriesKey, V>,
    pending: &[(SeriesKey, Pending)],
) -> Result<(), MetricsError> {
    let check = |key: &SeriesKey, v: &V, p: &Pending| {
        if v.kind() == p.kind() {
            Ok(())
        } else {
            Err(mismatch(key, v.kind(), p.kind()))
        }
    };
    if walk(map.len(), pending.len()) {
        let mut it = map.iter();
        let mut cur = it.next();
        for (key, p) in pending {
            while let Some((k, v)) = cur {
                match (*k).cmp(key) {
                    Ordering::Less => cur = it.next(),
                    Ordering::Equal => {
                        check(key, v, p)?;
                        break;
                    }
                    Ordering::Greater => break,
                }
            }
        }
    } else {
        for (key, p) in pending {
            if let Some(v) = map.get(key) {
                check(key, v, p)?;
            }
        }
    }
    Ok(())
}

/// Moves every pending series into `map`: `merge` into the existing value, or `make` a new
/// one. Kinds must have been checked with [`check_join`].
pub(crate) fn apply_join<V>(
    map: &mut BTreeMap<SeriesKey, V>,
    pending: &mut Vec<(SeriesKey, Pending)>,
    mut merge: impl FnMut(&mut V, Pending),
    mut make: impl FnMut(Pending) -> V,
) {
    let mut missing = Vec::new();
    if walk(map.len(), pending.len()) {
        let mut it = map.iter_mut();
        let mut cur = it.next();
        for (key, p) in pending.drain(..) {
            let mut hit = false;
            while let Some((k, _)) = &cur {
                match (*k).cmp(&key) {
                    Ordering::Less => cur = it.next(),
                    Ordering::Equal => {
                        hit = true;
                        break;
                    }
                    Ordering::Greater => break,
                }
            }
            match cur.take() {
                Some((_, v)) if hit => {
                    merge(v, p);
                    cur = it.next();
                }
                other => {
                    cur = other;
                    missing.push((key, p));
                }
            }
        }
    } else {
        for (key, p) in pending.drain(..) {
            match map.get_mut(&key) {
                Some(v) => merge(v, p),
                None => missing.push((key, p)),
            }
        }
    }
    for (key, p) in missing {
        map.insert(key, make(p));
    }
}

/// A series being accumulated: trends as a flat counts array in our bucket layout, as long
/// as its highest non-zero bin.
enum Slot {
    Data(SeriesData),
    Trend {
        value_type: ValueType,
        counts: Vec<u64>,
    },
}

impl JoinSlot for Slot {
    fn kind(&self) -> MetricKind {
        match self {
            Slot::Data(d) => d.kind(),
            Slot::Trend { .. } => MetricKind::Trend,
        }
    }
}

fn add_counts(into: &mut Vec<u64>, pairs: &[(u32, u64)]) {
    if let Some(&(last, _)) = pairs.last()
        && into.len() <= last as usize
    {
        into.resize(last as usize + 1, 0);
    }
    for &(i, c) in pairs {
        let slot = &mut into[i as usize];
        *slot = slot.saturating_add(c);
    }
}

/// The interval of merged messages, widened as [`Snapshot::merge`] widens it, in a form
/// that can be combined in order from parts.
#[derive(Clone, Copy)]
struct Interval {
    /// What widening from `0..0` through every message gives.
    result: (u64, u64),
    /// The plain minimum start and maximum end of the messages.
    bounds: Option<(u64, u64)>,
}

impl Interval {
    const EMPTY: Interval = Interval {
        result: (0, 0),
        bounds: None,
    };

    fn widen(&mut self, start: u64, end: u64) {
        let mut s = Snapshot::empty(self.result.0, self.result.1);
        s.widen(start, end);
        self.result = (s.start_unix_ms, s.end_unix_ms);
        self.bounds = Some(match self.bounds {
            None => (start, end),
            Some((a, b)) => (a.min(start), b.max(end)),
        });
    }

    /// `self` followed by `later`.
    fn then(&mut self, later: Interval) {
        let Some((start, end)) = later.bounds else {
            return;
        };
        if self.result == (0, 0) {
            self.result = later.result;
        } else {
            self.result = (self.result.0.min(start), self.result.1.max(end));
        }
        self.bounds = Some(match self.bounds {
            None => (start, end),
            Some((a, b)) => (a.min(start), b.max(end)),
        });
    }
}

/// Adds encoded snapshots together, exactly (the result equals [`Snapshot::merge`] of the
/// decoded messages in the same order) and faster than into a [`Snapshot`]: trend bins are
/// summed in flat arrays, and the histograms are built once by [`Accumulator::finish`].
pub struct Accumulator {
    decoder: SnapshotDecoder,
    interval: Interval,
    series: BTreeMap<SeriesKey, Slot>,
}

impl Default for Accumulator {
    fn default() -> Self {
        Accumulator::new()
    }
}

impl Accumulator {
    pub fn new() -> Accumulator {
        Accumulator {
            decoder: SnapshotDecoder::new(),
            interval: Interval::EMPTY,
            series: BTreeMap::new(),
        }
    }

    /// Adds one encoded snapshot. On any error (malformed bytes, or a series whose kind
    /// differs from what was added before) nothing is added.
    pub fn add(&mut self, bytes: &[u8]) -> Result<(), MetricsError> {
        self.add_inner(bytes, None).map(|_| ())
    }

    /// [`Accumulator::add`], and returns the sum of the counter `metric` (over all its tags)
    /// in what was added: 0 when it is absent, and nothing is added on error.
    pub fn add_counting(&mut self, bytes: &[u8], metric: &str) -> Result<f64, MetricsError> {
        self.add_inner(bytes, Some(metric))
    }

    fn add_inner(&mut self, bytes: &[u8], counter: Option<&str>) -> Result<f64, MetricsError> {
        let Parsed {
            start,
            end,
            pending,
            counts,
        } = self.decoder.parse(bytes)?;
        check_join(&self.series, pending)?;
        let counted = counter.map_or(0.0, |name| {
            pending
                .iter()
                .filter(|(key, _)| &*key.metric == name)
                .map(|(_, p)| match p {
                    Pending::Data(SeriesData::Counter { sum }) => *sum,
                    _ => 0.0,
                })
                .sum()
        });
        apply_join(
            &mut self.series,
            pending,
            |slot, p| match (slot, p) {
                (Slot::Trend { counts: into, .. }, Pending::Trend { counts: range, .. }) => {
                    add_counts(into, &counts[range]);
                }
                (Slot::Data(existing), Pending::Data(d)) => {
                    // Kinds were checked first, so this cannot fail.
                    let _ = existing.merge(&d);
                }
                _ => {}
            },
            |p| match p {
                Pending::Data(d) => Slot::Data(d),
                Pending::Trend {
                    value_type,
                    counts: range,
                } => {
                    let mut into = Vec::new();
                    add_counts(&mut into, &counts[range]);
                    Slot::Trend {
                        value_type,
                        counts: into,
                    }
                }
            },
        );
        self.interval.widen(start, end);
        Ok(counted)
    }

    /// Adds what `later` accumulated after what `self` did. Errors, changing nothing, on a
    /// kind conflict.
    fn then(&mut self, later: Accumulator) -> Result<(), MetricsError> {
        for (key, slot) in &later.series {
            if let Some(mine) = self.series.get(key)
                && mine.kind() != slot.kind()
            {
                return Err(mismatch(key, mine.kind(), slot.kind()));
            }
        }
        for (key, slot) in later.series {
            match (self.series.get_mut(&key), slot) {
                (Some(Slot::Trend { counts, .. }), Slot::Trend { counts: more, .. }) => {
                    if counts.len() < more.len() {
                        counts.resize(more.len(), 0);
                    }
                    for (a, b) in counts.iter_mut().zip(&more) {
                        *a = a.saturating_add(*b);
                    }
                }
                (Some(Slot::Data(d)), Slot::Data(more)) => {
                    let _ = d.merge(&more);
                }
                (Some(_), _) => {}
                (None, slot) => {
                    self.series.insert(key, slot);
                }
            }
        }
        self.interval.then(later.interval);
        Ok(())
    }

    /// The merged snapshot; the accumulator starts over empty (keeping its decoder's caches).
    pub fn finish(&mut self) -> Snapshot {
        let (start, end) = self.interval.result;
        self.interval = Interval::EMPTY;
        let mut snapshot = Snapshot::empty(start, end);
        for (key, slot) in std::mem::take(&mut self.series) {
            let data = match slot {
                Slot::Data(d) => d,
                Slot::Trend { value_type, counts } => {
                    let mut hist = new_trend_histogram();
                    for (i, &c) in counts.iter().enumerate() {
                        if c != 0 {
                            hist.saturating_record_n(value_for_index(i), c);
                        }
                    }
                    SeriesData::Trend { value_type, hist }
                }
            };
            snapshot.series.insert(key, data);
        }
        snapshot
    }
}

/// The result of [`merge_many`]: the merged snapshot, and the messages that were left out
/// (by position in the input) with why.
#[derive(Debug)]
pub struct Merged {
    pub snapshot: Snapshot,
    pub rejected: Vec<(usize, MetricsError)>,
}

/// Merges a tick's encoded snapshots on up to `threads` threads. The result is what
/// merging them one by one in order with [`SnapshotDecoder::merge_into`] into an empty
/// snapshot gives, including which messages are refused: malformed ones, and ones whose
/// series conflict in kind with earlier messages (rare; then the whole tick is redone on
/// one thread, to decide exactly which).
pub fn merge_many(encoded: &[&[u8]], threads: usize) -> Merged {
    let threads = threads.clamp(1, encoded.len().max(1));
    let chunk = encoded.len().div_ceil(threads).max(1);
    let run = |first: usize, part: &[&[u8]]| {
        let mut acc = Accumulator::new();
        let mut rejected = Vec::new();
        for (i, bytes) in part.iter().enumerate() {
            if let Err(e) = acc.add(bytes) {
                rejected.push((first + i, e));
            }
        }
        (acc, rejected)
    };
    let parts: Vec<(Accumulator, Vec<(usize, MetricsError)>)> = if threads == 1 {
        vec![run(0, encoded)]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = encoded
                .chunks(chunk)
                .enumerate()
                .map(|(k, part)| s.spawn(move || run(k * chunk, part)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    };
    let conflicted = parts.iter().any(|(_, rejected)| {
        rejected
            .iter()
            .any(|(_, e)| matches!(e, MetricsError::KindMismatch { .. }))
    });
    let mut parts = parts.into_iter();
    let (mut acc, mut rejected) = parts
        .next()
        .unwrap_or_else(|| (Accumulator::new(), Vec::new()));
    let mut ok = !conflicted;
    if ok {
        for (part, more) in parts {
            if acc.then(part).is_err() {
                ok = false;
                break;
            }
            rejected.extend(more);
        }
    }
    if !ok {
        // A kind conflict across (or within) parts: which message is refused depends on
        // everything merged before it, so merge in order on this thread.
        let (mut acc, rejected) = run(0, encoded);
        return Merged {
            snapshot: acc.finish(),
            rejected,
        };
    }
    Merged {
        snapshot: acc.finish(),
        rejected,
    }
}
