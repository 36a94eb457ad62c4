//! The [`Journal`]: each merged second of a run written to disk before it is shown, as
//! `timeseries.jsonl` (one line per metric, per series and for the live numbers) and one
//! HdrHistogram interval log per trend ([`crate::hlog`]); and [`Journal::replay`], which
//! reads them back into exact run totals and a [`Timeline`].
//!
//! Each second is flushed as a whole (logs first, then the JSON lines), so that a controller
//! that crashes loses at most the second in flight. Replay trusts the JSON lines: interval
//! log lines of a second that has no JSON line (the crash came in between) are ignored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use punisher_core::ThresholdSpec;
use punisher_metrics::{
    MetricKind, SeriesData, SeriesKey, Snapshot, Summary, SummaryMeta, Tags, Threshold, Totals,
    ValueType,
};
use serde::{Deserialize, Serialize};

use crate::dir::{HLOG_EXT, RUN_JSON, RunInfo, TIMESERIES_JSONL};
use crate::hlog;
use crate::live::LiveNumbers;
use crate::timeline::{Point, Timeline, Values, interval_secs, value_type};
use crate::{Result, ResultsError};

/// What a line of `timeseries.jsonl` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A whole metric, its sub-series merged (what charts show).
    Metric,
    /// One series: a metric with one tag set.
    Series,
    /// The live numbers ([`LiveNumbers`]).
    Live,
}

/// One line of `timeseries.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// Interval start and end, Unix ms.
    pub ts: u64,
    pub end: u64,
    pub scope: Scope,
    /// `metric{key:value}` (series lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MetricKind>,
    /// Trends only: `time`, `data` or `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_type: Option<ValueType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Values>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveNumbers>,
}

struct HlogFile {
    path: PathBuf,
    out: BufWriter<File>,
}

/// Writes a run's merged seconds to its results folder.
pub struct Journal {
    dir: PathBuf,
    jsonl_path: PathBuf,
    jsonl: BufWriter<File>,
    hlogs: BTreeMap<String, HlogFile>,
    /// Interval log timestamps count from here: the first second's start.
    base_unix_ms: Option<u64>,
    serializer: V2DeflateSerializer,
    line_buf: Vec<u8>,
    timeline: Timeline,
    seconds: u64,
}

impl Journal {
    /// Starts a journal in `dir` (an existing folder), appending to `timeseries.jsonl`.
    pub fn create(dir: &Path) -> Result<Journal> {
        let jsonl_path = dir.join(TIMESERIES_JSONL);
        let file = File::options()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .map_err(ResultsError::io("create", &jsonl_path))?;
        Ok(Journal {
            dir: dir.to_owned(),
            jsonl_path,
            jsonl: BufWriter::new(file),
            hlogs: BTreeMap::new(),
            base_unix_ms: None,
            serializer: V2DeflateSerializer::new(),
            line_buf: Vec::new(),
            timeline: Timeline::new(),
            seconds: 0,
        })
    }

    /// The per-second values written so far, for the report at the end of the run.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Seconds appended so far.
    pub fn seconds(&self) -> u64 {
        self.seconds
    }

