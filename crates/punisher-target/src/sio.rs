//! The Socket.IO side: the socketioxide server's configuration, per-socket handlers
//! (connect with an optional room, `echo`, `vote`, disconnect), transport accounting
//! including polling -> websocket upgrades, and the `question` broadcast.
//!
//! socketioxide has no upgrade hook: a socket's transport is an atomic inside the engine
//! socket that flips when the upgrade completes. So the ids of sockets that connected over
//! polling are kept in a set, and `sweep_upgrades` moves those whose transport became
//! websocket into the websocket bucket. It runs before every stats snapshot and at each
//! disconnect, which makes `connected_now` and `upgrades` exact whenever they are read.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Uri};
use serde_json::{Map, Value};
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::{DisconnectReason, Sid};
use socketioxide::{SocketIo, TransportType};

use crate::Shared;
use crate::sessions::{VoteOutcome, session_from_headers};
use crate::stats::inc;

/// Engine.IO heartbeat, as node's socket.io defaults (those of
/// [`TargetConfig::ping_interval`](crate::TargetConfig::ping_interval) and
/// [`TargetConfig::ping_timeout`](crate::TargetConfig::ping_timeout)).
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(25);
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// node's maxHttpBufferSize (socketioxide's default is 100 kB).
const MAX_PAYLOAD: u64 = 1_000_000;
/// tungstenite's read buffer is allocated eagerly per connection and kept for its life.
/// Viewers send pongs and votes of a few dozen bytes; a bigger frame is still read whole,
/// in more reads (tungstenite reserves the frame's length). 1 KiB instead of 4 KiB saves
/// 3 KiB per idle websocket (massif); 0 would be invalid.
const WS_READ_BUFFER: usize = 1024;
/// Messages bigger than node's maxPayload are refused anyway; a smaller cap bounds what one
/// hostile client can make us buffer.
const WS_MAX_MESSAGE: usize = 1 << 20;
/// Packets queued per socket before an emit fails. A viewer receives a question, acks and
/// pings: 32 leaves room for bursts while keeping the per-socket channel small.
const MAX_BUFFERED_PACKETS: usize = 32;

/// Gives a Socket.IO request's URI and header values their own small allocations.
///
/// hyper parses the URI and every header value as slices of its connection's read buffer
/// (8-16 KiB), and engineioxide keeps the handshake request's parts for the whole life of
/// the socket: each idle websocket then pins its 16 KiB read buffer long after hyper
/// handed the connection over (measured with valgrind massif: 16,384 of ~37,000 heap bytes
/// per idle websocket). A few hundred bytes copied per handshake give that back. Other
/// requests pass untouched: their parts die with their response.
pub(crate) async fn detach_from_read_buffer(req: Request) -> Request {
    if !req.uri().path().starts_with(SOCKETIO_PATH) {
        return req;
    }
    let (mut parts, body) = req.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // `from_bytes` copies; the name is either static or was copied by the parser.
        if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
            headers.append(name.clone(), value);
        }
    }
    parts.headers = headers;
    // `Uri` from a `String` owns that string's buffer.
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// Where socketioxide serves (its `req_path`).
const SOCKETIO_PATH: &str = "/socket.io";

/// Socket ids that connected over polling and have not been seen on websocket yet.
#[derive(Debug, Default)]
pub(crate) struct PollingSockets(Mutex<HashSet<Sid>>);

impl PollingSockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<Sid>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Builds the socketioxide layer and server handle, with our handlers registered.
pub(crate) fn build(shared: Arc<Shared>) -> (socketioxide::layer::SocketIoLayer, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .req_path(SOCKETIO_PATH)
        .ping_interval(shared.cfg.ping_interval)
        .ping_timeout(shared.cfg.ping_timeout)
        .max_payload(MAX_PAYLOAD)
        .ws_read_buffer_size(WS_READ_BUFFER)
        .ws_max_message_size(WS_MAX_MESSAGE)
        .ws_max_frame_size(WS_MAX_MESSAGE)
        .max_buffer_size(MAX_BUFFERED_PACKETS)
        .build_layer();
    // The handlers are registered in a middleware, not in the connect handler: socketioxide
    // sends the CONNECT answer and then *spawns* the connect handler, so a client that emits
    // at once (an `emitWithAck` right after `io()`) could reach a socket with no handler yet,
    // and its event, ack included, was dropped. Middlewares are awaited before the answer.
    let register = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let shared = shared.clone();
        async move {
            on_connect(s, auth.ok(), shared);
            Ok::<(), std::convert::Infallible>(())
        }
    };
    io.ns("/", connected.with(register));
    (layer, io)
}

