//! Integration tests of the engine: scenario loading errors, executors, the JS API and the
//! "current VU" invariant, against a tiny local HTTP server.

mod handle_summary;
mod sockets;
mod util;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use punisher_engine::{Bundle, EngineCommand, ScenarioError, inspect, start};
use serde_json::json;
use util::*;

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn inspect_err(files: &[(&str, &str)]) -> String {
    let f = Files::new(files);
    let entry = f.path(files[0].0);
    let err = Bundle::from_path(&entry)
        .and_then(|b| inspect(b, &no_env()))
        .unwrap_err();
    // Paths in messages are the temp dir's; keep the part after it.
    err.to_string()
        .replace(&format!("{}/", f.dir.path().display()), "")
}

#[test]
fn init_errors_have_file_line_column_and_source() {
    let e = inspect_err(&[(
        "x.js",
        "export default function () {}\nlet a = 1;\nlet x = ;\n",
    )]);
    assert!(e.starts_with("x.js:3:9: SyntaxError: "), "{e}");
    assert!(e.ends_with("\n   3 | let x = ;\n     |         ^"), "{e}");

    let e = inspect_err(&[(
        "x.js",
        "export default function () {}\nconst o = null;\n  o.field;\n",
    )]);
    assert!(e.starts_with("x.js:3:"), "{e}");
    assert!(e.contains("TypeError"), "{e}");
    assert!(e.contains("   3 |   o.field;"), "{e}");

    // An error inside an imported module points into that module.
    let e = inspect_err(&[
        (
            "x.js",
            "import { f } from './lib/a.js';\nexport default function () {}\n",
        ),
        (
            "lib/a.js",
            "export function f() {}\nthrow new Error('broken lib');\n",
        ),
    ]);
    assert!(e.starts_with("lib/a.js:2:"), "{e}");
    assert!(e.contains("Error: broken lib"), "{e}");

    let e = inspect_err(&[(
        "x.js",
        "import './missing.js';\nexport default function () {}\n",
    )]);
    assert!(
        e.contains("x.js:1: cannot import \"./missing.js\": cannot read missing.js"),
        "{e}"
    );

    let e = inspect_err(&[("x.js", "import 'lodash';\nexport default function () {}\n")]);
    assert!(e.contains("only relative paths"), "{e}");

    let e = inspect_err(&[(
        "x.js",
        "const d = open('./nope.csv');\nexport default function () {}\n",
    )]);
    assert!(e.contains("open(\"./nope.csv\"): cannot read"), "{e}");
    assert!(e.starts_with("x.js:1:"), "{e}");

    let e = inspect_err(&[("x.js", "export const options = {};\n")]);
    assert!(e.contains("no default export function"), "{e}");

    let e = inspect_err(&[(
        "x.js",
        "export default function () {}\nexport const setup = 3;\n",
    )]);
    assert!(e.contains("`export setup` must be a function"), "{e}");
}

#[test]
fn init_code_awaiting_forever_is_refused() {
    // Init code cannot wait for timers or the network: a promise that never settles is
    // refused instead of hanging `punisher check`.
    let e = inspect_err(&[(
        "x.js",
        "export default function () {}\nawait new Promise(() => {});\n",
    )]);
    assert!(e.contains("never settles"), "{e}");
}

#[test]
fn options_imports_open_and_csv() {
    let f = Files::new(&[
        (
            "scenarios/main.js",
            r#"
import { users } from './lib/data.js';
import { sleep, check } from 'punisher';
export const options = { vus: 2, duration: '1s', thresholds: { checks: ['rate>0.9'] }, fn: () => 1 };
export function setup() { return { n: users.length }; }
export function teardown(d) {}
export default function (data) { return users[0].name + data.n + __ENV.WHO; }
"#,
        ),
        (
            "scenarios/lib/data.js",
            "import { parseCSV } from 'punisher';\nimport { suffix } from '../util.js';\nexport const users = parseCSV(open('../data/users.csv'), { header: true }).map(u => ({ ...u, name: u.name + suffix }));\n",
        ),
        ("scenarios/util.js", "export const suffix = '!';\n"),
        (
            "scenarios/data/users.csv",
            "name,password\nalice,a1\nbob,b2\n",
        ),
    ]);
    let bundle = Bundle::from_path(&f.path("scenarios/main.js")).unwrap();
    assert_eq!(bundle.sources.len(), 3, "{:?}", bundle.sources.keys());
    let env = BTreeMap::from([("WHO".to_owned(), "x".to_owned())]);
    let s = inspect(bundle, &env).unwrap();
    assert_eq!(s.options["vus"], json!(2));
    assert_eq!(s.options["thresholds"]["checks"], json!(["rate>0.9"]));
    assert!(s.options.get("fn").is_none());
    assert!(s.has_setup && s.has_teardown && !s.has_handle_summary);
    let csv_key = s
        .bundle
        .files
        .keys()
        .find(|k| k.ends_with("scenarios/data/users.csv"))
        .expect("opened file in the bundle");
    assert_eq!(
        s.bundle.files[csv_key],
        b"name,password\nalice,a1\nbob,b2\n"
    );
}

