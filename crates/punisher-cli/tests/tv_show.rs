//! The TV show end to end: `scenarios/tv_show.js` with 5,000 users against a `punisher
//! target` process, proven from the target's own `/admin/stats`.

use std::path::PathBuf;
use std::time::Duration;

use crate::util::{punisher, start_target, stats};

const USERS: u64 = 5_000;

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
