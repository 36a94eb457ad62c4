//! The results folder of `punisher run` (run.json, journal, hlogs, summary, JUnit, HTML),
//! `punisher report` and `punisher compare` on it, `handleSummary()`, and the `--prometheus`
//! endpoints of `punisher run` and `punisher controller`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    run_into_with(script, base, &["--demo-target"], 0)
}

/// Runs the scenario with `--results-dir base` and `extra` flags, expects exit `code`, and
/// returns the run's folder.
fn run_into_with(script: &Path, base: &Path, extra: &[&str], code: i32) -> PathBuf {
    let mut args = vec![
        "run",
        script.to_str().unwrap(),
        "-q",
        "--results-dir",
        base.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = punisher_with_results(&args);
    assert_eq!(out.code, code, "{}\n{}", out.stdout, out.stderr);
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
        run["entry_sha256"],
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

/// A scenario of three files: the entry imports a module and `open()`s a data file.
fn bundle_scenario(dir: &Path, users_csv: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("lib")).unwrap();
    std::fs::write(
        dir.join("lib/login.js"),
        "import http from 'punisher/http';\n\
         export async function login(api) {\n\
           return http.post(`${api}/login`, { guest: true }, { name: 'login' });\n\
         }\n",
    )
    .unwrap();
    std::fs::write(dir.join("users.csv"), users_csv).unwrap();
    let entry = dir.join("main.js");
    std::fs::write(
        &entry,
        "import { login } from './lib/login.js';\n\
         const users = open('./users.csv');\n\
         export const options = { vus: 2, duration: '5s' };\n\
         export default async function () { await login(__ENV.API); }\n",
    )
    .unwrap();
    entry
}

/// run.json names the whole bundle by one hash (each file's too) and shows the options
/// after the command line's overrides.
#[test]
fn run_json_hashes_the_whole_bundle_and_shows_the_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let sc = tmp.path().join("sc");
    let base = tmp.path().join("results");
    let entry = bundle_scenario(&sc, "id\n1\n");
    let a = run_into_with(
        &entry,
        &base,
        &["--demo-target", "--vus", "7", "--duration", "1s"],
        0,
    );
    let run = read_json(&a.join("run.json"));

    // The overrides, not the scenario's `vus: 2, duration: '5s'`.
    assert_eq!(run["options"]["executor"]["type"], "constant_vus", "{run}");
    assert_eq!(run["options"]["executor"]["vus"], 7, "{run}");
    assert_eq!(run["options"]["executor"]["duration"], "1s", "{run}");
    let args: Vec<&str> = run["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(args.windows(2).any(|w| w == ["--vus", "7"]), "{args:?}");
    // All 7 users counted, though a one-second run may end before a report sees them
    // active (the agents report each second's peak).
    let summary = read_json(&a.join("summary.json"));
    assert_eq!(summary["meta"]["vus_max"], 7, "{}", summary["meta"]);

    // Every file of the bundle, relative to the entry's folder, with its own hash.
    let sha = |rel: &str| punisher_results::sha256_hex(&std::fs::read(sc.join(rel)).unwrap());
    let listed: Vec<(String, String, String)> = run["bundle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_owned();
            (s("path"), s("kind"), s("sha256"))
        })
        .collect();
    let expect: Vec<(String, String, String)> = [
        ("lib/login.js", "module"),
        ("main.js", "entry"),
        ("users.csv", "file"),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), k.to_string(), sha(p)))
    .collect();
    assert_eq!(listed, expect, "{run}");
    // The bundle's hash is sha256sum's lines, sorted by path, hashed: checkable without
    // punisher (`sha256sum lib/login.js main.js users.csv | sha256sum`).
    let manifest: String = expect
        .iter()
        .map(|(path, _, sha)| format!("{sha}  {path}\n"))
        .collect();
    let bundle_sha = punisher_results::sha256_hex(manifest.as_bytes());
    assert_eq!(run["bundle_sha256"], bundle_sha.as_str());
    assert_eq!(run["entry_sha256"], sha("main.js").as_str());
    let html = std::fs::read_to_string(a.join("report.html")).unwrap();
    assert!(
        html.contains(&bundle_sha),
        "the report shows the bundle's hash"
    );

    // Another data file: another bundle hash, the same entry hash.
    std::fs::write(sc.join("users.csv"), "id\n2\n").unwrap();
    let b = run_into_with(&entry, &base, &["--demo-target", "--duration", "1s"], 0);
    let run_b = read_json(&b.join("run.json"));
    assert_ne!(run_b["bundle_sha256"], run["bundle_sha256"]);
    assert_eq!(run_b["entry_sha256"], run["entry_sha256"]);
    assert_eq!(run_b["options"]["executor"]["vus"], 2, "{run_b}");
}

