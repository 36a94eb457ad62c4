//! The binary form of a [`Snapshot`], as agents send it to the controller.
//!
//! Layout (integers are LEB128 varints unless said otherwise):
//!
//! ```text
//! magic "PNSM", version u8 (=1)
//! start_unix_ms, end_unix_ms
//! string count, then each string: byte length, UTF-8 bytes     (metric names, tag keys/values)
//! series count, then each series in strictly increasing key order:
//!   metric string index, tag count, (key index, value index) * tag count (sorted, unique keys)
//!   kind u8 (1 counter, 2 gauge, 3 rate, 4 trend), then
//!     counter: sum f64 LE
//!     gauge:   last f64 LE, min f64 LE, max f64 LE, at_unix_ms
//!     rate:    passes, total
//!     trend:   value type u8 (1 time, 2 data, 3 default), byte length, HDR V2 + deflate
//! ```
//!
//! Decoding treats its input as hostile: every count and length is capped and checked
//! against the bytes that remain, the HDR payload is inflated into a bounded buffer and
//! decoded here (not by `hdrhistogram`'s deserializer, which sizes its histogram and buffers
//! from the header it reads), and nothing panics. [`SnapshotDecoder::merge_into`] adds a
//! message straight into an accumulator without building a histogram per series: that is the
//! controller's per-second path (1,000 agents x 100 series).

use std::sync::{Arc, OnceLock};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};

use crate::MetricsError;
use crate::series::{MetricKind, SeriesKey, Tags, ValueType};
use crate::snapshot::{
    SeriesData, Snapshot, TREND_HIGH, TREND_LOW, TREND_SIGFIG, new_trend_histogram,
};

const MAGIC: &[u8; 4] = b"PNSM";
const VERSION: u8 = 1;

const MAX_STRINGS: u64 = 1 << 20;
const MAX_STRING_LEN: u64 = 4096;
const MAX_SERIES: u64 = 1 << 20;
const MAX_TAGS: u64 = 64;

const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;
const V2_HEADER_SIZE: usize = 40;

/// The length of the counts array of every trend histogram (same bounds everywhere).
fn counts_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| new_trend_histogram().distinct_values())
}

/// The largest V2 payload a valid trend histogram can have: 9 bytes per count.
fn max_v2_len() -> usize {
    V2_HEADER_SIZE + counts_len() * 9
}

/// The lowest value of the bin at `index`, for histograms with our bounds (unit magnitude 0,
/// 2048 sub-buckets). `hdrhistogram` keeps its own version private.
fn value_for_index(index: usize) -> u64 {
    const HALF_MAGNITUDE: u32 = 10;
    const HALF: u64 = 1 << HALF_MAGNITUDE;
    let bucket = (index >> HALF_MAGNITUDE) as u64;
    let sub = (index as u64 & (HALF - 1)) + HALF;
    if bucket == 0 {
        sub - HALF
    } else {
        sub << (bucket - 1)
    }
}

/// Encodes snapshots, reusing its buffers and deflate state between calls.
pub struct SnapshotEncoder {
    v2: V2Serializer,
    raw: Vec<u8>,
    compressed: Vec<u8>,
    compress: Compress,
}

impl Default for SnapshotEncoder {
    fn default() -> Self {
        SnapshotEncoder::new()
    }
}

impl SnapshotEncoder {
    pub fn new() -> SnapshotEncoder {
        SnapshotEncoder {
            v2: V2Serializer::new(),
            raw: Vec::new(),
            compressed: Vec::new(),
            compress: Compress::new(Compression::default(), true),
        }
    }

    /// Appends the encoding of `snapshot` to `out`.
    pub fn encode_into(&mut self, snapshot: &Snapshot, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(out, snapshot.start_unix_ms);
        put_varint(out, snapshot.end_unix_ms);

        // The string table: each distinct metric name, tag key and tag value once.
        let mut strings: Vec<&str> = Vec::new();
        for key in snapshot.series.keys() {
            strings.push(&key.metric);
            for (k, v) in key.tags.iter() {
                strings.push(k);
                strings.push(v);
            }
        }
        strings.sort_unstable();
        strings.dedup();
        let index_of = |s: &str| strings.binary_search(&s).unwrap_or(0) as u64;
        put_varint(out, strings.len() as u64);
        for s in &strings {
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }

        put_varint(out, snapshot.series.len() as u64);
        for (key, data) in &snapshot.series {
            put_varint(out, index_of(&key.metric));
            put_varint(out, key.tags.len() as u64);
            for (k, v) in key.tags.iter() {
                put_varint(out, index_of(k));
                put_varint(out, index_of(v));
            }
            out.push(data.kind().code());
            match data {
                SeriesData::Counter { sum } => out.extend_from_slice(&sum.to_le_bytes()),
                SeriesData::Gauge {
                    last,
                    min,
                    max,
                    at_unix_ms,
                } => {
                    for f in [last, min, max] {
                        out.extend_from_slice(&f.to_le_bytes());
                    }
                    put_varint(out, *at_unix_ms);
                }
                SeriesData::Rate { passes, total } => {
                    put_varint(out, *passes);
                    put_varint(out, *total);
                }
                SeriesData::Trend { value_type, hist } => {
                    out.push(value_type.code());
                    self.deflate_v2(hist);
                    put_varint(out, self.compressed.len() as u64);
                    out.extend_from_slice(&self.compressed);
                }
            }
        }
    }