    /// Writes one merged second and flushes it. On an error the second may be partly
    /// written; replay skips what it cannot read.
    pub fn append(&mut self, second: &Snapshot, live: &LiveNumbers) -> Result<()> {
        let base = *self.base_unix_ms.get_or_insert(second.start_unix_ms);
        let merged = self.timeline.push_second(second, live);
        self.seconds += 1;
        let secs = interval_secs(second.start_unix_ms, second.end_unix_ms);

        // Interval logs first: a second is only trusted once its JSON lines exist.
        let start = Duration::from_millis(second.start_unix_ms.saturating_sub(base));
        let length = Duration::from_millis(second.end_unix_ms.saturating_sub(second.start_unix_ms));
        for (metric, whole) in &merged {
            let SeriesData::Trend { hist: whole, .. } = whole else {
                continue;
            };
            let series: Vec<(String, &Histogram<u64>)> = metric_series(second, metric)
                .filter_map(|(key, data)| match data {
                    SeriesData::Trend { hist, .. } => Some((hlog::encode_tags(&key.tags), &**hist)),
                    _ => None,
                })
                .collect();
            self.line_buf.clear();
            hlog::write_interval(
                &mut self.line_buf,
                &mut self.serializer,
                start,
                length,
                whole,
                &series,
            )
            .map_err(|e| ResultsError::Journal(format!("{metric}: {e}")))?;
            let buf = std::mem::take(&mut self.line_buf);
            let file = self.hlog(metric, base)?;
            let written = file
                .out
                .write_all(&buf)
                .and_then(|()| file.out.flush())
                .map_err(ResultsError::io("write", &file.path));
            self.line_buf = buf;
            written?;
        }

        let mut lines = Vec::with_capacity(merged.len() + second.series.len() + 1);
        for (metric, data) in &merged {
            lines.push(Line {
                ts: second.start_unix_ms,
                end: second.end_unix_ms,
                scope: Scope::Metric,
                series: None,
                metric: Some(metric.clone()),
                tags: None,
                kind: Some(data.kind()),
                value_type: value_type(data),
                values: Some(Values::of(data, secs).for_file()),
                live: None,
            });
        }
        for (key, data) in &second.series {
            lines.push(Line {
                ts: second.start_unix_ms,
                end: second.end_unix_ms,
                scope: Scope::Series,
                series: Some(key.to_string()),
                metric: Some(key.metric.to_string()),
                tags: Some(key.tags.clone()),
                kind: Some(data.kind()),
                value_type: value_type(data),
                values: Some(Values::of(data, secs).for_file()),
                live: None,
            });
        }
        lines.push(Line {
            ts: second.start_unix_ms,
            end: second.end_unix_ms,
            scope: Scope::Live,
            series: None,
            metric: None,
            tags: None,
            kind: None,
            value_type: None,
            values: None,
            live: Some(live.clone()),
        });
        let write = |out: &mut BufWriter<File>| -> std::io::Result<()> {
            for line in &lines {
                serde_json::to_writer(&mut *out, line)?;
                out.write_all(b"\n")?;
            }
            out.flush()
        };
        write(&mut self.jsonl).map_err(ResultsError::io("write", &self.jsonl_path))
    }

    fn hlog(&mut self, metric: &str, base: u64) -> Result<&mut HlogFile> {
        if !self.hlogs.contains_key(metric) {
            let path = self.dir.join(hlog::file_name(metric));
            // Append: a journal restarted on the same folder adds a new header (with its own
            // BaseTime, which replay follows) instead of wiping the seconds already there.
            let file = File::options()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(ResultsError::io("create", &path))?;
            let mut out = BufWriter::new(file);
            out.write_all(&hlog::header(metric, base))
                .map_err(ResultsError::io("write", &path))?;
            self.hlogs.insert(metric.to_owned(), HlogFile { path, out });
        }
        Ok(self
            .hlogs
            .get_mut(metric)
            .unwrap_or_else(|| unreachable!("inserted above")))
    }

    /// Reads a run folder's journal back: exact totals (trends from the interval logs, the
    /// other kinds from the JSON lines), the timeline, and `run.json` when present. Lines
    /// that cannot be read (a crash mid-write) are skipped and listed in `warnings`.
    pub fn replay(dir: &Path) -> Result<Replayed> {
        let mut warnings = Vec::new();
        let jsonl_path = dir.join(TIMESERIES_JSONL);
        let file = File::open(&jsonl_path).map_err(ResultsError::io("open", &jsonl_path))?;
        let mut timeline = Timeline::new();
        let mut acc: BTreeMap<SeriesKey, SeriesData> = BTreeMap::new();
        let mut trend_types: HashMap<SeriesKey, ValueType> = HashMap::new();
        let mut seconds: BTreeSet<u64> = BTreeSet::new();
        let mut span: Option<(u64, u64)> = None;
        let mut bad_lines = 0usize;
        let mut first_bad = None;
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(ResultsError::io("read", &jsonl_path))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut parsed: Line = match serde_json::from_str(&line) {
                Ok(l) => l,
                Err(e) => {
                    bad_lines += 1;
                    first_bad.get_or_insert_with(|| format!("line {}: {e}", n + 1));
                    continue;
                }
            };
            if let Some(v) = &mut parsed.values {
                v.apply_exact();
            }
            seconds.insert(parsed.ts);
            span = Some(match span {
                None => (parsed.ts, parsed.end),
                Some((s, e)) => (s.min(parsed.ts), e.max(parsed.end)),
            });
            match parsed.scope {
                Scope::Live => timeline.live.push(crate::timeline::LivePoint {
                    ts: parsed.ts,
                    end: parsed.end,
                    live: parsed.live.unwrap_or_default(),
                }),
                Scope::Metric => {
                    if let (Some(metric), Some(kind), Some(values)) =
                        (parsed.metric, parsed.kind, parsed.values)
                    {
                        timeline.push_point(
                            &metric,
                            kind,
                            parsed.value_type,
                            Point {
                                ts: parsed.ts,
                                end: parsed.end,
                                values,
                            },
                        );
                    }
                }
                Scope::Series => {
                    let (Some(metric), Some(kind), Some(values)) =
                        (parsed.metric, parsed.kind, parsed.values)
                    else {
                        continue;
                    };
                    let key = SeriesKey::new(metric, parsed.tags.unwrap_or_default());
                    if kind == MetricKind::Trend {
                        trend_types.insert(key, parsed.value_type.unwrap_or(ValueType::Default));
                        continue;
                    }
                    if let Some(data) = series_data(kind, &values) {
                        merge_into(&mut acc, key, data);
                    }
                }
            }
        }
        if bad_lines > 0 {
            warnings.push(format!(
                "{}: skipped {bad_lines} unreadable line(s), first at {}",
                jsonl_path.display(),
                first_bad.unwrap_or_default()
            ));
        }

