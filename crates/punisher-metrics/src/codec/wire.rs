//! Wire primitives of the snapshot format: LEB128 varints, a bounds-checked reader, and the
//! HDR V2 counts encoding of a trend histogram with our fixed bucket layout.

use hdrhistogram::Histogram;

use crate::MetricsError;
use crate::snapshot::new_trend_histogram;

use std::sync::OnceLock;

/// `log2` of half the sub-bucket count of our histograms (3 digits: 2048 sub-buckets).
const HALF_MAGNITUDE: u32 = 10;
const HALF: u64 = 1 << HALF_MAGNITUDE;

/// The length of the counts array of every trend histogram (same bounds everywhere).
pub(crate) fn counts_len() -> usize {
    static LEN: OnceLock<usize> = OnceLock::new();
    *LEN.get_or_init(|| new_trend_histogram().distinct_values())
}

/// The lowest value of the bin at `index`, for histograms with our bounds (unit magnitude 0,
/// 2048 sub-buckets). `hdrhistogram` keeps its own version private.
#[inline]
pub(crate) fn value_for_index(index: usize) -> u64 {
    let bucket = (index >> HALF_MAGNITUDE) as u64;
    let sub = (index as u64 & (HALF - 1)) + HALF;
    if bucket == 0 {
        sub - HALF
    } else {
        sub << (bucket - 1)
    }
}

