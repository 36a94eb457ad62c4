//! The run folder `<results-dir>/<run-id>/`: its creation, its file names, and `run.json`
//! ([`RunInfo`]), the record of what exactly was run.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use punisher_core::ThresholdSpec;
use punisher_metrics::Summary;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::journal::Journal;
use crate::timeline::Timeline;
use crate::{Result, ResultsError};

pub const RUN_JSON: &str = "run.json";
pub const SUMMARY_JSON: &str = "summary.json";
pub const TIMESERIES_JSONL: &str = "timeseries.jsonl";
pub const JUNIT_XML: &str = "junit.xml";
pub const REPORT_HTML: &str = "report.html";
/// Extension of the HdrHistogram interval logs, one per trend metric.
pub const HLOG_EXT: &str = "hlog";

/// One run's results folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsDir {
    path: PathBuf,
}

impl ResultsDir {
    /// Creates `<base>/<run_id>/` (and `base` if needed). Refuses a run id that is not a
    /// plain file name, and a folder that already holds files (a second run with the same
    /// id must not interleave its journal with the first one's).
    pub fn create(base: &Path, run_id: &str) -> Result<ResultsDir> {
        validate_run_id(run_id)?;
        let path = base.join(run_id);
        fs::create_dir_all(&path).map_err(ResultsError::io("create folder", &path))?;
        let mut entries = fs::read_dir(&path).map_err(ResultsError::io("read folder", &path))?;
        if entries.next().is_some() {
            return Err(ResultsError::Exists(path));
        }
        Ok(ResultsDir { path })
    }

