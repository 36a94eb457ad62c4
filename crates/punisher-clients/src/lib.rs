//! punisher-clients: the network clients a virtual user drives.
//!
//! # Layout
//! - [`net`]: source-address pool, TCP connect from a source address, DNS cache.
//! - [`cookies`]: the per-user cookie jar shared by all of a user's clients.
//! - [`http`]: a lean HTTP/1.1 client (keep-alive, chunked, redirects, TLS, k6 timing phases).
//! - [`ws`]: a WebSocket client (tokio-tungstenite with small buffers), ws:// and wss://.
//! - [`engineio`]: an Engine.IO v4 client (polling, websocket, upgrade, heartbeat).
//! - [`socketio`]: a Socket.IO v5 client on top (namespaces, acks, binary, reconnection).
//! - `tls`: the rustls connectors and the `--insecure` verifier, shared by all of them.
//!
//! This crate returns typed results and timings; it records no metrics and knows nothing
//! of JavaScript. Network failures are data (a [`punisher_core::FailureKind`]), not errors.
//! An idle keep-alive connection holds its socket and nothing else: no buffers.

pub mod cookies;
pub mod engineio;
pub mod http;
pub mod net;
pub mod socketio;
mod tls;
pub mod ws;