#[tokio::test]
async fn setup_data_reaches_users_and_teardown() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { check } from 'punisher';
export const options = { users: 3, rampUp: '0s' };
export async function setup() {
  const r = await http.post(`${__ENV.API}/json`, { hello: 'world' });
  return { token: r.json().body, n: 42 };
}
export default async function (data) {
  await http.get(`${__ENV.API}/user?token=${encodeURIComponent(data.token)}&n=${data.n}`);
}
export async function teardown(data) {
  await http.get(`${__ENV.API}/teardown?n=${data.n}`);
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    let data = punisher_engine::run_setup(&s, &cfg).await.unwrap();
    assert_eq!(data, json!({"token": "{\"hello\":\"world\"}", "n": 42}));
    let totals = finish(
        start(Arc::new(s.clone()), cfg.clone(), data.clone()).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(count(&totals, "iterations"), 3.0);
    let users = srv.requests("/user");
    assert_eq!(users.len(), 3);
    assert!(
        users
            .iter()
            .all(|u| u.path.contains("n=42") && u.path.contains("hello"))
    );
    punisher_engine::run_teardown(&s, &cfg, &data)
        .await
        .unwrap();
    assert_eq!(srv.requests("/teardown?n=42").len(), 1);
}

#[tokio::test]
async fn session_users_each_run_once_with_their_own_cookies() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { vu, check } from 'punisher';
export const options = { users: 20, rampUp: '200ms' };
export default async function () {
  const me = vu.idInTest;
  await http.get(`${__ENV.API}/login?u=${me}`, { name: 'login' });
  const r = await http.get(`${__ENV.API}/echo?u=${me}`, { name: 'echo' });
  check(r, { 'own cookie': (r) => r.body === `sid=${me}`, 'status 200': (r) => r.status === 200 });
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 3, env(&srv));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(srv.requests("/login").len(), 20);
    let echoes = srv.requests("/echo");
    assert_eq!(echoes.len(), 20);
    for e in &echoes {
        let u = e.path.split("u=").nth(1).unwrap();
        assert_eq!(e.cookie.as_deref(), Some(format!("sid={u}").as_str()));
    }
    assert_eq!(count(&totals, "iterations"), 20.0);
    assert_eq!(
        count_tagged(&totals, "http_reqs", &[("name", "login")]),
        20.0
    );
    assert_eq!(
        rate_total(&totals, "checks", &[("check", "own cookie")]),
        (20, 20)
    );
    assert_eq!(rate_total(&totals, "http_req_failed", &[]), (0, 40));
}

#[tokio::test]
async fn constant_vus_loop_until_the_duration_ends() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 3, duration: '1s' };
export default async function () {
  await http.get(`${__ENV.API}/loop?vu=${vu.idInTest}&it=${vu.iteration}`);
  await sleep(0.1);
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let iterations = count(&totals, "iterations");
    assert!((21.0..=36.0).contains(&iterations), "{iterations}");
    let reqs = srv.requests("/loop");
    assert_eq!(reqs.len() as f64, iterations);
    for vu in 1..=3 {
        assert!(
            reqs.iter()
                .any(|r| r.path.contains(&format!("vu={vu}&it=5"))),
            "vu {vu}"
        );
    }
}

