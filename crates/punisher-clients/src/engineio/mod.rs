//! An Engine.IO v4 client: HTTP long-polling, websocket, the upgrade from one to the other,
//! and the heartbeat.
//!
//! The client is pull-driven: [`EngineClient::next`] reads the transport, answers the
//! server's pings, detects ping timeouts and completes an upgrade, and returns what the
//! layer above must see. There is no task of our own per connection: the caller's receive
//! loop is the only one (one task per user at most), and it must keep calling `next` for
//! pings to be answered. Writers ([`EngineSender`], cheap to clone) may send from anywhere.
//!
//! Every HTTP request of both transports carries the user's cookies and stores the
//! `Set-Cookie` headers it gets back, so sticky sessions behind a load balancer work.
//!
//! # Layout
//! - `packet`: the sans-I/O codec;
//! - `http1`: the polling transport's HTTP/1.1 exchange;
//! - `client`: connect, the receive driver, the writer, the upgrade.

mod client;
mod http1;
pub mod packet;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use punisher_core::FailureKind;

use crate::cookies::SharedJar;
use crate::net::{OpenGauge, Resolver};
use crate::ws::WsError;

pub use client::{EngineClient, EngineSender};
pub use packet::{Handshake, Packet, PacketError};

/// The default request path of Socket.IO servers.
pub const DEFAULT_PATH: &str = "/socket.io/";
/// Default bound on connecting and on each POST.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// An Engine.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP long-polling (`transport=polling`).
    Polling,
    /// WebSocket (`transport=websocket`).
    Websocket,
}

impl Transport {
    /// The name used in URLs and by socket.io-client.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        }
    }

    /// Parses `polling` or `websocket`.
    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "polling" => Some(Transport::Polling),
            "websocket" => Some(Transport::Websocket),
            _ => None,
        }
    }
}

/// How to open an Engine.IO session.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Transports in order: the first one opens the session; `[Polling, Websocket]` starts
    /// with polling and upgrades when the server offers it.
    pub transports: Vec<Transport>,
    /// Request path, `/socket.io/` by default.
    pub path: String,
    /// Extra query parameters of every request.
    pub query: Vec<(String, String)>,
    /// Extra headers of every request (polling requests and the websocket upgrade).
    pub headers: Vec<(String, String)>,
    /// The user's cookie jar.
    pub jar: Option<SharedJar>,
    /// Local address to connect from.
    pub source: Option<IpAddr>,
    /// Bound on the handshake and on each POST.
    pub timeout: Duration,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Add a `t=` cache-busting parameter to polling requests, as browsers do.
    pub timestamp_requests: bool,
    /// Largest websocket message accepted.
    pub max_message_size: usize,
    /// tungstenite's read buffer per websocket.
    pub ws_read_buffer: usize,
    /// The worker's DNS cache.
    pub resolver: Option<Arc<Resolver>>,
    /// Counts the session's TCP streams (polling and websocket) while they are open.
    pub open_connections: Option<OpenGauge>,
}

impl EngineOptions {
    /// Websocket only, path `/socket.io/`, no query, headers, jar or source address, a 20 s
    /// timeout, certificates verified, 16 MiB messages, 4 KiB websocket read buffer.
    pub fn new() -> Self {
        Self {
            transports: vec![Transport::Websocket],
            path: DEFAULT_PATH.to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
            jar: None,
            source: None,
            timeout: DEFAULT_TIMEOUT,
            insecure: false,
            timestamp_requests: false,
            max_message_size: crate::ws::DEFAULT_MAX_MESSAGE,
            ws_read_buffer: crate::ws::DEFAULT_READ_BUFFER,
            resolver: None,
            open_connections: None,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// No ping from the server within `pingInterval + pingTimeout`.
    PingTimeout,
    /// The server closed the transport (close packet, or the connection ended).
    TransportClose,
    /// The transport failed (I/O error, HTTP error status).
    TransportError(String),
    /// The server sent bytes that are not Engine.IO.
    ParseError(String),
    /// We closed it.
    ClientClose,
}

impl CloseReason {
    /// socket.io-client's name for the reason, used as the `reason` tag.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError(_) => "transport error",
            CloseReason::ParseError(_) => "parse error",
            CloseReason::ClientClose => "io client disconnect",
        }
    }
}

/// What [`EngineClient::next`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// A text message (the Socket.IO layer's packets).
    Message(String),
    /// A binary message.
    Binary(bytes::Bytes),
    /// The session moved from polling to websocket.
    Upgraded,
    /// The upgrade failed; the session goes on over polling.
    UpgradeFailed(String),
    /// The session is over; `next` returns `None` from now on.
    Closed(CloseReason),
}

/// Why an Engine.IO session could not be opened or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The URL or the options cannot be used.
    #[error("invalid engine.io url: {0}")]
    InvalidUrl(String),
    /// The websocket transport failed (connect, TLS, upgrade, I/O).
    #[error(transparent)]
    Ws(#[from] WsError),
    /// A polling request failed on the wire.
    #[error("polling request failed: {0}")]
    Io(#[source] std::io::Error),
    /// A polling response was not usable (status, malformed head, too large).
    #[error("polling response: {0}")]
    Http(String),
    /// The server answered with a non-200 status.
    #[error("polling request answered with status {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The beginning of the body (node sends `{"code":1,"message":"Session ID unknown"}`).
        body: String,
    },
    /// Bytes that are not Engine.IO.
    #[error("malformed engine.io data: {0}")]
    Packet(#[from] PacketError),
    /// The handshake did not start with an `open` packet.
    #[error("engine.io handshake: {0}")]
    Handshake(String),
    /// Connecting or a POST did not finish in time.
    #[error("engine.io timed out after {0:?}")]
    Timeout(Duration),
    /// The session is closed.
    #[error("engine.io session closed")]
    Closed,
}

impl EngineError {
    /// The failure class counted in metrics.
    pub fn kind(&self) -> FailureKind {
        match self {
            EngineError::InvalidUrl(_) => FailureKind::InvalidUrl,
            EngineError::Ws(e) => e.kind(),
            EngineError::Io(e) => FailureKind::from_io(e),
            EngineError::Http(_)
            | EngineError::Status { .. }
            | EngineError::Packet(_)
            | EngineError::Handshake(_) => FailureKind::Protocol,
            EngineError::Timeout(_) => FailureKind::Timeout,
            EngineError::Closed => FailureKind::Closed,
        }
    }
}

/// What the handshake gave, and how long it took.
#[derive(Debug, Clone)]
pub struct OpenInfo {
    /// The server's `open` packet.
    pub handshake: Handshake,
    /// The transport the session opened on.
    pub transport: Transport,
    /// From the first byte sent to the `open` packet received.
    pub duration: Duration,
}

#[cfg(test)]
mod tests;
