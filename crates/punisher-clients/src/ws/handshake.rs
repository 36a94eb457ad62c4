//! The client side of the WebSocket opening handshake (RFC 6455 section 4), done here and
//! not by tungstenite for memory: tungstenite hands its 4 KiB handshake read buffer to the
//! connection as its frame buffer, whatever `read_buffer_size` says, so every idle client
//! would keep 4 KiB. Here the handshake buffer is dropped, and tungstenite starts with a
//! buffer of exactly `read_buffer_size` (plus any bytes that followed the 101 response).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use url::Url;

use super::{NetStream, WsError};
use crate::http::is_token_byte;

/// Most header lines in a 101 response.
const MAX_HEADERS: usize = 64;
/// Longest 101 response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// First read buffer of the handshake; dropped when it ends.
const FIRST_READ: usize = 1024;

/// What the server answered.
#[derive(Debug)]
pub(crate) struct Upgraded {
    pub(crate) headers: Vec<(String, String)>,
    /// Bytes after the response head: the first frames, when the server was quick.
    pub(crate) leftover: Vec<u8>,
}

fn check_header(name: &str, value: &str) -> Result<(), WsError> {
    let bad_value = value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0);
    if name.is_empty() || !name.bytes().all(is_token_byte) || bad_value {
        return Err(WsError::InvalidHeader(name.to_owned()));
    }
    Ok(())
}

/// The upgrade request head. User headers replace ours of the same name (`Host`,
/// `Origin`, ...), except the ones the handshake itself needs.
pub(crate) fn request_head(
    url: &Url,
    key: &str,
    headers: &[(String, String)],
    cookie: Option<&str>,
    subprotocols: &[String],
) -> Result<String, WsError> {
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    let host = url
        .host_str()
        .ok_or_else(|| WsError::InvalidUrl("missing host".into()))?;
    let mut h = String::with_capacity(256 + path.len());
    h.push_str("GET ");
    h.push_str(&path);
    h.push_str(" HTTP/1.1\r\n");
    let user_has = |n: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    if !user_has("host") {
        h.push_str("Host: ");
        h.push_str(host);
        if let Some(p) = url.port() {
            h.push_str(&format!(":{p}"));
        }
        h.push_str("\r\n");
    }
    h.push_str("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
    h.push_str("Sec-WebSocket-Key: ");
    h.push_str(key);
    h.push_str("\r\n");
    for (name, value) in headers {
        check_header(name, value)?;
        const OURS: [&str; 5] = [
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
            "cookie",
        ];
        if OURS.iter().any(|o| name.eq_ignore_ascii_case(o)) {
            continue;
        }
        h.push_str(name);
        h.push_str(": ");
        h.push_str(value);
        h.push_str("\r\n");
    }
    if let Some(c) = cookie {
        check_header("cookie", c)?;
        h.push_str("Cookie: ");
        h.push_str(c);
        h.push_str("\r\n");
    }
    if !subprotocols.is_empty() {
        let joined = subprotocols.join(", ");
        check_header("sec-websocket-protocol", &joined)?;
        h.push_str("Sec-WebSocket-Protocol: ");
        h.push_str(&joined);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    Ok(h)
}

/// Sends the request head and reads the 101 response, checking the accept key.
pub(crate) async fn upgrade(
    stream: &mut NetStream,
    head: &[u8],
    key: &str,
) -> Result<Upgraded, WsError> {
    stream.write_all(head).await.map_err(WsError::Io)?;
    stream.flush().await.map_err(WsError::Io)?;
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Err(WsError::Handshake("response head too large".into()));
            }
            buf.reserve(buf.len());
        }
        if stream.read_buf(&mut buf).await.map_err(WsError::Io)? == 0 {
            return Err(WsError::Handshake(
                "connection closed during the handshake".into(),
            ));
        }
        if let Some(up) = parse_response(&buf, key)? {
            return Ok(up);
        }
    }
}

/// Parses and checks a 101 response: `None` while incomplete.
pub(crate) fn parse_response(buf: &[u8], key: &str) -> Result<Option<Upgraded>, WsError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WsError::Handshake(format!("malformed response: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        return Err(WsError::Status(status));
    }
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v)
    };
    if !get("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::Handshake("missing upgrade: websocket".into()));
    }
    if !get("connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")) {
        return Err(WsError::Handshake("missing connection: upgrade".into()));
    }
    if get("sec-websocket-accept").map(String::as_str) != Some(&derive_accept_key(key.as_bytes())) {
        return Err(WsError::Handshake("wrong sec-websocket-accept".into()));
    }
    // An exact-size copy: the handshake buffer must not become the frame buffer.
    let leftover = buf[len..].to_vec();
    Ok(Some(Upgraded { headers, leftover }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_request() {
        let url = Url::parse("ws://h.example:8080/socket.io/?EIO=4&transport=websocket").unwrap();
        let head = request_head(
            &url,
            "dGhlIHNhbXBsZSBub25jZQ==",
            &[
                ("Origin".into(), "http://o".into()),
                ("Upgrade".into(), "nope".into()),
            ],
            Some("a=1"),
            &["chat".into()],
        )
        .unwrap();
        assert_eq!(
            head,
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: h.example:8080\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://o\r\nCookie: a=1\r\n\
             Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
        let bad = request_head(&url, "k", &[("X\r\nY".into(), "1".into())], None, &[]);
        assert!(matches!(bad, Err(WsError::InvalidHeader(_))));
        let bad = request_head(&url, "k", &[("X".into(), "1\r\nEvil: 1".into())], None, &[]);
        assert!(matches!(bad, Err(WsError::InvalidHeader(_))));
    }

    #[test]
    fn checks_the_response() {
        // RFC 6455's example key and accept value.
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        let up = parse_response(ok, key).unwrap().unwrap();
        assert_eq!(up.leftover, b"\x81\x02hi");
        assert!(parse_response(&ok[..20], key).unwrap().is_none());
        let wrong = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                      Sec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            parse_response(wrong, key),
            Err(WsError::Handshake(_))
        ));
        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_response(refused, key),
            Err(WsError::Status(403))
        ));
        assert!(matches!(
            parse_response(b"\x00\x01junk\r\n\r\n", key),
            Err(WsError::Handshake(_))
        ));
    }
}