/// `handleSummary(data)` at the end of a real run: its files are written (relative to the
/// current directory), its `stdout` is printed instead of the default summary, and `data`
/// has k6's keys.
#[test]
fn handle_summary_writes_its_files_and_prints_its_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let script = scenario(
        &tmp,
        "summary.js",
        r#"
        import http from 'punisher/http';
        import { check, group } from 'punisher';
        export const options = { vus: 2, duration: '1s', thresholds: { http_req_failed: ['rate<0.01'] } };
        export function setup() { return { token: 'from-setup' }; }
        export default async function () {
          await group('api', async () => {
            const res = await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
            check(res, { 'logged in': (r) => r.status === 200 });
          });
        }
        export function handleSummary(data) {
          const api = data.root_group.groups.find((g) => g.name === 'api');
          return {
            'out/summary.json': JSON.stringify({
              requests: data.metrics.http_reqs.values.count,
              p95: data.metrics.http_req_duration.values['p(95)'],
              threshold_ok: data.metrics.http_req_failed.thresholds['rate<0.01'].ok,
              check: api.checks[0],
              duration_ms: data.state.testRunDurationMs,
              trend_stats: data.options.summaryTrendStats,
              setup: data.setup_data.token,
            }),
            stdout: `custom summary: ${data.metrics.http_reqs.values.count} requests\n`,
          };
        }
        "#,
    );
    let out = util::command(&["run", script.to_str().unwrap(), "--demo-target", "-q"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let written = read_json(&tmp.path().join("out/summary.json"));
    let requests = written["requests"].as_f64().unwrap();
    assert!(requests >= 2.0, "{written}");
    assert_eq!(
        stdout.trim(),
        format!("custom summary: {requests} requests"),
        "handleSummary's stdout replaces the summary"
    );
    assert!(written["p95"].as_f64().unwrap() > 0.0, "{written}");
    assert_eq!(written["threshold_ok"], true, "{written}");
    assert_eq!(written["check"]["name"], "logged in", "{written}");
    assert_eq!(written["check"]["path"], "::api::logged in", "{written}");
    assert_eq!(
        written["check"]["passes"].as_f64(),
        Some(requests),
        "{written}"
    );
    assert_eq!(written["check"]["fails"], 0, "{written}");
    assert!(
        written["duration_ms"].as_f64().unwrap() >= 1000.0,
        "{written}"
    );
    assert_eq!(written["trend_stats"][5], "p(95)", "{written}");
    assert_eq!(written["setup"], "from-setup", "{written}");
}

/// A `punisher` child process whose output lines (stdout and stderr) come in on a channel.
/// Killed (SIGKILL) when dropped.
struct Child {
    name: &'static str,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Child {
    fn spawn(name: &'static str, args: &[&str]) -> Child {
        let mut child = util::command(args)
            .env("PUNISHER_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Child {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for `count` lines that satisfy `pred` (lines seen before count too); returns
    /// the last of them.
    fn wait_lines(
        &mut self,
        what: &str,
        count: usize,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<&String> = self.seen.iter().filter(|l| pred(l)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {what} within {within:?}:\n{}",
                        self.name,
                        self.log()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{}: ended before {what}:\n{}", self.name, self.log())
                }
            }
        }
    }

    fn wait_line(&mut self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_lines(what, 1, within, pred)
    }

    /// Waits for the exit and for the rest of the output.
    fn exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{}: still running after {within:?}:\n{}",
                self.name,
                self.log()
            );
            // The wait's pause, and the output read meanwhile.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
        }
    }

    fn log(&self) -> String {
        self.seen.join("\n")
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} -----\n{}", self.name, self.log());
        }
    }
}

