//! Socket.IO: the engine's handshake through the `Router`, and a real round trip with
//! node's socket.io-client (SKIPPED, or failed under CI, when node or the module is missing).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use punisher_target::{StatsSnapshot, Target, TargetConfig, spawn_local_target};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};
use tower::ServiceExt;

use crate::util::{http, polling_socket, skip};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn polling_handshake_advertises_node_defaults() {
    let t = Target::new(TargetConfig::new());
    let req = Request::get("/socket.io/?EIO=4&transport=polling")
        .body(Body::empty())
        .unwrap();
    let resp = t.router().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let text = std::str::from_utf8(&body).unwrap();
    let open: Value = serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["pingInterval"], 25000);
    assert_eq!(open["pingTimeout"], 20000);
    assert_eq!(open["maxPayload"], 1_000_000);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
}

/// `ping_interval` and `ping_timeout` reach the handshake and the server's deadline: a socket
/// that never answers is dropped by ping timeout after the configured timeout, not node's 20 s
/// and not before.
#[tokio::test]
async fn a_socket_that_never_pongs_is_dropped_after_the_configured_ping_timeout() {
    const INTERVAL: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(3);
    let mut cfg = TargetConfig::new();
    cfg.ping_interval = INTERVAL;
    cfg.ping_timeout = TIMEOUT;
    cfg.validate().unwrap();
    let target = spawn_local_target(cfg).await.unwrap();
    let open = crate::util::raw(
        target.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["pingTimeout"], 3000);

    // Connected, and silent from here on: no GET, no pong.
    let connected = std::time::Instant::now();
    polling_socket(target.addr).await;
    let deadline = tokio::time::Instant::now() + INTERVAL + TIMEOUT + Duration::from_secs(10);
    let dropped = loop {
        let s = target.stats();
        if s.sockets.disconnects.get("ping timeout") == Some(&1) {
            break connected.elapsed();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never dropped: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The first ping leaves at the connection (or one interval later), and the socket has
    // the whole timeout to answer it.
    assert!(dropped >= TIMEOUT, "dropped {dropped:?} after connecting");
    assert!(
        dropped < INTERVAL + TIMEOUT + Duration::from_secs(2),
        "dropped {dropped:?} after connecting"
    );
    assert_eq!(target.stats().sockets.connected_now.polling, 0);
}

#[tokio::test]
async fn socketio_can_be_turned_off() {
    let mut cfg = TargetConfig::new();
    cfg.socketio = false;
    let t = Target::new(cfg);
    let req = Request::get("/socket.io/?EIO=4&transport=polling")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        t.router().oneshot(req).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}

/// Where socket.io-client is installed: `$PUNISHER_NODE_MODULES`, /tmp/sio/node_modules
/// (`cd /tmp/sio && npm init -y && npm install socket.io-client@4`), or the workspace's.
fn node_modules() -> Option<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../node_modules");
    std::env::var_os("PUNISHER_NODE_MODULES")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/tmp/sio/node_modules"), workspace])
        .find(|dir| dir.join("socket.io-client/package.json").is_file())
}

async fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    let line = lines
        .next_line()
        .await
        .unwrap()
        .expect("node client exited early");
    assert!(!line.starts_with("FAIL"), "node client: {line}");
    line
}

