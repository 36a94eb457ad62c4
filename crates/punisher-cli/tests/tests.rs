//! End-to-end tests of the `punisher` binary: exit codes, messages, summaries, signals.
//! Each test runs the real binary against the demo target on a free loopback port (the
//! `cluster_aws` ones against moto's EC2 server).

mod cluster_aws;
mod local_agents;
// The moto EC2 server of punisher-launcher's tests, shared as source (no AWS SDK in it).
#[path = "../../punisher-launcher/tests/util/moto.rs"]
mod moto;
mod results;
#[path = "../../../test-support/skip.rs"]
mod skip;
mod util;

use util::{punisher, scenario};

#[test]
fn passing_run_exits_0_with_summary_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "pass.js",
        r#"
        import http from 'punisher/http';
        import { check } from 'punisher';
        export const options = { vus: 3, duration: '1s', thresholds: { http_req_failed: ['rate<0.01'], checks: ['rate==1'] } };
        export default async function () {
          const res = await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
          check(res, { 'status is 200': (r) => r.status === 200 });
        }
        "#,
    );
    let json = dir.path().join("summary.json");
    let out = punisher(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "-q",
        "--summary-json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("✓ status is 200"), "{}", out.stdout);
    assert!(out.stdout.contains("http_reqs"), "{}", out.stdout);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let requests = summary["metrics"]["http_reqs"]["values"]["count"]
        .as_f64()
        .unwrap();
    assert!(requests >= 3.0, "{summary}");
    assert_eq!(
        summary["metrics"]["http_req_failed"]["values"]["rate"].as_f64(),
        Some(0.0)
    );
}

#[test]
fn failed_threshold_exits_99() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "fail.js",
        r#"
        import http from 'punisher/http';
        export const options = { users: 5, rampUp: '0s', thresholds: { 'http_req_duration{name:info}': ['max<0'], http_reqs: ['count>0'] } };
        export default async function () {
          await http.get(`${__ENV.API}/api/info`, { name: 'info' });
        }
        "#,
    );
    let out = punisher(&["run", script.to_str().unwrap(), "--demo-target", "-q"]);
    assert_eq!(out.code, 99, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("✗ 'max<0'"), "{}", out.stdout);
    assert!(out.stdout.contains("✓ 'count>0'"), "{}", out.stdout);
}

#[test]
fn syntax_error_exits_2_with_location_and_source_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "broken.js",
        "export const options = { vus: 1, duration: '1s' };\nexport default function () {\n  let x = ;\n}\n",
    );
    for command in ["run", "check"] {
        let out = punisher(&[command, script.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{command}: {}", out.stderr);
        assert!(
            out.stderr.contains("broken.js:3:"),
            "{command}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("let x = ;"),
            "{command}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn invalid_options_and_thresholds_exit_2_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "no_workload.js",
            "export const options = {};",
            "define no workload",
        ),
        (
            "bad_duration.js",
            "export const options = { vus: 1, duration: 'soon' };",
            "options.duration",
        ),
        (
            "bad_threshold.js",
            "export const options = { vus: 1, duration: '1s', thresholds: { http_req_duration: ['p95 < 200'] } };",
            "threshold",
        ),
    ];
    for (name, options, expect) in cases {
        let script = scenario(
            &dir,
            name,
            &format!("{options}\nexport default async function () {{}}\n"),
        );
        let out = punisher(&["run", script.to_str().unwrap()]);
        assert_eq!(out.code, 2, "{name}: {}", out.stderr);
        assert!(out.stderr.contains(expect), "{name}: {}", out.stderr);
    }
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(&dir, "ok.js", "export default async function () {}\n");
    let s = script.to_str().unwrap();
    for args in [
        vec!["run", s, "--users", "lots"],
        vec!["run", s, "--users", "1", "-e", "NOEQUALS"],
        vec!["run", s, "--vus", "1", "--duration", "1s", "--workers", "0"],
        vec![
            "run",
            s,
            "--users",
            "1",
            "--source-ips",
            "127.0.0.9-127.0.0.2",
        ],
        vec!["run", "/nonexistent/scenario.js", "--users", "1"],
        vec!["frobnicate"],
        vec!["target", "--ping-timeout", "0s"],
        vec!["target", "--ping-interval", "soon"],
    ] {
        let out = punisher(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("error"), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn check_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "plan.js",
        "export const options = { users: 300, rampUp: '30s', thresholds: { 'http_req_duration{name:vote}': ['p(99)<500'] } };\nexport default async function () {}\n",
    );
    let out = punisher(&["check", script.to_str().unwrap(), "--users", "1000"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("1000 session users arriving over 30s"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("http_req_duration{name:vote}: p(99)<500"),
        "{}",
        out.stdout
    );
}

#[test]
fn user_exception_is_counted_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "throws.js",
        r#"
        import { vu } from 'punisher';
        export const options = { users: 10, rampUp: '0s', thresholds: { iteration_errors: ['count==5'] } };
        export default async function () {
          if (vu.idInTest % 2 === 0) throw new Error('even users fail');
        }
        "#,
    );
    let out = punisher(&["run", script.to_str().unwrap(), "-q"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("even users fail"), "{}", out.stderr);
    assert!(out.stderr.contains("throws.js:"), "{}", out.stderr);
}

#[test]
fn ctrl_c_stops_gracefully_and_still_prints_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "long.js",
        r#"
        import http from 'punisher/http';
        import { sleep } from 'punisher';
        export const options = { vus: 4, duration: '60s', gracefulStop: '5s' };
        export default async function () {
          await http.get(`${__ENV.API}/api/info`, { name: 'info' });
          await sleep(0.05);
        }
        "#,
    );
    let out =
        util::interrupt_after_first_status(&["run", script.to_str().unwrap(), "--demo-target"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("stopping gracefully"), "{}", out.stderr);
    assert!(out.stdout.contains("http_reqs"), "{}", out.stdout);
    assert!(out.stdout.contains("interrupted"), "{}", out.stdout);
    assert!(
        out.elapsed < std::time::Duration::from_secs(30),
        "took {:?}",
        out.elapsed
    );
}
/// The heartbeat flags reach every process of a multi-process target: the second process's
/// Engine.IO handshake advertises them.
#[test]
fn target_heartbeat_flags_reach_every_process() {
    let target = util::start_target_with(&[
        "--processes",
        "2",
        "--ping-interval",
        "2s",
        "--ping-timeout",
        "7s",
    ]);
    let (ip, port) = target.addr.rsplit_once(':').unwrap();
    let second = format!("{ip}:{}", port.parse::<u16>().unwrap() + 1);
    util::wait_listening(&second);
    for addr in [&target.addr, &second] {
        let open = util::get_body(addr, "/socket.io/?EIO=4&transport=polling");
        let open: serde_json::Value = serde_json::from_str(
            open.strip_prefix('0')
                .unwrap_or_else(|| panic!("not an Engine.IO open packet: {open}")),
        )
        .unwrap();
        assert_eq!(open["pingInterval"], 2000, "{addr}: {open}");
        assert_eq!(open["pingTimeout"], 7000, "{addr}: {open}");
    }
    // The other process ends with the first one, even when that one is killed outright.
    drop(target);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&second).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the second target process outlived the first"
        );
        std::thread::yield_now();
    }
}

mod tv_show;
