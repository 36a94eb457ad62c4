//! A Socket.IO v5 client over our Engine.IO client: CONNECT with an auth payload,
//! namespaces from the URL path, events, acks in both directions (ids from a counter, never
//! random: random ids collide under load), binary payloads, server DISCONNECT and
//! CONNECT_ERROR, and reconnection with exponential backoff when asked for.
//!
//! Two halves, like the Engine.IO client: [`SocketIoClient`] is the receive driver, owned
//! by the one task that reads the socket (`next_event`); [`SocketIo`] is a cheap handle
//! (clone it) that emits, acks and disconnects from anywhere. Acks requested with
//! [`SocketIo::emit_with_ack`] resolve only while the driver runs.
//!
//! Binary arguments stay as `{"_placeholder":true,"num":i}` objects in the JSON, with the
//! attachments beside it in a [`Payload`]: the JS layer swaps them for `ArrayBuffer`s when it
//! builds its values, so no JSON tree is rebuilt here.
//!
//! # Layout
//! - `packet`: the sans-I/O codec and the binary reassembly;
//! - `client`: connect, the driver, the handle, reconnection.

mod client;
pub mod packet;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use punisher_core::FailureKind;
use serde_json::Value;

use crate::cookies::SharedJar;
use crate::engineio::{CloseReason, EngineError, Transport};
use crate::net::{OpenGauge, Resolver};

pub use client::{SocketIo, SocketIoClient, connect};
pub use packet::{placeholder, placeholder_num};

/// Event arguments: JSON values (binary parts as placeholders) and the attachments the
/// placeholders index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Payload {
    /// The arguments.
    pub args: Vec<Value>,
    /// Binary attachments; `{"_placeholder":true,"num":i}` in `args` stands for the i-th.
    pub attachments: Vec<Bytes>,
}

impl From<Vec<Value>> for Payload {
    fn from(args: Vec<Value>) -> Self {
        Payload {
            args,
            attachments: Vec::new(),
        }
    }
}

/// Reconnection policy: exponential backoff, as socket.io-client's `reconnectionDelay`,
/// `reconnectionDelayMax`, `randomizationFactor` and `reconnectionAttempts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Randomization factor in `0..=1`: each delay is spread by ± this fraction.
    pub jitter: f64,
    /// Attempts before giving up; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// socket.io-client's defaults: 1 s doubling up to 5 s, ±50 %, unlimited attempts.
    pub fn new() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
            jitter: 0.5,
            max_attempts: None,
        }
    }

    /// The delay before attempt `attempt` (1-based), with `unit` in `0..1` drawn at random.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(spread).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// How to connect a Socket.IO client.
#[derive(Debug, Clone)]
pub struct SocketIoOptions {
    /// `[Websocket]`, `[Polling]`, or `[Polling, Websocket]` (start polling, then upgrade).
    pub transports: Vec<Transport>,
    /// Request path, `/socket.io/` by default.
    pub path: String,
    /// The CONNECT packet's payload (`auth` in socket.io-client); must be a JSON object.
    pub auth: Option<Value>,
    /// Extra query parameters (the URL's own query is added too).
    pub query: Vec<(String, String)>,
    /// Extra headers of every request (`extraHeaders`).
    pub extra_headers: Vec<(String, String)>,
    /// Reconnect after a lost connection; off by default.
    pub reconnection: Option<Backoff>,
    /// Bound on connecting (first request to CONNECT acknowledged) and on each POST.
    pub timeout: Duration,
    /// The user's cookie jar, shared with its HTTP client.
    pub jar: Option<SharedJar>,
    /// Local address to connect from.
    pub source: Option<IpAddr>,
    /// Accept any server certificate.
    pub insecure: bool,
    /// Add `t=` to polling requests.
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

impl SocketIoOptions {
    /// Websocket only, `/socket.io/`, no auth, query, headers, jar, source or reconnection,
    /// 20 s timeout, certificates verified.
    pub fn new() -> Self {
        let e = crate::engineio::EngineOptions::new();
        SocketIoOptions {
            transports: vec![Transport::Websocket],
            path: e.path,
            auth: None,
            query: Vec::new(),
            extra_headers: Vec::new(),
            reconnection: None,
            timeout: e.timeout,
            jar: None,
            source: None,
            insecure: false,
            timestamp_requests: false,
            max_message_size: e.max_message_size,
            ws_read_buffer: e.ws_read_buffer,
            resolver: None,
            open_connections: None,
        }
    }
}

impl Default for SocketIoOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// What a successful connect reports.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// From the first request to the CONNECT acknowledged (`socketio_connect_duration`).
    pub connect_duration: Duration,
    /// The transport the session opened on.
    pub transport: Transport,
    /// The socket id the server gave in its CONNECT answer.
    pub sid: String,
    /// The Engine.IO session id.
    pub engine_sid: String,
}

