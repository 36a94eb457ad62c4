//! The HdrHistogram interval logs (`<metric>.hlog`): the standard format read by the
//! HdrHistogram tools (`HistogramLogProcessor`, `hdr-plot`, ...), one file per trend metric.
//!
//! Each second has one untagged line, the whole metric (its sub-series merged), followed by
//! one tagged line per sub-series, `Tag=name:vote` (several tags joined by `;`). A metric
//! whose only series has no tags has the untagged line only. The standard tools read the
//! untagged lines by default, so they see the whole metric once.
//!
//! Tag text is percent-encoded for the characters the format forbids in tags (`,`, space,
//! CR, LF) and for our separators (`;`, `:`) and `%`, so that any tag round-trips. Values are
//! the histograms' integer unit, thousandths of the metric's unit (µs for times); the Max
//! column is divided by 1000 (ms for times). Interval timestamps are seconds since the
//! `BaseTime` header, which is the journal's first second.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use punisher_metrics::snapshot::{TREND_HIGH, TREND_LOW, TREND_SCALE, TREND_SIGFIG};
use punisher_metrics::{Tags, new_trend_histogram};

use crate::dir::{HLOG_EXT, sha256_hex};

/// The header comment naming the metric a log belongs to (the file name may be sanitized).
pub const METRIC_HEADER: &str = "punisher-metric: ";
/// The tag of a series without tags, when its metric also has tagged series.
pub const NO_TAGS: &str = "{}";

/// The file name of `metric`'s log. Metric names are usually `[A-Za-z0-9_]`; anything else
/// becomes `_`, and then a short hash keeps two such names apart.
pub fn file_name(metric: &str) -> String {
    let clean: String = metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == metric && !clean.is_empty() {
        format!("{clean}.{HLOG_EXT}")
    } else {
        let hash = sha256_hex(metric.as_bytes());
        format!("{clean}-{}.{HLOG_EXT}", &hash[..8])
    }
}

fn percent_encode(s: &str, out: &mut String) {
    for c in s.chars() {
        if matches!(c, '%' | ',' | ' ' | ';' | ':' | '=') || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The tag text of a series: `k:v;k2:v2`, percent-encoded; [`NO_TAGS`] for none.
pub fn encode_tags(tags: &Tags) -> String {
    if tags.is_empty() {
        return NO_TAGS.to_owned();
    }
    let mut out = String::new();
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        percent_encode(k, &mut out);
        out.push(':');
        percent_encode(v, &mut out);
    }
    out
}

/// The inverse of [`encode_tags`]; `None` for text it cannot have produced.
pub fn decode_tags(text: &str) -> Option<Tags> {
    if text == NO_TAGS {
        return Some(Tags::empty());
    }
    let mut pairs = Vec::new();
    for pair in text.split(';') {
        let (k, v) = pair.split_once(':')?;
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Some(Tags::new(pairs))
}

/// The metric name as written in the header comment (percent-encoded: it is one line).
pub(crate) fn encode_metric(metric: &str) -> String {
    let mut out = String::new();
    percent_encode(metric, &mut out);
    out
}

/// Finds the metric named in a log's header comments.
pub(crate) fn metric_of_log(text: &[u8]) -> Option<String> {
    for line in text.split(|b| *b == b'\n') {
        if !line.starts_with(b"#") {
            break;
        }
        let line = std::str::from_utf8(line).ok()?;
        if let Some(rest) = line
            .strip_prefix('#')
            .and_then(|l| l.strip_prefix(METRIC_HEADER))
        {
            return percent_decode(rest.trim_end());
        }
    }
    None
}

fn system_time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

const LEGEND: &str =
    "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// The header of a new log: format version, our comments, StartTime and BaseTime, the
/// Max divisor, and the column legend, as the Java `HistogramLogWriter` writes them.
pub(crate) fn header(metric: &str, base_unix_ms: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let _writer = IntervalLogWriterBuilder::new()
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!("{METRIC_HEADER}{}", encode_metric(metric)))
            .add_comment(
                "values in thousandths of the metric's unit (microseconds for times); \
                 Interval_Max in the unit (milliseconds for times)",
            )
            .add_comment(
                "untagged lines: the whole metric; Tag=key:value;key2:value2 lines: its \
                 sub-series (percent-encoded), Tag={} for the series without tags",
            )
            .with_start_time(system_time(base_unix_ms))
            .with_base_time(system_time(base_unix_ms))
            .with_max_value_divisor(TREND_SCALE)
            .begin_log_with(&mut buf, &mut serializer);
    }
    buf.extend_from_slice(LEGEND.as_bytes());
    buf
}

