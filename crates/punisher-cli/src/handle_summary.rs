//! The files a scenario's `handleSummary(data)` returned (see
//! `punisher_engine::run_handle_summary`), written as k6 writes them: the keys `stdout` and
//! `stderr` are printed there, every other key is a file path, relative ones resolved
//! against the current directory (not the results folder). Parent folders are created.
//!
//! A file that cannot be written does not stop the others: every failure is listed in one
//! error, which also says where the run's summary is kept, so that nothing is lost.
//!
//! The `data` it gets ([`k6_data`]) is the run's `summary.json` document plus the keys of
//! k6's summary object, so that k6 scripts (and jslib's `textSummary`) read it unchanged.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::Path;

use anyhow::anyhow;
use serde_json::{Value, json};

/// Trend values every summary holds, in k6's column order (`options.summaryTrendStats`).
const TREND_STATS: [&str; 7] = ["avg", "min", "med", "max", "p(90)", "p(95)", "p(99)"];

/// The argument of `handleSummary(data)`: `summary` (punisher's summary document: `version`,
/// `meta`, `metrics`, `checks`, `thresholds`, `series`) with k6's keys added:
/// - `metrics` is already k6's shape: `{ type, contains, values, thresholds: { expr: { ok } } }`;
/// - `root_group`: `{ name, path, groups, checks: [{ name, path, passes, fails }] }`, the
///   checks in a tree of their groups (no `id`s: k6's are MD5 hashes of the paths);
/// - `options`: `{ summaryTrendStats, summaryTimeUnit, noColor }`;
/// - `state`: `{ isStdOutTTY, isStdErrTTY, testRunDurationMs }`;
/// - `setup_data`: what `setup()` returned.
pub(crate) fn k6_data(summary: &Value, setup_data: &Value) -> Value {
    let mut data = summary.clone();
    let Some(map) = data.as_object_mut() else {
        return data;
    };
    map.insert("root_group".into(), root_group(summary));
    map.insert(
        "options".into(),
        json!({
            "summaryTrendStats": TREND_STATS,
            "summaryTimeUnit": "",
            "noColor": std::env::var_os("NO_COLOR").is_some(),
        }),
    );
    map.insert(
        "state".into(),
        json!({
            "isStdOutTTY": std::io::stdout().is_terminal(),
            "isStdErrTTY": std::io::stderr().is_terminal(),
            "testRunDurationMs": summary["meta"]["duration_ms"].as_f64().unwrap_or(0.0),
        }),
    );
    map.insert("setup_data".into(), setup_data.clone());
    data
}

/// k6's group tree from the summary's checks, each tagged with its group path
/// (`::outer::inner`, `""` at the top).
fn root_group(summary: &Value) -> Value {
    #[derive(Default)]
    struct Group {
        groups: BTreeMap<String, Group>,
        /// In the summary's order.
        checks: Vec<Value>,
    }
    fn to_json(name: &str, path: &str, g: Group) -> Value {
        let groups: Vec<Value> = g
            .groups
            .into_iter()
            .map(|(child, sub)| to_json(&child, &format!("{path}::{child}"), sub))
            .collect();
        json!({ "name": name, "path": path, "groups": groups, "checks": g.checks })
    }
    let mut root = Group::default();
    for c in summary["checks"].as_array().into_iter().flatten() {
        let group = c["group"].as_str().unwrap_or("");
        let name = c["name"].as_str().unwrap_or("");
        let mut at = &mut root;
        for part in group.split("::").filter(|p| !p.is_empty()) {
            at = at.groups.entry(part.to_owned()).or_default();
        }
        at.checks.push(json!({
            "name": name,
            "path": format!("{group}::{name}"),
            "passes": c["passes"],
            "fails": c["fails"],
        }));
    }
    to_json("", "", root)
}