#[tokio::test]
async fn arrival_rate_counts_dropped_iterations() {
    let (_f, s) = scenario(
        r#"
import { sleep } from 'punisher';
export const options = { rate: 40, duration: '1s', preAllocatedVUs: 1, maxVUs: 2 };
export default async function () { await sleep(0.3); }
"#,
        &no_env(),
    );
    let cfg = config(&s, 1, no_env());
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let done = count(&totals, "iterations");
    let dropped = count(&totals, "dropped_iterations");
    assert_eq!(done + dropped, 40.0, "{done} + {dropped}");
    assert!((6.0..=10.0).contains(&done), "{done}");
    // Iterations are measured from their scheduled start.
    let Some(punisher_metrics::SeriesData::Trend { hist, .. }) =
        totals.aggregate("iteration_duration", &punisher_metrics::Tags::empty())
    else {
        panic!("no iteration_duration")
    };
    assert!(hist.min() >= 290_000, "{}", hist.min());
}

#[tokio::test]
async fn thrown_errors_end_the_iteration_only() {
    let (_f, s) = scenario(
        r#"
import { vu } from 'punisher';
export const options = { users: 6, rampUp: '0s' };
export default async function () {
  if (vu.idInTest % 2 === 0) throw new Error('even users fail');
  if (vu.idInTest === 3) null.x;
}
"#,
        &no_env(),
    );
    let cfg = config(&s, 2, no_env());
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(count(&totals, "iterations"), 6.0);
    assert_eq!(count(&totals, "iteration_errors"), 4.0);
}

