//! The TV show end to end: `scenarios/tv_show.js` with 5,000 users against a `punisher
//! target` process, proven from the target's own `/admin/stats`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::punisher;

const USERS: u64 = 5_000;

/// A `punisher target` child process, killed when dropped.
struct Target {
    child: Child,
    addr: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_target() -> Target {
    // The port is free when we look; the target binds it right after.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_punisher"))
        .args(["target", "--listen", &addr])
        .env("PUNISHER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start punisher target");
    let target = Target { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&target.addr).is_err() {
        assert!(Instant::now() < deadline, "the target did not start");
        std::thread::yield_now();
    }
    target
}

/// `GET /admin/stats` as JSON (HTTP/1.0: the server closes after the answer).
fn stats(addr: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /admin/stats HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {text}"))
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Asserts `part / total` is 0.2 ± 0.03.
fn twenty_percent(what: &str, part: u64, total: u64) {
    let share = part as f64 / total as f64;
    assert!(
        (0.17..=0.23).contains(&share),
        "{what}: {part} of {total} is {:.1}%, expected 20% ± 3 points",
        share * 100.0
    );
}

#[test]
fn tv_show_with_5000_users_against_a_target_process() {
    let target = start_target();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/tv_show.js");
    let api = format!("API=http://{}", target.addr);
    let users = USERS.to_string();
    let out = punisher(&[
        "run",
        script.to_str().unwrap(),
        "--users",
        &users,
        "--ramp-up",
        "20s",
        "-e",
        &api,
        "-e",
        "VOTE_MIN=2",
        "-e",
        "VOTE_MAX=8",
        "-e",
        "BARRIER_TIMEOUT=60s",
        "-e",
        "QUESTION_TIMEOUT=60s",
        "--source-ips",
        "127.0.0.2-127.0.0.30",
        "-q",
    ]);
    assert_eq!(
        out.code, 0,
        "thresholds or the run failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    let s = stats(&target.addr);
    let (guest, sns) = (u(&s["logins"]["guest"]), u(&s["logins"]["sns"]));
    assert_eq!(guest + sns, USERS, "{s}");
    twenty_percent("sns logins", sns, USERS);
    let total = &s["sockets"]["total"];
    let (ws, polling) = (u(&total["websocket"]), u(&total["polling"]));
    assert_eq!(ws + polling, USERS, "{s}");
    twenty_percent("polling sockets", polling, USERS);
    assert_eq!(u(&s["broadcasts"]), 1, "{s}");
    assert_eq!(u(&s["questions_delivered"]), USERS, "{s}");
    assert_eq!(u(&s["votes"]), USERS, "{s}");
    assert_eq!(u(&s["duplicate_votes"]), 0, "{s}");
    assert_eq!(u(&s["unauthorized"]), 0, "{s}");
    assert!(
        out.elapsed < Duration::from_secs(90),
        "the run took {:?}",
        out.elapsed
    );
}
