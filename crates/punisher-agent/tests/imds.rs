//! The spot-interruption watcher against a fake IMDSv2 on 127.0.0.1: tokens are required
//! (401 without), renewed when revoked, and a notice is seen within one interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use punisher_agent::imds::{self, SpotNotice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
pub(crate) struct State {
    pub(crate) notice: Option<String>,
    token: Option<String>,
    tokens_issued: u32,
    unauthorized: u32,
}

pub(crate) struct FakeImds {
    pub(crate) url: String,
    pub(crate) state: Arc<Mutex<State>>,
    /// One message per instance-action poll.
    polls: mpsc::Receiver<()>,
}

pub(crate) async fn start() -> FakeImds {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let (tx, polls) = mpsc::channel(64);
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let req = String::from_utf8_lossy(&buf).to_string();
                let line = req.lines().next().unwrap_or("").to_owned();
                let header = |name: &str| {
                    req.lines()
                        .find_map(|l| {
                            l.split_once(": ")
                                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                        })
                        .map(|(_, v)| v.trim().to_owned())
                };
                let (status, body) = {
                    let mut s = st.lock().unwrap();
                    if line.starts_with("PUT /latest/api/token ") {
                        if header("X-aws-ec2-metadata-token-ttl-seconds").is_none() {
                            (400, String::new())
                        } else {
                            s.tokens_issued += 1;
                            let t = format!("tok-{}", s.tokens_issued);
                            s.token = Some(t.clone());
                            (200, t)
                        }
                    } else if line.starts_with("GET /latest/meta-data/") {
                        let path = line
                            .split(' ')
                            .nth(1)
                            .unwrap_or("")
                            .trim_start_matches("/latest/meta-data/")
                            .to_owned();
                        if header("X-aws-ec2-metadata-token") != s.token || s.token.is_none() {
                            s.unauthorized += 1;
                            (401, String::new())
                        } else {
                            match path.as_str() {
                                "spot/instance-action" => {
                                    let _ = tx.try_send(());
                                    match &s.notice {
                                        Some(n) => (200, n.clone()),
                                        None => (404, "Not Found".into()),
                                    }
                                }
                                "instance-id" => (200, "i-0123456789abcdef0".into()),
                                "placement/availability-zone" => (200, "eu-west-1b".into()),
                                "placement/region" => (200, "eu-west-1".into()),
                                _ => (404, String::new()),
                            }
                        }
                    } else {
                        (405, String::new())
                    }
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    FakeImds { url, state, polls }
}

pub(crate) const NOTICE: &str = r#"{"action": "terminate", "time": "2026-11-22T10:12:00Z"}"#;
const INTERVAL: Duration = Duration::from_millis(20);
const BOUND: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sees_a_notice_after_polling_with_a_token() {
    let mut fake = start().await;
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn({
        let (url, cancel) = (fake.url.clone(), cancel.clone());
        async move { imds::watch_spot_interruption(&url, INTERVAL, cancel).await }
    });
    // A few polls answered 404 (no notice), then EC2 announces the reclaim.
    for _ in 0..3 {
        tokio::time::timeout(BOUND, fake.polls.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert!(!watcher.is_finished());
    fake.state.lock().unwrap().notice = Some(NOTICE.into());
    let notice = tokio::time::timeout(BOUND, watcher).await.unwrap().unwrap();
    assert_eq!(
        notice,
        Some(SpotNotice {
            action: "terminate".into(),
            time: "2026-11-22T10:12:00Z".into()
        })
    );
    let s = fake.state.lock().unwrap();
    // One token for the whole session: it is cached, not asked for on every poll.
    assert_eq!(s.tokens_issued, 1);
    assert_eq!(s.unauthorized, 0);
}

#[tokio::test]
async fn renews_a_revoked_token() {
    let mut fake = start().await;
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn({
        let (url, cancel) = (fake.url.clone(), cancel.clone());
        async move { imds::watch_spot_interruption(&url, INTERVAL, cancel).await }
    });
    tokio::time::timeout(BOUND, fake.polls.recv())
        .await
        .unwrap()
        .unwrap();
    // IMDS forgets the token (restarted, or it expired): the next GET gets 401.
    fake.state.lock().unwrap().token = Some("someone-else".into());
    tokio::time::timeout(BOUND, fake.polls.recv())
        .await
        .unwrap()
        .unwrap();
    fake.state.lock().unwrap().notice = Some(NOTICE.into());
    let notice = tokio::time::timeout(BOUND, watcher).await.unwrap().unwrap();
    assert!(notice.is_some());
    let s = fake.state.lock().unwrap();
    assert!(s.unauthorized >= 1);
    assert!(s.tokens_issued >= 2);
}

#[tokio::test]
async fn cancel_ends_the_watch_without_a_notice() {
    let mut fake = start().await;
    let cancel = CancellationToken::new();
    let watcher = tokio::spawn({
        let (url, cancel) = (fake.url.clone(), cancel.clone());
        async move { imds::watch_spot_interruption(&url, INTERVAL, cancel).await }
    });
    tokio::time::timeout(BOUND, fake.polls.recv())
        .await
        .unwrap()
        .unwrap();
    cancel.cancel();
    assert_eq!(
        tokio::time::timeout(BOUND, watcher).await.unwrap().unwrap(),
        None
    );
}

#[tokio::test]
async fn unreachable_imds_keeps_polling_until_cancelled() {
    // A port nobody listens on: not on EC2.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cancel = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}");
    let watcher = tokio::spawn({
        let cancel = cancel.clone();
        async move { imds::watch_spot_interruption(&url, INTERVAL, cancel).await }
    });
    // Several intervals pass without the watcher giving up or returning.
    tokio::time::sleep(INTERVAL * 5).await;
    assert!(!watcher.is_finished());
    cancel.cancel();
    assert_eq!(
        tokio::time::timeout(BOUND, watcher).await.unwrap().unwrap(),
        None
    );
}

#[tokio::test]
async fn reads_the_instance_identity() {
    let fake = start().await;
    let id = imds::instance_identity(&fake.url).await.unwrap();
    assert_eq!(id.instance_id, "i-0123456789abcdef0");
    assert_eq!(id.zone, "eu-west-1b");
    assert_eq!(id.region, "eu-west-1");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    assert_eq!(
        imds::instance_identity(&format!("http://127.0.0.1:{port}")).await,
        None
    );
}
