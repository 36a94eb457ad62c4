//! Engine.IO client tests against scripted in-process servers: hostile or odd bytes must end
//! the session with a reason, never a panic.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use super::*;

const OPEN: &str =
    r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000}"#;

async fn next(c: &mut EngineClient) -> EngineEvent {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("an event")
        .expect("open")
}

/// A websocket server that sends `frames` after the upgrade and then waits.
async fn ws_server(frames: Vec<Message>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        for f in frames {
            ws.send(f).await.unwrap();
        }
        while let Some(Ok(_)) = ws.next().await {}
    });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn websocket_garbage_is_a_parse_error() {
    let url = ws_server(vec![
        Message::text(OPEN),
        Message::text("4hi"),
        Message::text("9x"),
    ])
    .await;
    let (mut c, info) = EngineClient::connect(&url, &EngineOptions::new())
        .await
        .unwrap();
    assert_eq!(info.handshake.sid, "abc");
    assert_eq!(info.transport, Transport::Websocket);
    assert_eq!(next(&mut c).await, EngineEvent::Message("hi".into()));
    assert!(matches!(
        next(&mut c).await,
        EngineEvent::Closed(CloseReason::ParseError(_))
    ));
    assert!(c.next().await.is_none());
    assert!(c.sender().is_closed());
}

#[tokio::test]
async fn websocket_handshake_must_open() {
    let url = ws_server(vec![Message::text("4not open")]).await;
    let err = EngineClient::connect(&url, &EngineOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Handshake(_)), "{err}");
    let url = ws_server(vec![Message::text("0{not json")]).await;
    let err = EngineClient::connect(&url, &EngineOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Packet(PacketError::Handshake(_))),
        "{err}"
    );
}

/// What a [`polling_server`] saw: each request as `POST <body>` or the GET's request line,
/// with the number of the TCP connection it came on (0 for the first accepted).
#[derive(Default)]
struct ServerLog {
    requests: Mutex<Vec<(usize, String)>>,
    /// TCP connections accepted, used or not.
    accepted: std::sync::atomic::AtomicUsize,
    changed: tokio::sync::Notify,
}

impl ServerLog {
    fn push(&self, conn: usize, line: String) {
        self.requests.lock().unwrap().push((conn, line));
        // Every waiter (a test, a scripted GET) rechecks.
        self.changed.notify_waiters();
    }

    fn lines(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Waits until `done` holds for the requests seen so far.
    async fn wait_for(&self, done: impl Fn(&[(usize, String)]) -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let notified = self.changed.notified();
                if done(&self.requests.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "server saw {:?}",
            self.requests.lock().unwrap()
        );
    }
}

/// A polling server: answers the n-th GET with `gets[n]` (chunked when it starts with
/// `!chunked `, once a POST came when it starts with `!after-post `), every POST with
/// `ok`, and logs every request.
async fn polling_server(gets: Vec<&'static str>) -> (String, Arc<ServerLog>) {
    polling_server_answering_posts_after(gets, Duration::ZERO).await
}

/// [`polling_server`] that answers every POST `post_delay` after reading it (a loaded server).
async fn polling_server_answering_posts_after(
    gets: Vec<&'static str>,
    post_delay: Duration,
) -> (String, Arc<ServerLog>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(ServerLog::default());
    let gets = Arc::new(Mutex::new(gets.into_iter()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut tcp, _)) = listener.accept().await {
            let conn_no = accepted;
            accepted += 1;
            log.accepted
                .store(accepted, std::sync::atomic::Ordering::SeqCst);
            let gets = gets.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request: head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 1024];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 1024];
                        let n = tcp.read(&mut chunk).await.unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
                    buf.drain(..head_end + len);
                    let reply = if head.starts_with("POST") {
                        log.push(conn_no, format!("POST {body}"));
                        tokio::time::sleep(post_delay).await;
                        "ok".to_owned()
                    } else {
                        log.push(conn_no, head.lines().next().unwrap().to_owned());
                        let next = gets.lock().unwrap().next();
                        match next {
                            Some(b) => match b.strip_prefix("!after-post ") {
                                Some(b) => {
                                    log.wait_for(|r| r.iter().any(|(_, l)| l.starts_with("POST")))
                                        .await;
                                    b.to_owned()
                                }
                                None => b.to_owned(),
                            },
                            None => std::future::pending().await,
                        }
                    };
                    let resp = match reply.strip_prefix("!chunked ") {
                        Some(b) => format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                            b.len()
                        ),
                        None => format!(
                            "HTTP/1.1 200 OK\r\nSet-Cookie: srv=1\r\nContent-Length: {}\r\n\r\n{reply}",
                            reply.len()
                        ),
                    };
                    if tcp.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), seen)
}

