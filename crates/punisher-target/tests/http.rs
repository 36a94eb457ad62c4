//! The HTTP contract, request by request.

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode, header};
use punisher_target::{Target, TargetConfig};

use crate::util::{call, login};

fn target() -> Target {
    Target::new(TargetConfig::new())
}

#[tokio::test]
async fn login_accepts_guests_and_sns_and_refuses_the_rest() {
    let t = target();
    let r = t.router();
    let ok = call(&r, Method::POST, "/login", None, r#"{"guest": true}"#).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json["kind"], "guest");
    let session = ok.json["session"].as_str().unwrap().to_owned();
    let cookie = ok.headers[header::SET_COOKIE].to_str().unwrap();
    assert_eq!(cookie, format!("session={session}; Path=/; HttpOnly"));

    for body in [
        r#"{"provider":"sns"}"#,
        r#"{"provider":"sns","token":"t0k"}"#,
    ] {
        let sns = call(&r, Method::POST, "/login", None, body).await;
        assert_eq!(sns.status, StatusCode::OK, "{body}");
        assert_eq!(sns.json["kind"], "sns");
        assert_ne!(sns.json["session"], session.as_str());
    }

    let bad = [
        "",
        "not json",
        "{}",
        r#"{"guest": false}"#,
        r#"{"provider": "facebook"}"#,
        r#"{"provider": "sns", "token": 42}"#,
        r#"[{"guest": true}]"#,
    ];
    for body in bad {
        let r = call(&r, Method::POST, "/login", None, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(r.json["error"].is_string());
    }
    let s = t.stats();
    assert_eq!((s.logins.guest, s.logins.sns), (1, 2));
    assert_eq!(s.bad_requests, bad.len() as u64);
}

#[tokio::test]
async fn api_needs_a_known_session() {
    let t = target();
    let r = t.router();
    for path in ["/api/info", "/api/timeline"] {
        assert_eq!(
            call(&r, Method::GET, path, None, "").await.status,
            StatusCode::UNAUTHORIZED
        );
        let forged = "session=0123456789abcdef0123456789abcdef";
        let resp = call(&r, Method::GET, path, Some(forged), "").await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    }
    let cookie = login(&r).await;
    let info = call(&r, Method::GET, "/api/info", Some(&cookie), "").await;
    assert_eq!(info.status, StatusCode::OK);
    assert!(info.json["show"].is_string());
    let tl = call(
        &r,
        Method::GET,
        "/api/timeline",
        Some(&format!("x=1; {cookie}")),
        "",
    )
    .await;
    assert_eq!(tl.status, StatusCode::OK);
    assert!(tl.json["items"].as_array().unwrap().len() >= 2);
    assert!(tl.json["question"].is_null());

    let s = t.stats();
    assert_eq!((s.info_calls, s.timeline_calls, s.unauthorized), (1, 1, 4));
}

#[tokio::test]
async fn vote_once_per_session() {
    let t = target();
    let r = t.router();
    let vote = r#"{"choice": 3}"#;
    assert_eq!(
        call(&r, Method::POST, "/api/vote", None, vote).await.status,
        StatusCode::UNAUTHORIZED
    );
    let cookie = login(&r).await;
    for bad in ["", "{}", r#"{"choice": "3"}"#, r#"{"choice": 1.5}"#, "{"] {
        let resp = call(&r, Method::POST, "/api/vote", Some(&cookie), bad).await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad:?}");
    }
    assert_eq!(
        call(&r, Method::POST, "/api/vote", Some(&cookie), vote)
            .await
            .status,
        StatusCode::OK
    );
    let again = call(&r, Method::POST, "/api/vote", Some(&cookie), vote).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let other = login(&r).await;
    assert_eq!(
        call(&r, Method::POST, "/api/vote", Some(&other), vote)
            .await
            .status,
        StatusCode::OK
    );

    let s = t.stats();
    assert_eq!(
        (s.votes, s.duplicate_votes, s.unauthorized, s.bad_requests),
        (2, 1, 1, 5)
    );
}

#[tokio::test]
async fn broadcast_without_sockets_and_timeline_shows_the_question() {
    let t = target();
    let r = t.router();
    let b = call(&r, Method::POST, "/admin/broadcast", None, "").await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(
        (b.json["id"].as_u64(), b.json["sockets"].as_u64()),
        (Some(1), Some(0))
    );
    let b = call(
        &r,
        Method::POST,
        "/admin/broadcast",
        None,
        r#"{"question": {"q": "A or B?"}}"#,
    )
    .await;
    assert_eq!(b.json["id"], 2);
    let bad = call(&r, Method::POST, "/admin/broadcast", None, r#"{"room": 7}"#).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let cookie = login(&r).await;
    let tl = call(&r, Method::GET, "/api/timeline", Some(&cookie), "").await;
    assert_eq!(tl.json["question"]["id"], 2);
    assert_eq!(tl.json["question"]["question"]["q"], "A or B?");
    assert!(tl.json["question"]["ts"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(t.stats().broadcasts, 2);
}

#[tokio::test]
async fn stats_and_reset() {
    let t = target();
    let r = t.router();
    let cookie = login(&r).await;
    call(&r, Method::GET, "/api/info", Some(&cookie), "").await;
    call(
        &r,
        Method::POST,
        "/api/vote",
        Some(&cookie),
        r#"{"choice":1}"#,
    )
    .await;
    call(&r, Method::POST, "/admin/broadcast", None, "").await;

    let s = call(&r, Method::GET, "/admin/stats", None, "").await;
    assert_eq!(s.status, StatusCode::OK);
    let j = &s.json;
    assert_eq!(j["logins"]["guest"], 1);
    assert_eq!(j["logins"]["sns"], 0);
    assert_eq!(j["info_calls"], 1);
    assert_eq!(j["votes"], 1);
    assert_eq!(j["broadcasts"], 1);
    for key in [
        "timeline_calls",
        "duplicate_votes",
        "unauthorized",
        "bad_requests",
        "errors_injected",
        "questions_delivered",
    ] {
        assert_eq!(j[key], 0, "{key}");
    }
    assert_eq!(j["sockets"]["connected_now"]["websocket"], 0);
    assert_eq!(j["sockets"]["total"]["polling"], 0);
    assert_eq!(j["sockets"]["upgrades"], 0);
    assert!(j["sockets"]["disconnects"].as_object().unwrap().is_empty());

    assert_eq!(
        call(&r, Method::POST, "/admin/reset", None, "")
            .await
            .status,
        StatusCode::OK
    );
    let after = t.stats();
    assert_eq!(
        (
            after.logins.guest,
            after.info_calls,
            after.votes,
            after.broadcasts
        ),
        (0, 0, 0, 0)
    );
    // Sessions are forgotten too.
    let resp = call(&r, Method::GET, "/api/info", Some(&cookie), "").await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn error_rate_one_fails_every_api_call() {
    let mut cfg = TargetConfig::new();
    cfg.error_rate = 1.0;
    let t = Target::new(cfg);
    let r = t.router();
    // Logins are not subject to error injection.
    let cookie = login(&r).await;
    for _ in 0..5 {
        let resp = call(&r, Method::GET, "/api/info", Some(&cookie), "").await;
        assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let resp = call(&r, Method::POST, "/api/vote", None, r#"{"choice":1}"#).await;
    assert_eq!(resp.status, StatusCode::INTERNAL_SERVER_ERROR);
    let s = t.stats();
    assert_eq!(
        (s.errors_injected, s.info_calls, s.unauthorized, s.votes),
        (6, 0, 0, 0)
    );
}

#[tokio::test]
async fn error_rate_is_a_fraction() {
    let mut cfg = TargetConfig::new();
    cfg.error_rate = 0.5;
    let t = Target::new(cfg);
    let r = t.router();
    let cookie = login(&r).await;
    let n = 400;
    for _ in 0..n {
        call(&r, Method::GET, "/api/info", Some(&cookie), "").await;
    }
    let s = t.stats();
    assert_eq!(s.errors_injected + s.info_calls, n);
    // 400 draws at p=0.5: outside 140..260 has probability < 1e-9.
    assert!(
        (140..260).contains(&s.errors_injected),
        "{}",
        s.errors_injected
    );
}

#[tokio::test]
async fn latency_delays_login_and_api_but_not_admin() {
    let latency = Duration::from_millis(40);
    let mut cfg = TargetConfig::new();
    cfg.latency = latency;
    let t = Target::new(cfg);
    let r = t.router();

    let start = Instant::now();
    let cookie = login(&r).await;
    assert!(
        start.elapsed() >= latency,
        "login took {:?}",
        start.elapsed()
    );
    for (method, path, body) in [
        (Method::GET, "/api/info", ""),
        (Method::GET, "/api/timeline", ""),
        (Method::POST, "/api/vote", r#"{"choice":1}"#),
    ] {
        let start = Instant::now();
        let resp = call(&r, method, path, Some(&cookie), body).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert!(
            start.elapsed() >= latency,
            "{path} took {:?}",
            start.elapsed()
        );
    }
    // Several concurrent requests are delayed together, not one after the other.
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (r, cookie) = (r.clone(), cookie.clone());
        set.spawn(async move {
            call(&r, Method::GET, "/api/info", Some(&cookie), "")
                .await
                .status
        });
    }
    while let Some(status) = set.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= latency && elapsed < 20 * latency,
        "20 concurrent calls took {elapsed:?}"
    );
    let start = Instant::now();
    call(&r, Method::GET, "/admin/stats", None, "").await;
    assert!(start.elapsed() < latency, "admin calls are not delayed");
}

#[test]
fn config_validation() {
    let mut cfg = TargetConfig::new();
    assert!(cfg.validate().is_ok());
    cfg.error_rate = 1.5;
    assert!(cfg.validate().is_err());
    cfg.error_rate = f64::NAN;
    assert!(cfg.validate().is_err());
    cfg.error_rate = 0.1;
    cfg.ts_field = "id".into();
    assert!(cfg.validate().is_err());
    cfg.ts_field = "ts".into();
    cfg.heartbeat_grid = Duration::from_millis(100);
    assert!(cfg.validate().is_ok());
    cfg.heartbeat_grid = Duration::from_secs(3);
    let refused = cfg.validate().unwrap_err().to_string();
    assert!(
        refused.contains("does not divide the ping interval"),
        "{refused}"
    );
    cfg.heartbeat_grid = Duration::from_micros(500);
    assert!(cfg.validate().is_err(), "a grid under 1 ms would be off");
    cfg.heartbeat_grid = Duration::ZERO;
    cfg.ping_interval = Duration::ZERO;
    assert!(cfg.validate().is_err());
    cfg.ping_interval = Duration::from_secs(25);
    cfg.ping_timeout = Duration::from_micros(999);
    let refused = cfg.validate().unwrap_err().to_string();
    assert!(refused.contains("ping timeout"), "{refused}");
}

#[test]
fn consecutive_addresses() {
    let base = "127.0.0.1:65534".parse().unwrap();
    let addrs = punisher_target::consecutive_addrs(base, 3);
    assert_eq!(addrs.len(), 2, "ports past 65535 are dropped");
    assert_eq!(punisher_target::peers_of(&addrs, 0), vec![addrs[1]]);
}

/// Reads one `Content-Length` response from a kept-alive connection; returns its status.
async fn read_response(s: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            if body.len() >= len {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = TargetConfig::new();
    cfg.keep_alive_timeout = Duration::from_millis(300);
    let target = punisher_target::spawn_local_target(cfg).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(target.addr).await.unwrap();
    let req = format!("GET /admin/stats HTTP/1.1\r\nHost: {}\r\n\r\n", target.addr);
    // Two requests on one connection: keep-alive works while the client is busy.
    for _ in 0..2 {
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await, 200);
    }
    // Then the idle connection is closed by the target, not much later than its timeout.
    let idle = Instant::now();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the idle connection is still open after 10 s");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed after {waited:?}"
    );
    target.shutdown().await.unwrap();
}

#[test]
fn keep_alive_timeout_must_be_positive() {
    let mut cfg = TargetConfig::new();
    assert!(cfg.validate().is_ok());
    cfg.keep_alive_timeout = Duration::ZERO;
    assert!(cfg.validate().is_err());
}
