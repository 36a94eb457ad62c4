//! WebSocket client tests against an in-process tokio-tungstenite server on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::*;
use crate::cookies::CookieJar;

/// What the test server saw of one upgrade request.
#[derive(Debug, Clone, Default)]
struct Seen {
    peer: Option<SocketAddr>,
    cookie: Option<String>,
    custom: Option<String>,
    protocols: Option<String>,
}

/// An echo server: answers text and binary with the same, closes with 4000 "bye" on the
/// text "close me", pings on "ping me". Refuses upgrades whose path is `/forbidden` (403).
async fn serve<S>(
    accept: impl Fn(tokio::net::TcpStream) -> S + Send + Sync + 'static,
) -> (SocketAddr, mpsc::Receiver<Seen>)
where
    S: std::future::Future<Output = Option<S2>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    let accept = Arc::new(accept);
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let tx = tx.clone();
            let accept = accept.clone();
            tokio::spawn(async move {
                if let Some(stream) = accept(tcp).await {
                    echo(stream, peer, tx).await;
                }
            });
        }
    });
    (addr, rx)
}

type S2 = Box<dyn AsyncStream>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

// The callback's signature is tungstenite's; its large error type is not ours to shrink.
#[allow(clippy::result_large_err)]
async fn echo(stream: S2, peer: SocketAddr, tx: mpsc::Sender<Seen>) {
    let seen = Arc::new(Mutex::new(Seen {
        peer: Some(peer),
        ..Seen::default()
    }));
    let s2 = seen.clone();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut s = s2.lock().unwrap();
        s.cookie = h("cookie");
        s.custom = h("x-custom");
        s.protocols = h("sec-websocket-protocol");
        if req.uri().path() == "/forbidden" {
            let mut e = ErrorResponse::new(Some("no".into()));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::FORBIDDEN;
            return Err(e);
        }
        if s.protocols.as_deref().is_some_and(|p| p.contains("chat")) {
            resp.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        }
        resp.headers_mut()
            .append("set-cookie", HeaderValue::from_static("lb=node7; Path=/"));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await;
    let snapshot = seen.lock().unwrap().clone();
    let _ = tx.send(snapshot).await;
    let Ok(mut ws) = ws else { return };
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) if t.as_str() == "close me" => {
                let frame = tungstenite::protocol::CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "bye".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            Message::Text(t) if t.as_str() == "ping me" => {
                let _ = ws.send(Message::Ping(Bytes::from_static(b"hb"))).await;
            }
            Message::Pong(p) => {
                let _ = ws
                    .send(Message::text(format!(
                        "got pong {}",
                        String::from_utf8_lossy(&p)
                    )))
                    .await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let _ = ws.send(m).await;
            }
            _ => {}
        }
    }
}

async fn plain_server() -> (SocketAddr, mpsc::Receiver<Seen>) {
    serve(|tcp| async move { Some(Box::new(tcp) as S2) }).await
}