/// Why a connected socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server sent DISCONNECT (`socket.disconnect()` on the server).
    ServerDisconnect,
    /// We disconnected.
    ClientDisconnect,
    /// No ping within `pingInterval + pingTimeout`.
    PingTimeout,
    /// The server closed the connection.
    TransportClose,
    /// The connection failed.
    TransportError(String),
    /// The server sent bytes that are not Socket.IO/Engine.IO.
    ParseError(String),
    /// Reconnection gave up after its last attempt.
    ReconnectFailed,
}

impl DisconnectReason {
    /// socket.io-client's reason string, used as the `reason` tag of `socketio_disconnects`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::ServerDisconnect => "io server disconnect",
            DisconnectReason::ClientDisconnect => "io client disconnect",
            DisconnectReason::PingTimeout => "ping timeout",
            DisconnectReason::TransportClose => "transport close",
            DisconnectReason::TransportError(_) => "transport error",
            DisconnectReason::ParseError(_) => "parse error",
            DisconnectReason::ReconnectFailed => "reconnect failed",
        }
    }

    fn from_engine(r: CloseReason) -> Self {
        match r {
            CloseReason::PingTimeout => DisconnectReason::PingTimeout,
            CloseReason::TransportClose => DisconnectReason::TransportClose,
            CloseReason::TransportError(e) => DisconnectReason::TransportError(e),
            CloseReason::ParseError(e) => DisconnectReason::ParseError(e),
            _ => DisconnectReason::ClientDisconnect,
        }
    }
}

/// What [`SocketIoClient::next_event`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// An event from the server. Answer `ack_id` with [`SocketIo::ack`].
    Event {
        /// The event name.
        name: String,
        /// Its arguments (after the name), binary parts as placeholders.
        args: Vec<Value>,
        /// Binary attachments, indexed by the placeholders.
        attachments: Vec<Bytes>,
        /// Present when the server asked for an acknowledgement.
        ack_id: Option<u64>,
        /// When the packet was decoded.
        received_at: Instant,
    },
    /// The socket is disconnected. Without reconnection this is the last event.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// The session moved from polling to websocket.
    Upgraded,
    /// A reconnection attempt is about to start (1-based).
    Reconnecting {
        /// The attempt number.
        attempt: u32,
    },
    /// Reconnected after `attempt` attempts.
    Reconnected {
        /// The attempt that succeeded.
        attempt: u32,
        /// The new session.
        info: ConnectInfo,
    },
    /// A non-fatal error: a failed upgrade (the session stays on polling), a failed
    /// reconnection attempt.
    Error(SocketIoError),
}

/// Why a Socket.IO operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketIoError {
    /// The URL or options cannot be used.
    #[error("invalid socket.io url: {0}")]
    InvalidUrl(String),
    /// The Engine.IO layer failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The server refused the namespace connection (CONNECT_ERROR).
    #[error("socket.io connect refused: {message}")]
    ConnectError {
        /// The server's `message`.
        message: String,
        /// The server's `data`, if any.
        data: Option<Value>,
    },
    /// Connecting took longer than the timeout.
    #[error("socket.io connect timed out after {0:?}")]
    Timeout(Duration),
    /// No ack arrived in time.
    #[error("socket.io ack timed out after {0:?}")]
    AckTimeout(Duration),
    /// The socket is not connected.
    #[error("socket.io socket is not connected")]
    NotConnected,
    /// The session closed before the operation completed.
    #[error("socket.io session closed: {0}")]
    Closed(&'static str),
    /// The server sent an invalid Socket.IO packet.
    #[error(transparent)]
    Packet(#[from] packet::SioPacketError),
    /// The polling → websocket upgrade failed; the session stays on polling.
    #[error("socket.io upgrade failed: {0}")]
    Upgrade(String),
}

impl SocketIoError {
    /// The failure class counted in metrics.
    pub fn kind(&self) -> FailureKind {
        match self {
            SocketIoError::InvalidUrl(_) => FailureKind::InvalidUrl,
            SocketIoError::Engine(e) => e.kind(),
            SocketIoError::ConnectError { .. } | SocketIoError::Closed(_) => FailureKind::Closed,
            SocketIoError::Timeout(_) | SocketIoError::AckTimeout(_) => FailureKind::Timeout,
            SocketIoError::NotConnected => FailureKind::Closed,
            SocketIoError::Packet(_) | SocketIoError::Upgrade(_) => FailureKind::Protocol,
        }
    }
}