/// Appends one interval's lines to `out`: the whole metric untagged, then each sub-series
/// tagged. `series` with a single untagged entry is written as the untagged line alone.
pub(crate) fn write_interval(
    out: &mut Vec<u8>,
    serializer: &mut V2DeflateSerializer,
    start: Duration,
    length: Duration,
    whole: &Histogram<u64>,
    series: &[(String, &Histogram<u64>)],
) -> Result<(), String> {
    let mark = out.len();
    {
        // The builder writes the MaxValueDivisor header line first (it is already in the
        // file's header); it is cut out below so that each second adds interval lines only.
        let mut writer = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(TREND_SCALE)
            .begin_log_with(out, serializer)
            .map_err(|e| e.to_string())?;
        writer
            .write_histogram(whole, start, length, None)
            .map_err(|e| e.to_string())?;
        let only_untagged = series.len() == 1 && series[0].0 == NO_TAGS;
        if !only_untagged {
            for (tag, hist) in series {
                let tag = Tag::new(tag).ok_or_else(|| format!("bad tag text {tag:?}"))?;
                writer
                    .write_histogram(hist, start, length, Some(tag))
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if out[mark..].starts_with(b"#[MaxValueDivisor")
        && let Some(nl) = out[mark..].iter().position(|b| *b == b'\n')
    {
        out.drain(mark..mark + nl + 1);
    }
    Ok(())
}

/// Decodes one interval's base64 V2 (deflated or not) histogram into a histogram with the
/// trend bounds, so that it merges exactly with the live ones.
pub fn decode_histogram(
    deserializer: &mut Deserializer,
    encoded: &str,
) -> Result<Box<Histogram<u64>>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("bad base64: {e}"))?;
    let decoded: Histogram<u64> = deserializer
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("bad histogram: {e:?}"))?;
    // Ours are written with the trend bounds and come back with them; anything else is
    // copied into a histogram that has them.
    if decoded.low() == TREND_LOW
        && decoded.high() == TREND_HIGH
        && decoded.sigfig() == TREND_SIGFIG
    {
        let mut decoded = Box::new(decoded);
        decoded.auto(false);
        return Ok(decoded);
    }
    let mut hist = new_trend_histogram();
    hist.add(&decoded)
        .map_err(|e| format!("histogram out of range: {e:?}"))?;
    Ok(hist)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_through_tag_text() {
        let cases = [
            Tags::empty(),
            Tags::new([("name", "vote")]),
            Tags::new([("name", "http://x/a?b=1,2 c;d:e%f"), ("method", "GET")]),
            Tags::new([("k e,y", "line\nbreak"), ("ü", "✓")]),
            Tags::new([("", "")]),
        ];
        for tags in cases {
            let text = encode_tags(&tags);
            assert!(Tag::new(&text).is_some(), "{text:?} is not a valid tag");
            assert_eq!(decode_tags(&text), Some(tags.clone()), "{text}");
        }
        assert_eq!(encode_tags(&Tags::new([("name", "vote")])), "name:vote");
        assert_eq!(
            encode_tags(&Tags::new([("status", "200"), ("name", "vote")])),
            "name:vote;status:200"
        );
        for bad in ["novalue", "a:%zz", "a:%F"] {
            assert_eq!(decode_tags(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("http_req_duration"), "http_req_duration.hlog");
        let odd = file_name("my/trend");
        assert!(
            odd.starts_with("my_trend-") && odd.ends_with(".hlog"),
            "{odd}"
        );
        assert_ne!(file_name("my/trend"), file_name("my.trend"));
        assert_ne!(file_name("a_b"), file_name("a.b"));
    }
}
