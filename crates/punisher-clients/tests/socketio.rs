//! Compatibility tests of our Engine.IO/Socket.IO client against the real Socket.IO server
//! (npm `socket.io` 4.x run by node on 127.0.0.1; see `tests/js/sio_server.js` and
//! [`crate::util`] for what it needs). Without node and socket.io each test says why it is
//! SKIPPED and passes, or fails under CI.

use std::time::Duration;

use bytes::Bytes;
use punisher_clients::cookies::CookieJar;
use punisher_clients::engineio::Transport;
use punisher_clients::socketio::{
    self, Backoff, ClientEvent, DisconnectReason, Payload, SocketIo, SocketIoError,
    SocketIoOptions, placeholder, placeholder_num,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::util::{WAIT, server};

/// Events buffered between a driver task and its test.
const EVENTS: usize = 64;

fn opts(transports: &[Transport]) -> SocketIoOptions {
    let mut o = SocketIoOptions::new();
    o.transports = transports.to_vec();
    o.timeout = WAIT;
    o
}

/// Connects and runs the driver in a task; events arrive on the returned channel.
async fn connect(
    url: &str,
    o: SocketIoOptions,
) -> (SocketIo, mpsc::Receiver<ClientEvent>, socketio::ConnectInfo) {
    let (mut client, handle, info) = socketio::connect(url, o).await.expect("connect");
    let (tx, rx) = mpsc::channel(EVENTS);
    tokio::spawn(async move {
        while let Some(ev) = client.next_event().await {
            if tx.send(ev).await.is_err() {
                break;
            }
        }
    });
    (handle, rx, info)
}

/// The next event named `name` (other events are skipped), within [`WAIT`].
async fn event(
    rx: &mut mpsc::Receiver<ClientEvent>,
    name: &str,
) -> (Vec<Value>, Vec<Bytes>, Option<u64>) {
    timeout(WAIT, async {
        loop {
            match rx.recv().await.expect("driver ended") {
                ClientEvent::Event {
                    name: n,
                    args,
                    attachments,
                    ack_id,
                    ..
                } if n == name => {
                    return (args, attachments, ack_id);
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name:?} event"))
}

/// The next disconnect, within [`WAIT`].
async fn disconnected(rx: &mut mpsc::Receiver<ClientEvent>) -> DisconnectReason {
    timeout(WAIT, async {
        loop {
            if let ClientEvent::Disconnected { reason } = rx.recv().await.expect("driver ended") {
                return reason;
            }
        }
    })
    .await
    .expect("no disconnect")
}

async fn transport_name(s: &SocketIo) -> Value {
    let reply = s.emit_with_ack("transport", vec![], WAIT).await.unwrap();
    reply.args[0].clone()
}

/// How many TCP connections the server has accepted so far.
async fn tcp_connections(s: &SocketIo) -> i64 {
    let reply = s.emit_with_ack("tcp", vec![], WAIT).await.unwrap();
    reply.args[0].as_i64().expect("a count")
}

const ALL: [&[Transport]; 3] = [
    &[Transport::Websocket],
    &[Transport::Polling],
    &[Transport::Polling, Transport::Websocket],
];

#[tokio::test]
async fn websocket_transport() {
    let server = server!();
    let (s, mut rx, info) = connect(&server.url("/"), opts(&[Transport::Websocket])).await;
    assert_eq!(info.transport, Transport::Websocket);
    assert!(!info.sid.is_empty() && info.sid != info.engine_sid);
    assert!(info.connect_duration > Duration::ZERO);
    assert_eq!(transport_name(&s).await, json!("websocket"));
    // An emit without ack: the server emits "echo" back.
    s.emit("echo", vec![json!("hi"), json!({"n": 1})])
        .await
        .unwrap();
    let (args, _, _) = event(&mut rx, "echo").await;
    assert_eq!(args, [json!("hi"), json!({"n": 1})]);
    s.disconnect().await;
    assert_eq!(
        disconnected(&mut rx).await,
        DisconnectReason::ClientDisconnect
    );
    assert!(!s.connected());
}

#[tokio::test]
async fn polling_transport() {
    let server = server!();
    let (s, mut rx, info) = connect(&server.url("/"), opts(&[Transport::Polling])).await;
    assert_eq!(info.transport, Transport::Polling);
    assert_eq!(transport_name(&s).await, json!("polling"));
    // Several emits at once are batched into POSTs and all arrive, in order.
    for i in 0..20 {
        s.emit("echo", vec![json!(i)]).await.unwrap();
    }
    for i in 0..20 {
        let (args, _, _) = event(&mut rx, "echo").await;
        assert_eq!(args, [json!(i)]);
    }
    let reply = s
        .emit_with_ack("echo", vec![json!("x")], WAIT)
        .await
        .unwrap();
    assert_eq!(reply.args, [json!("x")]);
    s.disconnect().await;
    assert_eq!(
        disconnected(&mut rx).await,
        DisconnectReason::ClientDisconnect
    );
}

#[tokio::test]
async fn polling_upgrades_to_websocket() {
    let server = server!();
    let o = opts(&[Transport::Polling, Transport::Websocket]);
    let (s, mut rx, info) = connect(&server.url("/"), o).await;
    assert_eq!(info.transport, Transport::Polling);
    // Emits racing the upgrade must all be answered, on whichever transport carries them.
    let acks: Vec<_> = (0..10)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.emit_with_ack("echo", vec![json!(i)], WAIT).await })
        })
        .collect();
    timeout(WAIT, async {
        loop {
            if let ClientEvent::Upgraded = rx.recv().await.expect("driver ended") {
                break;
            }
        }
    })
    .await
    .expect("upgraded");
    for (i, a) in acks.into_iter().enumerate() {
        assert_eq!(a.await.unwrap().unwrap().args, [json!(i)]);
    }
    assert_eq!(s.transport(), Transport::Websocket);
    assert_eq!(transport_name(&s).await, json!("websocket"));
}

#[tokio::test]
async fn namespaces_and_connect_error() {
    let server = server!();
    let mut o = opts(&[Transport::Websocket]);
    o.auth = Some(json!({"token": "secret"}));
    let (s, _rx, _) = connect(&server.url("/admin"), o).await;
    assert_eq!(s.namespace(), "/admin");
    let reply = s.emit_with_ack("echo", vec![json!(1)], WAIT).await.unwrap();
    assert_eq!(reply.args, [json!("admin"), json!(1)]);
    for t in ALL {
        let mut o = opts(t);
        o.auth = Some(json!({"token": "wrong"}));
        match socketio::connect(&server.url("/admin"), o).await {
            Err(SocketIoError::ConnectError { message, .. }) => {
                assert_eq!(message, "not authorized")
            }
            other => panic!("expected a connect error, got {:?}", other.map(|r| r.2)),
        }
    }
}

#[tokio::test]
async fn acks_in_both_directions() {
    let server = server!();
    for t in ALL {
        let (s, mut rx, _) = connect(&server.url("/"), opts(t)).await;
        let reply = s
            .emit_with_ack("echo", vec![json!("a"), json!([1, 2])], WAIT)
            .await
            .unwrap();
        assert_eq!(reply.args, [json!("a"), json!([1, 2])], "{t:?}");
        // The server asks with emitWithAck; we answer; it reports our answer.
        s.emit("ask", vec![json!("ready?")]).await.unwrap();
        let (args, _, ack_id) = event(&mut rx, "question").await;
        assert_eq!(args, [json!("ready?")]);
        s.ack(ack_id.expect("an ack id"), vec![json!("yes")])
            .await
            .unwrap();
        let (args, _, _) = event(&mut rx, "answer").await;
        assert_eq!(args, [json!("yes")], "{t:?}");
        s.disconnect().await;
    }
}

#[tokio::test]
async fn ack_ids_are_sequential_and_many_acks_resolve() {
    let server = server!();
    let (s, _rx, _) = connect(&server.url("/"), opts(&[Transport::Websocket])).await;
    let acks: Vec<_> = (0..200)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.emit_with_ack("echo", vec![json!(i)], WAIT).await })
        })
        .collect();
    for (i, a) in acks.into_iter().enumerate() {
        assert_eq!(a.await.unwrap().unwrap().args, [json!(i)]);
    }
}

