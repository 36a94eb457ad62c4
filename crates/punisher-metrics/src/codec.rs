//! The binary form of a [`Snapshot`], as agents send it to the controller.
//!
//! Layout, version 2 (integers are LEB128 varints unless said otherwise):
//!
//! ```text
//! magic "PNSM", version u8 (=2)
//! start_unix_ms, end_unix_ms
//! string count, then each string: byte length, UTF-8 bytes     (metric names, tag keys/values)
//! series count
//! body encoding u8: 0 plain; 1 zlib, then the plain body's length, then a zlib stream of
//!   the body that runs to the end of the message
//! body: each series in strictly increasing key order:
//!   metric string index, tag count, (key index, value index) * tag count (sorted, unique keys)
//!   kind u8 (1 counter, 2 gauge, 3 rate, 4 trend), then
//!     counter: sum f64 LE
//!     gauge:   last f64 LE, min f64 LE, max f64 LE, at_unix_ms
//!     rate:    passes, total
//!     trend:   value type u8 (1 time, 2 data, 3 default), byte length, HDR V2 counts
//! ```
//!
//! A trend's "HDR V2 counts" are the payload of an HDR V2 histogram (the V2 spec's ZigZag
//! LEB128-64b9B numbers: a positive one is the count of the next bin, a negative one a run
//! of that many empty bins), from bin 0 to the last non-empty bin, for the one bucket layout
//! every trend shares (1 .. 3,600,000,000 µs, 3 digits). The 40-byte V2 header would be the
//! same for every histogram, so it is left out: putting it back in front of the counts gives
//! a V2 blob that any HDR library reads. Histograms are not deflated one by one: the
//! per-stream setup dominated decoding (version 1 did that). The prefix up to the series
//! count is the same as in version 1, so a reader can size a message up before decoding it.
//!
//! Decoding treats its input as hostile: every count and length is capped and checked
//! against the bytes that remain, the body inflates into a buffer bounded by its declared
//! length (itself capped), and nothing panics. [`SnapshotDecoder::merge_into`] adds a message
//! straight into an accumulator without building a histogram per series: that is the
//! controller's per-second path (1,000 agents x 100 series). It also remembers the previous
//! message's string table and series keys: agents of one run send the same series every
//! second, so the keys are usually reused as they are, and the target's keys (shared
//! `Arc`s) then compare by pointer.

mod wire;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hdrhistogram::Histogram;

use crate::MetricsError;
use crate::merge::{JoinSlot, apply_join, check_join};
use crate::series::{MetricKind, SeriesKey, Tags, ValueType};
use crate::snapshot::{SeriesData, Snapshot, new_trend_histogram};

pub(crate) use wire::value_for_index;
use wire::{Reader, parse_counts, put_counts, put_varint};

const MAGIC: &[u8; 4] = b"PNSM";
const VERSION: u8 = 2;

const BODY_PLAIN: u8 = 0;
const BODY_ZLIB: u8 = 1;

const MAX_STRINGS: u64 = 1 << 20;
const MAX_STRING_LEN: u64 = 4096;
const MAX_SERIES: u64 = 1 << 20;
const MAX_TAGS: u64 = 64;
/// The largest plain body a compressed message may declare (a 1,000-series message with
/// full histograms is a few MB).
const MAX_INFLATED_BODY: u64 = 64 << 20;
/// Strings the decoder interns across messages before it starts over (bounds its memory
/// against agents that send ever new tag values).
const MAX_INTERNED: usize = 1 << 16;

/// Encodes snapshots, reusing its buffers (and deflate state, when compressing).
pub struct SnapshotEncoder {
    /// Deflate the body when it is at least this long; `None`: never.
    compress_from: Option<usize>,
    compress: Option<Compress>,
    body: Vec<u8>,
    strings: Vec<Arc<str>>,
}

impl Default for SnapshotEncoder {
    fn default() -> Self {
        SnapshotEncoder::new()
    }
}

impl SnapshotEncoder {
    /// An encoder that writes plain bodies: the cheapest to encode and to decode (the
    /// controller's merge is bound by decoding, and inflating costs it more than all the rest).
    pub fn new() -> SnapshotEncoder {
        SnapshotEncoder {
            compress_from: None,
            compress: None,
            body: Vec::new(),
            strings: Vec::new(),
        }
    }

