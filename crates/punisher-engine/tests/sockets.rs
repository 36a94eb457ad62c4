//! `punisher/ws` and `punisher/socketio` end to end: scenarios run by the engine against the
//! demo target (socketioxide), a small WebSocket echo server, and the real Socket.IO server
//! (node, `crates/punisher-clients/tests/js/sio_server.js`; skipped with a message when node
//! or the `socket.io` package is missing, see `PUNISHER_NODE_MODULES`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use punisher_target::{RunningTarget, TargetConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use crate::util::*;

/// Bound on every run and every wait in these tests.
const LIMIT: Duration = Duration::from_secs(30);

async fn target() -> RunningTarget {
    punisher_target::spawn_local_target(TargetConfig::new())
        .await
        .unwrap()
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn run(src: &str, env: BTreeMap<String, String>, workers: usize) -> punisher_metrics::Totals {
    let (_f, s) = scenario(src, &env);
    let cfg = config(&s, workers, env);
    finish(start(s, cfg), LIMIT).await
}

fn start(
    s: punisher_engine::Scenario,
    cfg: punisher_engine::EngineConfig,
) -> punisher_engine::RunHandle {
    punisher_engine::start(Arc::new(s), cfg, json!(null)).unwrap()
}

/// Waits (bounded) until the target has no socket connected.
async fn all_disconnected(t: &RunningTarget) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = t.stats().sockets.connected_now;
        if now.websocket == 0 && now.polling == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sockets still connected: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn all_checks_passed(totals: &punisher_metrics::Totals, expected: u64) {
    assert_eq!(rate_total(totals, "checks", &[]), (expected, expected));
}

/// A WebSocket server echoing text and binary messages.
async fn ws_echo() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_echo_send_wait_for_and_close() {
    let url = ws_echo().await;
    let totals = run(
        r#"
import { connect } from 'punisher/ws';
import { check, vu } from 'punisher';
export const options = { users: 5, rampUp: '0s' };
export default async function () {
  const ws = await connect(__ENV.WS, { headers: { 'X-Me': String(vu.idInTest) } });
  const me = vu.idInTest;
  let seenBy = 0;
  ws.on('message', () => { seenBy = vu.idInTest; });
  ws.send(`hello ${me}`);
  const echoed = await ws.waitFor((m) => typeof m === 'string' && m.startsWith('hello'), { timeout: '5s' });
  check(echoed, { 'text echoed': (m) => m === `hello ${me}` && seenBy === me });
  ws.send(new Uint8Array([1, 2, 3]));
  const bin = await ws.waitFor((m) => m instanceof ArrayBuffer, { timeout: 5000 });
  check(bin, { 'binary echoed': (b) => new Uint8Array(b).join(',') === '1,2,3' });
  let timedOut = '';
  try { await ws.waitFor('never', { timeout: '100ms' }); } catch (e) { timedOut = e.message; }
  check(timedOut, { 'waitFor times out': (m) => m === 'waitFor("never") timed out after 100ms' });
  const closed = ws.waitFor('close', { timeout: '5s' });
  ws.close();
  check(await closed, { 'closed normally': (c) => c === 1000 });
}
"#,
        vars(&[("WS", &url)]),
        1,
    )
    .await;
    all_checks_passed(&totals, 20);
    assert_eq!(count(&totals, "ws_sessions"), 5.0);
    assert_eq!(count(&totals, "ws_connecting"), 5.0);
    assert_eq!(count(&totals, "ws_msgs_sent"), 10.0);
    assert_eq!(count(&totals, "ws_msgs_received"), 10.0);
    assert_eq!(count(&totals, "ws_session_duration"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_transports_upgrade_acks_and_timeouts() {
    let t = target().await;
    let totals = run(
        r#"
import { io } from 'punisher/socketio';
import { check, sleep, vu } from 'punisher';
export const options = { users: 30, rampUp: '0s' };
const T = [['websocket'], ['polling'], ['polling', 'websocket']];
export default async function () {
  const me = vu.idInTest;
  const transports = T[me % 3];
  const socket = await io(__ENV.API, { transports, timeout: '10s' });
  check(socket, { 'connected': (s) => s.connected && typeof s.id === 'string' && s.id.length > 0 });
  let echoed = null;
  try { echoed = await socket.timeout('10s').emitWithAck('echo', { n: me, list: [1, 'a', null] }); } catch (e) {}
  check(echoed, { 'ack carries the data': (e) => e !== null && e.n === me && e.list[1] === 'a' && e.list[2] === null });
  if (transports.length === 2) {
    // The upgrade follows the connect; bounded wait for it.
    for (let i = 0; i < 200 && socket.transport !== 'websocket'; i++) await sleep(0.025);
    check(socket, { 'upgraded': (s) => s.transport === 'websocket' });
  }
  let err = '';
  try { await socket.timeout('200ms').emitWithAck('nobody-acks', 1); } catch (e) { err = e.message; }
  check(err, { 'ack timeout': (m) => m === 'operation has timed out' });
  const acked = await new Promise((resolve) => socket.timeout(5000).emit('echo', 'cb', (e, v) => resolve([e, v])));
  check(acked, { 'emit with a callback': (a) => a[0] === null && a[1] === 'cb' });
  socket.emit('plain', 'no ack');
  let w = '';
  try { await socket.waitFor('never', { timeout: 100 }); } catch (e) { w = e.message; }
  check(w, { 'waitFor timeout': (m) => m === 'waitFor("never") timed out after 100ms' });
  const gone = socket.waitFor('disconnect', { timeout: '5s' });
  socket.close();
  check(await gone, { 'client disconnect': (r) => r === 'io client disconnect' });
}
"#,
        vars(&[("API", &t.url)]),
        2,
    )
    .await;
    all_checks_passed(&totals, 30 * 6 + 10);
    let tags = |t: &'static str| [("transport", t)];
    assert_eq!(count(&totals, "socketio_connect_duration"), 30.0);
    assert_eq!(
        count_tagged(&totals, "socketio_connect_duration", &tags("polling")),
        20.0
    );
    assert_eq!(count(&totals, "socketio_upgrades"), 10.0);
    assert_eq!(count(&totals, "socketio_events_sent"), 30.0 * 4.0);
    assert_eq!(count(&totals, "socketio_ack_duration"), 30.0 * 2.0);
    assert_eq!(
        count_tagged(
            &totals,
            "socketio_disconnects",
            &[("reason", "io client disconnect")]
        ),
        30.0
    );
    let stats = t.stats();
    assert_eq!(stats.sockets.total.websocket, 10);
    assert_eq!(stats.sockets.total.polling, 20);
    assert_eq!(stats.sockets.upgrades, 10);
    all_disconnected(&t).await;
}

/// An emit sent the instant `io()` resolves is answered: the demo target registers its
/// handlers before it answers CONNECT (socketioxide spawns the connect handler after the
/// answer; handlers set up there missed some of these emits and their acks never came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emit_right_after_connect_is_acked() {
    let t = target().await;
    let users = 1200;
    let totals = run(
        &format!(
            r#"
import {{ io }} from 'punisher/socketio';
import {{ check, vu }} from 'punisher';
export const options = {{ users: {users}, rampUp: '0s' }};
export default async function () {{
  const socket = await io(__ENV.API, {{ transports: ['websocket'] }});
  let echoed = null;
  try {{ echoed = await socket.timeout('5s').emitWithAck('echo', vu.idInTest); }} catch (e) {{}}
  check(echoed, {{ 'acked': (e) => e === vu.idInTest }});
  socket.close();
}}
"#
        ),
        vars(&[("API", &t.url)]),
        2,
    )
    .await;
    all_checks_passed(&totals, users);
    all_disconnected(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_handlers_as_their_owner_and_sockets_close_at_session_end() {
    let t = target().await;
    let totals = run(
        r#"
import http from 'punisher/http';
import { io } from 'punisher/socketio';
import { barrier, check, vu } from 'punisher';
export const options = { users: 200, rampUp: '1s' };
export default async function () {
  const me = vu.idInTest;
  const socket = await io(__ENV.API, { transports: [me % 5 === 0 ? 'polling' : 'websocket'] });
  const got = new Promise((resolve) => socket.on('question', (q) => {
    check(vu.idInTest, { 'handler runs as the owner': (id) => id === me });
    resolve(q);
  }));
  await barrier('connected', { timeout: '20s' });
  if (me === 1) await http.post(`${__ENV.API}/admin/broadcast`, { question: 'q?' });
  const q = await got;
  check(q, { 'question has id and ts': (q) => q.id >= 1 && q.ts > 0 && q.question === 'q?' });
  // The socket stays open: the session's end closes it.
}
"#,
        vars(&[("API", &t.url)]),
        2,
    )
    .await;
    all_checks_passed(&totals, 400);
    let q = [("event", "question")];
    assert_eq!(count_tagged(&totals, "socketio_event_latency", &q), 200.0);
    assert_eq!(count_tagged(&totals, "socketio_events_received", &q), 200.0);
    assert_eq!(
        count_tagged(
            &totals,
            "socketio_event_latency",
            &[("event", "question"), ("transport", "polling")]
        ),
        40.0
    );
    assert_eq!(t.stats().questions_delivered, 200);
    assert_eq!(
        count_tagged(
            &totals,
            "socketio_disconnects",
            &[("reason", "io client disconnect")]
        ),
        200.0
    );
    all_disconnected(&t).await;
    let stats = t.stats();
    assert_eq!(
        stats.sockets.disconnects.values().sum::<u64>(),
        200,
        "{stats:?}"
    );
    assert_eq!(
        stats.sockets.disconnects.get("client namespace disconnect"),
        Some(&200),
        "{stats:?}"
    );
}

#[tokio::test]
async fn barrier_does_not_wait_for_users_that_ended_without_reaching_it() {
    let totals = run(
        r#"
import { barrier, check, vu } from 'punisher';
export const options = { users: 10, rampUp: '0s' };
export default async function () {
  if (vu.idInTest % 2 === 0) throw new Error('login failed');
  await barrier('b', { timeout: '25s' });
  await barrier('c', { timeout: '25s' });
  check(true, { 'passed': (x) => x });
}
"#,
        BTreeMap::new(),
        2,
    )
    .await;
    // Without departures this would wait 25 s and then time out (past LIMIT).
    all_checks_passed(&totals, 5);
    assert_eq!(count(&totals, "barrier_timeouts"), 0.0);
    assert_eq!(count(&totals, "iteration_errors"), 5.0);
}

struct Node {
    _child: Child,
    url: String,
}

/// The node Socket.IO server, or `None` (after saying why) without node or socket.io.
async fn node_server() -> Option<Node> {
    let modules = std::env::var("PUNISHER_NODE_MODULES")
        .unwrap_or_else(|_| "/tmp/sio-server/node_modules".to_owned());
    if !PathBuf::from(&modules).join("socket.io").is_dir() {
        skip(format!(
            "socket.io not found in {modules} (scripts/test installs it; set PUNISHER_NODE_MODULES)"
        ));
        return None;
    }
    let node = std::env::var("PUNISHER_NODE").unwrap_or_else(|_| "node".to_owned());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../punisher-clients/tests/js/sio_server.js");
    let mut child = match Command::new(&node)
        .arg(script)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            skip(format!("cannot run {node}: {e}"));
            return None;
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port: u16 = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("node server start")
        .unwrap()
        .expect("node server printed its port")
        .trim()
        .parse()
        .expect("a port");
    Some(Node {
        _child: child,
        url: format!("http://127.0.0.1:{port}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_against_node_acks_binary_namespaces_and_kick() {
    let Some(node) = node_server().await else {
        return;
    };
    let totals = run(
        r#"
import { io } from 'punisher/socketio';
import { check, vu } from 'punisher';
export const options = { users: 4, rampUp: '0s' };
export default async function () {
  const me = vu.idInTest;
  const socket = await io(__ENV.SIO, { transports: me % 2 ? ['websocket'] : ['polling'] });
  // The server asks us (an event with an ack id): the handler's last argument answers it.
  socket.on('question', (what, cb) => cb(`${what} answered by ${vu.idInTest}`));
  socket.emit('ask', 'who');
  check(await socket.waitFor('answer', { timeout: '5s' }), {
    'server got our ack': (a) => a === `who answered by ${me}`,
  });
  socket.emit('bin');
  const bin = await new Promise((resolve) => socket.once('bin', (a, b) => resolve([a, b])));
  check(bin, {
    'binary from the server': (x) => x[0] instanceof ArrayBuffer && new Uint8Array(x[0]).join() === '1,2,3'
      && new Uint8Array(x[1].nested).join() === '4,5' && x[1].n === 1,
  });
  const back = await socket.emitWithAck('echo', new Uint8Array([9, 8]), { deep: [new Uint8Array([7])] });
  check(back, { 'binary round trip': (b) => b instanceof ArrayBuffer && new Uint8Array(b).join() === '9,8' });
  const admin = await io(`${__ENV.SIO}/admin`, { auth: { token: 'secret' }, transports: ['websocket'] });
  check(await admin.emitWithAck('echo', 1), { 'namespace with auth': (r) => r === 'admin' });
  admin.close();
  let refused = '';
  try { await io(`${__ENV.SIO}/admin`, { auth: { token: 'bad' }, transports: ['websocket'] }); } catch (e) { refused = e.message; }
  check(refused, { 'refused namespace': (m) => m.includes('not authorized') });
  const kicked = socket.waitFor('disconnect', { timeout: '5s' });
  socket.emit('kick');
  check(await kicked, { 'server disconnect': (r) => r === 'io server disconnect' });
}
"#,
        vars(&[("SIO", &node.url)]),
        1,
    )
    .await;
    all_checks_passed(&totals, 4 * 6);
    assert_eq!(
        count_tagged(
            &totals,
            "socketio_disconnects",
            &[("reason", "io server disconnect")]
        ),
        4.0
    );
    assert_eq!(count(&totals, "socketio_connect_errors"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_users_close_their_sockets_at_each_iteration_end() {
    let t = target().await;
    let totals = run(
        r#"
import { io } from 'punisher/socketio';
import { sleep } from 'punisher';
export const options = { vus: 3, duration: '1s' };
export default async function () {
  await io(__ENV.API, { transports: ['websocket'] });
  await sleep(0.1);
}
"#,
        vars(&[("API", &t.url)]),
        1,
    )
    .await;
    let opened = count(&totals, "socketio_connect_duration");
    assert!(opened >= 6.0, "{opened}");
    assert_eq!(count(&totals, "socketio_disconnects"), opened);
    all_disconnected(&t).await;
    assert_eq!(t.stats().sockets.total.websocket as f64, opened);
}

/// A WebSocket server that sends `release` to every connection once `go` turns true.
async fn ws_release(go: tokio::sync::watch::Receiver<bool>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mut go = go.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(sock).await else {
                    return;
                };
                if go.wait_for(|g| *g).await.is_err() {
                    return;
                }
                let _ = ws
                    .send(tokio_tungstenite::tungstenite::Message::text("release"))
                    .await;
                // Answer the client's close handshake.
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_count_open_connections_and_sockets_until_they_close() {
    const USERS: u64 = 6;
    let t = target().await;
    let http = server().await;
    let (go, go_rx) = tokio::sync::watch::channel(false);
    let ws = ws_release(go_rx).await;
    let env = vars(&[("API", &t.url), ("WS", &ws), ("HTTP", &http.url)]);
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { connect } from 'punisher/ws';
import { io } from 'punisher/socketio';
import { check } from 'punisher';
export const options = { users: 6, rampUp: '0s' };
export default async function () {
  // One keep-alive HTTP connection, one WebSocket, one Socket.IO session on a websocket.
  check(await http.get(`${__ENV.HTTP}/hello`), { 'http ok': (r) => r.status === 200 });
  const socket = await io(__ENV.API, { transports: ['websocket'] });
  const ws = await connect(__ENV.WS);
  await ws.waitFor((m) => m === 'release', { timeout: '25s' });
  const closed = ws.waitFor('close', { timeout: '5s' });
  ws.close();
  await closed;
  const gone = socket.waitFor('disconnect', { timeout: '5s' });
  socket.close();
  check(await gone, { 'disconnected': (r) => r === 'io client disconnect' });
}
"#,
        &env,
    );
    let cfg = config(&s, 2, env);
    let mut run = start(s, cfg);
    // The latest (connections, sockets) of each worker.
    let mut latest = BTreeMap::new();
    let mut peak = (0, 0);
    let finished = tokio::time::timeout(LIMIT, async {
        while let Some(r) = run.next_report().await {
            latest.insert(r.worker, (r.open_connections, r.open_sockets));
            let sum = latest
                .values()
                .fold((0, 0), |a: (u64, u64), v| (a.0 + v.0, a.1 + v.1));
            peak = (peak.0.max(sum.0), peak.1.max(sum.1));
            if sum == (3 * USERS, 2 * USERS) {
                // Every user holds its three connections: let them close.
                go.send_replace(true);
            }
        }
    })
    .await;
    assert!(finished.is_ok(), "run did not finish; peak {peak:?}");
    assert_eq!(peak, (3 * USERS, 2 * USERS), "{latest:?}");
    assert_eq!(
        latest.values().copied().collect::<Vec<_>>(),
        vec![(0, 0), (0, 0)],
        "connections left open at the end"
    );
    assert!(*go.borrow(), "the held connections were never all reported");
    all_disconnected(&t).await;
}