#[tokio::test]
async fn abort_interrupts_an_endless_loop() {
    let (_f, s) = scenario(
        r#"
export const options = { vus: 2, duration: '1m' };
export default function () { while (true) {} }
"#,
        &no_env(),
    );
    let cfg = config(&s, 2, no_env());
    let handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.command(EngineCommand::Abort);
    finish(handle, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stop_gives_grace_then_interrupts() {
    let (_f, s) = scenario(
        r#"
export const options = { vus: 1, duration: '1m' };
export default function () { while (true) {} }
"#,
        &no_env(),
    );
    let cfg = config(&s, 1, no_env());
    let handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    handle.command(EngineCommand::Stop {
        grace: Duration::from_millis(300),
    });
    finish(handle, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn set_interval_polls_until_cleared() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { vu } from 'punisher';
export const options = { users: 2, rampUp: '0s' };
export default function () {
  return new Promise((resolve) => {
    // Ticks may overlap (a slow machine answers after the next tick): each tick keeps
    // its own number, and the fifth answer, whichever tick it belongs to, ends the user.
    let started = 0;
    let answered = 0;
    const id = setInterval(async () => {
      const n = ++started;
      if (n > 5) return;
      await http.get(`${__ENV.API}/poll?vu=${vu.idInTest}&n=${n}`);
      if (++answered === 5) { clearInterval(id); setTimeout(resolve, 50); }
    }, 20);
  });
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 1, env(&srv));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(count(&totals, "iterations"), 2.0);
    let polls = srv.requests("/poll");
    assert_eq!(polls.len(), 10);
    for vu in 1..=2 {
        for n in 1..=5 {
            assert!(
                polls
                    .iter()
                    .any(|p| p.path == format!("/poll?vu={vu}&n={n}"))
            );
        }
    }
}

#[tokio::test]
async fn barrier_releases_everyone_together() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { barrier, vu } from 'punisher';
export const options = { users: 8, rampUp: '400ms' };
export default async function () {
  await http.get(`${__ENV.API}/before?vu=${vu.idInTest}`);
  await barrier('ready', { timeout: '5s' });
  await http.get(`${__ENV.API}/after?vu=${vu.idInTest}`);
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let seen = srv.seen.lock().unwrap().clone();
    let last_before = seen
        .iter()
        .rposition(|s| s.path.starts_with("/before"))
        .unwrap();
    let first_after = seen
        .iter()
        .position(|s| s.path.starts_with("/after"))
        .unwrap();
    assert!(last_before < first_after, "{seen:?}");
    assert_eq!(seen.len(), 16);
}

#[tokio::test]
async fn barrier_times_out_with_a_clear_error() {
    let (_f, s) = scenario(
        r#"
import { barrier, check } from 'punisher';
export const options = { users: 2, rampUp: '0s' };
export default async function () {
  try {
    await barrier('never', { timeout: '200ms' });
  } catch (e) {
    check(e, { 'timeout message': (e) => e.message === 'barrier "never" timed out after 200ms' });
    throw e;
  }
}
"#,
        &no_env(),
    );
    let mut cfg = config(&s, 1, no_env());
    cfg.barriers = Arc::new(punisher_engine::LocalBarrierHub::new(100));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(count(&totals, "iteration_errors"), 2.0);
    assert_eq!(count(&totals, "barrier_timeouts"), 2.0);
    assert_eq!(rate_total(&totals, "checks", &[]), (2, 2));
}

#[tokio::test]
async fn each_user_keeps_its_own_identity_across_awaits_and_timers() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { vu, sleep, group, check } from 'punisher';
export const options = { users: 200, rampUp: '0s' };
export default async function () {
  const me = vu.idInTest;
  await http.get(`${__ENV.API}/login?u=${me}`, { name: 'login' });
  // The timer is due within 10 ms, before step 0's sleep (10-30 ms, started later) ends:
  // it always fires inside the group, whatever the machine's load.
  const fromTimer = new Promise((resolve) => setTimeout(async () => {
    const r = await http.get(`${__ENV.API}/echo?u=${me}&step=timer&vu=${vu.idInTest}`, { name: 'timer' });
    resolve(r.body);
  }, Math.random() * 10));
  for (let step = 0; step < 3; step++) {
    await group('step', async () => {
      await sleep(0.01 + Math.random() * 0.02);
      const r = await http.get(`${__ENV.API}/echo?u=${me}&step=${step}&vu=${vu.idInTest}`, { name: 'echo' });
      check(r, { 'own cookie': (r) => r.body === `sid=${me}` });
    });
  }
  check(await fromTimer, { 'own cookie in timer': (b) => b === `sid=${me}` });
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(20),
    )
    .await;
    let echoes = srv.requests("/echo");
    assert_eq!(echoes.len(), 800);
    for e in &echoes {
        let q: BTreeMap<&str, &str> = e
            .path
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        assert_eq!(
            q["u"], q["vu"],
            "vu.idInTest changed inside a user: {}",
            e.path
        );
        assert_eq!(
            e.cookie.as_deref(),
            Some(format!("sid={}", q["u"]).as_str()),
            "{}",
            e.path
        );
    }
    assert_eq!(
        rate_total(&totals, "checks", &[("check", "own cookie")]),
        (600, 600)
    );
    assert_eq!(
        rate_total(&totals, "checks", &[("group", "::step")]),
        (600, 600)
    );
    assert_eq!(
        rate_total(&totals, "checks", &[("check", "own cookie in timer")]),
        (200, 200)
    );
    // The group tag belongs to the user: its timer requests made while the user's main flow
    // is inside the group are tagged too (the timer fires during step 0).
    assert_eq!(
        count_tagged(&totals, "http_reqs", &[("group", "::step")]),
        800.0
    );
    assert_eq!(count(&totals, "iteration_errors"), 0.0);
}

#[tokio::test]
async fn http_api_shapes() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { check, Trend, Counter } from 'punisher';
export const options = { users: 1, rampUp: '0s' };
const t = new Trend('my_time', true);
const c = new Counter('my_count');
export default async function () {
  const r = await http.post(`${__ENV.API}/json`, { a: 1 }, { headers: { 'X-Test': 'yes' }, tags: { kind: 'api' }, timeout: '5s' });
  check(r, {
    'status': (r) => r.status === 200,
    'json': (r) => r.json().ok === true && r.json().body === '{"a":1}',
    'headers lowercase': (r) => r.headers['content-type'] === 'application/json',
    'timings': (r) => r.timings.duration >= 0 && typeof r.timings.waiting === 'number',
    'no error': (r) => r.error === '',
  });
  check(JSON.parse(JSON.stringify(r)), {
    'response serialises whole': (j) => Object.keys(j).join() ===
      'status,status_text,proto,headers,body,url,error,error_code,error_message,timings' &&
      j.headers['content-type'] === 'application/json' && j.timings.duration === r.timings.duration,
  });
  const w = await http.get(`${__ENV.API}/plain`);
  w.headers = 'mine';
  w.timings = 5;
  check(w, { 'headers and timings are writable': (w) => w.headers === 'mine' && w.timings === 5 });
  const txt = await http.get(`${__ENV.API}/plain`);
  let msg = '';
  try { txt.json(); } catch (e) { msg = e.message; }
  check(msg, { 'json error is clear': (m) => m.includes('is not JSON') });
  const bad = await http.get('http://127.0.0.1:1/nothing');
  check(bad, { 'network failure is status 0': (r) => r.status === 0 && r.error !== '' });
  t.add(12.5);
  c.add(2, { k: 'v' });
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 1, env(&srv));
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let (passes, total) = rate_total(&totals, "checks", &[]);
    assert_eq!(
        (passes, total),
        (9, 9),
        "{:?}",
        totals
            .series()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count_tagged(&totals, "http_reqs", &[("kind", "api"), ("method", "POST")]),
        1.0
    );
    assert_eq!(count(&totals, "my_count"), 2.0);
    assert_eq!(count(&totals, "my_time"), 1.0);
    assert_eq!(rate_total(&totals, "http_req_failed", &[]), (1, 4));
    assert!(count(&totals, "data_received") > 0.0);
    let posted = srv.requests("/json");
    assert_eq!(posted[0].body, "{\"a\":1}");
}

#[test]
fn scenario_errors_are_typed() {
    let e = inspect_err(&[("x.js", "export default function () {}\nlet x = ;\n")]);
    assert!(!e.is_empty());
    let err = Bundle::from_path(std::path::Path::new("/nonexistent/x.js")).unwrap_err();
    assert!(matches!(err, ScenarioError::Read { .. }));
}

#[tokio::test]
async fn scale_users_changes_the_looping_target() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 1, duration: '1500ms' };
export default async function () {
  await http.get(`${__ENV.API}/scale?vu=${vu.idInTest}`);
  await sleep(0.05);
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    let handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    // Wait for the first user's requests, then ask for four users.
    tokio::time::timeout(Duration::from_secs(5), async {
        while srv.requests("/scale?vu=1").len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(srv.requests("/scale?vu=4").is_empty());
    handle.command(EngineCommand::ScaleUsers(4));
    finish(handle, Duration::from_secs(10)).await;
    for vu in 1..=4 {
        assert!(
            !srv.requests(&format!("/scale?vu={vu}")).is_empty(),
            "vu {vu}"
        );
    }
    assert!(srv.requests("/scale?vu=5").is_empty());
}

#[tokio::test]
async fn ramping_vus_follow_the_stages() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { stages: [{ duration: '600ms', target: 4 }, { duration: '600ms', target: 0 }] };
export default async function () {
  await http.get(`${__ENV.API}/ramp?vu=${vu.idInTest}`);
  await sleep(0.05);
}
"#,
        &env(&srv),
    );
    let cfg = config(&s, 2, env(&srv));
    let t0 = std::time::Instant::now();
    finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(10),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    for vu in 1..=4 {
        assert!(
            !srv.requests(&format!("/ramp?vu={vu}")).is_empty(),
            "vu {vu}"
        );
    }
    assert!(srv.requests("/ramp?vu=5").is_empty());
}

