//! The run folder `<results-dir>/<run-id>/`: its creation, its file names, and `run.json`
//! ([`RunInfo`]), the record of what exactly was run.

use std::collections::BTreeMap;
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
    /// SHA-256 of the whole bundle that ran: the entry, every module it imports and every
    /// file it `open()`s, lowercase hex (see [`bundle_sha256`]). Equal values mean the same
    /// code ran on the same data.
    #[serde(default)]
    pub bundle_sha256: String,
    /// The bundle's files, each with its own hash, sorted by path.
    #[serde(default)]
    pub bundle: Vec<BundleFile>,
    /// SHA-256 of the entry file alone (`scenario`), lowercase hex. Named `scenario_sha256`
    /// in run.json files written before the bundle hash existed.
    #[serde(alias = "scenario_sha256")]
    pub entry_sha256: String,
    /// The entry file's source text.
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
    /// A record for a run starting at `started_unix_ms`; the hashes are computed here so that
    /// they always match the text: the bundle is the entry alone until [`RunInfo::set_bundle`]
    /// gives its modules and files. Set `executor`, `thresholds` and `agents` as they become
    /// known.
    pub fn new(
        run_id: &str,
        punisher_version: &str,
        scenario_path: &str,
        scenario: &str,
        options: serde_json::Value,
        command_line: Vec<String>,
        started_unix_ms: u64,
    ) -> RunInfo {
        let mut info = RunInfo {
            run_id: run_id.to_owned(),
            punisher_version: punisher_version.to_owned(),
            command_line,
            scenario_path: scenario_path.to_owned(),
            bundle_sha256: String::new(),
            bundle: Vec::new(),
            entry_sha256: sha256_hex(scenario.as_bytes()),
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
        };
        info.set_bundle(scenario_path, [(scenario_path, scenario.as_bytes())], []);
        info
    }

    /// Records the whole bundle: `entry` (a key of `modules`), the JavaScript `modules` by
    /// path (the entry among them) and the `open()`ed `files` by path, as the engine's
    /// bundle keys them. Sets [`RunInfo::bundle`] and [`RunInfo::bundle_sha256`].
    pub fn set_bundle<'a>(
        &mut self,
        entry: &str,
        modules: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) {
        let base = match entry.rfind('/') {
            Some(i) => &entry[..i],
            None => "",
        };
        let mut listed: BTreeMap<String, BundleFile> = BTreeMap::new();
        let kinds = modules
            .into_iter()
            .map(|(p, b)| (p, b, if p == entry { "entry" } else { "module" }))
            .chain(files.into_iter().map(|(p, b)| (p, b, "file")));
        for (path, bytes, kind) in kinds {
            let path = relative_to(base, path);
            // A module also read with open() is listed once, as a module.
            listed.entry(path.clone()).or_insert_with(|| BundleFile {
                sha256: sha256_hex(bytes),
                bytes: bytes.len() as u64,
                kind: kind.to_owned(),
                path,
            });
        }
        self.bundle = listed.into_values().collect();
        self.bundle_sha256 = bundle_sha256(&self.bundle);
    }

    /// The hash a sign-off shows: the bundle's, or the entry's for a run.json written before
    /// the bundle hash existed.
    pub fn headline_sha256(&self) -> &str {
        if self.bundle_sha256.is_empty() {
            &self.entry_sha256
        } else {
            &self.bundle_sha256
        }
    }

    pub fn finish(&mut self, ended_unix_ms: u64) {
        self.ended_unix_ms = Some(ended_unix_ms);
        self.ended = Some(rfc3339(ended_unix_ms));
    }
}

/// One file of a run's bundle, as `run.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleFile {
    /// Relative to the entry file's folder (`lib/login.js`, `../data/users.csv`); absolute
    /// paths stay absolute.
    pub path: String,
    /// `entry`, `module` (imported) or `file` (read with `open()`).
    pub kind: String,
    pub bytes: u64,
    /// SHA-256 of its content, lowercase hex.
    pub sha256: String,
}

/// The hash of a whole bundle: SHA-256 of the lines `<sha256 of the file>  <path>\n`, sorted
/// by path, paths relative to the entry's folder. That is `sha256sum`'s output, so that
/// anyone can check it without punisher, from the entry's folder:
/// `sha256sum FILES... | LC_ALL=C sort -k2 | sha256sum`. Folders and the current directory
/// do not change it; any byte of any file, or a renamed file, does.
pub fn bundle_sha256(files: &[BundleFile]) -> String {
    let mut sorted: Vec<&BundleFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let manifest: String = sorted
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    sha256_hex(manifest.as_bytes())
}

