//! The controller's results folder and Prometheus endpoint, for a run of two in-process
//! agents: every file of the folder is written, the interval logs hold exactly the
//! summary's counts, `run.json` lists the agents with their clock offsets, and scrapes
//! during the run see the merged counters grow up to the final summary's values.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use punisher_controller::{Controller, ControllerConfig, RunState, ServerSecurity};
use punisher_proto::ClientSecurity;
use punisher_results::dir::{JUNIT_XML, REPORT_HTML, RUN_JSON, SUMMARY_JSON, TIMESERIES_JSONL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::util::*;

const SCRIPT: &str = r#"
import http from 'punisher/http';
import { sleep } from 'punisher';
export const options = {
  vus: 4, duration: '3s',
  thresholds: { 'http_req_duration{name:x}': ['p(99)<5000'], http_reqs: ['count>10'] },
};
export default async function () {
  await http.get(`${__ENV.API}/x`, { name: 'x' });
  await http.get(`${__ENV.API}/y`, { name: 'y' });
  await sleep(0.05);
}
"#;

/// `GET /metrics`, the body as text (HTTP/1.1 by hand: tests have no HTTP client).
async fn scrape(addr: SocketAddr) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of an unlabelled sample (`name value`), or of the sum of a labelled family.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (head, value) = l.rsplit_once(' ')?;
            let metric = head.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}

/// Counts of the untagged (whole metric) and tagged lines of an interval log.
fn hlog_counts(path: &Path) -> (u64, std::collections::BTreeMap<String, u64>) {
    let bytes = std::fs::read(path).unwrap();
    let mut deserializer = Deserializer::new();
    let mut whole = 0;
    let mut tagged = std::collections::BTreeMap::new();
    for entry in IntervalLogIterator::new(&bytes) {
        let LogEntry::Interval(interval) = entry.unwrap() else {
            continue;
        };
        let hist = punisher_results::hlog::decode_histogram(
            &mut deserializer,
            interval.encoded_histogram(),
        )
        .unwrap();
        match interval.tag() {
            None => whole += hist.len(),
            Some(tag) => *tagged.entry(tag.as_str().to_owned()).or_insert(0) += hist.len(),
        }
    }
    (whole, tagged)
}