#[tokio::test]
async fn session_duration_caps_the_run() {
    let (_f, s) = scenario(
        r#"
import { sleep } from 'punisher';
export const options = { users: 3, rampUp: '0s', duration: '300ms', gracefulStop: '100ms' };
export default async function () { await sleep(60); }
"#,
        &no_env(),
    );
    let cfg = config(&s, 1, no_env());
    let t0 = std::time::Instant::now();
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(5),
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(count(&totals, "iterations"), 0.0);
}

#[tokio::test]
async fn paused_arrivals_wait_for_resume() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { vu } from 'punisher';
export const options = { users: 10, rampUp: '1s' };
export default async function () { await http.get(`${__ENV.API}/arrive?vu=${vu.idInTest}`); }
"#,
        &env(&srv),
    );
    let cfg = config(&s, 1, env(&srv));
    let handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    handle.command(EngineCommand::PauseArrivals);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let during = srv.requests("/arrive").len();
    assert!(during <= 2, "{during} users arrived while paused");
    handle.command(EngineCommand::ResumeArrivals);
    let totals = finish(handle, Duration::from_secs(10)).await;
    assert_eq!(count(&totals, "iterations"), 10.0);
}

/// Process CPU time (user + system).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 4096
}

/// CPU per request against a keep-alive server given in PUNISHER_BENCH_URL (e.g. nginx
/// returning "ok"): `PUNISHER_BENCH_URL=http://127.0.0.1:18187/ cargo test --release -p
/// punisher-engine --test integration -- --ignored --nocapture cpu_per_request`.
#[tokio::test]
#[ignore = "benchmark: needs PUNISHER_BENCH_URL"]
async fn cpu_per_request() {
    let Ok(url) = std::env::var("PUNISHER_BENCH_URL") else {
        return;
    };
    let env = BTreeMap::from([("URL".to_owned(), url)]);
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
export const options = { vus: 50, duration: '5s' };
export default async function () { await http.get(__ENV.URL); }
"#,
        &env,
    );
    let cfg = config(&s, 1, env.clone());
    let cpu0 = process_cpu();
    let t0 = std::time::Instant::now();
    let totals = finish(
        start(Arc::new(s), cfg, json!(null)).unwrap(),
        Duration::from_secs(30),
    )
    .await;
    let cpu = process_cpu() - cpu0;
    let wall = t0.elapsed();
    let reqs = count(&totals, "http_reqs");
    eprintln!(
        "requests {reqs}, {:.0}/s, cpu {:?} over {:?}: {:.1} us/request",
        reqs / wall.as_secs_f64(),
        cpu,
        wall,
        cpu.as_secs_f64() * 1e6 / reqs
    );
}

