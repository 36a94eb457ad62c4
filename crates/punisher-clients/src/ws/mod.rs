//! A WebSocket client over tokio-tungstenite: `ws://` and `wss://`, request headers and the
//! user's cookies, subprotocols, ping/pong, close codes, and small buffers.
//!
//! tungstenite's defaults (128 KiB read buffer allocated eagerly, 128 KiB write buffer) are
//! sized for few large connections: ~135 KB each. A load generator holds 100k small ones,
//! so the defaults here are a 1 KiB read buffer (it grows for a larger message), no write
//! buffering and a 1 MiB write cap: ~1.8 KB per idle connection, measured. The upgrade is
//! ours (`handshake`): tungstenite's would keep its 4 KiB handshake buffer as the frame
//! buffer of every connection. The upgrade request carries the `Cookie` header
//! of the user's jar, and `Set-Cookie` of the 101 response is stored back: sticky sessions
//! behind load balancers depend on both.
//!
//! # Layout
//! - this file: [`connect`], [`WsConnection`] and its halves, messages, errors;
//! - `handshake`: the HTTP upgrade (ours, so the handshake buffer is not kept);
//! - `stream`: plain/TLS byte streams from a source address, shared with Engine.IO polling.

mod handshake;
mod stream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use punisher_core::FailureKind;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use crate::cookies::SharedJar;
use crate::net::{OpenGauge, Resolver};

pub use stream::NetStream;
pub(crate) use stream::{cookie_url, open as open_stream, open_addr, resolve};

/// Read buffer per connection: tungstenite reads into it, zero-filled, so every byte of it
/// is resident. A larger message grows it. Measured per idle plain connection: 4.9 KB with
/// 4096, 1.8 KB with 1024, 1.4 KB with 512. It cannot be zero.
pub const DEFAULT_READ_BUFFER: usize = 1024;
/// Largest message accepted by default (tungstenite's default is 64 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// Most bytes queued for writing before a send fails.
pub const MAX_WRITE_BUFFER: usize = 1 << 20;
/// Default bound on the whole connect: DNS, TCP, TLS and the upgrade.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to open one WebSocket connection.
#[derive(Debug, Clone)]
pub struct WsConnectParams {
    /// Extra request headers. `Cookie` is merged with the jar's.
    pub headers: Vec<(String, String)>,
    /// Offered subprotocols (`Sec-WebSocket-Protocol`), in order of preference.
    pub subprotocols: Vec<String>,
    /// The user's cookie jar: sent on the upgrade, updated from its response.
    pub jar: Option<SharedJar>,
    /// Local address to connect from.
    pub source: Option<IpAddr>,
    /// Bound on the whole connect (DNS, TCP, TLS, upgrade).
    pub timeout: Duration,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Largest message accepted from the server.
    pub max_message_size: usize,
    /// tungstenite's read buffer (at least 1; see [`DEFAULT_READ_BUFFER`]).
    pub read_buffer_size: usize,
    /// The worker's DNS cache; without one, literals and `localhost` resolve directly and
    /// names through the system resolver.
    pub resolver: Option<Arc<Resolver>>,
    /// Counts the connection's TCP stream while it is open.
    pub open_connections: Option<OpenGauge>,
}

impl WsConnectParams {
    /// No headers, no subprotocol, no jar, no source address, a 60 s timeout, certificates
    /// verified, 16 MiB messages, a 4 KiB read buffer.
    pub fn new() -> Self {
        Self {
            headers: Vec::new(),
            subprotocols: Vec::new(),
            jar: None,
            source: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
            insecure: false,
            max_message_size: DEFAULT_MAX_MESSAGE,
            read_buffer_size: DEFAULT_READ_BUFFER,
            resolver: None,
            open_connections: None,
        }
    }

    pub(crate) fn config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size.max(1))
            .write_buffer_size(0)
            .max_write_buffer_size(MAX_WRITE_BUFFER)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

impl Default for WsConnectParams {
    fn default() -> Self {
        Self::new()
    }
}

/// Time spent in each phase of a connect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WsTimings {
    /// Name resolution.
    pub resolving: Duration,
    /// TCP connect.
    pub connecting: Duration,
    /// TLS handshake (zero for `ws://`).
    pub tls_handshaking: Duration,
    /// The HTTP upgrade: request written to 101 response read.
    pub handshaking: Duration,
    /// The whole connect.
    pub total: Duration,
}

/// What the server answered to the upgrade.
#[derive(Debug, Clone)]
pub struct WsHandshake {
    /// Phase timings.
    pub timings: WsTimings,
    /// The response status (101).
    pub status: u16,
    /// Response headers, in order.
    pub headers: Vec<(String, String)>,
    /// The subprotocol the server chose, if any.
    pub protocol: Option<String>,
}

/// A close frame: code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The close code (1000 normal, 1001 going away, ...).
    pub code: u16,
    /// The reason text, possibly empty.
    pub reason: String,
}

/// One WebSocket message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
    /// A ping (tungstenite answers pings by itself; they are reported for visibility).
    Ping(Bytes),
    /// A pong.
    Pong(Bytes),
    /// The peer's close frame (or ours echoed).
    Close(Option<CloseFrame>),
}