/// `path` relative to the folder `base` (both as the bundle writes them: normalized, `/`
/// separated, relative to the same current directory): `scenarios` and `scenarios/lib/x.js`
/// give `lib/x.js`, `scenarios` and `data/u.csv` give `../data/u.csv`. An absolute path
/// against a relative base (or the other way), or one that would need the name of a folder
/// above the current directory, is kept as it is.
fn relative_to(base: &str, path: &str) -> String {
    if base.starts_with('/') != path.starts_with('/') {
        return path.to_owned();
    }
    let base: Vec<&str> = base.split('/').filter(|p| !p.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let common = base.iter().zip(&parts).take_while(|(a, b)| a == b).count();
    if base[common..].contains(&"..") {
        return path.to_owned();
    }
    let mut out: Vec<&str> = vec![".."; base.len() - common];
    out.extend(&parts[common..]);
    out.join("/")
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
    use serde_json::json;

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
    fn paths_relative_to_the_entry_folder() {
        let cases = [
            ("scenarios", "scenarios/lib/x.js", "lib/x.js"),
            ("scenarios", "scenarios/s.js", "s.js"),
            ("scenarios/tv", "scenarios/data/u.csv", "../data/u.csv"),
            ("", "lib/x.js", "lib/x.js"),
            ("", "../up.js", "../up.js"),
            ("../x", "../x/lib/y.js", "lib/y.js"),
            // Would need the current directory's name: kept.
            ("../x", "a.js", "a.js"),
            ("/abs/dir", "/abs/data.csv", "../data.csv"),
            ("rel", "/etc/data.csv", "/etc/data.csv"),
        ];
        for (base, path, expect) in cases {
            assert_eq!(relative_to(base, path), expect, "{base} {path}");
        }
    }

    #[test]
    fn the_bundle_hash_covers_every_file_and_not_where_it_was_run_from() {
        let hash = |entry: &str, lib: &str, data: &[u8]| {
            let mut info =
                RunInfo::new("r", "0", entry, "import './lib/a.js'", json!({}), vec![], 0);
            let lib_path = entry.replace("s.js", "lib/a.js");
            let data_path = entry.replace("s.js", "data.csv");
            info.set_bundle(
                entry,
                [
                    (entry, &b"import './lib/a.js'"[..]),
                    (lib_path.as_str(), lib.as_bytes()),
                ],
                [(data_path.as_str(), data)],
            );
            info
        };
        let a = hash("scenarios/s.js", "export const x = 1;", b"u1\n");
        assert_eq!(
            a.bundle
                .iter()
                .map(|f| (f.path.as_str(), f.kind.as_str(), f.bytes))
                .collect::<Vec<_>>(),
            [
                ("data.csv", "file", 3),
                ("lib/a.js", "module", 19),
                ("s.js", "entry", 19)
            ]
        );
        // sha256sum's lines, sorted by path, hashed.
        let manifest: String = a
            .bundle
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.path))
            .collect();
        assert_eq!(a.bundle_sha256, sha256_hex(manifest.as_bytes()));
        assert_eq!(a.entry_sha256, sha256_hex(b"import './lib/a.js'"));
        // Run from another folder: the same hash.
        assert_eq!(
            hash("/home/u/s.js", "export const x = 1;", b"u1\n").bundle_sha256,
            a.bundle_sha256
        );
        // A changed module or data file changes it; the entry's own hash stays.
        for other in [
            hash("scenarios/s.js", "export const x = 2;", b"u1\n"),
            hash("scenarios/s.js", "export const x = 1;", b"u2\n"),
        ] {
            assert_ne!(other.bundle_sha256, a.bundle_sha256);
            assert_eq!(other.entry_sha256, a.entry_sha256);
        }
        // A one-file scenario: the bundle is the entry alone.
        let single = RunInfo::new("r", "0", "dir/s.js", "x", json!({}), vec![], 0);
        assert_eq!(single.bundle.len(), 1);
        assert_eq!(
            single.bundle_sha256,
            sha256_hex(format!("{}  s.js\n", sha256_hex(b"x")).as_bytes())
        );
    }

    #[test]
    fn old_run_json_files_still_read() {
        let old = json!({
            "run_id": "r", "punisher_version": "0", "command_line": [], "scenario_path": "s.js",
            "scenario_sha256": "abc", "scenario": "x", "options": {}, "agents": [],
            "started_unix_ms": 0, "started": "", "ended_unix_ms": null, "ended": null,
        });
        let info: RunInfo = serde_json::from_value(old).unwrap();
        assert_eq!(info.entry_sha256, "abc");
        assert!(info.bundle_sha256.is_empty());
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