/// Marginal memory per idle session user holding a keep-alive connection to
/// PUNISHER_BENCH_URL: `PUNISHER_BENCH_URL=http://127.0.0.1:18187/ cargo test --release -p
/// punisher-engine --test integration -- --ignored --nocapture idle_user_memory`.
#[tokio::test]
#[ignore = "benchmark: needs PUNISHER_BENCH_URL"]
async fn idle_user_memory() {
    let Ok(url) = std::env::var("PUNISHER_BENCH_URL") else {
        return;
    };
    let users: u64 = std::env::var("PUNISHER_BENCH_USERS")
        .ok()
        .and_then(|u| u.parse().ok())
        .unwrap_or(15_000);
    let with_http = std::env::var("PUNISHER_BENCH_NO_HTTP").is_err();
    let env = BTreeMap::from([
        ("URL".to_owned(), url),
        ("HTTP".to_owned(), with_http.to_string()),
    ]);
    let (_f, s) = scenario(
        &format!(
            r#"
import http from 'punisher/http';
import {{ sleep }} from 'punisher';
export const options = {{ users: {users}, rampUp: '4s' }};
export default async function () {{
  if (__ENV.HTTP === 'true') await http.get(__ENV.URL);
  await sleep(3600);
}}
"#
        ),
        &env,
    );
    let cfg = config(&s, 1, env.clone());
    let mut handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    let mut samples = Vec::new();
    let mut paused_at = None;
    while let Some(r) = handle.next_report().await {
        if paused_at.is_none() && r.arrived_users >= users / 3 {
            handle.command(EngineCommand::PauseArrivals);
            paused_at = Some(std::time::Instant::now());
            continue;
        }
        if let Some(t) = paused_at
            && samples.is_empty()
            && t.elapsed() > Duration::from_millis(1500)
        {
            samples.push((r.arrived_users, rss_bytes()));
            handle.command(EngineCommand::ResumeArrivals);
            continue;
        }
        if samples.len() == 1 && r.arrived_users == users {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            samples.push((users, rss_bytes()));
            handle.command(EngineCommand::Abort);
        }
    }
    let (n0, m0) = samples[0];
    let (n1, m1) = samples[1];
    eprintln!(
        "http={with_http}: {n0} users {} MB, {n1} users {} MB: {:.2} KB per idle user",
        m0 >> 20,
        m1 >> 20,
        (m1 - m0) as f64 / (n1 - n0) as f64 / 1024.0
    );
}

