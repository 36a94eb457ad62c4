//! The merge path of one run: every accepted agent report is decoded straight into the
//! current interval ([`Merger::add_report`]), and once per second the interval is closed,
//! added to the run's totals and encoded once for the journal and the live view
//! ([`Merger::close_interval`]). This is the controller's per-second hot path (1,000 agents
//! x 100 series); `benches/merge_tick.rs` measures it.

use punisher_metrics::{MetricsError, Snapshot, SnapshotDecoder, SnapshotEncoder, Totals};

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

/// The interval being built, the run's totals, and reusable codec state.
pub struct Merger {
    decoder: SnapshotDecoder,
    encoder: SnapshotEncoder,
    interval: Snapshot,
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
            decoder: SnapshotDecoder::new(),
            encoder: SnapshotEncoder::new(),
            interval: Snapshot::empty(0, 0),
            totals: Totals::new(),
        }
    }

    /// Adds one encoded agent snapshot into the current interval. On error nothing is added.
    pub fn add_report(&mut self, bytes: &[u8]) -> Result<(), MergeError> {
        if bytes.len() > punisher_proto::MAX_REPORT_SNAPSHOT_BYTES {
            return Err(MergeError::TooLarge {
                size: bytes.len(),
                limit: punisher_proto::MAX_REPORT_SNAPSHOT_BYTES,
            });
        }
        let count = declared_series(bytes)?;
        if count > punisher_proto::MAX_SERIES_PER_REPORT {
            return Err(MergeError::TooManySeries {
                count,
                limit: punisher_proto::MAX_SERIES_PER_REPORT,
            });
        }
        self.decoder.merge_into(bytes, &mut self.interval)?;
        Ok(())
    }

    /// Adds data the controller computes itself (the `vus` gauges) into the interval.
    pub fn add_local(&mut self, snapshot: &Snapshot) -> Result<(), MetricsError> {
        self.interval.merge(snapshot)
    }

    /// Closes the current interval as `[start, end]`: adds it to the totals and encodes it.
    pub fn close_interval(
        &mut self,
        start_unix_ms: u64,
        end_unix_ms: u64,
    ) -> Result<ClosedInterval, MetricsError> {
        let mut snapshot = std::mem::replace(&mut self.interval, Snapshot::empty(0, 0));
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
fn declared_series(bytes: &[u8]) -> Result<u64, MetricsError> {
    let mut r = HeaderReader { bytes, pos: 5 }; // magic and version: the decoder checks them
    let _start = r.varint()?;
    let _end = r.varint()?;
    let strings = r.varint()?;
    for _ in 0..strings {
        let len = r.varint()?;
        r.skip(len)?;
    }
    r.varint()
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
        let closed = m.close_interval(0, 1).unwrap();
        assert_eq!(closed.snapshot.series.len(), 2);
    }
}