    /// Opens an existing run folder (for `punisher report DIR` and `punisher compare`).
    pub fn open(path: &Path) -> Result<ResultsDir> {
        let meta = fs::metadata(path).map_err(ResultsError::io("open folder", path))?;
        if !meta.is_dir() {
            return Err(ResultsError::Io {
                action: "open folder",
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a folder"),
            });
        }
        Ok(ResultsDir {
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of one file of the run, e.g. `dir.file(REPORT_HTML)`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Starts the journal (`timeseries.jsonl` and the `.hlog` files) of this run.
    pub fn journal(&self) -> Result<Journal> {
        Journal::create(&self.path)
    }

    /// Writes `run.json`; call it at the start and again with the end time set.
    pub fn write_run_info(&self, info: &RunInfo) -> Result<()> {
        let json = serde_json::to_vec_pretty(info).map_err(|e| ResultsError::Parse {
            path: self.file(RUN_JSON),
            message: e.to_string(),
        })?;
        write_atomic(&self.file(RUN_JSON), &json)
    }

    pub fn read_run_info(&self) -> Result<RunInfo> {
        read_json(&self.file(RUN_JSON))
    }

    /// Writes `summary.json` (the `--summary-json` document of punisher-metrics).
    pub fn write_summary(&self, summary: &Summary) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(&summary.to_json()).unwrap_or_default();
        json.push(b'\n');
        write_atomic(&self.file(SUMMARY_JSON), &json)
    }

    /// Reads `summary.json` as JSON (the summary model is write-only).
    pub fn read_summary_json(&self) -> Result<serde_json::Value> {
        read_json(&self.file(SUMMARY_JSON))
    }

    /// Writes the end-of-run documents: `summary.json`, `junit.xml` and `report.html`.
    pub fn write_outputs(
        &self,
        info: Option<&RunInfo>,
        summary: &Summary,
        timeline: &Timeline,
    ) -> Result<()> {
        self.write_summary(summary)?;
        let run_id = info.map_or_else(|| self.run_id(), |i| i.run_id.clone());
        let junit = crate::junit::render(&run_id, &summary.thresholds, summary.meta.duration);
        write_atomic(&self.file(JUNIT_XML), junit.as_bytes())?;
        let html = crate::html::render_html(&crate::html::ReportInput {
            run_id: &run_id,
            info,
            summary,
            timeline,
        });
        write_atomic(&self.file(REPORT_HTML), html.as_bytes())
    }

    /// The folder's name, which is the run id.
    pub fn run_id(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Checks that `run_id` can name a run folder: letters, digits, `-`, `_` and `.`, not only
/// dots, at most 200 characters.
pub fn validate_run_id(run_id: &str) -> Result<()> {
    let ok = !run_id.is_empty()
        && run_id.len() <= 200
        && !run_id.chars().all(|c| c == '.')
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ResultsError::InvalidRunId(run_id.to_owned()))
    }
}

/// Writes through a temporary file and a rename, so that a reader (or a crash) never sees
/// half a document.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    let mut f = fs::File::create(&tmp).map_err(ResultsError::io("create", &tmp))?;
    f.write_all(bytes)
        .map_err(ResultsError::io("write", &tmp))?;
    f.sync_all().map_err(ResultsError::io("sync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(ResultsError::io("rename", path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(ResultsError::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| ResultsError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// One agent of the run, as `run.json` and the report list them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    #[serde(default)]
    pub hostname: String,
    /// AWS region, or `local`.
    pub region: String,
    /// Agent clock minus controller clock, measured from ping round trips.
    pub clock_offset_ms: f64,
    #[serde(default)]
    pub cores: u32,
    /// The most users it ran at once.
    #[serde(default)]
    pub peak_users: u64,
    /// Its last state (`finished`, `lost`, ...).
    #[serde(default)]
    pub state: String,
}

/// `run.json`: what exactly was run, so that a sign-off can be reproduced and compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub punisher_version: String,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// The scenario file as given.
    pub scenario_path: String,
    /// SHA-256 of `scenario`, lowercase hex.
    pub scenario_sha256: String,
    /// The scenario's source text.
    pub scenario: String,
    /// The executor's kind, e.g. `ramping-vus`, for the summary.
    #[serde(default)]
    pub executor: String,
    /// The options after command-line overrides (the plan, as JSON).
    pub options: serde_json::Value,
    /// The thresholds, so that `punisher report` can evaluate them again.
    #[serde(default)]
    pub thresholds: Vec<ThresholdSpec>,
    pub agents: Vec<AgentInfo>,
    pub started_unix_ms: u64,
    /// `started_unix_ms` in RFC 3339 (UTC).
    pub started: String,
    pub ended_unix_ms: Option<u64>,
    pub ended: Option<String>,
    /// The agents that left or were lost while the run went on: the windows the report
    /// shades on its charts.
    #[serde(default)]
    pub agent_losses: Vec<AgentLossWindow>,
    /// What the controller noted during the run (agent losses, agents that left early,
    /// threshold aborts), in order.
    #[serde(default)]
    pub messages: Vec<String>,
}

/// An agent that left (spot notice) or was lost while the run went on, and what became of
/// its users: between `from_unix_ms` (its last report, or the notice) and `to_unix_ms`
/// (when the controller acted) the merged numbers lack that agent's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentLossWindow {
    pub agent: String,
    /// Why it went, e.g. `spot interruption` or `no report for 3s`.
    pub reason: String,
    /// `reassign`, `continue` or `abort` (`--on-agent-loss`).
    pub policy: String,
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    /// Its users that had started: they ended with it.
    pub interrupted_users: u64,
    /// Its users that had not started, handed to `reassigned_to`.
    pub reassigned_users: u64,
    pub reassigned_to: Vec<String>,
}

impl RunInfo {
    /// A record for a run starting at `started_unix_ms`; the hash is computed here so that it
    /// always matches the text. Set `executor`, `thresholds` and `agents` as they become known.
    pub fn new(
        run_id: &str,
        punisher_version: &str,
        scenario_path: &str,
        scenario: &str,
        options: serde_json::Value,
        command_line: Vec<String>,
        started_unix_ms: u64,
    ) -> RunInfo {
        RunInfo {
            run_id: run_id.to_owned(),
            punisher_version: punisher_version.to_owned(),
            command_line,
            scenario_path: scenario_path.to_owned(),
            scenario_sha256: sha256_hex(scenario.as_bytes()),
            scenario: scenario.to_owned(),
            executor: String::new(),
            options,
            thresholds: Vec::new(),
            agents: Vec::new(),
            started_unix_ms,
            started: rfc3339(started_unix_ms),
            ended_unix_ms: None,
            ended: None,
            agent_losses: Vec::new(),
            messages: Vec::new(),
        }
    }

    pub fn finish(&mut self, ended_unix_ms: u64) {
        self.ended_unix_ms = Some(ended_unix_ms);
        self.ended = Some(rfc3339(ended_unix_ms));
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds: `2026-11-05T09:54:10.123Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let ms = unix_ms % 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ];
        for (ms, expect) in cases {
            assert_eq!(rfc3339(ms), expect);
        }
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn run_ids() {
        for ok in ["20261105-095410-abc", "run_1", "a.b"] {
            assert!(validate_run_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a\\b", "a b", "ü"] {
            assert!(validate_run_id(bad).is_err(), "{bad}");
        }
    }
}