    /// An encoder that deflates (fastest level) bodies of at least `min_body_bytes`, for
    /// links where bytes cost more than CPU (e.g. a journal on disk). About half the size.
    pub fn compressing(min_body_bytes: usize) -> SnapshotEncoder {
        SnapshotEncoder {
            compress_from: Some(min_body_bytes),
            ..SnapshotEncoder::new()
        }
    }

    /// Appends the encoding of `snapshot` to `out`.
    pub fn encode_into(&mut self, snapshot: &Snapshot, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        put_varint(out, snapshot.start_unix_ms);
        put_varint(out, snapshot.end_unix_ms);

        // The string table: each distinct metric name, tag key and tag value once. Keys
        // share their `Arc`s, so most duplicates are found by pointer before sorting.
        self.strings.clear();
        for key in snapshot.series.keys() {
            self.strings.push(key.metric.clone());
            for (k, v) in key.tags.arcs() {
                self.strings.push(k.clone());
                self.strings.push(v.clone());
            }
        }
        self.strings.sort_unstable();
        self.strings.dedup();
        let strings = &self.strings;
        let index_of = |s: &str| strings.binary_search_by(|x| (**x).cmp(s)).unwrap_or(0) as u64;
        put_varint(out, strings.len() as u64);
        for s in strings {
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put_varint(out, snapshot.series.len() as u64);

        let body = &mut self.body;
        body.clear();
        for (key, data) in &snapshot.series {
            put_varint(body, index_of(&key.metric));
            put_varint(body, key.tags.len() as u64);
            for (k, v) in key.tags.iter() {
                put_varint(body, index_of(k));
                put_varint(body, index_of(v));
            }
            body.push(data.kind().code());
            match data {
                SeriesData::Counter { sum } => body.extend_from_slice(&sum.to_le_bytes()),
                SeriesData::Gauge {
                    last,
                    min,
                    max,
                    at_unix_ms,
                } => {
                    for f in [last, min, max] {
                        body.extend_from_slice(&f.to_le_bytes());
                    }
                    put_varint(body, *at_unix_ms);
                }
                SeriesData::Rate { passes, total } => {
                    put_varint(body, *passes);
                    put_varint(body, *total);
                }
                SeriesData::Trend { value_type, hist } => {
                    body.push(value_type.code());
                    put_trend(body, hist);
                }
            }
        }

        match self.compress_from {
            Some(min) if body.len() >= min => {
                out.push(BODY_ZLIB);
                put_varint(out, body.len() as u64);
                let c = self
                    .compress
                    .get_or_insert_with(|| Compress::new(Compression::fast(), true));
                deflate(c, body, out);
            }
            _ => {
                out.push(BODY_PLAIN);
                out.extend_from_slice(body);
            }
        }
    }
}

/// Writes a trend's counts, prefixed with their byte length. The length is known only
/// once the counts are written: two bytes are reserved (enough below 16 KiB), and fixed up.
fn put_trend(body: &mut Vec<u8>, hist: &Histogram<u64>) {
    let at = body.len();
    body.extend_from_slice(&[0, 0]);
    let n = put_counts(body, hist);
    if n < 0x80 {
        body[at] = n as u8;
        body.remove(at + 1);
    } else if n < 0x4000 {
        body[at] = (n as u8) | 0x80;
        body[at + 1] = (n >> 7) as u8;
    } else {
        let mut len = Vec::with_capacity(10);
        put_varint(&mut len, n as u64);
        body.splice(at..at + 2, len);
    }
}

fn deflate(c: &mut Compress, mut input: &[u8], out: &mut Vec<u8>) {
    c.reset();
    loop {
        out.reserve(input.len() / 2 + 64);
        let before = c.total_in();
        let status = c.compress_vec(input, out, FlushCompress::Finish);
        input = &input[(c.total_in() - before) as usize..];
        match status {
            Ok(Status::StreamEnd) => break,
            Ok(_) => continue,
            // Compressing into a growable buffer cannot fail; stop rather than loop.
            Err(_) => break,
        }
    }
}

/// A series parsed and validated but not yet applied; trends point into the decoder's
/// `(index, count)` scratch list.
pub(crate) enum Pending {
    Data(SeriesData),
    Trend {
        value_type: ValueType,
        counts: std::ops::Range<usize>,
    },
}

impl Pending {
    pub(crate) fn kind(&self) -> MetricKind {
        match self {
            Pending::Data(d) => d.kind(),
            Pending::Trend { .. } => MetricKind::Trend,
        }
    }
}

/// A parsed message: its interval, its series, and the trends' `(index, count)` pairs.
pub(crate) struct Parsed<'d> {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) pending: &'d mut Vec<(SeriesKey, Pending)>,
    pub(crate) counts: &'d [(u32, u64)],
}