/// A departed engine's left-over shares, adopted by another engine, run every user that had
/// not started exactly once: the ones whose time came at once, the others on schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_shares_run_each_unstarted_user_once() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { vu, sleep } from 'punisher';
export const options = { users: 40, rampUp: '2s' };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await sleep(0.3);
}
"#,
        &env(&srv),
    );
    let s = Arc::new(s);
    let halves = punisher_core::Segment::FULL.split(&[1.0, 1.0]);
    let mut cfg_a = config(&s, 2, env(&srv));
    cfg_a.segment = halves[0];
    let mut cfg_b = config(&s, 3, env(&srv));
    cfg_b.segment = halves[1];
    let mut a = start(s.clone(), cfg_a, json!(null)).unwrap();
    let b = start(s.clone(), cfg_b, json!(null)).unwrap();
    // A third of the way in, engine A leaves: arrivals stop, running users are cut.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while srv.requests("/hit").len() < 12 {
        assert!(std::time::Instant::now() < deadline, "no arrivals");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.command(EngineCommand::Stop {
        grace: Duration::ZERO,
    });
    while a.next_report().await.is_some() {}
    let left = a.left_over();
    assert_eq!(left.shares.len(), 2, "one share per worker: {left:?}");
    for (segment, from) in &left.shares {
        b.command(EngineCommand::Adopt {
            segment: *segment,
            from_user: *from,
        });
        // Repeats are no-ops.
        b.command(EngineCommand::Adopt {
            segment: *segment,
            from_user: *from,
        });
    }
    finish(b, Duration::from_secs(20)).await;
    let mut ids: Vec<u64> = srv
        .requests("/hit")
        .iter()
        .map(|r| r.path.split("vu=").nth(1).unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=40).collect::<Vec<u64>>());
}

/// Looping users of an adopted share start like the engine's own: the run keeps its
/// number of looping users.
#[tokio::test]
async fn adopted_looping_users_loop_too() {
    let srv = server().await;
    let (_f, s) = scenario(
        r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 4, duration: '1s' };
export default async function () {
  await http.get(`${__ENV.API}/loop?vu=${vu.idInTest}`);
  await sleep(0.1);
}
"#,
        &env(&srv),
    );
    let halves = punisher_core::Segment::FULL.split(&[1.0, 1.0]);
    let mut cfg = config(&s, 1, env(&srv));
    cfg.segment = halves[0];
    let handle = start(Arc::new(s), cfg, json!(null)).unwrap();
    handle.command(EngineCommand::Adopt {
        segment: halves[1],
        from_user: 0,
    });
    finish(handle, Duration::from_secs(10)).await;
    let ids: std::collections::BTreeSet<u64> = srv
        .requests("/loop")
        .iter()
        .map(|r| r.path.split("vu=").nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids, (1..=4).collect());
}

/// `SharedRows`: each user takes an account with `next()`. Over two engines (two agents)
/// of 2 and 3 workers, no row goes to two users and every user got one; a worker whose rows
/// are used up throws a clear error (the iteration fails), and setup() owns no rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_rows_give_each_row_to_one_user_across_workers_and_agents() {
    let srv = server().await;
    let mut csv = String::from("name,password\n");
    for i in 0..60 {
        csv.push_str(&format!("user{i},pw{i}\n"));
    }
    let main = r#"
import http from 'punisher/http';
import { SharedRows, parseCSV, vu } from 'punisher';
const accounts = new SharedRows(parseCSV(open('accounts.csv'), { header: true }));
export const options = { users: Number(__ENV.USERS), rampUp: '500ms' };
export function setup() { return { total: accounts.total, owned: accounts.length }; }
export default async function () {
  const a = accounts.next();
  await http.get(`${__ENV.API}/login?u=${a.name}&vu=${vu.idInTest}&left=${accounts.remaining}`);
}
"#;
    let f = Files::new(&[("main.js", main), ("accounts.csv", &csv)]);
    let mut vars = env(&srv);
    vars.insert("USERS".into(), "50".into());
    let s = inspect(Bundle::from_path(&f.path("main.js")).unwrap(), &vars).unwrap();
    let s = Arc::new(s);
    // setup() sees the file but owns none of its rows.
    let data = punisher_engine::run_setup(&s, &config(&s, 1, vars.clone()))
        .await
        .unwrap();
    assert_eq!(data, json!({"total": 60, "owned": 0}));

    let halves = punisher_core::Segment::FULL.split(&[1.0, 1.0]);
    let mut cfg_a = config(&s, 2, vars.clone());
    cfg_a.segment = halves[0];
    let mut cfg_b = config(&s, 3, vars.clone());
    cfg_b.segment = halves[1];
    let a = start(s.clone(), cfg_a, json!(null)).unwrap();
    let b = start(s.clone(), cfg_b, json!(null)).unwrap();
    let (ta, tb) = tokio::join!(
        finish(a, Duration::from_secs(20)),
        finish(b, Duration::from_secs(20))
    );
    // Row k goes where user k goes: with at least as many rows as users, no worker of
    // session users runs out.
    assert_eq!(
        count(&ta, "iteration_errors") + count(&tb, "iteration_errors"),
        0.0
    );
    let logins = srv.requests("/login");
    let names: std::collections::BTreeSet<String> =
        logins.iter().map(|r| login_name(&r.path)).collect();
    assert_eq!(logins.len(), 50);
    assert_eq!(names.len(), 50, "a row was used twice: {logins:?}");
    assert!(names.iter().all(|n| {
        n.strip_prefix("user")
            .and_then(|i| i.parse::<u32>().ok())
            .is_some_and(|i| i < 60)
    }));

    // One worker, 8 users, 5 rows: 5 users log in, 3 iterations fail with the message.
    let srv = server().await;
    let f = Files::new(&[("main.js", main), ("accounts.csv", "name\na\nb\nc\nd\ne\n")]);
    let mut vars = env(&srv);
    vars.insert("USERS".into(), "8".into());
    let s = inspect(Bundle::from_path(&f.path("main.js")).unwrap(), &vars).unwrap();
    let handle = start(Arc::new(s.clone()), config(&s, 1, vars), json!(null)).unwrap();
    let totals = finish(handle, Duration::from_secs(20)).await;
    assert_eq!(count(&totals, "iteration_errors"), 3.0);
    let mut names: Vec<String> = srv
        .requests("/login")
        .iter()
        .map(|r| login_name(&r.path))
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
}