/// Why a WebSocket connect or exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WsError {
    /// The URL cannot be used.
    #[error("invalid websocket url: {0}")]
    InvalidUrl(String),
    /// A request header name or value is invalid.
    #[error("invalid request header {0:?}")]
    InvalidHeader(String),
    /// The host name did not resolve.
    #[error("cannot resolve host: {0}")]
    Dns(#[source] std::io::Error),
    /// The TCP connect failed.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The server answered the upgrade with another status than 101.
    #[error("websocket upgrade refused with status {0}")]
    Status(u16),
    /// The upgrade failed otherwise (bad headers, bad accept key).
    #[error("websocket handshake failed: {0}")]
    Handshake(String),
    /// The connect did not finish in time.
    #[error("websocket connect timed out after {0:?}")]
    Timeout(Duration),
    /// The peer broke the WebSocket protocol, or sent a message over the size limit.
    #[error("websocket protocol error: {0}")]
    Protocol(String),
    /// The connection is closed.
    #[error("websocket connection closed")]
    Closed,
    /// Reading or writing failed.
    #[error("websocket i/o error: {0}")]
    Io(#[source] std::io::Error),
}

impl WsError {
    /// The failure class counted in metrics.
    pub fn kind(&self) -> FailureKind {
        match self {
            WsError::InvalidUrl(_) | WsError::InvalidHeader(_) => FailureKind::InvalidUrl,
            WsError::Dns(_) => FailureKind::Dns,
            WsError::Connect(e) | WsError::Io(e) => FailureKind::from_io(e),
            WsError::Tls(_) => FailureKind::Tls,
            WsError::Status(_) | WsError::Handshake(_) | WsError::Protocol(_) => {
                FailureKind::Protocol
            }
            WsError::Timeout(_) => FailureKind::Timeout,
            WsError::Closed => FailureKind::Closed,
        }
    }

    fn from_tungstenite(e: tungstenite::Error) -> WsError {
        use tungstenite::Error as E;
        match e {
            E::ConnectionClosed | E::AlreadyClosed => WsError::Closed,
            E::Io(e) => WsError::Io(e),
            E::Http(resp) => WsError::Status(resp.status().as_u16()),
            E::HttpFormat(e) => WsError::Handshake(e.to_string()),
            E::Url(e) => WsError::InvalidUrl(e.to_string()),
            E::Tls(e) => WsError::Tls(std::io::Error::other(e.to_string())),
            other => WsError::Protocol(other.to_string()),
        }
    }
}

/// The stream type of a connection.
pub(crate) type RawWs = WebSocketStream<NetStream>;

/// An open WebSocket connection. Use [`WsConnection::split`] to read and write from
/// different tasks.
#[derive(Debug)]
pub struct WsConnection {
    inner: RawWs,
}

/// Opens a WebSocket connection to a `ws://` or `wss://` URL.
pub async fn connect(
    url: &str,
    params: &WsConnectParams,
) -> Result<(WsConnection, WsHandshake), WsError> {
    let url = Url::parse(url).map_err(|e| WsError::InvalidUrl(e.to_string()))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(WsError::InvalidUrl(format!(
            "unsupported scheme {:?}",
            url.scheme()
        )));
    }
    let (inner, handshake) = connect_raw(&url, params).await?;
    Ok((WsConnection { inner }, handshake))
}

/// Connects to a parsed `ws`/`wss` URL: the shared path of [`connect`] and Engine.IO.
pub(crate) async fn connect_raw(
    url: &Url,
    params: &WsConnectParams,
) -> Result<(RawWs, WsHandshake), WsError> {
    let timeout = params.timeout;
    // Boxed: DNS, TCP, TLS and handshake futures are large; callers keep theirs small.
    match tokio::time::timeout(timeout, Box::pin(connect_inner(url, params))).await {
        Ok(r) => r,
        Err(_) => Err(WsError::Timeout(timeout)),
    }
}

async fn connect_inner(
    url: &Url,
    params: &WsConnectParams,
) -> Result<(RawWs, WsHandshake), WsError> {
    let start = Instant::now();
    let http_url = cookie_url(url);
    let mut cookie = params
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("cookie"))
        .map(|(_, v)| v.clone());
    if let Some(jar) = &params.jar
        && let Ok(jar) = jar.lock()
        && let Some(from_jar) = jar.header_for(&http_url)
    {
        cookie = Some(match cookie {
            Some(mine) => format!("{mine}; {from_jar}"),
            None => from_jar,
        });
    }
    let key = generate_key();
    let head = handshake::request_head(
        url,
        &key,
        &params.headers,
        cookie.as_deref(),
        &params.subprotocols,
    )?;
    let (mut stream, st) = open_stream(
        url,
        params.source,
        params.insecure,
        params.resolver.as_deref(),
        params.open_connections.as_ref(),
    )
    .await?;
    let hs_start = Instant::now();
    let up = handshake::upgrade(&mut stream, head.as_bytes(), &key).await?;
    drop(head);
    let handshaking = hs_start.elapsed();
    if let Some(jar) = &params.jar {
        let values = up
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str());
        if let Ok(mut jar) = jar.lock() {
            jar.store_set_cookie(&http_url, values);
        }
    }
    let config = Some(params.config());
    let ws = if up.leftover.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Client, config).await
    } else {
        WebSocketStream::from_partially_read(stream, up.leftover, Role::Client, config).await
    };
    let protocol = up
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, v)| v.clone());
    let timings = WsTimings {
        resolving: st.resolving,
        connecting: st.connecting,
        tls_handshaking: st.tls_handshaking,
        handshaking,
        total: start.elapsed(),
    };
    Ok((
        ws,
        WsHandshake {
            timings,
            status: 101,
            headers: up.headers,
            protocol,
        },
    ))
}