/// Decodes snapshots, reusing its inflate state, scratch buffers and the previous
/// message's string table and keys between calls.
pub struct SnapshotDecoder {
    decompress: Option<Decompress>,
    body: Vec<u8>,
    /// `(index, count)` pairs of this message's trends: the first `counts_used` are valid.
    counts: Vec<(u32, u64)>,
    counts_used: usize,
    pending: Vec<(SeriesKey, Pending)>,
    /// The raw bytes of the last valid string table (from its count on) and its strings.
    table: Vec<u8>,
    strings: Vec<Arc<str>>,
    interned: HashSet<Arc<str>>,
    /// The keys of the series of the last messages, by position; valid for `table` only.
    keys: Vec<CachedKey>,
}

/// A validated key and the raw bytes it was built from.
struct CachedKey {
    raw: Vec<u8>,
    key: SeriesKey,
    /// Whether this key was checked to sort after the cached key at the previous position
    /// (as it is now): then a message repeating both needs no comparison.
    ordered: bool,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        SnapshotDecoder::new()
    }
}

impl SnapshotDecoder {
    pub fn new() -> SnapshotDecoder {
        SnapshotDecoder {
            decompress: None,
            body: Vec::new(),
            counts: Vec::new(),
            counts_used: 0,
            pending: Vec::new(),
            table: Vec::new(),
            strings: Vec::new(),
            interned: HashSet::new(),
            keys: Vec::new(),
        }
    }

