//! The merge path of one run: every accepted agent report is decoded straight into the
//! open second it is labelled with ([`Merger::add_report`]; agents label each report with
//! one whole wall-clock second), and once per second the seconds that ended are closed,
//! added to the run's totals and encoded once for the journal and the live view
//! ([`Merger::close_interval`]). This is the controller's per-second hot path (1,000 agents
//! x 100 series); `benches/merge_tick.rs` measures it.
//!
//! A report of a second already closed (it arrived late) lands in the first open second:
//! counted once, a second late. A report labelled far ahead (a clock the offset did not
//! correct) lands at most [`MAX_AHEAD_MS`] after the last closed second.

use std::collections::BTreeMap;

use punisher_metrics::{Accumulator, MetricsError, Snapshot, SnapshotEncoder, Totals};

/// How far after the last closed second a report may be filed.
pub const MAX_AHEAD_MS: u64 = 1000;
/// Open seconds at most (before the first close, labels are not clamped yet).
const MAX_OPEN_SECONDS: usize = 16;

/// The whole second (its first millisecond) that `ms` falls in.
pub fn second_of(ms: u64) -> u64 {
    ms / 1000 * 1000
}

/// Why a report's snapshot was refused. The agent that sent it is disconnected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    #[error("snapshot of {size} bytes; at most {limit} are allowed")]
    TooLarge { size: usize, limit: usize },
    #[error("snapshot with {count} series; at most {limit} are allowed per report")]
    TooManySeries { count: u64, limit: u64 },
    #[error("{0}")]
    Metrics(#[from] MetricsError),
}

/// The seconds being built, the run's totals, and reusable codec state.
pub struct Merger {
    encoder: SnapshotEncoder,
    /// Open seconds by their first millisecond. An accumulator adds trend bins in flat
    /// arrays and builds each histogram once when the second closes: about half the cost
    /// of decoding every report into histograms (benches/RESULTS.md, "Merge tick").
    open: BTreeMap<u64, Accumulator>,
    /// Every second before this instant is closed (0: none yet).
    closed_before: u64,
    totals: Totals,
}

impl Default for Merger {
    fn default() -> Self {
        Merger::new()
    }
}

/// One closed interval: its data, and its encoded form (shared by journal and view).
pub struct ClosedInterval {
    pub snapshot: Snapshot,
    pub encoded: Vec<u8>,
}

impl Merger {
    pub fn new() -> Merger {
        Merger {
            encoder: SnapshotEncoder::new(),
            open: BTreeMap::new(),
            closed_before: 0,
            totals: Totals::new(),
        }
    }

    /// Every second before this instant is closed (0: none yet).
    pub fn closed_before(&self) -> u64 {
        self.closed_before
    }

    /// The last open second holding data, if any.
    pub fn last_open_second(&self) -> Option<u64> {
        self.open.keys().next_back().copied()
    }

    /// The open second a snapshot labelled to start at `start_unix_ms` goes into.
    fn second_for(&self, start_unix_ms: u64) -> u64 {
        let mut second = second_of(start_unix_ms).max(self.closed_before);
        if self.closed_before > 0 {
            second = second.min(self.closed_before + MAX_AHEAD_MS);
        }
        if self.open.len() >= MAX_OPEN_SECONDS
            && !self.open.contains_key(&second)
            && let Some(&latest) = self.open.keys().next_back()
        {
            second = latest;
        }
        second
    }

    /// Adds one encoded agent snapshot into the open second it is labelled with, and
    /// returns that second. On error nothing is added.
    pub fn add_report(&mut self, bytes: &[u8]) -> Result<u64, MergeError> {
        self.add_report_counting(bytes, "")
            .map(|(second, _)| second)
    }

    /// [`Merger::add_report`], also returning the sum of the counter `metric` in what was
    /// added (the controller keeps each agent's accepted `http_reqs`).
    pub fn add_report_counting(
        &mut self,
        bytes: &[u8],
        metric: &str,
    ) -> Result<(u64, f64), MergeError> {
        if bytes.len() > punisher_proto::MAX_REPORT_SNAPSHOT_BYTES {
            return Err(MergeError::TooLarge {
                size: bytes.len(),
                limit: punisher_proto::MAX_REPORT_SNAPSHOT_BYTES,
            });
        }
        let (start, count) = header(bytes)?;
        if count > punisher_proto::MAX_SERIES_PER_REPORT {
            return Err(MergeError::TooManySeries {
                count,
                limit: punisher_proto::MAX_SERIES_PER_REPORT,
            });
        }
        let second = self.second_for(start);
        let target = self.open.entry(second).or_default();
        // On error the accumulator is left as it was (and an empty one stays harmless).
        let counted = if metric.is_empty() {
            target.add(bytes)?;
            0.0
        } else {
            target.add_counting(bytes, metric)?
        };
        Ok((second, counted))
    }