/// A POST waits as long as the session's ping window (interval + timeout, from the
/// handshake), not the connect timeout: engine.io-client waits for a slow server, and a
/// POST cut short ended the session under load. Past the window it fails.
#[tokio::test]
async fn a_slow_post_is_waited_for_up_to_the_ping_window() {
    const OPEN: &str = "0{\"sid\":\"s\",\"upgrades\":[],\"pingInterval\":1000,\"pingTimeout\":500}";
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    o.timeout = Duration::from_millis(200);

    let (url, seen) =
        polling_server_answering_posts_after(vec![OPEN], Duration::from_millis(700)).await;
    let (c, _) = EngineClient::connect(&url, &o).await.unwrap();
    let sent = c.sender().send(Packet::Message("slow".into())).await;
    assert!(sent.is_ok(), "a POST answered after 700 ms: {sent:?}");
    assert!(seen.lines().contains(&"POST 4slow".to_owned()));

    let (url, _) = polling_server_answering_posts_after(vec![OPEN], Duration::from_secs(30)).await;
    let (c, _) = EngineClient::connect(&url, &o).await.unwrap();
    let started = std::time::Instant::now();
    let sent = c.sender().send(Packet::Message("lost".into())).await;
    assert!(
        matches!(sent, Err(EngineError::Timeout(t)) if t == Duration::from_millis(1500)),
        "{sent:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// An emit made while a POST of the session waits for its answer opens no connection of
/// its own: that POST takes it along once answered (POSTs are serialized). Only an emit
/// that finds no POST in flight connects, and it does so before it queues for the lock.
#[tokio::test]
async fn an_emit_during_a_post_rides_on_that_post() {
    let (url, seen) =
        polling_server_answering_posts_after(vec![OPEN], Duration::from_millis(300)).await;
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    let (c, _) = EngineClient::connect(&url, &o).await.unwrap();
    let first = c.sender();
    let first = tokio::spawn(async move { first.send(Packet::Message("a".into())).await });
    seen.wait_for(|r| r.iter().any(|(_, l)| l == "POST 4a"))
        .await;
    c.sender().send(Packet::Message("b".into())).await.unwrap();
    first.await.unwrap().unwrap();
    // The handshake's connection and the first POST's: nothing opened for the second emit.
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[0].1.starts_with("GET "), "{requests:?}");
    assert_eq!(
        requests[1..],
        [(1, "POST 4a".to_owned()), (1, "POST 4b".to_owned())]
    );
    assert_eq!(
        seen.accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a connection was opened for nothing"
    );
}

#[tokio::test]
async fn polling_payloads_pings_and_garbage() {
    let (url, seen) = polling_server(vec![
        // The open packet may share its payload with more packets.
        "0{\"sid\":\"abc\",\"upgrades\":[\"websocket\"],\"pingInterval\":25000,\"pingTimeout\":20000}\x1e4first",
        "4hello\x1e2\x1ebAQIDBA==",
        "!chunked 4chunked",
        "b!!!",
    ])
    .await;
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    o.query = vec![("token".into(), "a b".into())];
    o.jar = Some(crate::cookies::CookieJar::shared());
    let (mut c, info) = EngineClient::connect(&url, &o).await.unwrap();
    assert_eq!(info.transport, Transport::Polling);
    assert_eq!(next(&mut c).await, EngineEvent::Message("first".into()));
    assert_eq!(next(&mut c).await, EngineEvent::Message("hello".into()));
    assert_eq!(
        next(&mut c).await,
        EngineEvent::Binary(bytes::Bytes::from_static(&[1, 2, 3, 4]))
    );
    c.sender()
        .send(Packet::Message("42[\"x\"]".into()))
        .await
        .unwrap();
    assert_eq!(next(&mut c).await, EngineEvent::Message("chunked".into()));
    assert!(matches!(
        next(&mut c).await,
        EngineEvent::Closed(CloseReason::ParseError(_))
    ));
    let seen = seen.lines();
    assert_eq!(
        seen[0],
        "GET /socket.io/?EIO=4&transport=polling&token=a+b HTTP/1.1"
    );
    assert_eq!(
        seen[1],
        "GET /socket.io/?EIO=4&transport=polling&token=a+b&sid=abc HTTP/1.1"
    );
    // The ping in the second payload was answered with a pong POST, then our message.
    assert!(seen.contains(&"POST 3".to_owned()), "{seen:?}");
    assert!(seen.contains(&"POST 442[\"x\"]".to_owned()), "{seen:?}");
    // The server's cookie went into the jar.
    let jar = o.jar.unwrap();
    let base = url::Url::parse(&format!("{url}/socket.io/")).unwrap();
    assert_eq!(
        jar.lock().unwrap().header_for(&base).as_deref(),
        Some("srv=1")
    );
}

#[tokio::test]
async fn polling_pongs_go_on_the_long_poll_connection() {
    let (url, seen) = polling_server(vec![
        r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#,
        "2",
        "2",
    ])
    .await;
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    let (mut c, _) = EngineClient::connect(&url, &o).await.unwrap();
    let sender = c.sender();
    let driver = tokio::spawn(async move { while c.next().await.is_some() {} });
    let gets = |r: &[(usize, String)]| r.iter().filter(|(_, l)| l.starts_with("GET")).count();
    // Handshake, two pings answered, and the fourth GET waiting for the server.
    seen.wait_for(|r| gets(r) == 4).await;
    // Both pongs went on the connection of the GETs: one TCP connection so far.
    let requests = seen.requests.lock().unwrap().clone();
    let kinds: Vec<(usize, &str)> = requests.iter().map(|(conn, l)| (*conn, &l[..4])).collect();
    assert_eq!(
        kinds,
        [
            (0, "GET "),
            (0, "GET "),
            (0, "POST"),
            (0, "GET "),
            (0, "POST"),
            (0, "GET ")
        ]
    );
    assert_eq!(requests[2].1, "POST 3");
    // A message sent while the GET is in flight goes on a connection of its own.
    sender.send(Packet::Message("4x".into())).await.unwrap();
    seen.wait_for(|r| r.len() == 7).await;
    assert_eq!(seen.requests.lock().unwrap()[6], (1, "POST 44x".to_owned()));
    driver.abort();
}

#[tokio::test]
async fn polling_goodbye_is_one_post_and_the_last_get() {
    let (url, seen) = polling_server(vec![
        r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#,
        // The server ends the pending long-poll once the goodbye arrived.
        "!after-post 6",
    ])
    .await;
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    let (mut c, _) = EngineClient::connect(&url, &o).await.unwrap();
    let sender = c.sender();
    let driver = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(ev) = c.next().await {
            events.push(ev);
        }
        events
    });
    seen.wait_for(|r| r.len() == 2).await;
    sender.close_after(vec![Packet::Message("1".into())]).await;
    let events = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the driver ends once the long-poll came back")
        .unwrap();
    assert_eq!(events, [EngineEvent::Closed(CloseReason::ClientClose)]);
    // The Socket.IO packet and the close in one POST; no GET after the goodbye.
    let lines = seen.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2], "POST 41\x1e1");
}