pub(crate) fn to_message(m: WsMessage) -> Message {
    match m {
        WsMessage::Text(s) => Message::Text(s.into()),
        WsMessage::Binary(b) => Message::Binary(b),
        WsMessage::Ping(b) => Message::Ping(b),
        WsMessage::Pong(b) => Message::Pong(b),
        WsMessage::Close(c) => Message::Close(c.map(|c| tungstenite::protocol::CloseFrame {
            code: CloseCode::from(c.code),
            reason: c.reason.into(),
        })),
    }
}

fn from_message(m: Message) -> Option<WsMessage> {
    Some(match m {
        Message::Text(s) => WsMessage::Text(s.as_str().to_owned()),
        Message::Binary(b) => WsMessage::Binary(b),
        Message::Ping(b) => WsMessage::Ping(b),
        Message::Pong(b) => WsMessage::Pong(b),
        Message::Close(c) => WsMessage::Close(c.map(|c| CloseFrame {
            code: u16::from(c.code),
            reason: c.reason.as_str().to_owned(),
        })),
        // Raw frames are never produced when reading.
        Message::Frame(_) => return None,
    })
}

/// Reads the next message: `None` once the connection is closed (after the close frame has
/// been reported) or failed.
async fn next_from<S>(stream: &mut S) -> Option<Result<WsMessage, WsError>>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await? {
            Ok(m) => {
                if let Some(m) = from_message(m) {
                    return Some(Ok(m));
                }
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                return None;
            }
            Err(e) => return Some(Err(WsError::from_tungstenite(e))),
        }
    }
}

impl WsConnection {
    /// Sends one message and flushes it.
    pub async fn send(&mut self, msg: WsMessage) -> Result<(), WsError> {
        self.inner
            .send(to_message(msg))
            .await
            .map_err(WsError::from_tungstenite)
    }

    /// The next message from the server; `None` when the connection is over.
    pub async fn next(&mut self) -> Option<Result<WsMessage, WsError>> {
        next_from(&mut self.inner).await
    }

    /// Starts the close handshake with `frame` (code 1000 when `None` is given), then waits
    /// until the server answers or closes; at most `timeout`.
    pub async fn close(
        &mut self,
        frame: Option<CloseFrame>,
        timeout: Duration,
    ) -> Result<(), WsError> {
        let frame = frame.or(Some(CloseFrame {
            code: 1000,
            reason: String::new(),
        }));
        let closing = async {
            match self.inner.send(to_message(WsMessage::Close(frame))).await {
                Ok(()) | Err(tungstenite::Error::ConnectionClosed) => {}
                Err(e) => return Err(WsError::from_tungstenite(e)),
            }
            while let Some(r) = next_from(&mut self.inner).await {
                r?;
            }
            Ok(())
        };
        tokio::time::timeout(timeout, closing)
            .await
            .unwrap_or(Err(WsError::Timeout(timeout)))
    }

    /// Splits the connection into a sender and a receiver usable from different tasks.
    pub fn split(self) -> (WsSender, WsReceiver) {
        let (sink, stream) = self.inner.split();
        (WsSender { sink }, WsReceiver { stream })
    }
}

/// The writing half of a [`WsConnection`].
#[derive(Debug)]
pub struct WsSender {
    sink: SplitSink<RawWs, Message>,
}

impl WsSender {
    /// Sends one message and flushes it.
    pub async fn send(&mut self, msg: WsMessage) -> Result<(), WsError> {
        self.sink
            .send(to_message(msg))
            .await
            .map_err(WsError::from_tungstenite)
    }

    /// Sends a close frame (code 1000 when `None`); the receiver then sees the server's
    /// answer and the end of the stream.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), WsError> {
        let frame = frame.or(Some(CloseFrame {
            code: 1000,
            reason: String::new(),
        }));
        match self.sink.send(to_message(WsMessage::Close(frame))).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Ok(()),
            Err(e) => Err(WsError::from_tungstenite(e)),
        }
    }
}

/// The reading half of a [`WsConnection`].
#[derive(Debug)]
pub struct WsReceiver {
    stream: SplitStream<RawWs>,
}

impl WsReceiver {
    /// The next message from the server; `None` when the connection is over.
    pub async fn next(&mut self) -> Option<Result<WsMessage, WsError>> {
        next_from(&mut self.stream).await
    }
}

#[cfg(test)]
mod tests;