    /// Decodes one message into a new snapshot.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Snapshot, MetricsError> {
        let parsed = self.parse(bytes)?;
        let mut snapshot = Snapshot::empty(parsed.start, parsed.end);
        for (key, pending) in parsed.pending.drain(..) {
            let data = match pending {
                Pending::Data(d) => d,
                Pending::Trend { value_type, counts } => {
                    let mut hist = new_trend_histogram();
                    record_counts(&mut hist, &parsed.counts[counts]);
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
        let parsed = self.parse(bytes)?;
        let (start, end) = (parsed.start, parsed.end);
        merge_parsed(parsed, &mut target.series)?;
        target.widen(start, end);
        Ok(())
    }

    /// Parses and validates a whole message into `self.pending` / `self.counts`.
    pub(crate) fn parse(&mut self, bytes: &[u8]) -> Result<Parsed<'_>, MetricsError> {
        self.pending.clear();
        self.counts_used = 0;
        match self.parse_inner(bytes) {
            Ok((start, end)) => Ok(Parsed {
                start,
                end,
                pending: &mut self.pending,
                counts: &self.counts[..self.counts_used],
            }),
            Err(e) => {
                self.pending.clear();
                Err(e)
            }
        }
    }

    fn parse_inner(&mut self, bytes: &[u8]) -> Result<(u64, u64), MetricsError> {
        let mut r = Reader::new(bytes);
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

        // The string table, or the same bytes as last time (then the same strings).
        let table_at = r.pos;
        let same_table = !self.table.is_empty() && bytes[table_at..].starts_with(&self.table);
        if same_table {
            r.pos += self.table.len();
        } else {
            self.table.clear();
            self.keys.clear();
            self.strings.clear();
            self.parse_strings(&mut r)?;
            self.table.extend_from_slice(&bytes[table_at..r.pos]);
        }

        // Each series takes at least 3 bytes (metric, tag count, kind).
        let n_series = r.count(MAX_SERIES, 1, "series count")?;
        let body: &[u8] = match r.u8("body encoding")? {
            BODY_PLAIN => &bytes[r.pos..],
            BODY_ZLIB => {
                let len = r.varint("body length")?;
                if len > MAX_INFLATED_BODY {
                    return Err(MetricsError::Malformed(format!(
                        "body of {len} bytes once inflated"
                    )));
                }
                let d = self.decompress.get_or_insert_with(|| Decompress::new(true));
                inflate(d, &bytes[r.pos..], &mut self.body, len as usize)?;
                &self.body
            }
            other => {
                return Err(MetricsError::Malformed(format!(
                    "unknown body encoding {other}"
                )));
            }
        };
        if n_series > body.len() / 3 {
            return Err(MetricsError::Malformed(format!(
                "series count: {n_series} is more than the message can hold"
            )));
        }
        let mut r = Reader::new(body);
        self.pending.reserve(n_series);
        for i in 0..n_series {
            let key_at = r.pos;
            let metric = r.varint("metric name")?;
            let n_tags = r.count(MAX_TAGS, 2, "tag count")?;
            for _ in 0..2 * n_tags {
                r.varint("tag")?;
            }
            let raw_key = &body[key_at..r.pos];
            // Cached keys at positions `0..i` are exactly the keys pending so far (hits
            // are, and misses replace their entry), which is what `ordered` relies on.
            let (key, known_ordered) = match self.keys.get(i) {
                Some(c) if c.raw == raw_key => (c.key.clone(), c.ordered),
                _ => {
                    let key = self.build_key(metric, raw_key)?;
                    let entry = CachedKey {
                        raw: raw_key.to_vec(),
                        key: key.clone(),
                        ordered: false,
                    };
                    if i < self.keys.len() {
                        self.keys[i] = entry;
                    } else {
                        self.keys.push(entry);
                    }
                    // The next entry was ordered after the key just replaced.
                    if let Some(next) = self.keys.get_mut(i + 1) {
                        next.ordered = false;
                    }
                    (key, false)
                }
            };
            if !known_ordered && let Some((previous, _)) = self.pending.last() {
                if *previous >= key {
                    return Err(MetricsError::Malformed(
                        "series are not in strictly increasing order".into(),
                    ));
                }
                self.keys[i].ordered = true;
            }
            let pending = parse_data(&mut r, &mut self.counts, &mut self.counts_used)?;
            self.pending.push((key, pending));
        }
        if self.keys.len() > n_series {
            self.keys.truncate(n_series);
        }
        if r.remaining() != 0 {
            return Err(MetricsError::Malformed(format!(
                "{} trailing bytes after the last series",
                r.remaining()
            )));
        }
        Ok((start, end))
    }

    fn parse_strings(&mut self, r: &mut Reader<'_>) -> Result<(), MetricsError> {
        let n_strings = r.count(MAX_STRINGS, 1, "string count")?;
        self.strings.reserve(n_strings);
        if self.interned.len() + n_strings > MAX_INTERNED {
            self.interned.clear();
        }
        for _ in 0..n_strings {
            let len = r.varint("string length")?;
            if len > MAX_STRING_LEN {
                return Err(MetricsError::Malformed(format!("string of {len} bytes")));
            }
            let raw = r.bytes(len as usize, "string")?;
            let s = std::str::from_utf8(raw)
                .map_err(|_| MetricsError::Malformed("string is not UTF-8".into()))?;
            // Interned, so that keys built from different tables still share their strings
            // (and compare by pointer).
            let arc = match self.interned.get(s) {
                Some(a) => a.clone(),
                None => {
                    let a: Arc<str> = Arc::from(s);
                    self.interned.insert(a.clone());
                    a
                }
            };
            self.strings.push(arc);
        }
        Ok(())
    }

    /// Builds and validates a key from its raw bytes (metric index, tag count, tag indices).
    fn build_key(&self, metric: u64, raw_key: &[u8]) -> Result<SeriesKey, MetricsError> {
        let mut r = Reader::new(raw_key);
        r.varint("metric name")?;
        let metric = self.string(metric, "metric name")?;
        if metric.is_empty() {
            return Err(MetricsError::Malformed("empty metric name".into()));
        }
        let n_tags = r.varint("tag count")? as usize;
        let mut tags: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(n_tags);
        for _ in 0..n_tags {
            let k = self.string(r.varint("tag key")?, "tag key")?;
            let v = self.string(r.varint("tag value")?, "tag value")?;
            if let Some((last, _)) = tags.last()
                && *last >= k
            {
                return Err(MetricsError::Malformed(
                    "tag keys are not sorted and unique".into(),
                ));
            }
            tags.push((k, v));
        }
        Ok(SeriesKey {
            metric,
            tags: Tags::from_sorted(tags),
        })
    }

    fn string(&self, i: u64, what: &'static str) -> Result<Arc<str>, MetricsError> {
        self.strings.get(i as usize).cloned().ok_or_else(|| {
            MetricsError::Malformed(format!("{what}: string index {i} out of range"))
        })
    }
}

/// Parses one series' kind and data; trends' bins go to `counts`.
fn parse_data(
    r: &mut Reader<'_>,
    counts: &mut Vec<(u32, u64)>,
    used: &mut usize,
) -> Result<Pending, MetricsError> {
    let kind = MetricKind::from_code(r.u8("kind")?)
        .ok_or_else(|| MetricsError::Malformed("unknown metric kind".into()))?;
    Ok(match kind {
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
            let begin = *used;
            parse_counts(blob, counts, used)?;
            Pending::Trend {
                value_type,
                counts: begin..*used,
            }
        }
    })
}

