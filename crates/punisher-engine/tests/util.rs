//! Test helpers: a tiny HTTP/1.1 server on 127.0.0.1:0 that records what it saw, scenario
//! files in a temp dir, and running an engine to its end.

#[path = "../../../test-support/skip.rs"]
mod skip;
pub(crate) use skip::skip;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use punisher_core::{Overrides, Plan, Segment};
use punisher_engine::{Bundle, EngineConfig, LocalBarrierHub, RunHandle, Scenario};
use punisher_metrics::{SeriesData, Tags, Totals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) cookie: Option<String>,
    pub(crate) body: String,
}

#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    pub(crate) fn requests(&self, prefix: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

/// `/login?u=ID` sets cookie `sid=ID`; `/echo` returns the cookie header; `/json` returns
/// JSON; `/slow?ms=N` waits; anything else answers `ok`.
pub(crate) async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(connection(sock, s.clone()));
        }
    });
    Server { url, seen }
}

async fn connection(mut sock: tokio::net::TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut content_length = 0usize;
        let mut cookie = None;
        for line in lines {
            if let Some((k, v)) = line.split_once(':') {
                let v = v.trim().to_owned();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = v.parse().unwrap_or(0),
                    "cookie" => cookie = Some(v),
                    _ => {}
                }
            }
        }
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[head_end..head_end + content_length]).to_string();
        buf.drain(..head_end + content_length);
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        seen.lock().unwrap().push(Seen {
            path: path.clone(),
            cookie: cookie.clone(),
            body: body.clone(),
        });
        let query = |key: &str| {
            path.split_once('?').and_then(|(_, q)| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
            })
        };
        let mut extra = String::new();
        let (ctype, out) = if path.starts_with("/login") {
            extra = format!(
                "Set-Cookie: sid={}; Path=/\r\n",
                query("u").unwrap_or_default()
            );
            ("text/plain", "welcome".to_owned())
        } else if path.starts_with("/echo") {
            ("text/plain", cookie.unwrap_or_default())
        } else if path.starts_with("/json") {
            (
                "application/json",
                format!("{{\"ok\":true,\"body\":{}}}", serde_json::json!(body)),
            )
        } else {
            if let Some(ms) = query("ms").and_then(|m| m.parse::<u64>().ok()) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            ("text/plain", "ok".to_owned())
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n{out}",
            out.len()
        );
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A scenario directory with files.
pub(crate) struct Files {
    pub(crate) dir: tempfile::TempDir,
}

impl Files {
    pub(crate) fn new(files: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Files { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub(crate) fn env(server: &Server) -> BTreeMap<String, String> {
    BTreeMap::from([("API".to_owned(), server.url.clone())])
}

/// Loads and inspects a one-file scenario.
pub(crate) fn scenario(src: &str, env: &BTreeMap<String, String>) -> (Files, Scenario) {
    let files = Files::new(&[("main.js", src)]);
    let bundle = Bundle::from_path(&files.path("main.js")).unwrap();
    let scenario = punisher_engine::inspect(bundle, env).unwrap_or_else(|e| panic!("{e}"));
    (files, scenario)
}

pub(crate) fn config(
    scenario: &Scenario,
    workers: usize,
    env: BTreeMap<String, String>,
) -> EngineConfig {
    let plan = Plan::from_options(&scenario.options, &Overrides::default()).unwrap();
    let test_users = plan.executor.max_users();
    EngineConfig {
        workers,
        plan,
        segment: Segment::FULL,
        env,
        source_pool: None,
        memory_limit_bytes: 256 << 20,
        barriers: Arc::new(LocalBarrierHub::new(test_users)),
        test_users,
    }
}

/// Collects every report until all workers finished (bounded by `limit`).
pub(crate) async fn finish(mut handle: RunHandle, limit: Duration) -> Totals {
    let mut totals = Totals::new();
    tokio::time::timeout(limit, async {
        while let Some(r) = handle.next_report().await {
            totals.add(&r.snapshot).unwrap();
        }
    })
    .await
    .expect("the run did not finish in time");
    totals
}

pub(crate) fn count(totals: &Totals, metric: &str) -> f64 {
    count_tagged(totals, metric, &[])
}

pub(crate) fn count_tagged(totals: &Totals, metric: &str, tags: &[(&str, &str)]) -> f64 {
    match totals.aggregate(metric, &Tags::new(tags.iter().copied())) {
        Some(SeriesData::Counter { sum }) => sum,
        Some(SeriesData::Rate { passes, .. }) => passes as f64,
        Some(SeriesData::Trend { hist, .. }) => hist.len() as f64,
        Some(other) => panic!("unexpected {other:?}"),
        None => 0.0,
    }
}

pub(crate) fn rate_total(totals: &Totals, metric: &str, tags: &[(&str, &str)]) -> (u64, u64) {
    match totals.aggregate(metric, &Tags::new(tags.iter().copied())) {
        Some(SeriesData::Rate { passes, total }) => (passes, total),
        None => (0, 0),
        Some(other) => panic!("unexpected {other:?}"),
    }
}