#[tokio::test]
async fn binary_payloads() {
    let server = server!();
    for t in ALL {
        let (s, mut rx, _) = connect(&server.url("/"), opts(t)).await;
        let sent = Payload {
            args: vec![
                json!("x"),
                placeholder(0),
                json!({"nested": placeholder(1)}),
            ],
            attachments: vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[0, 255]),
            ],
        };
        let reply = s.emit_with_ack("echo", sent.clone(), WAIT).await.unwrap();
        assert_eq!(reply.args[0], json!("x"), "{t:?}");
        let a = placeholder_num(&reply.args[1]).unwrap();
        let b = placeholder_num(&reply.args[2]["nested"]).unwrap();
        assert_eq!(reply.attachments[a], sent.attachments[0], "{t:?}");
        assert_eq!(reply.attachments[b], sent.attachments[1], "{t:?}");
        // A binary event from the server.
        s.emit("bin", vec![]).await.unwrap();
        let (args, attachments, _) = event(&mut rx, "bin").await;
        assert_eq!(
            attachments[placeholder_num(&args[0]).unwrap()],
            Bytes::from_static(&[1, 2, 3])
        );
        assert_eq!(
            attachments[placeholder_num(&args[1]["nested"]).unwrap()],
            Bytes::from_static(&[4, 5])
        );
        assert_eq!(args[1]["n"], json!(1));
        s.disconnect().await;
    }
}