impl JoinSlot for SeriesData {
    fn kind(&self) -> MetricKind {
        SeriesData::kind(self)
    }
}

/// Adds a parsed message into a snapshot's series, all or nothing.
fn merge_parsed(
    parsed: Parsed<'_>,
    series: &mut BTreeMap<SeriesKey, SeriesData>,
) -> Result<(), MetricsError> {
    check_join(series, parsed.pending)?;
    let counts = parsed.counts;
    apply_join(
        series,
        parsed.pending,
        |existing, pending| match (existing, pending) {
            (SeriesData::Trend { hist, .. }, Pending::Trend { counts: range, .. }) => {
                record_counts(hist, &counts[range]);
            }
            (existing, Pending::Data(d)) => {
                // Kinds were checked first, so this cannot fail.
                let _ = existing.merge(&d);
            }
            // Kinds were checked first.
            (_, Pending::Trend { .. }) => {}
        },
        |pending| match pending {
            Pending::Data(d) => d,
            Pending::Trend {
                value_type,
                counts: range,
            } => {
                let mut hist = new_trend_histogram();
                record_counts(&mut hist, &counts[range]);
                SeriesData::Trend { value_type, hist }
            }
        },
    );
    Ok(())
}

/// Inflates a zlib stream into `out`, which must come out exactly `len` bytes long.
fn inflate(
    d: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    len: usize,
) -> Result<(), MetricsError> {
    let bad = |m: &str| MetricsError::Malformed(format!("body: {m}"));
    d.reset(true);
    out.clear();
    // Grow with the output actually produced, not with the declared length: a forged
    // length must not buy a large allocation.
    loop {
        if out.len() == out.capacity() {
            let grow = out.capacity().max(4096).min(len + 1 - out.len());
            out.reserve_exact(grow);
        }
        let (in_before, out_before) = (d.total_in(), out.len());
        let consumed = (in_before as usize).min(input.len());
        let status = d
            .decompress_vec(&input[consumed..], out, FlushDecompress::None)
            .map_err(|_| bad("bad deflate data"))?;
        if out.len() > len {
            return Err(bad("inflates past its declared length"));
        }
        match status {
            Status::StreamEnd => {
                if d.total_in() as usize != input.len() {
                    return Err(bad("bytes after the deflate stream"));
                }
                if out.len() != len {
                    return Err(bad("inflates short of its declared length"));
                }
                return Ok(());
            }
            Status::Ok | Status::BufError => {
                if d.total_in() == in_before
                    && out.len() == out_before
                    && out.len() < out.capacity()
                {
                    return Err(MetricsError::Truncated("body deflate stream"));
                }
            }
        }
    }
}

/// Adds decoded `(index, count)` pairs into a histogram with our layout.
pub(crate) fn record_counts(hist: &mut Histogram<u64>, counts: &[(u32, u64)]) {
    for &(index, count) in counts {
        // Indices were checked against the array length, so the value is in range.
        hist.saturating_record_n(value_for_index(index as usize), count);
    }
}