    /// Adds data the controller computes itself (the `vus` gauges) into the open second
    /// its start falls in.
    pub fn add_local(&mut self, snapshot: &Snapshot) -> Result<(), MetricsError> {
        let second = self.second_for(snapshot.start_unix_ms);
        // A few gauges a second: encoding them is cheaper than a second merge path.
        let mut bytes = Vec::new();
        self.encoder.encode_into(snapshot, &mut bytes);
        self.open.entry(second).or_default().add(&bytes)
    }

    /// Closes every open second before `end_unix_ms` as one interval `[start, end]`: adds
    /// it to the totals and encodes it. Later reports of those seconds go to the next
    /// open one.
    pub fn close_interval(
        &mut self,
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<ClosedInterval, MetricsError> {
        let later = self.open.split_off(&end_unix_ms);
        let closing = std::mem::replace(&mut self.open, later);
        // Usually one second: its histograms are built once, here.
        let mut seconds = closing.into_values();
        let mut snapshot = seconds.next().map_or_else(
            || Snapshot::empty(start_unix_ms, end_unix_ms),
            |mut a| a.finish(),
        );
        for mut s in seconds {
            snapshot.merge(&s.finish())?;
        }
        self.closed_before = self.closed_before.max(end_unix_ms);
        snapshot.start_unix_ms = start_unix_ms;
        snapshot.end_unix_ms = end_unix_ms;
        self.totals.add(&snapshot)?;
        let mut encoded = Vec::new();
        self.encoder.encode_into(&snapshot, &mut encoded);
        Ok(ClosedInterval { snapshot, encoded })
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The run so far, encoded (for the live view).
    pub fn encode_totals(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encoder
            .encode_into(self.totals.as_snapshot(), &mut out);
        out
    }
}

/// Reads the series count a snapshot declares, without decoding it (see the layout in
/// `punisher_metrics::codec`): lets the controller refuse an oversized report before the
/// decoder allocates for it. Malformed input is left to the decoder to describe.
#[cfg(test)]
fn declared_series(bytes: &[u8]) -> Result<u64, MetricsError> {
    header(bytes).map(|(_, count)| count)
}

/// The start a snapshot is labelled with and the series count it declares.
fn header(bytes: &[u8]) -> Result<(u64, u64), MetricsError> {
    let mut r = HeaderReader { bytes, pos: 5 }; // magic and version: the decoder checks them
    let start = r.varint()?;
    let _end = r.varint()?;
    let strings = r.varint()?;
    for _ in 0..strings {
        let len = r.varint()?;
        r.skip(len)?;
    }
    Ok((start, r.varint()?))
}

struct HeaderReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl HeaderReader<'_> {
    fn varint(&mut self) -> Result<u64, MetricsError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.pos)
                .ok_or(MetricsError::Truncated("snapshot header"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MetricsError::Malformed("varint too long".into()))
    }

    fn skip(&mut self, len: u64) -> Result<(), MetricsError> {
        let end = usize::try_from(len)
            .ok()
            .and_then(|len| self.pos.checked_add(len))
            .filter(|end| *end <= self.bytes.len())
            .ok_or(MetricsError::Truncated("snapshot string"))?;
        self.pos = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punisher_metrics::{MetricKind, Recorder, Tags, ValueType};

    fn agent_snapshot(requests: u64, latency_ms: f64) -> Snapshot {
        let mut r = Recorder::new();
        let reqs = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "http_reqs",
                &Tags::new([("name", "vote")]),
            )
            .unwrap();
        let dur = r
            .series(
                MetricKind::Trend,
                ValueType::Time,
                "http_req_duration",
                &Tags::new([("name", "vote")]),
            )
            .unwrap();
        for _ in 0..requests {
            r.add_counter(reqs, 1.0);
            r.add_trend(dur, latency_ms);
        }
        r.take_snapshot(1000, 2000)
    }