    /// HDR V2 + deflate, byte for byte what `V2DeflateSerializer` writes, but with one
    /// reused deflate state instead of a new compressor per histogram.
    fn deflate_v2(&mut self, hist: &Histogram<u64>) {
        self.raw.clear();
        self.compressed.clear();
        // Counts of our histograms stay far below i64::MAX, the only serializer failure.
        if self.v2.serialize(hist, &mut self.raw).is_err() {
            self.raw.clear();
            let _ = self.v2.serialize(&new_trend_histogram(), &mut self.raw);
        }
        self.compressed
            .extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
        self.compressed.extend_from_slice(&[0; 4]);
        self.compress.reset();
        let mut input = &self.raw[..];
        loop {
            self.compressed.reserve(input.len() / 2 + 64);
            let before = self.compress.total_in();
            let status =
                self.compress
                    .compress_vec(input, &mut self.compressed, FlushCompress::Finish);
            input = &input[(self.compress.total_in() - before) as usize..];
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) => continue,
                // Compressing into a growable buffer cannot fail; stop rather than loop.
                Err(_) => break,
            }
        }
        let len = (self.compressed.len() - 8) as u32;
        self.compressed[4..8].copy_from_slice(&len.to_be_bytes());
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MetricsError> {
        if n > self.remaining() {
            return Err(MetricsError::Truncated(what));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, MetricsError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, MetricsError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8, what)?);
        Ok(f64::from_le_bytes(b))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, MetricsError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(MetricsError::Malformed(format!(
                    "{what}: varint overflows u64"
                )));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(MetricsError::Malformed(format!("{what}: varint too long")))
    }

    /// A count that must be at most `cap`, and at most the remaining bytes divided by the
    /// smallest encoding of one item, so a forged count cannot make us allocate.
    fn count(
        &mut self,
        cap: u64,
        min_item_bytes: usize,
        what: &'static str,
    ) -> Result<usize, MetricsError> {
        let n = self.varint(what)?;
        let fits = (self.remaining() / min_item_bytes.max(1)) as u64;
        if n > cap || n > fits {
            return Err(MetricsError::Malformed(format!(
                "{what}: {n} is more than the message can hold"
            )));
        }
        Ok(n as usize)
    }
}

/// A series parsed and validated but not yet applied; trends point into the decoder's
/// `(index, count)` scratch list.
enum Pending {
    Data(SeriesData),
    Trend {
        value_type: ValueType,
        counts: std::ops::Range<usize>,
    },
}

impl Pending {
    fn kind(&self) -> MetricKind {
        match self {
            Pending::Data(d) => d.kind(),
            Pending::Trend { .. } => MetricKind::Trend,
        }
    }
}

/// Decodes snapshots, reusing its inflate state and scratch buffers between calls.
pub struct SnapshotDecoder {
    decompress: Decompress,
    inflated: Vec<u8>,
    counts: Vec<(u32, u64)>,
    strings: Vec<Arc<str>>,
    pending: Vec<(SeriesKey, Pending)>,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        SnapshotDecoder::new()
    }
}

