//! The identity of a series: a metric's kind and value type, a tag set, and the
//! (metric, tags) key that snapshots, totals and summaries are indexed by.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// What a metric accumulates, as in k6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// A sum of added values (`http_reqs`, `data_sent`).
    Counter,
    /// The last value set, with its minimum and maximum (`vus`).
    Gauge,
    /// The share of `true` among added booleans (`checks`, `http_req_failed`).
    Rate,
    /// A distribution of values in an HDR histogram (`http_req_duration`).
    Trend,
}

impl MetricKind {
    /// The lowercase name used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Rate => "rate",
            Self::Trend => "trend",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Counter => 1,
            Self::Gauge => 2,
            Self::Rate => 3,
            Self::Trend => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<MetricKind> {
        Some(match code {
            1 => Self::Counter,
            2 => Self::Gauge,
            3 => Self::Rate,
            4 => Self::Trend,
            _ => return None,
        })
    }
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a metric holds times (ms, shown as durations), byte counts, or plain values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Time,
    Data,
    Default,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Time => "time",
            Self::Data => "data",
            Self::Default => "default",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Time => 1,
            Self::Data => 2,
            Self::Default => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<ValueType> {
        Some(match code {
            1 => Self::Time,
            2 => Self::Data,
            3 => Self::Default,
            _ => return None,
        })
    }
}

/// A sorted set of `(key, value)` tags with unique keys. Cloning is one reference count.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Tags(Arc<[(Arc<str>, Arc<str>)]>);

/// Compares two shared strings, by pointer first: the controller's keys mostly share their
/// `Arc`s with the decoder's, and then a comparison costs no memory access.
fn cmp_shared(a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
    if Arc::ptr_eq(a, b) {
        std::cmp::Ordering::Equal
    } else {
        a.cmp(b)
    }
}

/// Lexicographic by `(key, value)` pairs, as the derived order would be, with pointer
/// shortcuts.
impl Ord for Tags {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            let o = cmp_shared(&a.0, &b.0).then_with(|| cmp_shared(&a.1, &b.1));
            if o.is_ne() {
                return o;
            }
        }
        self.0.len().cmp(&other.0.len())
    }
}

impl PartialOrd for Tags {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Tags {
    /// Builds a tag set. When a key is given twice the last value wins, as when a script's
    /// `params.tags` override default tags.
    pub fn new<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Tags
    where
        K: Into<Arc<str>>,
        V: Into<Arc<str>>,
    {
        let mut v: Vec<(Arc<str>, Arc<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // A stable sort keeps insertion order among equal keys, so keeping the last of each
        // run of equal keys implements "last wins".
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Arc<str>, Arc<str>)> = Vec::with_capacity(v.len());
        for pair in v {
            match out.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => out.push(pair),
            }
        }
        Tags(out.into())
    }

    /// Wraps pairs the caller has checked to be sorted by key with unique keys.
    pub(crate) fn from_sorted(pairs: Vec<(Arc<str>, Arc<str>)>) -> Tags {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        Tags(pairs.into())
    }

    pub fn empty() -> Tags {
        Tags(Arc::new([]))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// The pairs as shared strings (for the encoder's string table).
    pub(crate) fn arcs(&self) -> impl Iterator<Item = (&Arc<str>, &Arc<str>)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every tag of `filter` is in this set with the same value.
    pub fn contains_all(&self, filter: &Tags) -> bool {
        filter.iter().all(|(k, v)| self.get(k) == Some(v))
    }

    /// A copy with `key` set to `value`.
    pub fn with(&self, key: &str, value: &str) -> Tags {
        Tags::new(
            self.iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .chain([(key.to_owned(), value.to_owned())]),
        )
    }
}

impl Default for Tags {
    fn default() -> Self {
        Tags::empty()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `{key:value,key2:value2}`, the selector syntax of thresholds; empty for no tags.
impl fmt::Display for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}:{v}")?;
        }
        f.write_str("}")
    }
}

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let map = std::collections::BTreeMap::<String, String>::deserialize(d)?;
        Ok(Tags::new(map))
    }
}

/// A series: one metric with one tag set. Ordered by metric, then tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    pub metric: Arc<str>,
    pub tags: Tags,
}

impl Ord for SeriesKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp_shared(&self.metric, &other.metric).then_with(|| self.tags.cmp(&other.tags))
    }
}

impl PartialOrd for SeriesKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl SeriesKey {
    pub fn new(metric: impl Into<Arc<str>>, tags: Tags) -> SeriesKey {
        SeriesKey {
            metric: metric.into(),
            tags,
        }
    }
}

/// `metric{key:value}`, as thresholds and the summary's `series` name it.
impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.metric, self.tags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sort_dedup_last_wins() {
        let t = Tags::new([("name", "a"), ("method", "GET"), ("name", "b")]);
        assert_eq!(t.to_string(), "{method:GET,name:b}");
        assert_eq!(t.get("name"), Some("b"));
        assert_eq!(t.get("status"), None);
        assert!(t.contains_all(&Tags::new([("name", "b")])));
        assert!(!t.contains_all(&Tags::new([("name", "a")])));
        assert!(t.contains_all(&Tags::empty()));
        assert_eq!(
            Tags::new([("b", "1"), ("a", "2")]),
            Tags::new([("a", "2"), ("b", "1")])
        );
        let key = SeriesKey::new("http_reqs", t.with("status", "200"));
        assert_eq!(key.to_string(), "http_reqs{method:GET,name:b,status:200}");
        assert_eq!(SeriesKey::new("x", Tags::empty()).to_string(), "x");
    }
}