#[tokio::test]
async fn websocket_goodbye_is_the_packets_and_a_close_frame() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.send(Message::text(OPEN)).await.unwrap();
        let mut received = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            received.push(m);
        }
        received
    });
    let (mut c, _) =
        EngineClient::connect(&format!("http://127.0.0.1:{port}"), &EngineOptions::new())
            .await
            .unwrap();
    c.sender()
        .close_after(vec![Packet::Message("1".into())])
        .await;
    assert_eq!(
        next(&mut c).await,
        EngineEvent::Closed(CloseReason::ClientClose)
    );
    let received = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    // As engine.io-client: no Engine.IO `close` packet over websocket, the frame says it.
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(received[0], Message::text("41"));
    assert!(matches!(received[1], Message::Close(_)), "{received:?}");
}

#[tokio::test]
async fn polling_error_status_ends_the_session() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut b = [0u8; 2048];
            let _ = tcp.read(&mut b).await;
            let body = r#"{"code":1,"message":"Session ID unknown"}"#;
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        }
    });
    let mut o = EngineOptions::new();
    o.transports = vec![Transport::Polling];
    let err = EngineClient::connect(&format!("http://127.0.0.1:{port}"), &o)
        .await
        .unwrap_err();
    match err {
        EngineError::Status { status, body } => {
            assert_eq!(status, 400);
            assert!(body.contains("Session ID unknown"));
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn ping_timeout_without_pings() {
    let url = ws_server(vec![Message::text(
        r#"0{"sid":"s","upgrades":[],"pingInterval":300,"pingTimeout":200}"#,
    )])
    .await;
    let (mut c, _) = EngineClient::connect(&url, &EngineOptions::new())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(
        c.next().await,
        Some(EngineEvent::Closed(CloseReason::PingTimeout))
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
}

/// A client that comes back late, with the ping window passed and a ping waiting in its
/// socket, reads the ping: the lag is its own, not the server's.
#[tokio::test]
async fn a_ping_that_arrived_is_read_before_the_deadline_is_checked() {
    for _ in 0..16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let (sent_tx, sent) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":100,"pingTimeout":100}"#;
            for f in [open, "2", "4after the ping"] {
                ws.send(Message::text(f)).await.unwrap();
            }
            let _ = sent_tx.send(());
            while let Some(Ok(_)) = ws.next().await {}
        });
        let (mut c, _) = EngineClient::connect(&url, &EngineOptions::new())
            .await
            .unwrap();
        let connected = tokio::time::Instant::now();
        sent.await.unwrap();
        // Busy elsewhere until the 200 ms window is over, the ping unread.
        tokio::time::sleep_until(connected + Duration::from_millis(300)).await;
        assert_eq!(
            next(&mut c).await,
            EngineEvent::Message("after the ping".into())
        );
    }
}

#[test]
fn urls() {
    let base = url::Url::parse("https://h.example:8443/ignored?x=1").unwrap();
    let mut o = EngineOptions::new();
    o.path = "custom/".into();
    o.query = vec![("k".into(), "v&w".into())];
    let u = client::engine_url(&base, &o, Transport::Websocket, Some("s1")).unwrap();
    assert_eq!(
        u.as_str(),
        "wss://h.example:8443/custom/?EIO=4&transport=websocket&k=v%26w&sid=s1"
    );
    let u = client::engine_url(&base, &o, Transport::Polling, None).unwrap();
    assert_eq!(
        u.as_str(),
        "https://h.example:8443/custom/?EIO=4&transport=polling&k=v%26w"
    );
}
