//! The run's results folder: `run.json` (what ran where), `metrics.jsonl` (one JSON line per
//! merged second, written before that second is shown), and at the end `summary.json` and
//! `summary.txt`. Each line holds the interval's headline numbers per series and its exact
//! encoded snapshot (base64), so the run can be re-merged from the journal alone; a
//! controller crash loses at most the second in flight.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use punisher_metrics::{SeriesData, Snapshot};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

/// An open journal.
pub(crate) struct Journal {
    dir: PathBuf,
    metrics: tokio::fs::File,
}

/// A journal write that failed; the run goes on and the view says so.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the journal in {path}: {source}")]
pub(crate) struct JournalError {
    path: PathBuf,
    source: std::io::Error,
}

fn err(path: &Path, source: std::io::Error) -> JournalError {
    JournalError {
        path: path.to_path_buf(),
        source,
    }
}

impl Journal {
    /// Creates `results_dir/run_id/` and writes `run.json`.
    pub(crate) async fn create(
        results_dir: &Path,
        run_id: &str,
        run: &Value,
    ) -> Result<Journal, JournalError> {
        let dir = results_dir.join(run_id);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(&dir, e))?;
        let run_path = dir.join("run.json");
        let text = serde_json::to_string_pretty(run).unwrap_or_default();
        tokio::fs::write(&run_path, text)
            .await
            .map_err(|e| err(&run_path, e))?;
        let metrics_path = dir.join("metrics.jsonl");
        let metrics = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .await
            .map_err(|e| err(&metrics_path, e))?;
        Ok(Journal { dir, metrics })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one merged second and waits until the OS has it.
    pub(crate) async fn append(&mut self, line: &Value) -> Result<(), JournalError> {
        let mut text = serde_json::to_vec(line).unwrap_or_default();
        text.push(b'\n');
        let path = self.dir.join("metrics.jsonl");
        self.metrics
            .write_all(&text)
            .await
            .map_err(|e| err(&path, e))?;
        self.metrics.flush().await.map_err(|e| err(&path, e))
    }

    /// Writes the end-of-run files.
    pub(crate) async fn finish(&mut self, summary: &Value, text: &str) -> Result<(), JournalError> {
        let json_path = self.dir.join("summary.json");
        let body = serde_json::to_string_pretty(summary).unwrap_or_default();
        tokio::fs::write(&json_path, body)
            .await
            .map_err(|e| err(&json_path, e))?;
        let text_path = self.dir.join("summary.txt");
        tokio::fs::write(&text_path, text)
            .await
            .map_err(|e| err(&text_path, e))
    }
}

/// One journal line: the interval's numbers per series, headline percentiles, and the
/// exact encoded interval. Per series it writes only what costs O(1) (count, min, max for
/// trends): walking 40 merged histograms for percentiles every second cost more than the
/// merge itself. Percentiles of `http_req_duration` over all requests come once, and any
/// other can be computed from the exact snapshot.
pub(crate) fn interval_line(
    tick: u64,
    snapshot: &Snapshot,
    encoded: &[u8],
    active_users: u64,
    live_agents: usize,
) -> Value {
    let series: Vec<Value> = snapshot
        .series
        .iter()
        .map(|(key, data)| {
            let tags: Map<String, Value> = key
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            let mut entry = json!({ "metric": &*key.metric, "tags": tags });
            if let Value::Object(map) = &mut entry {
                values(data, map);
            }
            entry
        })
        .collect();
    let mut headline = Map::new();
    let mut durations: Option<Box<hdrhistogram::Histogram<u64>>> = None;
    for (key, data) in &snapshot.series {
        if let ("http_req_duration", SeriesData::Trend { hist, .. }) = (&*key.metric, data) {
            match &mut durations {
                None => durations = Some(hist.clone()),
                Some(all) => {
                    let _ = all.add(&**hist);
                }
            }
        }
    }
    if let Some(all) = durations.filter(|h| !h.is_empty()) {
        headline.insert("http_req_duration_count".into(), json!(all.len()));
        quantiles(&all, "http_req_duration_", &mut headline);
    }
    json!({
        "tick": tick,
        "start_unix_ms": snapshot.start_unix_ms,
        "end_unix_ms": snapshot.end_unix_ms,
        "active_users": active_users,
        "live_agents": live_agents,
        "headline": headline,
        "series": series,
        "snapshot": base64::engine::general_purpose::STANDARD.encode(encoded),
    })
}

/// Quantiles written for the headline; one pass over the histogram computes them all.
const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.95, "p95"), (0.99, "p99")];

/// Values are stored in thousandths of their unit (µs for times in ms).
fn unit(v: u64) -> f64 {
    v as f64 / 1000.0
}

fn quantiles(hist: &hdrhistogram::Histogram<u64>, prefix: &str, map: &mut Map<String, Value>) {
    let count = hist.len();
    let mut next = 0;
    let mut seen = 0u64;
    for v in hist.iter_recorded() {
        seen += v.count_at_value();
        while next < QUANTILES.len() && seen as f64 >= (QUANTILES[next].0 * count as f64).ceil() {
            let value = hist.highest_equivalent(v.value_iterated_to());
            map.insert(format!("{prefix}{}", QUANTILES[next].1), json!(unit(value)));
            next += 1;
        }
        if next == QUANTILES.len() {
            break;
        }
    }
}

fn values(data: &SeriesData, map: &mut Map<String, Value>) {
    match data {
        SeriesData::Counter { sum } => {
            map.insert("kind".into(), "counter".into());
            map.insert("sum".into(), json!(sum));
        }
        SeriesData::Gauge { last, min, max, .. } => {
            map.insert("kind".into(), "gauge".into());
            map.insert("last".into(), json!(last));
            map.insert("min".into(), json!(min));
            map.insert("max".into(), json!(max));
        }
        SeriesData::Rate { passes, total } => {
            map.insert("kind".into(), "rate".into());
            map.insert("passes".into(), json!(passes));
            map.insert("total".into(), json!(total));
        }
        SeriesData::Trend { hist, .. } => {
            map.insert("kind".into(), "trend".into());
            map.insert("count".into(), json!(hist.len()));
            if !hist.is_empty() {
                map.insert("min".into(), json!(unit(hist.min())));
                map.insert("max".into(), json!(unit(hist.max())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punisher_metrics::{MetricKind, Recorder, Tags, ValueType};

    #[tokio::test]
    async fn lines_hold_numbers_and_the_exact_snapshot() {
        let mut r = Recorder::new();
        let id = r
            .series(
                MetricKind::Trend,
                ValueType::Time,
                "http_req_duration",
                &Tags::new([("name", "x")]),
            )
            .unwrap();
        for ms in 1..=100 {
            r.add_trend(id, ms as f64);
        }
        let snap = r.take_snapshot(1000, 2000);
        let encoded = snap.encode();
        let line = interval_line(3, &snap, &encoded, 7, 2);
        let s = &line["series"][0];
        assert_eq!(s["count"], 100);
        assert_eq!(s["max"].as_f64().unwrap().round(), 100.0);
        let h = &line["headline"];
        let p95 = h["http_req_duration_p95"].as_f64().unwrap();
        assert!((94.9..=95.1).contains(&p95), "{p95}");
        let p50 = h["http_req_duration_p50"].as_f64().unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line["snapshot"].as_str().unwrap())
            .unwrap();
        assert_eq!(Snapshot::decode(&raw).unwrap(), snap);

        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "run-1", &json!({"x": 1}))
            .await
            .unwrap();
        j.append(&line).await.unwrap();
        j.append(&line).await.unwrap();
        let text = std::fs::read_to_string(dir.path().join("run-1/metrics.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