/// The bin index of `value` in our layout (the inverse of [`value_for_index`]); may be past
/// the end of the counts array for values above the histogram's range.
#[inline]
pub(crate) fn index_for_value(value: u64) -> usize {
    // Bucket 0 holds 0..2048; each next bucket covers twice the range with the top half of
    // its sub-buckets.
    let bucket = 63 - (value | (2 * HALF - 1)).leading_zeros() - HALF_MAGNITUDE;
    let sub = value >> bucket;
    (((bucket as u64 + 1) << HALF_MAGNITUDE) + sub - HALF) as usize
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// HDR's LEB128-64b9B varint: 7 bits a byte for 8 bytes, then a 9th byte used whole. Below
/// 2^56 it is plain LEB128.
fn put_hdr_varint(out: &mut Vec<u8>, mut v: u64) {
    for _ in 0..8 {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_hdr_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// A run of empty bins: one empty bin is written as a zero count (as the reference V2
/// serializer does, so our bytes are its bytes), longer runs as a negative number.
fn put_zeros(out: &mut Vec<u8>, n: u64) {
    if n == 1 {
        out.push(0);
    } else {
        put_zigzag(out, -(n as i64));
    }
}

/// Appends the V2 counts encoding of `hist` (bins from index 0 up to the last non-zero one:
/// a positive ZigZag number is a count, a negative one a run of that many zero bins) and
/// returns the number of bytes written. Only the bins between the histogram's minimum and
/// maximum are visited, so the cost follows the recorded range, not the array's size.
pub(crate) fn put_counts(out: &mut Vec<u8>, hist: &Histogram<u64>) -> usize {
    let start = out.len();
    if hist.is_empty() {
        return 0;
    }
    let len = counts_len();
    let zero_count = hist.count_at(0);
    let lo = if zero_count > 0 {
        0
    } else {
        index_for_value(hist.min_nz()).min(len)
    };
    let hi = index_for_value(hist.max()).min(len - 1);
    let mut total: u64 = 0;
    let mut zeros: u64 = lo as u64;
    for index in lo..=hi {
        let c = hist.count_at(value_for_index(index));
        if c == 0 {
            zeros += 1;
            continue;
        }
        if zeros > 0 {
            put_zeros(out, zeros);
            zeros = 0;
        }
        // V2 counts are signed 64-bit; a count past i64::MAX cannot occur in one interval.
        put_zigzag(out, c.min(i64::MAX as u64) as i64);
        total = total.saturating_add(c);
    }
    if total != hist.len() {
        // The histogram's min/max did not bound its counts (it cannot happen through our
        // recorder, but `Histogram` is public): encode every bin instead.
        out.truncate(start);
        put_all_counts(out, hist);
    }
    out.len() - start
}

/// [`put_counts`] over the whole counts array, the slow but unconditional way.
fn put_all_counts(out: &mut Vec<u8>, hist: &Histogram<u64>) {
    let mut zeros: u64 = 0;
    for index in 0..counts_len() {
        let c = hist.count_at(value_for_index(index));
        if c == 0 {
            zeros += 1;
        } else {
            if zeros > 0 {
                put_zeros(out, zeros);
                zeros = 0;
            }
            put_zigzag(out, c.min(i64::MAX as u64) as i64);
        }
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], MetricsError> {
        if n > self.remaining() {
            return Err(MetricsError::Truncated(what));
        }
        let b = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    #[inline]
    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, MetricsError> {
        match self.buf.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                Ok(*b)
            }
            None => Err(MetricsError::Truncated(what)),
        }
    }

    pub(crate) fn f64(&mut self, what: &'static str) -> Result<f64, MetricsError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.bytes(8, what)?);
        Ok(f64::from_le_bytes(b))
    }

    #[inline]
    pub(crate) fn varint(&mut self, what: &'static str) -> Result<u64, MetricsError> {
        // One-byte values are by far the most common: indices, counts, tag counts.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
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
    pub(crate) fn count(
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

/// HDR's LEB128-64b9B varint at `buf[*at..]` (see [`put_hdr_varint`]); `None` when the
/// buffer ends inside it.
#[inline]
fn hdr_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..8 {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    let b = *buf.get(*at)?;
    *at += 1;
    Some(v | (u64::from(b) << 56))
}

/// Parses a V2 counts encoding (see [`put_counts`]) and writes its non-zero
/// `(index, count)` pairs to `buf[*used..]`, advancing `*used`. `buf` is scratch that only
/// grows: slots past `*used` hold garbage. Errors when the bins run past our counts array.
///
/// This is the controller's innermost loop (about 16 million numbers a tick). One-byte
/// numbers (counts below 64, runs below 65: nearly all of them) go through a branch-free
/// path: the pair is stored unconditionally and kept by advancing `*used` or not. Errors are
/// only built on the way out.
pub(crate) fn parse_counts(
    blob: &[u8],
    buf: &mut Vec<(u32, u64)>,
    used: &mut usize,
) -> Result<(), MetricsError> {
    let limit = counts_len() as u64;
    // Every pair takes at least one byte.
    if buf.len() < *used + blob.len() + 1 {
        buf.resize(*used + blob.len() + 1, (0, 0));
    }
    let out = &mut buf[*used..];
    let mut len = 0;
    let mut at = 0;
    let mut index: u64 = 0;
    while at < blob.len() {
        let first = blob[at];
        if first < 0x80 {
            at += 1;
            let n = u64::from(first >> 1);
            let run = first & 1;
            // A count n at `index`, or a run of n + 1 empty bins (a mask, not a branch).
            out[len] = (index as u32, n);
            len += usize::from(run == 0 && n != 0);
            index += 1 + (n & u64::from(run).wrapping_neg());
        } else {
            let Some(zz) = hdr_varint(blob, &mut at) else {
                return Err(MetricsError::Truncated("histogram counts"));
            };
            let n = zz >> 1;
            if zz & 1 == 1 {
                index += n.min(limit) + 1;
            } else {
                out[len] = (index as u32, n);
                len += usize::from(n != 0);
                index += 1;
            }
            if index > limit {
                break;
            }
        }
    }
    // One-byte numbers add at most 64 each, so checking once at the end cannot overflow;
    // pairs past the limit were stored but are thrown away with the error.
    if index > limit {
        return Err(MetricsError::Malformed(
            "histogram: counts run past the end of the array".into(),
        ));
    }
    *used += len;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_mapping_matches_hdrhistogram() {
        let template = new_trend_histogram();
        let mut previous = None;
        for index in 0..counts_len() {
            let v = value_for_index(index);
            assert_eq!(template.lowest_equivalent(v), v, "index {index}");
            assert_eq!(index_for_value(v), index);
            assert_eq!(index_for_value(template.highest_equivalent(v)), index);
            if let Some(p) = previous {
                assert!(v > p && !template.equivalent(v, p), "index {index}");
            }
            previous = Some(v);
        }
        // Values past the last index are not representable without resizing.
        let mut h = new_trend_histogram();
        assert!(h.record(value_for_index(counts_len())).is_err());
        assert_eq!(index_for_value(value_for_index(counts_len())), counts_len());
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            1 << 56,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint("x").unwrap(), v);
            out.clear();
            put_hdr_varint(&mut out, v);
            assert!(out.len() <= 9);
            let mut at = 0;
            assert_eq!(hdr_varint(&out, &mut at), Some(v));
            assert_eq!(at, out.len());
            assert_eq!(hdr_varint(&out[..out.len() - 1], &mut 0), None);
        }
    }
}
