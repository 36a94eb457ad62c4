//! Helpers: one-shot requests against a `Router`, a tiny HTTP client for served targets, and
//! [`skip`] for a test whose tool (node) is missing.

#[path = "../../../test-support/skip.rs"]
mod skip;
pub(crate) use skip::skip;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) json: Value,
}

pub(crate) async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    cookie: Option<&str>,
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{uri}: body is not JSON ({e}): {bytes:?}"));
    Reply {
        status,
        headers,
        json,
    }
}

/// Logs in as a guest and returns the `name=value` cookie pair.
pub(crate) async fn login(router: &Router) -> String {
    let r = call(router, Method::POST, "/login", None, r#"{"guest":true}"#).await;
    assert_eq!(r.status, StatusCode::OK);
    let set_cookie = r.headers[header::SET_COOKIE].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_owned()
}

/// A request to a served target over a real connection (HTTP/1.1, `Connection: close`).
pub(crate) async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Opens an Engine.IO polling session and joins the default namespace; returns the sid.
pub(crate) async fn polling_socket(addr: std::net::SocketAddr) -> String {
    let open = raw(addr, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    let open: serde_json::Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(raw(addr, "POST", &path, "40").await, "ok");
    let connected = raw(addr, "GET", &path, "").await;
    assert!(connected.contains("40{"), "{connected}");
    sid
}

/// A raw request whose body is returned as text (Engine.IO payloads are not JSON).
pub(crate) async fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