        replay_hlogs(dir, &seconds, &trend_types, &mut acc, &mut warnings)?;

        let (start, end) = span.unwrap_or((0, 0));
        let mut snapshot = Snapshot::empty(start, end);
        snapshot.series = acc;
        let mut totals = Totals::new();
        if span.is_some() {
            totals.add(&snapshot)?;
        }
        let info = if dir.join(RUN_JSON).exists() {
            match crate::dir::ResultsDir::open(dir).and_then(|d| d.read_run_info()) {
                Ok(info) => Some(info),
                Err(e) => {
                    warnings.push(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        Ok(Replayed {
            info,
            totals,
            timeline,
            seconds: seconds.len() as u64,
            warnings,
        })
    }
}

fn metric_series<'a>(
    snapshot: &'a Snapshot,
    metric: &'a str,
) -> impl Iterator<Item = (&'a SeriesKey, &'a SeriesData)> + 'a {
    snapshot
        .series
        .range(SeriesKey::new(metric, Tags::empty())..)
        .take_while(move |(k, _)| &*k.metric == metric)
}

fn merge_into(acc: &mut BTreeMap<SeriesKey, SeriesData>, key: SeriesKey, data: SeriesData) {
    match acc.get_mut(&key) {
        // A kind that changed mid-run cannot be merged; the first kind wins, as in Totals.
        Some(existing) => {
            let _ = existing.merge(&data);
        }
        None => {
            acc.insert(key, data);
        }
    }
}

/// A series' data from its JSON values, for every kind but trends (those come from the
/// interval logs, whole).
fn series_data(kind: MetricKind, v: &Values) -> Option<SeriesData> {
    Some(match kind {
        MetricKind::Counter => SeriesData::Counter { sum: v.count? },
        MetricKind::Gauge => SeriesData::Gauge {
            last: v.value?,
            min: v.min?,
            max: v.max?,
            at_unix_ms: v.at.unwrap_or(0),
        },
        MetricKind::Rate => SeriesData::Rate {
            passes: v.passes?,
            total: v.total?,
        },
        MetricKind::Trend => return None,
    })
}

fn replay_hlogs(
    dir: &Path,
    seconds: &BTreeSet<u64>,
    trend_types: &HashMap<SeriesKey, ValueType>,
    acc: &mut BTreeMap<SeriesKey, SeriesData>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(ResultsError::io("read folder", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == HLOG_EXT))
        .collect();
    paths.sort();
    let mut deserializer = Deserializer::new();
    for path in paths {
        let bytes = fs::read(&path).map_err(ResultsError::io("read", &path))?;
        let metric = hlog::metric_of_log(&bytes).unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let mut reader = LogReader {
            metric: &metric,
            trend_types,
            deserializer: &mut deserializer,
            acc,
            problems: Vec::new(),
        };
        let mut base_ms = 0u64;
        // The untagged line of the current interval, still encoded: it is only needed when
        // no tagged line follows (a metric with one untagged series).
        let mut pending: Option<&str> = None;
        let mut tagged_seen = false;
        let mut skipped_unjournalled = 0usize;
        for entry in IntervalLogIterator::new(&bytes) {
            let interval = match entry {
                Ok(LogEntry::BaseTime(t)) => {
                    base_ms = u64::try_from(t.as_millis()).unwrap_or(0);
                    continue;
                }
                Ok(LogEntry::StartTime(_)) => continue,
                Ok(LogEntry::Interval(i)) => i,
                Err(e) => {
                    reader.problems.push(format!("unreadable from {e:?}"));
                    break;
                }
            };
            // Timestamps are written with millisecond precision; round away float noise.
            let start_ms =
                base_ms + (interval.start_timestamp().as_secs_f64() * 1000.0).round() as u64;
            if !seconds.contains(&start_ms) {
                skipped_unjournalled += 1;
                continue;
            }
            match interval.tag() {
                None => {
                    if let Some(encoded) = pending.take()
                        && !tagged_seen
                    {
                        reader.add(NO_TAGS_TEXT, encoded);
                    }
                    pending = Some(interval.encoded_histogram());
                    tagged_seen = false;
                }
                Some(tag) => {
                    tagged_seen = true;
                    reader.add(tag.as_str(), interval.encoded_histogram());
                }
            }
        }
        if let Some(encoded) = pending
            && !tagged_seen
        {
            reader.add(NO_TAGS_TEXT, encoded);
        }
        let mut problems = reader.problems;
        if skipped_unjournalled > 0 {
            problems.push(format!(
                "ignored {skipped_unjournalled} interval(s) of seconds missing from {TIMESERIES_JSONL}"
            ));
        }
        for p in problems {
            warnings.push(format!("{}: {p}", path.display()));
        }
    }
    Ok(())
}

const NO_TAGS_TEXT: &str = hlog::NO_TAGS;

/// Adds the interval lines of one metric's log into the run's series.
struct LogReader<'a> {
    metric: &'a str,
    trend_types: &'a HashMap<SeriesKey, ValueType>,
    deserializer: &'a mut Deserializer,
    acc: &'a mut BTreeMap<SeriesKey, SeriesData>,
    problems: Vec<String>,
}