const TOKEN: &str = "results-test-token";
const START: Duration = Duration::from_secs(30);

/// A standing `punisher controller` (plaintext on loopback, results in `results`) with one
/// agent, and the `--controller` flags of `punisher run` for it.
struct Standing {
    controller: Child,
    _agent: Child,
    addr: String,
    prometheus: Option<String>,
}

impl Standing {
    fn start(results: &Path, extra: &[&str]) -> Standing {
        let mut args = vec![
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--insecure-loopback",
            "--token",
            TOKEN,
            "--results-dir",
            results.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut controller = Child::spawn("controller", &args);
        let line = controller.wait_line("its address", START, |l| {
            l.contains("controller listening on ")
        });
        let addr = line.rsplit(' ').next().unwrap().to_owned();
        let prometheus = extra.contains(&"--prometheus").then(|| {
            let line = controller.wait_line("the Prometheus address", START, |l| {
                l.contains("serving Prometheus metrics on http://")
            });
            let url = line.rsplit("http://").next().unwrap();
            url.trim().trim_end_matches("/metrics").to_owned()
        });
        let agent = Child::spawn(
            "agent",
            &[
                "agent",
                "--controller",
                &addr,
                "--token",
                TOKEN,
                "--insecure-loopback",
                "--workers",
                "1",
            ],
        );
        Standing {
            controller,
            _agent: agent,
            addr,
            prometheus,
        }
    }

    /// `punisher run SCRIPT --controller ... EXTRA`, started.
    fn submit(&self, script: &Path, extra: &[&str]) -> Child {
        let mut args = vec![
            "run",
            script.to_str().unwrap(),
            "--controller",
            &self.addr,
            "--token",
            TOKEN,
            "--insecure-loopback",
            "--wait-agents",
            "1",
        ];
        args.extend_from_slice(extra);
        Child::spawn("run", &args)
    }
}

/// Whether a status line shows requests (`| 0 req/s` is a second without any).
fn busy_status(line: &str) -> bool {
    line.contains(" req/s") && !line.contains("| 0 req/s")
}

/// kill -9 of a standing controller in the middle of a run: the run's folder has its journal
/// and run.json but no summary, JUnit or report; `punisher report` rebuilds all three from
/// the journal, with exactly the seconds journalled and the thresholds evaluated again.
#[test]
fn report_rebuilds_a_run_whose_controller_was_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let target = util::start_target();
    let cluster = Standing::start(&results, &[]);
    let script = scenario(
        &tmp,
        "crash.js",
        r#"
        import http from 'punisher/http';
        import { sleep } from 'punisher';
        export const options = {
          vus: 3, duration: '2m',
          thresholds: {
            http_req_failed: ['rate<0.01'],
            'http_req_duration{name:login}': ['p(99)<5000'],
            http_reqs: ['count>100000000'],
          },
        };
        export default async function () {
          await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
          await sleep(0.01);
        }
        "#,
    );
    let api = format!("API=http://{}", target.addr);
    let mut run = cluster.submit(&script, &["-e", &api, "--run-id", "crash-1"]);
    // Four merged seconds with requests shown: journalled first, then shown.
    run.wait_lines("4 busy seconds", 4, Duration::from_secs(60), busy_status);
    let dir = results.join("crash-1");
    let mut controller = cluster.controller;
    controller.child.kill().unwrap();
    controller.child.wait().unwrap();
    // The run's client loses its controller.
    assert_eq!(run.exit(Duration::from_secs(30)), 1, "{}", run.log());

    // What the dead controller left: run.json from the submission on (thresholds
    // included), the journal, no end.
    for gone in ["summary.json", "junit.xml", "report.html"] {
        assert!(!dir.join(gone).exists(), "{gone} exists before the report");
    }
    let info = read_json(&dir.join("run.json"));
    assert!(info["ended_unix_ms"].is_null(), "{info}");
    assert_eq!(info["thresholds"].as_array().unwrap().len(), 3, "{info}");