/// The connect handler proper: everything was set up by the middleware (see [`build`]).
async fn connected() {}

fn on_connect(s: SocketRef, auth: Option<Value>, shared: Arc<Shared>) {
    let c = &shared.counters;
    match s.transport_type() {
        TransportType::Websocket => {
            inc(&c.total_websocket);
            c.now_websocket.fetch_add(1, Ordering::Relaxed);
        }
        TransportType::Polling => {
            inc(&c.total_polling);
            c.now_polling.fetch_add(1, Ordering::Relaxed);
            shared.polling.lock().insert(s.id);
        }
    }
    if let Some(room) = auth
        .as_ref()
        .and_then(|a| a.get("room"))
        .and_then(Value::as_str)
    {
        s.join(room.to_owned());
    }
    let on_event = shared.clone();
    s.on_fallback(
        move |s: SocketRef, Event(event): Event, ack: AckSender, TryData(data): TryData<Value>| {
            let shared = on_event.clone();
            async move { on_event_fallback(&s, &event, ack, data.ok(), &shared) }
        },
    );
    s.on_disconnect(move |s: SocketRef, reason: DisconnectReason| {
        let shared = shared.clone();
        async move { on_disconnect(&s, reason, &shared) }
    });
}

/// One fallback handler instead of one `on` per event: socketioxide boxes each handler per
/// socket, and a handler map per socket would cost more than the dispatch below.
fn on_event_fallback(
    s: &SocketRef,
    event: &str,
    ack: AckSender,
    data: Option<Value>,
    shared: &Shared,
) {
    let reply = match event {
        "echo" => data.unwrap_or(Value::Null),
        "vote" => vote_over_socket(s, data.as_ref(), shared),
        _ => return,
    };
    // Without an ack id there is nobody to answer; a full socket buffer is the client's loss.
    let _ = ack.send(&reply);
}

/// `vote` with `{choice}` over the socket, authenticated by the session cookie that the
/// handshake request carried. Counted with the HTTP votes.
fn vote_over_socket(s: &SocketRef, data: Option<&Value>, shared: &Shared) -> Value {
    let c = &shared.counters;
    let valid_choice = data
        .and_then(|d| d.get("choice"))
        .is_some_and(|v| v.is_i64() || v.is_u64());
    let reply = |ok: bool, error: &str| {
        let mut m = Map::new();
        m.insert("ok".into(), Value::Bool(ok));
        if !ok {
            m.insert("error".into(), Value::String(error.into()));
        }
        Value::Object(m)
    };
    let Some(id) = session_from_headers(&s.req_parts().headers) else {
        inc(&c.unauthorized);
        return reply(false, "unauthorized");
    };
    if !shared.sessions.contains(id) {
        inc(&c.unauthorized);
        return reply(false, "unauthorized");
    }
    if !valid_choice {
        inc(&c.bad_requests);
        return reply(false, "expected {\"choice\": integer}");
    }
    match shared.sessions.vote(id) {
        VoteOutcome::Accepted => {
            inc(&c.votes);
            reply(true, "")
        }
        VoteOutcome::Duplicate => {
            inc(&c.duplicate_votes);
            reply(false, "duplicate vote")
        }
        VoteOutcome::UnknownSession => {
            inc(&c.unauthorized);
            reply(false, "unauthorized")
        }
    }
}

fn on_disconnect(s: &SocketRef, reason: DisconnectReason, shared: &Shared) {
    let c = &shared.counters;
    if shared.polling.lock().remove(&s.id) {
        c.now_polling.fetch_sub(1, Ordering::Relaxed);
        if s.transport_type() == TransportType::Websocket {
            // It upgraded after the last sweep.
            inc(&c.upgrades);
        }
    } else {
        c.now_websocket.fetch_sub(1, Ordering::Relaxed);
    }
    c.disconnected(reason);
}

/// Closes every socket at shutdown and accounts for them.
///
/// socketioxide 0.18.9's `SocketIo::close` takes the namespaces out of the server *before*
/// closing the transports, so the engine's disconnect finds no namespace and our
/// `on_disconnect` never runs (its documentation says otherwise). Every socket still
/// counted as connected afterwards was therefore closed by the shutdown.
pub(crate) async fn close_all(io: &SocketIo, shared: &Shared) {
    io.close().await;
    let c = &shared.counters;
    let ws = c.now_websocket.swap(0, Ordering::Relaxed).max(0);
    let polling = c.now_polling.swap(0, Ordering::Relaxed).max(0);
    shared.polling.lock().clear();
    c.disconnected_many(DisconnectReason::ClosingServer, (ws + polling) as u64);
}