impl Snapshot {
    /// Compact binary form (plain body). See [`crate::codec`].
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
    use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};

    fn random_histogram(seed: u64, n: usize) -> Box<Histogram<u64>> {
        let mut h = new_trend_histogram();
        let mut x: u64 = seed;
        for _ in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            h.saturating_record((x >> 33) % 5_000_000 + 1);
        }
        h
    }

    /// Our counts, behind the constant V2 header, are a V2 histogram the library reads; and
    /// the library's V2 payload is what we write.
    #[test]
    fn trend_counts_are_hdr_v2_payloads() {
        let mut cases = vec![new_trend_histogram(), random_histogram(12345, 50_000)];
        let mut edges = new_trend_histogram();
        edges.saturating_record_n(0, 2);
        edges.saturating_record_n(1, 3);
        edges.saturating_record_n(crate::snapshot::TREND_HIGH, 7);
        cases.push(edges);
        cases.push(random_histogram(9, 3));
        for h in cases {
            let mut ours = Vec::new();
            put_counts(&mut ours, &h);
            let mut v2 = Vec::new();
            V2Serializer::new().serialize(&*h, &mut v2).unwrap();
            // (For an empty histogram the library writes one zero count; we write nothing.)
            if !h.is_empty() {
                assert_eq!(&v2[40..], &ours[..], "payload of {} values", h.len());
            }
            let (mut theirs, mut used) = (Vec::new(), 0);
            parse_counts(&v2[40..], &mut theirs, &mut used).unwrap();
            theirs.truncate(used);
            let library: Histogram<u64> = Deserializer::new().deserialize(&mut &v2[..]).unwrap();
            let (mut counts, mut used) = (Vec::new(), 0);
            parse_counts(&ours, &mut counts, &mut used).unwrap();
            counts.truncate(used);
            assert_eq!(counts, theirs);
            let mut back = new_trend_histogram();
            record_counts(&mut back, &counts);
            assert_eq!(*back, library);
            assert_eq!(*back, *h);
        }
    }

    /// A message whose series are out of order fails every time, also when the decoder
    /// has cached its keys (from that message or from an earlier, valid one).
    #[test]
    fn key_cache_never_skips_the_order_check() {
        let message = |order: &[u64]| {
            let mut m = b"PNSM\x02\x00\x00".to_vec();
            put_varint(&mut m, 4);
            for name in ["a", "b", "c", "d"] {
                put_varint(&mut m, 1);
                m.extend_from_slice(name.as_bytes());
            }
            put_varint(&mut m, order.len() as u64);
            m.push(BODY_PLAIN);
            for &metric in order {
                put_varint(&mut m, metric);
                put_varint(&mut m, 0);
                m.push(MetricKind::Counter.code());
                m.extend_from_slice(&1.0f64.to_le_bytes());
            }
            m
        };
        let mut d = SnapshotDecoder::new();
        for sequence in [
            &[&[1, 0][..], &[1, 0]][..],
            &[&[0, 2], &[3, 2], &[3, 2], &[0, 2]],
            &[&[0, 1, 2], &[0, 3, 2], &[0, 3, 2], &[0, 1, 2]],
        ] {
            for order in sequence {
                let ok = order.windows(2).all(|w| w[0] < w[1]);
                assert_eq!(d.decode(&message(order)).is_ok(), ok, "{order:?}");
            }
        }
    }

    #[test]
    fn compressed_bodies_round_trip_and_are_bounded() {
        let mut s = Snapshot::empty(1, 2);
        for i in 0..20 {
            s.series.insert(
                SeriesKey::new(format!("t{i}"), Tags::empty()),
                SeriesData::Trend {
                    value_type: ValueType::Time,
                    hist: random_histogram(i, 2000),
                },
            );
        }
        let plain = s.encode();
        let mut zipped = Vec::new();
        SnapshotEncoder::compressing(0).encode_into(&s, &mut zipped);
        assert!(
            zipped.len() < plain.len(),
            "{} vs {}",
            zipped.len(),
            plain.len()
        );
        let mut d = SnapshotDecoder::new();
        assert_eq!(d.decode(&zipped).unwrap(), s);
        assert_eq!(d.decode(&plain).unwrap(), s);
        // A body that declares more or less than it inflates to, or too much, is refused.
        for (declared, expect) in [(MAX_INFLATED_BODY + 1, "inflated"), (10, "declared")] {
            let mut forged = Vec::new();
            forged.extend_from_slice(b"PNSM\x02\x00\x00\x00\x01\x01");
            put_varint(&mut forged, declared);
            let mut c = Compress::new(Compression::fast(), true);
            deflate(&mut c, &[0u8; 4096], &mut forged);
            let e = d.decode(&forged).unwrap_err().to_string();
            assert!(e.contains(expect), "{e}");
        }
    }
}