    // The journal by hand: the seconds and the requests in them (a line cut by the kill
    // does not parse and does not count).
    let jsonl = std::fs::read_to_string(dir.join("timeseries.jsonl")).unwrap();
    let mut seconds = BTreeSet::new();
    let (mut first, mut last) = (u64::MAX, 0);
    let (mut requests, mut timed) = (0.0, 0.0);
    for line in jsonl.lines() {
        let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        seconds.insert(line["ts"].as_u64().unwrap());
        first = first.min(line["ts"].as_u64().unwrap());
        last = last.max(line["end"].as_u64().unwrap());
        let count = line["values"]["count"].as_f64().unwrap_or(0.0);
        match (line["scope"].as_str(), line["metric"].as_str()) {
            (Some("metric"), Some("http_reqs")) => requests += count,
            (Some("metric"), Some("http_req_duration")) => timed += count,
            _ => {}
        }
    }
    assert!(seconds.len() >= 3, "{} seconds journalled", seconds.len());
    assert!(requests > 0.0);

    let out = util::punisher(&["report", dir.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("from {} journalled seconds", seconds.len())),
        "{}",
        out.stderr
    );
    // The text summary on stdout says the run did not end.
    assert!(
        out.stdout.contains("did not record its end"),
        "{}",
        out.stdout
    );

    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(count(&summary, "http_reqs"), requests, "{summary}");
    // Trends come whole from the interval logs: as many as the JSON lines counted.
    assert_eq!(count(&summary, "http_req_duration"), timed, "{summary}");
    let duration_ms = summary["meta"]["duration_ms"].as_u64().unwrap();
    assert_eq!(duration_ms, last - first, "{}", summary["meta"]);
    assert_eq!(summary["meta"]["vus_max"], 3, "{}", summary["meta"]);
    assert!(
        summary["meta"]["interrupted"]
            .as_str()
            .is_some_and(|s| s.contains("rebuilt from its journal")),
        "{}",
        summary["meta"]
    );
    // The thresholds of run.json, evaluated on the journalled seconds.
    let verdicts: Vec<(String, String, bool, f64)> = summary["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["metric"].as_str().unwrap().to_owned(),
                t["expression"].as_str().unwrap().to_owned(),
                t["ok"].as_bool().unwrap(),
                t["observed"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(verdicts.len(), 3, "{verdicts:?}");
    for (metric, expression, ok, observed) in &verdicts {
        match (metric.as_str(), expression.as_str()) {
            ("http_reqs", "count>100000000") => {
                assert!(!ok);
                assert_eq!(*observed, requests);
            }
            ("http_req_failed", "rate<0.01") => assert!(*ok && *observed == 0.0),
            ("http_req_duration{name:login}", "p(99)<5000") => assert!(*ok && *observed > 0.0),
            other => panic!("unexpected threshold {other:?}"),
        }
    }

    let junit = std::fs::read_to_string(dir.join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase").count(), 3, "{junit}");
    assert_eq!(junit.matches("<failure").count(), 1, "{junit}");
    assert!(junit.contains("count&gt;100000000"), "{junit}");

    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(
        html.contains(r#"id="verdict">FAIL</div>"#),
        "no FAIL verdict"
    );
    assert!(html.contains("crash-1"));
    assert!(html.contains("not recorded (rebuilt from the journal)"));
    assert!(html.contains("count&gt;100000000"));
    assert!(html.contains("<svg"), "no chart in the rebuilt report");
}

/// `punisher compare A B`: B ran against a target 100 ms slower. Its latency is up, its
/// throughput down and its latency threshold flipped from pass to fail: B regressed, the
/// exit code says so, and so does the table. The other way round is no regression.
#[test]
fn compare_exits_non_zero_when_b_regresses() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("results");
    let script = scenario(
        &tmp,
        "compare.js",
        r#"
        import http from 'punisher/http';
        import { sleep } from 'punisher';
        export const options = {
          vus: 3, duration: '2s',
          thresholds: { http_req_duration: ['p(95)<50'], http_req_failed: ['rate<0.01'] },
        };
        export default async function () {
          await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
          // A light load: run A's latencies stay those of an idle target.
          await sleep(0.005);
        }
        "#,
    );
    let mut slow = Child::spawn(
        "slow target",
        &["target", "--listen", "127.0.0.1:0", "--latency", "100ms"],
    );
    let line = slow.wait_line("its address", START, |l| l.contains("listening on http://"));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let a = run_into_with(&script, &base, &["--demo-target"], 0);
    // Its threshold fails: exit 99, results written all the same.
    let b = run_into_with(&script, &base, &["-e", &format!("API={url}")], 99);

    let out = util::punisher(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--tolerance",
        "10",
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let text = &out.stdout;
    let row = |metric: &str, stat: &str| {
        text.lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next() == Some(metric) && words.next() == Some(stat)
            })
            .unwrap_or_else(|| panic!("no {metric} {stat} row:\n{text}"))
    };
    for (metric, stat) in [
        ("http_req_duration", "p95"),
        ("http_req_duration", "p99"),
        ("http_req_duration{name:login}", "p95"),
        ("http_reqs", "rate"),
        ("iterations", "rate"),
    ] {
        assert!(
            row(metric, stat).ends_with("REGRESSED"),
            "{metric} {stat}:\n{text}"
        );
    }
    // The throughput row shows both rates and the drop in percent.
    let rate = row("http_reqs", "rate");
    assert!(rate.contains("/s") && rate.contains("-9"), "{rate}");
    assert!(
        text.contains("http_req_duration 'p(95)<50'  PASS (")
            && text.contains("-> FAIL (")
            && text.contains("REGRESSED: passed in A, fails in B"),
        "{text}"
    );
    assert!(
        !row("http_req_failed", "rate").ends_with("REGRESSED"),
        "{text}"
    );
    assert!(
        text.contains("threshold(s) passed in A and fail in B"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("REGRESSED: B is worse than A")),
        "{text}"
    );

    // B to A: faster, more throughput, the threshold fixed.
    let out = util::punisher(&["compare", b.to_str().unwrap(), a.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("FAIL ("), "{}", out.stdout);
    assert!(out.stdout.contains("fixed"), "{}", out.stdout);
    assert!(out.stdout.contains("OK: no regression"), "{}", out.stdout);
}

/// `punisher controller --prometheus ADDR` serves the current run's merged totals while it
/// runs.
#[test]
fn controller_prometheus_endpoint_serves_the_running_run() {
    let tmp = tempfile::tempdir().unwrap();
    let results = tmp.path().join("results");
    let target = util::start_target();
    let cluster = Standing::start(&results, &["--prometheus", "127.0.0.1:0"]);
    let prometheus = cluster.prometheus.clone().unwrap();
    let script = scenario(&tmp, "prom.js", SCENARIO);
    let api = format!("API=http://{}", target.addr);
    let mut run = cluster.submit(&script, &["-e", &api, "--duration", "4s"]);
    run.wait_line("a busy second", Duration::from_secs(60), busy_status);
    let response = http_get(&prometheus, "/metrics");
    assert_eq!(run.exit(Duration::from_secs(60)), 0, "{}", run.log());
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(response.contains("text/plain"), "{response}");
    let requests = total(&response, "punisher_http_reqs_total");
    assert!(requests > 0.0, "{response}");
    assert!(
        response.contains("punisher_http_req_duration_seconds_bucket{"),
        "{response}"
    );
    // After the run, the scrape holds its final totals.
    let after = http_get(&prometheus, "/metrics");
    let final_requests = total(&after, "punisher_http_reqs_total");
    assert!(final_requests >= requests, "{after}");
}

/// The sum of a Prometheus counter over its label sets (`name{...} value` lines).
fn total(exposition: &str, name: &str) -> f64 {
    let values: Vec<f64> = exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!values.is_empty(), "no {name}:\n{exposition}");
    values.iter().sum()
}
