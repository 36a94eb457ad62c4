//! The heartbeat grid (`TargetConfig::heartbeat_grid`, vendor/README.md) is one setting per
//! process, so its test runs in a test binary of its own: the other tests build targets
//! with the default and would change it under this one's feet.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use punisher_target::{TargetConfig, spawn_local_target};

#[allow(dead_code, unused_imports)]
#[path = "util.rs"]
mod util;

const INTERVAL: Duration = Duration::from_secs(2);
const GRID: Duration = Duration::from_secs(1);
/// A ping leaves at the grid point and is read by the client this much later at most
/// (a loaded CI machine included); a socket on its own phase lands in this window by
/// chance one time in ~7, four sockets in a row one time in ~2,400.
const LATENESS: Duration = Duration::from_millis(150);

#[tokio::test]
async fn periodic_pings_of_sockets_connected_apart_leave_on_the_grid() {
    let mut cfg = TargetConfig::new();
    cfg.ping_interval = INTERVAL;
    cfg.heartbeat_grid = GRID;
    cfg.validate().unwrap();
    let target = spawn_local_target(cfg).await.unwrap();
    let mut sockets = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let sid = util::polling_socket(target.addr).await;
        let connected = Instant::now();
        sockets.spawn(first_periodic_ping(target.addr, sid, connected));
        // Connect the next one at another phase of the grid.
        tokio::time::sleep(Duration::from_millis(230)).await;
    }
    let pings = tokio::time::timeout(Duration::from_secs(30), sockets.join_all())
        .await
        .expect("every socket gets its periodic ping within 30 s");
    for (wall_ms, after_connect) in pings {
        let past_grid_point = wall_ms % GRID.as_millis();
        assert!(
            past_grid_point < LATENESS.as_millis(),
            "a ping {past_grid_point} ms past a grid point of {GRID:?}: not on the grid"
        );
        // The protocol is unchanged: a periodic ping comes one interval after the
        // connection, later by less than one grid period.
        assert!(
            after_connect >= INTERVAL - Duration::from_millis(50)
                && after_connect < INTERVAL + GRID + LATENESS,
            "periodic ping {after_connect:?} after the connection"
        );
    }
}

/// Long-polls the session, answers pings, and returns the wall-clock milliseconds and the
/// time since the connection when the first ping after the one sent at connection arrived.
async fn first_periodic_ping(
    addr: std::net::SocketAddr,
    sid: String,
    connected: Instant,
) -> (u128, Duration) {
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    // The ping sent at connection may have come with the CONNECT answer that
    // `polling_socket` read: answer it, or the server waits for that pong (20 s) before it
    // schedules the next. A pong ahead of its ping is accepted (some clients do that).
    assert_eq!(util::raw(addr, "POST", &path, "3").await, "ok");
    loop {
        let body = util::raw(addr, "GET", &path, "").await;
        if !body.split('\x1e').any(|packet| packet == "2") {
            continue;
        }
        let arrived = connected.elapsed();
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        if arrived >= INTERVAL / 2 {
            return (wall_ms, arrived);
        }
        assert_eq!(util::raw(addr, "POST", &path, "3").await, "ok");
    }
}