impl LogReader<'_> {
    fn add(&mut self, tag: &str, encoded: &str) {
        let Some(tags) = hlog::decode_tags(tag) else {
            self.problems.push(format!("bad tag {tag:?}"));
            return;
        };
        let hist = match hlog::decode_histogram(self.deserializer, encoded) {
            Ok(h) => h,
            Err(e) => {
                self.problems.push(e);
                return;
            }
        };
        let key = SeriesKey::new(self.metric, tags);
        // The logs do not say whether a trend holds times; the JSON lines do.
        let value_type = self
            .trend_types
            .get(&key)
            .copied()
            .unwrap_or(ValueType::Time);
        merge_into(self.acc, key, SeriesData::Trend { value_type, hist });
    }
}

/// A run read back from its folder.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// `run.json`, when it was written and is readable.
    pub info: Option<RunInfo>,
    /// The whole run's data, exact (histograms merged from the interval logs).
    pub totals: Totals,
    pub timeline: Timeline,
    /// Seconds found in the journal.
    pub seconds: u64,
    /// What could not be read (a crash mid-write leaves a partial last line).
    pub warnings: Vec<String>,
}

impl Replayed {
    /// Evaluates `thresholds` (or, when `None`, those recorded in `run.json`) on the totals
    /// and builds the summary, as the run would have at its end.
    pub fn summary(&self, thresholds: Option<&[ThresholdSpec]>) -> Summary {
        let specs = thresholds
            .map(<[ThresholdSpec]>::to_vec)
            .or_else(|| self.info.as_ref().map(|i| i.thresholds.clone()))
            .unwrap_or_default();
        let evaluated: Vec<_> = specs
            .iter()
            .filter_map(|spec| {
                let t = Threshold::parse(spec).ok()?;
                let outcome = t.evaluate(&self.totals);
                Some((t, outcome))
            })
            .collect();
        let vus_max = self
            .timeline
            .live
            .iter()
            .map(|p| p.live.users_active)
            .max()
            .filter(|n| *n > 0)
            .or_else(|| {
                // Without live numbers, the `vus` gauge's maximum.
                match self.totals.aggregate("vus", &Tags::empty()) {
                    Some(SeriesData::Gauge { max, .. }) if max.is_finite() && max >= 0.0 => {
                        Some(max as u64)
                    }
                    _ => None,
                }
            })
            .unwrap_or(0);
        let mut meta = SummaryMeta::new(
            self.info.as_ref().map_or("", |i| i.scenario_path.as_str()),
            self.info.as_ref().map_or("", |i| i.executor.as_str()),
            self.totals.elapsed(),
            vus_max,
        );
        meta.started_unix_ms = self.info.as_ref().map_or_else(
            || self.timeline.start_unix_ms().unwrap_or(0),
            |i| i.started_unix_ms,
        );
        if self
            .info
            .as_ref()
            .is_some_and(|i| i.ended_unix_ms.is_none())
        {
            meta.interrupted =
                Some("the run did not record its end (rebuilt from its journal)".into());
        }
        Summary::build(&self.totals, &evaluated, meta)
    }
}