/// `QUESTION <name> <json>` -> (name, payload)
fn question(line: &str) -> (String, Value) {
    let rest = line
        .strip_prefix("QUESTION ")
        .unwrap_or_else(|| panic!("unexpected: {line}"));
    let (name, json) = rest.split_once(' ').unwrap();
    (name.to_owned(), serde_json::from_str(json).unwrap())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits, bounded, until the stats satisfy `pred`.
async fn stats_eventually(
    stats: impl Fn() -> StatsSnapshot,
    pred: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = stats();
        if pred(&s) || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn node_clients_on_both_transports_receive_the_broadcast() {
    let Some(modules) = node_modules() else {
        skip(
            "socket.io-client not found; run `mkdir -p /tmp/sio && cd /tmp/sio && npm init -y \
             && npm install socket.io-client@4` or set PUNISHER_NODE_MODULES",
        );
        return;
    };
    if !node_available().await {
        skip("no `node`");
        return;
    }
    tokio::time::timeout(TEST_TIMEOUT, round_trip(modules))
        .await
        .expect("test timed out");
}

async fn round_trip(modules: PathBuf) {
    let target = spawn_local_target(TargetConfig::new()).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/clients.js");
    let mut child = Command::new("node")
        .arg(script)
        .arg(&target.url)
        .env("NODE_PATH", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "READY");

    let s = target.stats();
    let sk = &s.sockets;
    // "ws" and the upgraded "up" are on websocket now; "poll" stays on polling.
    assert_eq!(
        (sk.connected_now.websocket, sk.connected_now.polling),
        (2, 1),
        "{s:?}"
    );
    assert_eq!(
        (sk.total.websocket, sk.total.polling, sk.upgrades),
        (1, 2, 1),
        "{s:?}"
    );
    // Over the socket: one vote, one duplicate, one without a session cookie.
    assert_eq!(
        (s.votes, s.duplicate_votes, s.unauthorized),
        (1, 1, 1),
        "{s:?}"
    );

    // Only "ws" joined room r1.
    let before = now_ms();
    let (status, body) = http(
        target.addr,
        "POST",
        "/admin/broadcast",
        r#"{"room":"r1","question":"r1 only"}"#,
    )
    .await;
    assert_eq!((status, body["sockets"].as_u64()), (200, Some(1)));
    let (name, q) = question(&next_line(&mut lines).await);
    assert_eq!((name.as_str(), q["id"].as_u64()), ("ws", Some(1)));
    assert_eq!(q["question"], "r1 only");

    let (status, body) = http(target.addr, "POST", "/admin/broadcast", "").await;
    assert_eq!(
        (status, body["id"].as_u64(), body["sockets"].as_u64()),
        (200, Some(2), Some(3))
    );
    let mut names = BTreeSet::new();
    for _ in 0..3 {
        let (name, q) = question(&next_line(&mut lines).await);
        assert_eq!(q["id"], 2, "{name} got {q}");
        let ts = q["ts"].as_u64().unwrap();
        assert!(ts >= before && ts <= now_ms(), "ts {ts}");
        names.insert(name);
    }
    assert_eq!(
        names,
        BTreeSet::from(["ws".into(), "poll".into(), "up".into()])
    );
    let s = target.stats();
    assert_eq!((s.broadcasts, s.questions_delivered), (2, 4));

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"BYE\n").await.unwrap();
    assert!(child.wait().await.unwrap().success());
    let s = stats_eventually(
        || target.stats(),
        |s| s.sockets.disconnects.values().sum::<u64>() == 3,
    )
    .await;
    let sk = &s.sockets;
    assert_eq!(
        (sk.connected_now.websocket, sk.connected_now.polling),
        (0, 0),
        "{s:?}"
    );
    assert_eq!(sk.disconnects.values().sum::<u64>(), 3, "{s:?}");
    assert_eq!(sk.upgrades, 1);
    assert_eq!(sk.disconnects["client namespace disconnect"], 3, "{s:?}");
    target.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_connected_sockets() {
    let target = spawn_local_target(TargetConfig::new()).await.unwrap();
    polling_socket(target.addr).await;
    polling_socket(target.addr).await;
    assert_eq!(target.stats().sockets.connected_now.polling, 2);
    let handle = target.handle.clone();
    // Well under the 5 s drain grace: sockets are closed, not waited for.
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(4), target.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    let s = handle.stats();
    assert_eq!(s.sockets.connected_now.polling, 0, "{s:?}");
    assert_eq!(s.sockets.disconnects["server shutting down"], 2, "{s:?}");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Marginal target RSS per idle websocket Socket.IO connection, between 2,000 and 10,000:
/// `cargo test -p punisher-target --release --test integration socket_memory -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints numbers"]
async fn socket_memory() {
    let modules = node_modules().expect("socket.io-client (and ws) installed");
    let target = spawn_local_target(TargetConfig::new()).await.unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/idle_sockets.js");
    let spawn = |n: u64| {
        Command::new("node")
            .arg(&script)
            .arg(&target.url)
            .arg(n.to_string())
            .env("NODE_PATH", &modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let wait_all = async |child: &mut tokio::process::Child| {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = next_line(&mut lines).await;
            if line.starts_with("ALL") {
                return;
            }
        }
    };
    let (low, high) = (2_000, 10_000);
    let mut a = spawn(low);
    tokio::time::timeout(TEST_TIMEOUT, wait_all(&mut a))
        .await
        .unwrap();
    let rss_low = rss_kib();
    let mut b = spawn(high - low);
    tokio::time::timeout(TEST_TIMEOUT, wait_all(&mut b))
        .await
        .unwrap();
    let rss_high = rss_kib();
    let s = target.stats();
    assert_eq!(s.sockets.connected_now.websocket, high, "{s:?}");
    let before = std::time::Instant::now();
    let (_, body) = http(target.addr, "POST", "/admin/broadcast", "").await;
    let took = before.elapsed();
    assert_eq!(body["sockets"], high);
    eprintln!(
        "target RSS {rss_low} KiB at {low} sockets, {rss_high} KiB at {high}: {:.2} KiB per \
         websocket; broadcast to {high} handled in {took:?}",
        (rss_high - rss_low) as f64 / (high - low) as f64
    );
    drop((a, b));
    target.shutdown().await.unwrap();
}