impl SnapshotDecoder {
    pub fn new() -> SnapshotDecoder {
        SnapshotDecoder {
            decompress: Decompress::new(true),
            inflated: Vec::new(),
            counts: Vec::new(),
            strings: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Decodes one message into a new snapshot.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Snapshot, MetricsError> {
        let (start, end) = self.parse(bytes)?;
        let mut snapshot = Snapshot::empty(start, end);
        for (key, pending) in self.pending.drain(..) {
            let data = match pending {
                Pending::Data(d) => d,
                Pending::Trend { value_type, counts } => {
                    let mut hist = new_trend_histogram();
                    record_counts(&mut hist, &self.counts[counts]);
                    SeriesData::Trend { value_type, hist }
                }
            };
            snapshot.series.insert(key, data);
        }
        Ok(snapshot)
    }

    /// Decodes one message and adds it into `target`, exactly as `target.merge(&decoded)`
    /// would, without materialising a histogram per series. On any error (malformed bytes,
    /// or a series whose kind differs from `target`'s) `target` is left unchanged.
    pub fn merge_into(&mut self, bytes: &[u8], target: &mut Snapshot) -> Result<(), MetricsError> {
        let (start, end) = self.parse(bytes)?;
        for (key, pending) in &self.pending {
            if let Some(existing) = target.series.get(key)
                && existing.kind() != pending.kind()
            {
                let err = MetricsError::KindMismatch {
                    metric: key.metric.to_string(),
                    existing: existing.kind(),
                    new: pending.kind(),
                };
                self.pending.clear();
                return Err(err);
            }
        }
        for (key, pending) in self.pending.drain(..) {
            match (target.series.get_mut(&key), pending) {
                (Some(SeriesData::Trend { hist, .. }), Pending::Trend { counts, .. }) => {
                    record_counts(hist, &self.counts[counts]);
                }
                (Some(existing), Pending::Data(d)) => {
                    // Kinds were checked above, so this cannot fail.
                    existing.merge(&d)?;
                }
                (_, Pending::Trend { value_type, counts }) => {
                    let mut hist = new_trend_histogram();
                    record_counts(&mut hist, &self.counts[counts]);
                    target
                        .series
                        .insert(key, SeriesData::Trend { value_type, hist });
                }
                (None, Pending::Data(d)) => {
                    target.series.insert(key, d);
                }
            }
        }
        target.widen(start, end);
        Ok(())
    }

    /// Parses and validates a whole message into `self.pending` / `self.counts`.
    fn parse(&mut self, bytes: &[u8]) -> Result<(u64, u64), MetricsError> {
        self.pending.clear();
        self.counts.clear();
        self.strings.clear();
        let result = self.parse_inner(bytes);
        if result.is_err() {
            self.pending.clear();
        }
        result
    }

    fn parse_inner(&mut self, bytes: &[u8]) -> Result<(u64, u64), MetricsError> {
        let mut r = Reader { buf: bytes, pos: 0 };
        if r.bytes(4, "magic")? != MAGIC {
            return Err(MetricsError::Malformed(
                "not a punisher snapshot (bad magic)".into(),
            ));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(MetricsError::Malformed(format!(
                "snapshot format version {version}; this build reads version {VERSION}"
            )));
        }
        let start = r.varint("start time")?;
        let end = r.varint("end time")?;

        let n_strings = r.count(MAX_STRINGS, 1, "string count")?;
        self.strings.reserve(n_strings);
        for _ in 0..n_strings {
            let len = r.varint("string length")?;
            if len > MAX_STRING_LEN {
                return Err(MetricsError::Malformed(format!("string of {len} bytes")));
            }
            let raw = r.bytes(len as usize, "string")?;
            let s = std::str::from_utf8(raw)
                .map_err(|_| MetricsError::Malformed("string is not UTF-8".into()))?;
            self.strings.push(Arc::from(s));
        }

        // Each series takes at least 3 bytes (metric, tag count, kind).
        let n_series = r.count(MAX_SERIES, 3, "series count")?;
        self.pending.reserve(n_series);
        let mut previous: Option<SeriesKey> = None;
        for _ in 0..n_series {
            let metric = self.string(&mut r, "metric name")?;
            if metric.is_empty() {
                return Err(MetricsError::Malformed("empty metric name".into()));
            }
            let n_tags = r.count(MAX_TAGS, 2, "tag count")?;
            let mut tags = Vec::with_capacity(n_tags);
            for _ in 0..n_tags {
                let k = self.string(&mut r, "tag key")?;
                let v = self.string(&mut r, "tag value")?;
                if let Some((last, _)) = tags.last()
                    && *last >= k
                {
                    return Err(MetricsError::Malformed(
                        "tag keys are not sorted and unique".into(),
                    ));
                }
                tags.push((k, v));
            }
            let key = SeriesKey {
                metric,
                tags: Tags::from_sorted(tags),
            };
            if previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(MetricsError::Malformed(
                    "series are not in strictly increasing order".into(),
                ));
            }
            let kind = MetricKind::from_code(r.u8("kind")?)
                .ok_or_else(|| MetricsError::Malformed("unknown metric kind".into()))?;
            let pending = match kind {
                MetricKind::Counter => {
                    let sum = r.f64("counter")?;
                    if sum.is_nan() {
                        return Err(MetricsError::Malformed("counter is NaN".into()));
                    }
                    Pending::Data(SeriesData::Counter { sum })
                }
                MetricKind::Gauge => {
                    let last = r.f64("gauge")?;
                    let min = r.f64("gauge")?;
                    let max = r.f64("gauge")?;
                    let at_unix_ms = r.varint("gauge time")?;
                    if last.is_nan() || min.is_nan() || max.is_nan() {
                        return Err(MetricsError::Malformed("gauge is NaN".into()));
                    }
                    Pending::Data(SeriesData::Gauge {
                        last,
                        min,
                        max,
                        at_unix_ms,
                    })
                }
                MetricKind::Rate => {
                    let passes = r.varint("rate passes")?;
                    let total = r.varint("rate total")?;
                    if passes > total {
                        return Err(MetricsError::Malformed(
                            "rate has more passes than total".into(),
                        ));
                    }
                    Pending::Data(SeriesData::Rate { passes, total })
                }
                MetricKind::Trend => {
                    let value_type = ValueType::from_code(r.u8("value type")?)
                        .ok_or_else(|| MetricsError::Malformed("unknown value type".into()))?;
                    let len = r.varint("histogram length")?;
                    if len > r.remaining() as u64 {
                        return Err(MetricsError::Truncated("histogram"));
                    }
                    let blob = r.bytes(len as usize, "histogram")?;
                    let begin = self.counts.len();
                    self.parse_hdr(blob)?;
                    Pending::Trend {
                        value_type,
                        counts: begin..self.counts.len(),
                    }
                }
            };
            self.pending.push((key.clone(), pending));
            previous = Some(key);
        }
        if r.remaining() != 0 {
            return Err(MetricsError::Malformed(format!(
                "{} trailing bytes after the last series",
                r.remaining()
            )));
        }
        Ok((start, end))
    }

    fn string(&self, r: &mut Reader<'_>, what: &'static str) -> Result<Arc<str>, MetricsError> {
        let i = r.varint(what)?;
        self.strings.get(i as usize).cloned().ok_or_else(|| {
            MetricsError::Malformed(format!("{what}: string index {i} out of range"))
        })
    }

    /// Validates one HDR V2 (optionally deflated) histogram with our bounds and appends its
    /// non-zero `(index, count)` pairs to `self.counts`.
    fn parse_hdr(&mut self, blob: &[u8]) -> Result<(), MetricsError> {
        let bad = |m: &str| MetricsError::Malformed(format!("histogram: {m}"));
        if blob.len() < 8 {
            return Err(MetricsError::Truncated("histogram header"));
        }
        let cookie = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]);
        let raw: &[u8] = match cookie {
            V2_COMPRESSED_COOKIE => {
                let len = u32::from_be_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
                if len != blob.len() - 8 {
                    return Err(bad("compressed length does not match"));
                }
                inflate(
                    &mut self.decompress,
                    &blob[8..],
                    &mut self.inflated,
                    max_v2_len(),
                )?;
                &self.inflated
            }
            V2_COOKIE => blob,
            _ => return Err(bad("not an HDR V2 histogram")),
        };
        if raw.len() < V2_HEADER_SIZE {
            return Err(MetricsError::Truncated("histogram header"));
        }
        let be32 = |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[at..at + 8]);
            u64::from_be_bytes(b)
        };
        if be32(0) != V2_COOKIE {
            return Err(bad("not an HDR V2 histogram"));
        }
        let payload_len = be32(4) as usize;
        if be32(8) != 0 || f64::from_bits(be64(32)) != 1.0 {
            return Err(bad("unsupported V2 features (normalizing offset or ratio)"));
        }
        if be32(12) != u32::from(TREND_SIGFIG) || be64(16) != TREND_LOW || be64(24) != TREND_HIGH {
            return Err(bad("bounds differ from 1..3600000000 us with 3 digits"));
        }
        if payload_len != raw.len() - V2_HEADER_SIZE {
            return Err(bad("payload length does not match"));
        }
        let limit = counts_len();
        let mut r = Reader {
            buf: &raw[V2_HEADER_SIZE..],
            pos: 0,
        };
        let mut index: usize = 0;
        while r.remaining() > 0 {
            let zz = hdr_varint(&mut r)?;
            // Zig-zag: even numbers are counts, odd ones runs of zeros.
            let n = zz >> 1;
            if zz & 1 == 1 {
                // A run of `n + 1` zero counts.
                let run = usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1);
                index = index.saturating_add(run);
                if index > limit {
                    return Err(bad("counts run past the end of the array"));
                }
            } else {
                if index >= limit {
                    return Err(bad("counts run past the end of the array"));
                }
                if n > 0 {
                    self.counts.push((index as u32, n));
                }
                index += 1;
            }
        }
        Ok(())
    }
}