    #[test]
    fn merges_exactly_and_counts_series() {
        let a = agent_snapshot(3, 10.0);
        let b = agent_snapshot(5, 30.0);
        assert_eq!(declared_series(&a.encode()).unwrap(), 2);
        let mut m = Merger::new();
        m.add_report(&a.encode()).unwrap();
        m.add_report(&b.encode()).unwrap();
        let closed = m.close_interval(1000, 2000).unwrap();
        let mut expect = a.clone();
        expect.merge(&b).unwrap();
        assert_eq!(closed.snapshot.series, expect.series);
        assert_eq!(
            Snapshot::decode(&closed.encoded).unwrap().series,
            expect.series
        );
        let total = m.totals().aggregate("http_reqs", &Tags::empty()).unwrap();
        assert_eq!(total, punisher_metrics::SeriesData::Counter { sum: 8.0 });
    }

    /// What the controller keeps per agent: the `http_reqs` of each report it merged.
    #[test]
    fn counts_a_counter_in_each_report_it_merges() {
        let mut m = Merger::new();
        let (_, a) = m
            .add_report_counting(&agent_snapshot(3, 10.0).encode(), "http_reqs")
            .unwrap();
        let (_, b) = m
            .add_report_counting(&agent_snapshot(5, 30.0).encode(), "http_reqs")
            .unwrap();
        assert_eq!((a, b), (3.0, 5.0));
        let (_, none) = m
            .add_report_counting(&agent_snapshot(2, 1.0).encode(), "iterations")
            .unwrap();
        assert_eq!(none, 0.0);
        // A refused report counts nothing.
        assert!(m.add_report_counting(b"garbage", "http_reqs").is_err());
    }

    #[test]
    fn garbage_is_refused_without_changes() {
        let mut m = Merger::new();
        m.add_report(&agent_snapshot(1, 1.0).encode()).unwrap();
        for bad in [
            &b""[..],
            b"PNSM",
            b"PNSM\x01\xff\xff\xff",
            b"not a snapshot at all",
        ] {
            assert!(m.add_report(bad).is_err(), "{bad:?}");
        }
        let big = vec![0u8; punisher_proto::MAX_REPORT_SNAPSHOT_BYTES + 1];
        assert!(matches!(
            m.add_report(&big),
            Err(MergeError::TooLarge { .. })
        ));
        // A header that declares a million series is refused before decoding.
        let mut lie = b"PNSM\x01\x00\x00\x00".to_vec();
        lie.extend_from_slice(&[0x80, 0x89, 0x7a]); // 2_000_000
        assert!(matches!(
            m.add_report(&lie),
            Err(MergeError::TooManySeries { .. })
        ));
        let closed = m.close_interval(1000, 2000).unwrap();
        assert_eq!(closed.snapshot.series.len(), 2);
    }

    #[test]
    fn reports_go_into_the_second_they_are_labelled_with() {
        let mut m = Merger::new();
        let at = |requests, start: u64| {
            let mut s = agent_snapshot(requests, 1.0);
            s.start_unix_ms = start;
            s.end_unix_ms = start + 1000;
            s.encode()
        };
        assert_eq!(m.add_report(&at(1, 1000)).unwrap(), 1000);
        assert_eq!(m.add_report(&at(2, 2000)).unwrap(), 2000);
        let requests = |c: &ClosedInterval| {
            c.snapshot
                .series
                .values()
                .find_map(|d| match d {
                    punisher_metrics::SeriesData::Counter { sum } => Some(*sum),
                    _ => None,
                })
                .unwrap_or(0.0)
        };
        let first = m.close_interval(1000, 2000).unwrap();
        assert_eq!(
            (first.snapshot.start_unix_ms, first.snapshot.end_unix_ms),
            (1000, 2000)
        );
        assert_eq!(requests(&first), 1.0);
        assert_eq!(m.closed_before(), 2000);
        // Late (second 1000 is closed): lands in the first open second, 2000.
        assert_eq!(m.add_report(&at(4, 1000)).unwrap(), 2000);
        // Far ahead: at most MAX_AHEAD_MS after the last closed second.
        assert_eq!(m.add_report(&at(8, 90_000)).unwrap(), 2000 + MAX_AHEAD_MS);
        assert_eq!(m.last_open_second(), Some(3000));
        let second = m.close_interval(2000, 3000).unwrap();
        assert_eq!(requests(&second), 6.0);
        let third = m.close_interval(3000, 4000).unwrap();
        assert_eq!(requests(&third), 8.0);
        let total = m.totals().aggregate("http_reqs", &Tags::empty()).unwrap();
        assert_eq!(total, punisher_metrics::SeriesData::Counter { sum: 15.0 });
    }
}