/// `spread(items)`: over two engines (two agents) of 2 workers each and 4 URLs, every URL
/// gets a quarter of the 40 users, and each agent's users use only half of the URLs (a
/// contiguous slice), where `idInTest % 4` would send every agent to all four. Outside a
/// user (init code) it throws a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_gives_each_agent_a_contiguous_slice_of_the_items() {
    let srv = server().await;
    let main = r#"
import http from 'punisher/http';
import { spread, vu } from 'punisher';
export const options = { users: 40, rampUp: '500ms' };
export default async function () {
  const url = spread(['a', 'b', 'c', 'd']);
  await http.get(`${__ENV.API}/pick?url=${url}&agent=${__ENV.AGENT}&vu=${vu.idInTest}`);
}
"#;
    let f = Files::new(&[("main.js", main)]);
    let halves = punisher_core::Segment::FULL.split(&[1.0, 1.0]);
    let mut handles = Vec::new();
    for (agent, half) in halves.iter().enumerate() {
        let mut vars = env(&srv);
        vars.insert("AGENT".into(), agent.to_string());
        let s = Arc::new(inspect(Bundle::from_path(&f.path("main.js")).unwrap(), &vars).unwrap());
        let mut cfg = config(&s, 2, vars);
        cfg.segment = *half;
        handles.push(start(s, cfg, json!(null)).unwrap());
    }
    for h in handles {
        finish(h, Duration::from_secs(20)).await;
    }
    let picks: Vec<(String, String)> = srv
        .requests("/pick")
        .iter()
        .map(|r| {
            let q = r.path.split('?').nth(1).unwrap();
            let field = |k: &str| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .unwrap()
                    .to_owned()
            };
            (field("url"), field("agent"))
        })
        .collect();
    assert_eq!(picks.len(), 40);
    for url in ["a", "b", "c", "d"] {
        assert_eq!(
            picks.iter().filter(|(u, _)| u == url).count(),
            10,
            "{picks:?}"
        );
    }
    let urls_of = |agent: &str| -> std::collections::BTreeSet<&str> {
        picks
            .iter()
            .filter(|(_, a)| a == agent)
            .map(|(u, _)| u.as_str())
            .collect()
    };
    assert_eq!(urls_of("0"), ["a", "b"].into());
    assert_eq!(urls_of("1"), ["c", "d"].into());

    let err = inspect_err(&[(
        "main.js",
        "import { spread } from 'punisher';\nconst x = spread(['a']);\nexport default function () {}\n",
    )]);
    assert!(err.contains("spread picks by the current user"), "{err}");
}

/// The `u` query parameter of a `/login?u=NAME` request: the account a user took.
fn login_name(path: &str) -> String {
    let query = path.split("u=").nth(1).unwrap();
    query.split('&').next().unwrap().to_owned()
}