/// Moves the sockets that upgraded to websocket since the last sweep into the websocket
/// bucket. Ids are copied out first so that the set's lock is never held while
/// socketioxide's own locks are taken.
pub(crate) fn sweep_upgrades(io: &SocketIo, shared: &Shared) {
    // `io.get_socket` panics once the server is closed; `of` does not.
    let Some(ns) = io.of("/") else { return };
    let ids: Vec<Sid> = shared.polling.lock().iter().copied().collect();
    let upgraded: Vec<Sid> = ids
        .into_iter()
        .filter(|sid| {
            ns.get_socket(*sid)
                .is_some_and(|s| s.transport_type() == TransportType::Websocket)
        })
        .collect();
    if upgraded.is_empty() {
        return;
    }
    let c = &shared.counters;
    let mut set = shared.polling.lock();
    for sid in upgraded {
        // A concurrent disconnect may have removed it already and counted it itself.
        if set.remove(&sid) {
            c.now_polling.fetch_sub(1, Ordering::Relaxed);
            c.now_websocket.fetch_add(1, Ordering::Relaxed);
            inc(&c.upgrades);
        }
    }
}

/// Emits `question` to every socket of the default namespace, or to one room. Returns how
/// many sockets it was handed to.
pub(crate) async fn broadcast_question(io: &SocketIo, room: Option<&str>, payload: &Value) -> u64 {
    // `io.to` / `io.broadcast` panic once the server is closed (the namespace is gone).
    let ops = || {
        io.of("/").map(|ns| match room {
            Some(r) => ns.to(r.to_owned()),
            None => ns,
        })
    };
    // socketioxide has no count: list the targets, then broadcast the packet encoded once.
    let (Some(listing), Some(sending)) = (ops(), ops()) else {
        return 0;
    };
    let targets = listing.sockets().len() as u64;
    let failed = match sending.emit("question", payload).await {
        Ok(()) => 0,
        Err(socketioxide::BroadcastError::Socket(errors)) => errors.len() as u64,
        Err(e) => {
            tracing::warn!(error = %e, "broadcast failed");
            targets
        }
    };
    targets.saturating_sub(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::header::{HOST, SEC_WEBSOCKET_KEY};
    use bytes::Bytes;

    /// A request whose URI and header values are slices of one big buffer, as hyper
    /// parses them.
    fn parsed_request(buffer: &Bytes, path: &str) -> Request {
        let text = std::str::from_utf8(buffer).unwrap();
        let slice = |s: &str| buffer.slice_ref(&buffer[text.find(s).unwrap()..][..s.len()]);
        let mut req = Request::new(Body::empty());
        *req.uri_mut() = Uri::from_maybe_shared(slice(path)).unwrap();
        let host = HeaderValue::from_maybe_shared(slice("127.0.0.1:8080")).unwrap();
        req.headers_mut().insert(HOST, host);
        let key = HeaderValue::from_maybe_shared(slice("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        req.headers_mut().append(SEC_WEBSOCKET_KEY, key);
        req
    }

    fn inside(buffer: &Bytes, s: &[u8]) -> bool {
        buffer.as_ptr_range().contains(&s.as_ptr())
    }

    #[tokio::test]
    async fn socketio_requests_stop_pointing_into_the_read_buffer() {
        let path = "/socket.io/?EIO=4&transport=websocket";
        let mut raw = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        raw.resize(16 * 1024, 0);
        let buffer = Bytes::from(raw);
        let req = parsed_request(&buffer, path);
        assert!(inside(&buffer, req.headers()[HOST].as_bytes()));

        let req = detach_from_read_buffer(req).await;
        assert_eq!(req.uri().to_string(), path);
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[SEC_WEBSOCKET_KEY], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.headers().len(), 2);
        for value in req.headers().values() {
            assert!(!inside(&buffer, value.as_bytes()));
        }
        let pq = req.uri().path_and_query().unwrap().as_str();
        assert!(!inside(&buffer, pq.as_bytes()));
    }

    #[tokio::test]
    async fn other_requests_pass_untouched() {
        let path = "/api/info";
        let mut raw = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .into_bytes();
        raw.resize(4096, 0);
        let buffer = Bytes::from(raw);
        let req = detach_from_read_buffer(parsed_request(&buffer, path)).await;
        assert!(inside(&buffer, req.headers()[HOST].as_bytes()));
    }
}