/// HDR's LEB128-64b9B varint: up to 8 bytes of 7 bits, then a 9th byte used whole.
fn hdr_varint(r: &mut Reader<'_>) -> Result<u64, MetricsError> {
    let mut v: u64 = 0;
    for i in 0..8 {
        let b = r.u8("histogram counts")?;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    let b = r.u8("histogram counts")?;
    Ok(v | (u64::from(b) << 56))
}

/// Inflates a zlib stream into `out`, refusing to produce more than `limit` bytes.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), MetricsError> {
    d.reset(true);
    out.clear();
    loop {
        if out.len() == out.capacity() {
            if out.len() > limit {
                return Err(MetricsError::Malformed(
                    "histogram inflates past its maximum size".into(),
                ));
            }
            let grow = out.capacity().max(1024).min(limit + 1 - out.len());
            out.reserve_exact(grow);
        }
        let (in_before, out_before) = (d.total_in(), out.len());
        let consumed = in_before as usize;
        let status = d
            .decompress_vec(
                &input[consumed.min(input.len())..],
                out,
                FlushDecompress::None,
            )
            .map_err(|_| MetricsError::Malformed("histogram: bad deflate data".into()))?;
        if out.len() > limit {
            return Err(MetricsError::Malformed(
                "histogram inflates past its maximum size".into(),
            ));
        }
        match status {
            Status::StreamEnd => {
                if d.total_in() as usize != input.len() {
                    return Err(MetricsError::Malformed(
                        "histogram: bytes after deflate end".into(),
                    ));
                }
                return Ok(());
            }
            Status::Ok | Status::BufError => {
                if d.total_in() == in_before
                    && out.len() == out_before
                    && out.len() < out.capacity()
                {
                    return Err(MetricsError::Truncated("histogram deflate stream"));
                }
            }
        }
    }
}

