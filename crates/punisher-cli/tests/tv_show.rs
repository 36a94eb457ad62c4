//! The TV show end to end: `scenarios/tv_show.js` with 5,000 users against a `punisher
//! target` process, proven from the target's own `/admin/stats`.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::{punisher, start_target, stats};

const USERS: u64 = 5_000;

fn tv_show_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/tv_show.js")
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
    let script = tv_show_script();
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

/// `LEAVE=at-end`: viewers keep their socket until every vote is in (the `voted` barrier).
/// The target's stats are sampled during the run: no socket may close while votes are
/// missing, and in the end everyone voted and left cleanly.
#[test]
fn viewers_who_stay_leave_only_once_every_vote_is_in() {
    const STAYING: u64 = 600;
    let target = start_target();
    let script = tv_show_script();
    let api = format!("API=http://{}", target.addr);
    let users = STAYING.to_string();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(punisher(&[
            "run",
            script.to_str().unwrap(),
            "--users",
            &users,
            "--ramp-up",
            "3s",
            "-e",
            &api,
            "-e",
            "VOTE_VIA=socket",
            "-e",
            "LEAVE=at-end",
            "-e",
            "VOTE_MIN=1",
            "-e",
            "VOTE_MAX=4",
            "-e",
            "BARRIER_TIMEOUT=60s",
            "-e",
            "QUESTION_TIMEOUT=60s",
            "-q",
        ]));
    });
    let left = |s: &serde_json::Value| -> u64 {
        let d = s["sockets"]["disconnects"]
            .as_object()
            .expect("disconnects");
        d.values().map(u).sum()
    };
    let mut samples = 0;
    let out = loop {
        let s = stats(&target.addr);
        let (votes, gone) = (u(&s["votes"]), left(&s));
        assert!(
            gone == 0 || votes == STAYING,
            "{gone} sockets closed with {votes} of {STAYING} votes in: {s}"
        );
        samples += 1;
        // The run's end stops the sampling; until then a sample every 20 ms.
        match finished.recv_timeout(Duration::from_millis(20)) {
            Ok(out) => break out,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("the run's thread died: {e}"),
        }
    };
    assert_eq!(
        out.code, 0,
        "thresholds or the run failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(samples > 10, "only {samples} samples of the target's stats");
    let s = stats(&target.addr);
    assert_eq!(u(&s["votes"]), STAYING, "{s}");
    assert_eq!(
        u(&s["sockets"]["disconnects"]["client namespace disconnect"]),
        STAYING,
        "{s}"
    );
}

#[test]
fn an_unknown_leave_mode_is_refused() {
    let script = tv_show_script();
    let out = punisher(&[
        "run",
        script.to_str().unwrap(),
        "--users",
        "1",
        "-e",
        "LEAVE=never",
        "-q",
    ]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("LEAVE must be after-vote or at-end"),
        "{}",
        out.stderr
    );
}