/// Scrapes every 50 ms until `punisher_http_reqs_total` satisfies `ok` (20 s at most).
async fn scrape_until(addr: SocketAddr, ok: impl Fn(f64) -> bool) -> f64 {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = sample(&scrape(addr).await, "punisher_http_reqs_total");
        if ok(n) {
            return n;
        }
        assert!(tokio::time::Instant::now() < end, "scrapes stuck at {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_run_writes_its_results_folder_and_serves_prometheus() {
    let _serial = crate::serial().await;
    let target = target().await;
    let dirs = tempfile::tempdir().unwrap();
    let results = dirs.path().join("results");
    let controller = Controller::bind(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        security: ServerSecurity::InsecureLoopback,
        results_dir: Some(results.clone()),
        prometheus: Some("127.0.0.1:0".parse().unwrap()),
        agent_binaries: None,
        http_listen: None,
        lost_after: Duration::from_secs(3),
    })
    .await
    .unwrap();
    let addr = controller.local_addr().to_string();
    let metrics_addr = controller.prometheus_addr().unwrap();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(controller.serve(cancel.clone()));
    let mut regions = Vec::new();
    for (i, region) in ["eu-west-1", "us-east-1"].into_iter().enumerate() {
        let mut cfg = agent_config(
            &addr,
            ClientSecurity::InsecureLoopback,
            &format!("agent-{i}"),
        );
        cfg.labels.region = region.into();
        regions.push(region);
        spawn_agent(cfg, &cancel);
    }
    let mut client =
        punisher_controller::ClusterClient::connect(&punisher_controller::ClientConfig {
            controller: addr.clone(),
            token: TOKEN.into(),
            security: ClientSecurity::InsecureLoopback,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let mut run = submission(SCRIPT, api_env(&target), 2);
    run.run_id = Some("signoff-1".into());
    run.command_line = vec!["punisher".into(), "run".into(), "main.js".into()];
    let run_id = client.submit_run(run.clone()).await.unwrap();
    assert_eq!(run_id, "signoff-1");
    // The same id again: the folder exists, the submission is refused (the run goes on).
    let again = client.submit_run(run).await.unwrap_err().to_string();
    assert!(
        again.contains("in progress") || again.contains("exists"),
        "{again}"
    );

    // Scrapes while the run goes on: the merged request counter appears, then grows.
    let first = scrape_until(metrics_addr, |n| n > 0.0).await;
    let later = scrape_until(metrics_addr, |n| n > first).await;

    let views = follow(&mut client, &run_id, Duration::from_secs(60)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert_eq!(last.exit_code, Some(0), "{:?}", last.messages);
    let requests = counter(last, "http_reqs");
    assert_eq!(requests as usize, target.count());
    assert!(requests >= later);

    // The last scrape shows the final totals, equal to the summary's.
    let page = scrape(metrics_addr).await;
    assert_eq!(sample(&page, "punisher_http_reqs_total"), requests);
    assert_eq!(
        sample(&page, "punisher_http_req_duration_seconds_count"),
        requests
    );

    // The folder: every file, once the run is shown over.
    let dir = results.join("signoff-1");
    assert_eq!(last.results_dir.as_deref(), Some(dir.to_str().unwrap()));
    for file in [
        RUN_JSON,
        SUMMARY_JSON,
        TIMESERIES_JSONL,
        JUNIT_XML,
        REPORT_HTML,
        "http_req_duration.hlog",
        "iteration_duration.hlog",
    ] {
        let meta = std::fs::metadata(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(SUMMARY_JSON)).unwrap()).unwrap();
    assert_eq!(
        summary["metrics"]["http_reqs"]["values"]["count"].as_f64(),
        Some(requests)
    );
    assert_eq!(
        summary,
        last.summary_json.clone().unwrap(),
        "summary.json is the summary the view shows"
    );

    // The interval log's untagged lines hold every request once; its tagged lines each
    // request name's share.
    let (whole, tagged) = hlog_counts(&dir.join("http_req_duration.hlog"));
    assert_eq!(whole as f64, requests);
    let x = target.hits("/x").len() as u64;
    let y = target.hits("/y").len() as u64;
    let of_name = |name: &str| -> u64 {
        let tag = format!("name:{name}");
        tagged
            .iter()
            .filter(|(t, _)| t.split(';').any(|kv| kv == tag))
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!((of_name("x"), of_name("y")), (x, y), "{tagged:?}");
    assert_eq!(tagged.values().sum::<u64>(), whole, "{tagged:?}");
    // And the journal replays into the same totals.
    let replayed = punisher_results::Journal::replay(&dir).unwrap();
    assert!(replayed.warnings.is_empty(), "{:?}", replayed.warnings);
    match replayed
        .totals
        .aggregate("http_reqs", &punisher_metrics::Tags::empty())
    {
        Some(punisher_metrics::SeriesData::Counter { sum }) => assert_eq!(sum, requests),
        other => panic!("{other:?}"),
    }

    // run.json: the agents with their regions and clock offsets, the command line, times.
    let info: punisher_results::RunInfo =
        serde_json::from_str(&std::fs::read_to_string(dir.join(RUN_JSON)).unwrap()).unwrap();
    assert_eq!(info.run_id, "signoff-1");
    assert_eq!(info.command_line, ["punisher", "run", "main.js"]);
    assert_eq!(info.scenario, SCRIPT);
    assert_eq!(
        info.entry_sha256,
        punisher_results::sha256_hex(SCRIPT.as_bytes())
    );
    assert_eq!(info.executor, "constant-vus");
    assert_eq!(info.thresholds.len(), 2);
    assert!(
        info.ended_unix_ms
            .is_some_and(|end| end > info.started_unix_ms)
    );
    assert_eq!(info.started_unix_ms, last.started_unix_ms);
    let mut listed: Vec<_> = info.agents.iter().map(|a| a.region.as_str()).collect();
    listed.sort();
    assert_eq!(listed, regions);
    for agent in &info.agents {
        // Same machine, same clock: the estimate is within a few milliseconds of zero,
        // and it was measured (pings answered) rather than left at its default.
        let seen = last.agents.iter().find(|a| a.agent_id == agent.id).unwrap();
        assert!(agent.clock_offset_ms.abs() < 50.0, "{agent:?}");
        assert!(
            (agent.clock_offset_ms - seen.clock_offset_ms).abs() < 50.0,
            "{agent:?}"
        );
        assert!(seen.rtt_ms > 0.0, "no ping answered: {seen:?}");
        assert_eq!(agent.state, "finished");
        assert!(agent.peak_users >= 1 && agent.peak_users <= 4, "{agent:?}");
        assert!(agent.cores >= 1);
    }
    let junit = std::fs::read_to_string(dir.join(JUNIT_XML)).unwrap();
    assert!(
        junit.contains("tests=\"2\"") && junit.contains("failures=\"0\""),
        "{junit}"
    );
    let html = std::fs::read_to_string(dir.join(REPORT_HTML)).unwrap();
    assert!(
        html.contains("signoff-1") && html.contains("eu-west-1"),
        "report.html"
    );

    // A second run with the same id is refused: its folder exists.
    let mut run = submission(SCRIPT, api_env(&target), 2);
    run.run_id = Some("signoff-1".into());
    let again = client.submit_run(run).await.unwrap_err().to_string();
    assert!(again.contains("already exists"), "{again}");

    cancel.cancel();
    let _ = server.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_results_dir_nothing_is_written_and_the_view_says_so() {
    let _serial = crate::serial().await;
    let target = target().await;
    let dirs = tempfile::tempdir().unwrap();
    let controller = Controller::bind(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        security: ServerSecurity::InsecureLoopback,
        results_dir: None,
        prometheus: None,
        agent_binaries: None,
        http_listen: None,
        lost_after: Duration::from_secs(3),
    })
    .await
    .unwrap();
    assert_eq!(controller.prometheus_addr(), None);
    let addr = controller.local_addr().to_string();
    let cancel = CancellationToken::new();
    let server = tokio::spawn(controller.serve(cancel.clone()));
    spawn_agent(
        agent_config(&addr, ClientSecurity::InsecureLoopback, "solo"),
        &cancel,
    );
    let mut client =
        punisher_controller::ClusterClient::connect(&punisher_controller::ClientConfig {
            controller: addr,
            token: TOKEN.into(),
            security: ClientSecurity::InsecureLoopback,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap();
    let src = "import http from 'punisher/http';\nexport const options = { users: 3, rampUp: '0s' };\nexport default async function () { await http.get(`${__ENV.API}/z`); }\n";
    let run_id = client
        .submit_run(submission(src, api_env(&target), 1))
        .await
        .unwrap();
    let views = follow(&mut client, &run_id, Duration::from_secs(30)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert_eq!(last.results_dir, None);
    assert_eq!(counter(last, "http_reqs"), 3.0);
    assert!(last.summary_json.is_some());
    // Nothing written anywhere under the test's folder.
    assert_eq!(std::fs::read_dir(dirs.path()).unwrap().count(), 0);
    cancel.cancel();
    let _ = server.await;
}