#[tokio::test]
async fn server_initiated_disconnect() {
    let server = server!();
    for t in ALL {
        let (s, mut rx, _) = connect(&server.url("/"), opts(t)).await;
        s.emit("kick", vec![]).await.unwrap();
        assert_eq!(
            disconnected(&mut rx).await,
            DisconnectReason::ServerDisconnect,
            "{t:?}"
        );
        assert!(!s.connected());
        assert!(matches!(
            s.emit("echo", vec![]).await,
            Err(SocketIoError::NotConnected)
        ));
        // The driver ends after the final disconnect.
        assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn ping_timeout_when_the_server_goes_silent() {
    // Pings every 300 ms, 200 ms to answer: a silent server is detected in ~500 ms.
    let server = server!("300", "200");
    for t in [&[Transport::Websocket][..], &[Transport::Polling][..]] {
        let (s, mut rx, _) = connect(&server.url("/"), opts(t)).await;
        let tcp_before = tcp_connections(&s).await;
        // Several heartbeats pass without a timeout while the server pings.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert!(s.connected(), "{t:?}");
        // Over polling, the ~4 pongs went on the long-poll's connection (each would have
        // opened one before). The only possible new TCP connection is the one of this emit:
        // its own while a GET waits, none when it was queued during a pong's POST and rode
        // along on the long-poll's connection (CI saw both).
        let new_connections = tcp_connections(&s).await - tcp_before;
        let at_most = if t == [Transport::Polling] { 1 } else { 0 };
        assert!(
            (0..=at_most).contains(&new_connections),
            "{t:?}: {new_connections} new TCP connections"
        );
        let reply = s.emit_with_ack("silence", vec![], WAIT).await.unwrap();
        assert_eq!(reply.args, [json!("silent")]);
        let started = std::time::Instant::now();
        assert_eq!(
            disconnected(&mut rx).await,
            DisconnectReason::PingTimeout,
            "{t:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn broadcast_reaches_all_of_50_clients() {
    let server = server!();
    let mut sockets = Vec::new();
    let mut waiters = Vec::new();
    for i in 0..50 {
        let t = if i % 5 == 0 {
            &[Transport::Polling][..]
        } else {
            &[Transport::Websocket][..]
        };
        let (s, mut rx, _) = connect(&server.url("/"), opts(t)).await;
        sockets.push(s);
        waiters.push(tokio::spawn(async move { event(&mut rx, "news").await.0 }));
    }
    sockets[7]
        .emit("broadcast", vec![json!({"id": 1})])
        .await
        .unwrap();
    for w in waiters {
        assert_eq!(w.await.unwrap(), [json!({"id": 1})]);
    }
}

#[tokio::test]
async fn cookies_on_polling_requests_and_on_the_upgrade() {
    let server = server!();
    let jar = CookieJar::shared();
    let base = url::Url::parse(&server.url("/")).unwrap();
    jar.lock()
        .unwrap()
        .store_set_cookie(&base, ["user=alice; Path=/"].into_iter());
    let mut o = opts(&[Transport::Polling, Transport::Websocket]);
    o.jar = Some(jar.clone());
    o.extra_headers = vec![("X-Test-Id".into(), "cookie-test".into())];
    let (s, mut rx, _) = connect(&server.url("/"), o).await;
    timeout(WAIT, async {
        while !matches!(
            rx.recv().await.expect("driver ended"),
            ClientEvent::Upgraded
        ) {}
    })
    .await
    .expect("upgraded");
    // The handshake's Set-Cookie went into the user's jar.
    let header = jar.lock().unwrap().header_for(&base).unwrap();
    assert!(header.contains("lb=sticky1"), "{header}");
    let reply = s.emit_with_ack("cookies", vec![], WAIT).await.unwrap();
    let seen = reply.args[0].as_array().unwrap().clone();
    let has = |transport: &str, method: &str| {
        seen.iter()
            .any(|r| r["transport"] == transport && r["method"] == method)
    };
    assert!(
        has("polling", "GET") && has("polling", "POST") && has("websocket", "GET"),
        "{seen:?}"
    );
    for (i, r) in seen.iter().enumerate() {
        let cookie = r["cookie"].as_str().unwrap();
        assert!(cookie.contains("user=alice"), "{r}");
        if i > 0 {
            // Every request after the handshake carries the sticky cookie it set.
            assert!(cookie.contains("lb=sticky1"), "{r}");
        }
    }
}

#[tokio::test]
async fn reconnects_with_backoff_when_asked() {
    let server = server!();
    let mut o = opts(&[Transport::Websocket]);
    o.reconnection = Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        jitter: 0.5,
        max_attempts: Some(5),
    });
    let (s, mut rx, info) = connect(&server.url("/"), o).await;
    s.emit("drop", vec![]).await.unwrap();
    let mut seen = Vec::new();
    let new_info = timeout(WAIT, async {
        loop {
            match rx.recv().await.expect("driver ended") {
                ClientEvent::Disconnected { reason } => {
                    seen.push(format!("disconnected {}", reason.as_str()))
                }
                ClientEvent::Reconnecting { attempt } => {
                    seen.push(format!("reconnecting {attempt}"))
                }
                ClientEvent::Reconnected { attempt, info } => {
                    seen.push(format!("reconnected {attempt}"));
                    return info;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("reconnected");
    assert_eq!(
        seen,
        [
            "disconnected transport close",
            "reconnecting 1",
            "reconnected 1"
        ]
    );
    assert_ne!(new_info.sid, info.sid);
    assert_eq!(s.id(), new_info.sid);
    assert!(s.connected());
    let reply = s
        .emit_with_ack("echo", vec![json!("again")], WAIT)
        .await
        .unwrap();
    assert_eq!(reply.args, [json!("again")]);
}

#[tokio::test]
async fn no_reconnection_by_default() {
    let server = server!();
    let (s, mut rx, _) = connect(&server.url("/"), opts(&[Transport::Polling])).await;
    s.emit("drop", vec![]).await.unwrap();
    assert_eq!(
        disconnected(&mut rx).await,
        DisconnectReason::TransportClose
    );
    assert!(timeout(WAIT, rx.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn ack_timeout_is_reported() {
    let server = server!();
    let (s, _rx, _) = connect(&server.url("/"), opts(&[Transport::Websocket])).await;
    // The server has no handler for this event, so it never acks.
    let err = s
        .emit_with_ack("unhandled", vec![], Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, SocketIoError::AckTimeout(_)), "{err}");
}

#[tokio::test]
async fn connect_from_a_source_address() {
    let server = server!();
    for t in ALL {
        let mut o = opts(t);
        o.source = Some("127.0.0.3".parse().unwrap());
        let (s, _rx, _) = connect(&server.url("/"), o).await;
        assert_eq!(
            s.emit_with_ack("echo", vec![json!(1)], WAIT)
                .await
                .unwrap()
                .args,
            [json!(1)]
        );
    }
}