fn record_counts(hist: &mut Histogram<u64>, counts: &[(u32, u64)]) {
    for &(index, count) in counts {
        // Indices were checked against the array length, so the value is in range.
        hist.saturating_record_n(value_for_index(index as usize), count);
    }
}

impl Snapshot {
    /// Compact binary form: trends as HDR V2 + deflate. See [`crate::codec`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        SnapshotEncoder::new().encode_into(self, &mut out);
        out
    }

    /// Decodes [`Snapshot::encode`]'s output. Never panics on garbage.
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, MetricsError> {
        SnapshotDecoder::new().decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

    #[test]
    fn index_mapping_matches_hdrhistogram() {
        let template = new_trend_histogram();
        let mut previous = None;
        for index in 0..counts_len() {
            let v = value_for_index(index);
            assert_eq!(template.lowest_equivalent(v), v, "index {index}");
            if let Some(p) = previous {
                assert!(v > p && !template.equivalent(v, p), "index {index}");
            }
            previous = Some(v);
        }
        // Values past the last index are not representable without resizing.
        let mut h = new_trend_histogram();
        assert!(h.record(value_for_index(counts_len())).is_err());
    }

    #[test]
    fn our_hdr_decoding_agrees_with_the_library() {
        let mut h = new_trend_histogram();
        let mut x: u64 = 12345;
        for _ in 0..50_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            h.saturating_record((x >> 33) % 5_000_000 + 1);
        }
        h.saturating_record_n(TREND_HIGH, 3);
        let mut v2 = Vec::new();
        V2DeflateSerializer::new().serialize(&*h, &mut v2).unwrap();
        let library: Histogram<u64> = Deserializer::new().deserialize(&mut &v2[..]).unwrap();
        let mut d = SnapshotDecoder::new();
        d.parse_hdr(&v2).unwrap();
        let mut ours = new_trend_histogram();
        record_counts(&mut ours, &d.counts);
        assert_eq!(*ours, library);
        assert_eq!(*ours, *h);
        // And our encoder's output is read by the library.
        let mut e = SnapshotEncoder::new();
        e.deflate_v2(&h);
        let back: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &e.compressed[..])
            .unwrap();
        assert_eq!(back, *h);
    }
}
