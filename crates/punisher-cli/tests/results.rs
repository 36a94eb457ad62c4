//! The results folder of `punisher run` (run.json, journal, hlogs, summary, JUnit, HTML),
//! `punisher report` and `punisher compare` on it, and the `--prometheus` endpoint.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

use crate::util::{self, Output, scenario};

const SCENARIO: &str = r#"
import http from 'punisher/http';
export const options = {
  vus: 3, duration: '2s',
  thresholds: { http_req_failed: ['rate<0.01'], 'http_req_duration{name:login}': ['p(99)<5000'] },
};
export default async function () {
  await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
}
"#;

/// Runs punisher with results on (the helpers turn them off by default).
fn punisher_with_results(args: &[&str]) -> Output {
    let start = std::time::Instant::now();
    let out = util::command(args)
        .env_remove("PUNISHER_NO_RESULTS")
        .output()
        .expect("run punisher");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Runs the scenario with `--results-dir base` and returns the run's folder.
fn run_into(script: &Path, base: &Path) -> PathBuf {
    let out = punisher_with_results(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "-q",
        "--results-dir",
        base.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let line = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results line: {}", out.stderr));
    let dir = PathBuf::from(line.trim());
    assert!(dir.starts_with(base), "{}", dir.display());
    let id = dir.file_name().unwrap().to_str().unwrap();
    let parts: Vec<&str> = id.split('-').collect();
    assert!(
        parts.len() == 3 && parts[0] == "run" && parts[2].len() == 4,
        "{id}"
    );
    dir
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn count(summary: &serde_json::Value, metric: &str) -> f64 {
    summary["metrics"][metric]["values"]["count"]
        .as_f64()
        .unwrap_or_else(|| panic!("no {metric} count in {summary}"))
}

/// The sum of the untagged (whole-trend) interval counts, and the interval count.
fn hlog_total(path: &Path) -> (u64, usize) {
    let text = std::fs::read(path).unwrap();
    let mut deserializer = Deserializer::new();
    let mut total = 0u64;
    let mut intervals = 0;
    let mut tagged = 0;
    for entry in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(interval) = entry.expect("a readable log entry") {
            let hist = punisher_results::hlog::decode_histogram(
                &mut deserializer,
                interval.encoded_histogram(),
            )
            .unwrap();
            if interval.tag().is_none() {
                total += hist.len();
                intervals += 1;
            } else {
                tagged += 1;
            }
        }
    }
    assert!(
        tagged > 0,
        "no tagged sub-series lines in {}",
        path.display()
    );
    (total, intervals)
}

#[test]
fn run_writes_its_results_folder_and_report_and_compare_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let script = scenario(&tmp, "results.js", SCENARIO);
    let base = tmp.path().join("results");
    let a = run_into(&script, &base);
    let b = run_into(&script, &base);
    assert_ne!(a, b);

    for file in [
        "run.json",
        "timeseries.jsonl",
        "http_req_duration.hlog",
        "summary.json",
        "junit.xml",
        "report.html",
    ] {
        let path = a.join(file);
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .len();
        assert!(len > 0, "{} is empty", path.display());
    }

    // run.json: what exactly was run.
    let run = read_json(&a.join("run.json"));
    assert_eq!(run["scenario"], SCENARIO);
    assert_eq!(
        run["scenario_sha256"],
        punisher_results::sha256_hex(SCENARIO.as_bytes())
    );
    assert_eq!(run["run_id"], a.file_name().unwrap().to_str().unwrap());
    assert!(
        run["command_line"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--results-dir"),
        "{run}"
    );
    assert!(!run["options"].is_null(), "{run}");
    assert!(run["punisher_version"].is_string(), "{run}");
    assert!(run["ended_unix_ms"].as_u64() >= run["started_unix_ms"].as_u64());
    assert_eq!(run["agents"][0]["region"], "local");

    // summary.json follows the committed schema.
    let summary = read_json(&a.join("summary.json"));
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../punisher-metrics/summary.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&summary)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let requests = count(&summary, "http_reqs");
    assert!(requests >= 3.0, "{summary}");

    // The interval log reads back with the standard reader and holds every request.
    let (logged, intervals) = hlog_total(&a.join("http_req_duration.hlog"));
    assert_eq!(logged as f64, count(&summary, "http_req_duration"));
    assert!(intervals >= 2, "{intervals} intervals");

    // Journal lines are whole wall-clock seconds.
    let jsonl = std::fs::read_to_string(a.join("timeseries.jsonl")).unwrap();
    for line in jsonl.lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        let (ts, end) = (line["ts"].as_u64().unwrap(), line["end"].as_u64().unwrap());
        assert_eq!(ts % 1000, 0, "{line}");
        assert_eq!(end - ts, 1000, "{line}");
    }

    // junit.xml: one test case per threshold.
    let junit = std::fs::read_to_string(a.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 2, "{junit}");

    // `punisher report` rebuilds the summary and the report from the journal.
    std::fs::remove_file(a.join("summary.json")).unwrap();
    std::fs::remove_file(a.join("report.html")).unwrap();
    let out = util::punisher(&["report", a.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let rebuilt = read_json(&a.join("summary.json"));
    assert_eq!(count(&rebuilt, "http_reqs"), requests);
    assert_eq!(
        count(&rebuilt, "http_req_duration"),
        count(&summary, "http_req_duration")
    );
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(html.contains("<svg"), "no chart in the rebuilt report");

    // `punisher compare` of two runs of the same scenario.
    let out = util::punisher(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--tolerance",
        "1000",
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("http_req_duration"), "{}", out.stdout);
    assert!(out.stdout.contains("p99"), "{}", out.stdout);
}

#[test]
fn no_results_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let script = scenario(&tmp, "results.js", SCENARIO);
    let base = tmp.path().join("results");
    let out = punisher_with_results(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "-q",
        "--duration",
        "1s",
        "--results-dir",
        base.to_str().unwrap(),
        "--no-results",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!base.exists());
    assert!(!out.stderr.contains("results: "), "{}", out.stderr);
}

/// One HTTP/1.0 GET over a plain socket (no client library needed for a text page).
fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn prometheus_endpoint_serves_the_running_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let script = scenario(&tmp, "results.js", SCENARIO);
    let mut child = util::command(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "--duration",
        "4s",
        "--prometheus",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut addr = None;
    let mut line = String::new();
    // The events: the endpoint's address, then a status line with requests in it.
    loop {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line.strip_prefix("serving Prometheus metrics on http://") {
            addr = Some(rest.trim().trim_end_matches("/metrics").to_owned());
        }
        if line.contains(" req/s") && !line.contains("| 0 req/s") {
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no Prometheus address: {seen}"));
    assert!(seen.contains(" req/s"), "no status line: {seen}");
    let response = http_get(&addr, "/metrics");
    let not_found = http_get(&addr, "/nope");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}{rest}");
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("text/plain"), "{response}");
    assert!(
        response
            .lines()
            .any(|l| l.starts_with("punisher_http_reqs_total") && !l.ends_with(" 0")),
        "{response}"
    );
    assert!(response.contains("_bucket{"), "{response}");
    assert!(not_found.starts_with("HTTP/1.0 404"), "{not_found}");
}