/// Writes (or prints) every output of `handleSummary`; `results_dir` is the run's results
/// folder, named in the error so that the user knows the summary is safe there.
pub(crate) fn write_outputs(
    files: &BTreeMap<String, String>,
    results_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for (key, content) in files {
        let written = match key.as_str() {
            "stdout" => {
                let mut out = std::io::stdout().lock();
                out.write_all(content.as_bytes()).and_then(|()| out.flush())
            }
            "stderr" => {
                let mut err = std::io::stderr().lock();
                err.write_all(content.as_bytes()).and_then(|()| err.flush())
            }
            path => write_file(Path::new(path), content),
        };
        if let Err(e) = written {
            failures.push(format!("{key}: {e}"));
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    let kept = match results_dir {
        Some(dir) => format!(
            "; the run's summary is kept in {}",
            dir.join(punisher_results::dir::SUMMARY_JSON).display()
        ),
        None => String::new(),
    };
    Err(anyhow!(
        "handleSummary: cannot write {} of its {} outputs: {}{kept}",
        failures.len(),
        files.len(),
        failures.join("; ")
    ))
}

fn write_file(path: &Path, content: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_has_k6_keys_beside_the_summary() {
        let summary = json!({
            "version": 1,
            "meta": {"duration_ms": 2500, "scenario": "s.js"},
            "metrics": {"http_reqs": {"type": "counter", "contains": "default",
                "values": {"count": 10.0, "rate": 4.0}}},
            "checks": [
                {"name": "top", "group": "", "passes": 3, "fails": 0},
                {"name": "deep", "group": "::a::b", "passes": 1, "fails": 2},
                {"name": "mid", "group": "::a", "passes": 5, "fails": 0},
            ],
            "thresholds": [],
        });
        let data = k6_data(&summary, &json!({"token": "t"}));
        // The summary is all there.
        assert_eq!(data["metrics"], summary["metrics"]);
        assert_eq!(data["checks"], summary["checks"]);
        assert_eq!(data["state"]["testRunDurationMs"], 2500.0);
        assert_eq!(data["options"]["summaryTrendStats"][5], "p(95)");
        assert_eq!(data["setup_data"]["token"], "t");
        let root = &data["root_group"];
        assert_eq!(
            (root["name"].as_str(), root["path"].as_str()),
            (Some(""), Some(""))
        );
        assert_eq!(
            root["checks"],
            json!([{"name": "top", "path": "::top", "passes": 3, "fails": 0}])
        );
        let a = &root["groups"][0];
        assert_eq!(
            (a["name"].as_str(), a["path"].as_str()),
            (Some("a"), Some("::a"))
        );
        assert_eq!(a["checks"][0]["path"], "::a::mid");
        let b = &a["groups"][0];
        assert_eq!(b["path"], "::a::b");
        assert_eq!(
            b["checks"][0],
            json!({"name": "deep", "path": "::a::b::deep", "passes": 1, "fails": 2})
        );
        // Not an object: passed on as it is.
        assert_eq!(k6_data(&json!(null), &json!(null)), json!(null));
    }

    #[test]
    fn writes_files_relative_to_the_current_directory_and_creates_folders() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("out/deep/summary.txt");
        let files = BTreeMap::from([
            (nested.display().to_string(), "hello".to_owned()),
            ("stderr".to_owned(), String::new()),
        ]);
        write_outputs(&files, None).unwrap();
        assert_eq!(std::fs::read_to_string(&nested).unwrap(), "hello");
    }

    #[test]
    fn a_failed_write_is_reported_and_the_others_are_still_written() {
        let dir = tempfile::tempdir().unwrap();
        // A file where a folder should be: its child cannot be created.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, "x").unwrap();
        let bad = blocker.join("summary.txt");
        let good = dir.path().join("good.txt");
        let files = BTreeMap::from([
            (bad.display().to_string(), "a".to_owned()),
            (good.display().to_string(), "b".to_owned()),
        ]);
        let results = dir.path().join("results/run-1");
        let err = write_outputs(&files, Some(&results))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot write 1 of its 2 outputs"), "{err}");
        assert!(err.contains(&bad.display().to_string()), "{err}");
        assert!(err.contains("run-1/summary.json"), "{err}");
        assert_eq!(std::fs::read_to_string(&good).unwrap(), "b");
    }
}