#[tokio::test]
async fn echoes_text_and_binary_with_headers_cookies_and_subprotocol() {
    let (addr, mut seen) = plain_server().await;
    let jar = CookieJar::shared();
    let url = format!("ws://127.0.0.1:{}/chat", addr.port());
    jar.lock().unwrap().store_set_cookie(
        &Url::parse("http://127.0.0.1/").unwrap(),
        ["sid=abc"].into_iter(),
    );
    let mut params = WsConnectParams::new();
    params.jar = Some(jar.clone());
    params.headers = vec![
        ("X-Custom".into(), "1".into()),
        ("Cookie".into(), "mine=2".into()),
    ];
    params.subprotocols = vec!["chat".into(), "superchat".into()];
    params.source = Some("127.0.0.2".parse().unwrap());
    let (mut ws, hs) = connect(&url, &params).await.unwrap();
    assert_eq!(hs.status, 101);
    assert_eq!(hs.protocol.as_deref(), Some("chat"));
    assert!(hs.timings.total >= hs.timings.handshaking);
    let s = seen.recv().await.unwrap();
    assert_eq!(s.peer.unwrap().ip().to_string(), "127.0.0.2");
    assert_eq!(s.cookie.as_deref(), Some("mine=2; sid=abc"));
    assert_eq!(s.custom.as_deref(), Some("1"));
    assert_eq!(s.protocols.as_deref(), Some("chat, superchat"));
    // The upgrade response's Set-Cookie went into the jar.
    let sent = jar
        .lock()
        .unwrap()
        .header_for(&Url::parse("http://127.0.0.1/x").unwrap())
        .unwrap();
    assert!(sent.contains("lb=node7"), "{sent}");

    ws.send(WsMessage::Text("héllo".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        WsMessage::Text("héllo".into())
    );
    ws.send(WsMessage::Binary(Bytes::from_static(&[0, 1, 255])))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        WsMessage::Binary(Bytes::from_static(&[0, 1, 255]))
    );
    ws.close(None, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn server_close_code_and_ping_are_reported() {
    let (addr, _seen) = plain_server().await;
    let (ws, _) = connect(
        &format!("ws://127.0.0.1:{}/", addr.port()),
        &WsConnectParams::new(),
    )
    .await
    .unwrap();
    let (mut tx, mut rx) = ws.split();
    tx.send(WsMessage::Text("ping me".into())).await.unwrap();
    assert_eq!(
        rx.next().await.unwrap().unwrap(),
        WsMessage::Ping(Bytes::from_static(b"hb"))
    );
    // tungstenite answered the ping by itself; the server reports the pong it got.
    assert_eq!(
        rx.next().await.unwrap().unwrap(),
        WsMessage::Text("got pong hb".into())
    );
    tx.send(WsMessage::Text("close me".into())).await.unwrap();
    assert_eq!(
        rx.next().await.unwrap().unwrap(),
        WsMessage::Close(Some(CloseFrame {
            code: 4000,
            reason: "bye".into()
        }))
    );
    assert!(rx.next().await.is_none());
    assert!(matches!(
        tx.send(WsMessage::Text("late".into())).await,
        Err(WsError::Closed)
    ));
}

#[tokio::test]
async fn refused_upgrade_is_a_status_error() {
    let (addr, _seen) = plain_server().await;
    let err = connect(
        &format!("ws://127.0.0.1:{}/forbidden", addr.port()),
        &WsConnectParams::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, WsError::Status(403)), "{err}");
    assert_eq!(err.kind(), FailureKind::Protocol);
}

#[tokio::test]
async fn bad_urls_and_refused_connections() {
    let p = WsConnectParams::new();
    assert!(matches!(
        connect("http://127.0.0.1/", &p).await,
        Err(WsError::InvalidUrl(_))
    ));
    assert!(matches!(
        connect("not a url", &p).await,
        Err(WsError::InvalidUrl(_))
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = connect(&format!("ws://127.0.0.1:{port}/"), &p)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FailureKind::ConnectionRefused, "{err}");
}

#[tokio::test]
async fn connect_timeout() {
    // A listener that accepts but never answers the upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut p = WsConnectParams::new();
    p.timeout = Duration::from_millis(200);
    let err = connect(&format!("ws://127.0.0.1:{}/", addr.port()), &p)
        .await
        .unwrap_err();
    assert!(matches!(err, WsError::Timeout(_)), "{err}");
}

#[tokio::test]
async fn oversized_message_is_a_protocol_error() {
    let (addr, _seen) = plain_server().await;
    let mut p = WsConnectParams::new();
    p.max_message_size = 1024;
    let (mut ws, _) = connect(&format!("ws://127.0.0.1:{}/", addr.port()), &p)
        .await
        .unwrap();
    ws.send(WsMessage::Text("x".repeat(512))).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    // Our limit applies to what we receive: the echo of 2 KB exceeds it.
    ws.send(WsMessage::Text("x".repeat(2048))).await.unwrap();
    let r = ws.next().await;
    assert!(matches!(r, Some(Err(WsError::Protocol(_)))), "{r:?}");
}

mod tls_tests {
    use super::*;

    async fn tls_server() -> (SocketAddr, mpsc::Receiver<Seen>) {
        let acceptor = crate::tls::test_acceptor();
        serve(move |tcp| {
            let acceptor = acceptor.clone();
            async move { acceptor.accept(tcp).await.ok().map(|s| Box::new(s) as S2) }
        })
        .await
    }

    #[tokio::test]
    async fn wss_insecure_and_verified() {
        let (addr, _seen) = tls_server().await;
        let url = format!("wss://localhost:{}/", addr.port());
        let mut p = WsConnectParams::new();
        p.insecure = true;
        let (mut ws, hs) = connect(&url, &p).await.unwrap();
        assert!(hs.timings.tls_handshaking > Duration::ZERO);
        ws.send(WsMessage::Text("over tls".into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            WsMessage::Text("over tls".into())
        );
        let err = connect(&url, &WsConnectParams::new()).await.unwrap_err();
        assert_eq!(err.kind(), FailureKind::Tls, "{err}");
    }
}
