//! Connect, the receive driver ([`SocketIoClient`]), the handle ([`SocketIo`]) and
//! reconnection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::oneshot;
use url::Url;

use super::packet::{self, Decoder, PacketKind};
use super::{ClientEvent, ConnectInfo, DisconnectReason, Payload, SocketIoError, SocketIoOptions};
use crate::engineio::{
    self, EngineClient, EngineEvent, EngineOptions, EngineSender, Packet as EioPacket,
};

/// An ack waiter: the id we sent and where its answer goes.
type AckWaiter = (u64, oneshot::Sender<Payload>);

/// What the handle and the driver share.
#[derive(Debug)]
struct Inner {
    namespace: Box<str>,
    engine: Mutex<EngineSender>,
    /// The next ack id: a counter, so ids never collide within a socket.
    next_ack: AtomicU64,
    /// Emits waiting for their ack. A `Vec`: a handful at most, and empty costs nothing.
    acks: Mutex<Vec<AckWaiter>>,
    connected: AtomicBool,
    sid: Mutex<Box<str>>,
}

/// The handle of a connected socket: emit, ack, disconnect. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SocketIo {
    inner: Arc<Inner>,
}

/// A connection being reconnected, and how.
#[derive(Debug)]
struct Reconnect {
    url: String,
    opts: SocketIoOptions,
    /// The attempt in progress (0 while connected).
    attempt: u32,
    /// Whether [`ClientEvent::Reconnecting`] was reported for `attempt`.
    announced: bool,
}

/// The receive driver of one socket: call [`SocketIoClient::next_event`] in a loop.
#[derive(Debug)]
pub struct SocketIoClient {
    engine: EngineClient,
    handle: SocketIo,
    decoder: Decoder,
    /// Only for sockets with reconnection on: the URL and options to dial again.
    reconnect: Option<Box<Reconnect>>,
    /// An upgrade that completed during connect, reported by the first `next_event`.
    upgraded_early: bool,
    done: bool,
}

/// Connects to `url` (`http(s)://host:port[/namespace][?query]`) and joins the namespace
/// of its path (`/` when empty). Fails with [`SocketIoError::ConnectError`] and the
/// server's message when the server refuses the namespace.
pub async fn connect(
    url: &str,
    opts: SocketIoOptions,
) -> Result<(SocketIoClient, SocketIo, ConnectInfo), SocketIoError> {
    // Boxed: the dial future is large, and callers hold theirs in long-lived tasks.
    let (engine, namespace, info, upgraded) = Box::pin(dial(url, &opts)).await?;
    let inner = Inner {
        namespace: namespace.into_boxed_str(),
        engine: Mutex::new(engine.sender()),
        next_ack: AtomicU64::new(0),
        acks: Mutex::new(Vec::new()),
        connected: AtomicBool::new(true),
        sid: Mutex::new(info.sid.clone().into_boxed_str()),
    };
    let handle = SocketIo {
        inner: Arc::new(inner),
    };
    let reconnect = opts.reconnection.is_some().then(|| {
        Box::new(Reconnect {
            url: url.to_owned(),
            opts,
            attempt: 0,
            announced: false,
        })
    });
    let client = SocketIoClient {
        engine,
        handle: handle.clone(),
        decoder: Decoder::new(),
        reconnect,
        upgraded_early: upgraded,
        done: false,
    };
    Ok((client, handle, info))
}

/// Opens the Engine.IO session and joins the namespace: returns the engine, the namespace,
/// the connect info and whether an upgrade already completed.
async fn dial(
    url: &str,
    opts: &SocketIoOptions,
) -> Result<(EngineClient, String, ConnectInfo, bool), SocketIoError> {
    let parsed = Url::parse(url).map_err(|e| SocketIoError::InvalidUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https" | "ws" | "wss") {
        return Err(SocketIoError::InvalidUrl(format!(
            "unsupported scheme {:?}",
            parsed.scheme()
        )));
    }
    let namespace = match parsed.path() {
        "" | "/" => "/".to_owned(),
        p => p.trim_end_matches('/').to_owned(),
    };
    if let Some(auth) = &opts.auth
        && !auth.is_object()
    {
        return Err(SocketIoError::InvalidUrl(
            "auth must be a json object".into(),
        ));
    }
    let mut eopts = EngineOptions::new();
    eopts.transports = opts.transports.clone();
    eopts.path = opts.path.clone();
    eopts.query = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    eopts.query.extend(opts.query.iter().cloned());
    eopts.headers = opts.extra_headers.clone();
    eopts.jar = opts.jar.clone();
    eopts.source = opts.source;
    eopts.timeout = opts.timeout;
    eopts.insecure = opts.insecure;
    eopts.timestamp_requests = opts.timestamp_requests;
    eopts.max_message_size = opts.max_message_size;
    eopts.ws_read_buffer = opts.ws_read_buffer;
    eopts.resolver = opts.resolver.clone();
    eopts.open_connections = opts.open_connections.clone();

    let start = Instant::now();
    let joined = tokio::time::timeout(opts.timeout, async {
        let (mut engine, open) = EngineClient::connect(url, &eopts).await?;
        let mut connect = packet::Packet::new(PacketKind::Connect, &namespace);
        connect.data = opts.auth.clone();
        engine
            .sender()
            .send(EioPacket::Message(packet::encode(&connect)))
            .await?;
        let mut decoder = Decoder::new();
        let mut upgraded = false;
        loop {
            let text = match engine.next().await {
                Some(EngineEvent::Message(s)) => s,
                Some(EngineEvent::Upgraded) => {
                    upgraded = true;
                    continue;
                }
                Some(EngineEvent::UpgradeFailed(_) | EngineEvent::Binary(_)) => continue,
                Some(EngineEvent::Closed(r)) => return Err(SocketIoError::Closed(r.as_str())),
                None => return Err(SocketIoError::Closed("transport close")),
            };
            let Some(p) = decoder.decode_text(&text)? else {
                continue;
            };
            if p.namespace != namespace {
                continue;
            }
            match p.kind {
                PacketKind::Connect => {
                    let sid = p
                        .data
                        .as_ref()
                        .and_then(|d| d.get("sid"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let info = ConnectInfo {
                        connect_duration: start.elapsed(),
                        transport: open.transport,
                        sid,
                        engine_sid: open.handshake.sid.clone(),
                    };
                    return Ok((engine, info, upgraded));
                }
                PacketKind::ConnectError => {
                    engine.sender().close().await;
                    return Err(connect_error(p.data));
                }
                // Nothing else can come before the CONNECT answer; ignore it.
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| SocketIoError::Timeout(opts.timeout))??;
    let (engine, info, upgraded) = joined;
    Ok((engine, namespace, info, upgraded))
}

fn connect_error(data: Option<Value>) -> SocketIoError {
    match data {
        Some(Value::String(message)) => SocketIoError::ConnectError {
            message,
            data: None,
        },
        Some(Value::Object(mut o)) => {
            let message = match o.remove("message") {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            };
            SocketIoError::ConnectError {
                message,
                data: o.remove("data"),
            }
        }
        _ => SocketIoError::ConnectError {
            message: String::new(),
            data: None,
        },
    }
}

/// A packet of this socket's namespace carrying `payload` (the event name first for events).
fn build(
    kind: PacketKind,
    namespace: &str,
    id: Option<u64>,
    head: Option<&str>,
    payload: Payload,
) -> Vec<EioPacket> {
    let binary = !payload.attachments.is_empty();
    let kind = match (kind, binary) {
        (PacketKind::Event, true) => PacketKind::BinaryEvent,
        (PacketKind::Ack, true) => PacketKind::BinaryAck,
        (k, _) => k,
    };
    let mut args = payload.args;
    if let Some(name) = head {
        args.insert(0, Value::String(name.to_owned()));
    }
    let p = packet::Packet {
        kind,
        namespace: namespace.to_owned(),
        id,
        data: Some(Value::Array(args)),
        attachments: payload.attachments,
    };
    let mut out = Vec::with_capacity(1 + p.attachments.len());
    out.push(EioPacket::Message(packet::encode(&p)));
    out.extend(p.attachments.into_iter().map(EioPacket::Binary));
    out
}

impl SocketIo {
    fn engine(&self) -> Result<EngineSender, SocketIoError> {
        if !self.inner.connected.load(Ordering::Acquire) {
            return Err(SocketIoError::NotConnected);
        }
        self.inner
            .engine
            .lock()
            .map(|e| e.clone())
            .map_err(|_| SocketIoError::NotConnected)
    }

    /// Emits `event` with `payload` (a `Vec<Value>` or a [`Payload`] with attachments).
    pub async fn emit(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<(), SocketIoError> {
        let engine = self.engine()?;
        let packets = build(
            PacketKind::Event,
            &self.inner.namespace,
            None,
            Some(event),
            payload.into(),
        );
        engine.send_all(packets).await.map_err(SocketIoError::from)
    }

    /// Emits `event` and waits at most `timeout` for the server's ack, whose arguments are
    /// returned. The driver ([`SocketIoClient::next_event`]) must be running meanwhile.
    pub async fn emit_with_ack(
        &self,
        event: &str,
        payload: impl Into<Payload>,
        timeout: Duration,
    ) -> Result<Payload, SocketIoError> {
        let engine = self.engine()?;
        let id = self.inner.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut acks) = self.inner.acks.lock() {
            acks.push((id, tx));
        }
        let packets = build(
            PacketKind::Event,
            &self.inner.namespace,
            Some(id),
            Some(event),
            payload.into(),
        );
        if let Err(e) = engine.send_all(packets).await {
            self.forget_ack(id);
            return Err(e.into());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender was dropped: the session ended before the ack.
            Ok(Err(_)) => Err(SocketIoError::Closed("disconnected before the ack")),
            Err(_) => {
                self.forget_ack(id);
                Err(SocketIoError::AckTimeout(timeout))
            }
        }
    }

    fn forget_ack(&self, id: u64) {
        if let Ok(mut acks) = self.inner.acks.lock() {
            acks.retain(|(i, _)| *i != id);
            if acks.is_empty() {
                *acks = Vec::new();
            }
        }
    }

    /// Answers the server's event `id` (see `ack_id` in [`ClientEvent::Event`]).
    pub async fn ack(&self, id: u64, payload: impl Into<Payload>) -> Result<(), SocketIoError> {
        let engine = self.engine()?;
        let packets = build(
            PacketKind::Ack,
            &self.inner.namespace,
            Some(id),
            None,
            payload.into(),
        );
        engine.send_all(packets).await.map_err(SocketIoError::from)
    }

    /// Leaves the namespace and closes the session. The driver then reports
    /// [`DisconnectReason::ClientDisconnect`]. Does nothing when already disconnected.
    pub async fn disconnect(&self) {
        if !self.inner.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        let Ok(engine) = self.inner.engine.lock().map(|e| e.clone()) else {
            return;
        };
        let p = packet::Packet::new(PacketKind::Disconnect, &self.inner.namespace);
        // The DISCONNECT travels with the Engine.IO close: one POST over polling, over
        // websocket just before the close frame.
        engine
            .close_after(vec![EioPacket::Message(packet::encode(&p))])
            .await;
    }

    /// Whether the socket is connected now.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// The socket id of the current connection.
    pub fn id(&self) -> String {
        self.inner
            .sid
            .lock()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// The namespace (`/`, `/admin`).
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The transport the session uses now.
    pub fn transport(&self) -> engineio::Transport {
        self.inner
            .engine
            .lock()
            .map(|e| e.transport())
            .unwrap_or(engineio::Transport::Websocket)
    }

    /// Fails every emit waiting for an ack: the session is gone.
    fn drop_acks(&self) {
        if let Ok(mut acks) = self.inner.acks.lock() {
            *acks = Vec::new();
        }
    }

    fn resolve_ack(&self, id: u64, reply: Payload) {
        let waiter = self.inner.acks.lock().ok().and_then(|mut acks| {
            let i = acks.iter().position(|(a, _)| *a == id)?;
            let w = acks.swap_remove(i).1;
            if acks.is_empty() {
                *acks = Vec::new();
            }
            Some(w)
        });
        if let Some(w) = waiter {
            let _ = w.send(reply);
        }
    }
}

impl SocketIoClient {
    /// A handle to emit on this socket.
    pub fn handle(&self) -> SocketIo {
        self.handle.clone()
    }

    /// The next event; `None` after the final [`ClientEvent::Disconnected`].
    ///
    /// Keep calling it: it also answers the server's pings and resolves acks. Dropping its
    /// future between packets loses nothing; dropping it while it answers a ping may lose
    /// that pong.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        if self.upgraded_early {
            self.upgraded_early = false;
            return Some(ClientEvent::Upgraded);
        }
        loop {
            if self.done {
                return None;
            }
            if let Some(r) = &self.reconnect
                && r.attempt > 0
            {
                // Boxed, so that an idle driver's future stays small (see the crate docs).
                return Some(Box::pin(self.reconnect_step()).await);
            }
            let ev = match self.engine.next().await {
                Some(ev) => ev,
                None => EngineEvent::Closed(engineio::CloseReason::TransportClose),
            };
            let decoded = match ev {
                EngineEvent::Message(s) => self.decoder.decode_text(&s),
                EngineEvent::Binary(b) => self.decoder.decode_binary(b),
                EngineEvent::Upgraded => return Some(ClientEvent::Upgraded),
                EngineEvent::UpgradeFailed(e) => {
                    return Some(ClientEvent::Error(SocketIoError::Upgrade(e)));
                }
                EngineEvent::Closed(reason) => {
                    let reason = if self.handle.connected() {
                        DisconnectReason::from_engine(reason)
                    } else {
                        DisconnectReason::ClientDisconnect
                    };
                    return Some(self.lost(reason));
                }
            };
            let p = match decoded {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(e) => {
                    // The reference client closes the connection on a parse error.
                    self.engine.sender().close().await;
                    return Some(self.lost(DisconnectReason::ParseError(e.to_string())));
                }
            };
            if *p.namespace != *self.handle.inner.namespace {
                continue;
            }
            let received_at = Instant::now();
            match p.kind {
                PacketKind::Event | PacketKind::BinaryEvent => {
                    let Some(Value::Array(mut args)) = p.data else {
                        continue;
                    };
                    let name = match args.remove(0) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    return Some(ClientEvent::Event {
                        name,
                        args,
                        attachments: p.attachments,
                        ack_id: p.id,
                        received_at,
                    });
                }
                PacketKind::Ack | PacketKind::BinaryAck => {
                    if let (Some(id), Some(Value::Array(args))) = (p.id, p.data) {
                        self.handle.resolve_ack(
                            id,
                            Payload {
                                args,
                                attachments: p.attachments,
                            },
                        );
                    }
                }
                PacketKind::Disconnect => {
                    self.engine.sender().close().await;
                    self.handle.inner.connected.store(false, Ordering::Release);
                    self.handle.drop_acks();
                    // socket.io-client does not reconnect after a server disconnect.
                    self.done = true;
                    return Some(ClientEvent::Disconnected {
                        reason: DisconnectReason::ServerDisconnect,
                    });
                }
                PacketKind::Connect => {
                    if let Some(sid) = p
                        .data
                        .as_ref()
                        .and_then(|d| d.get("sid"))
                        .and_then(Value::as_str)
                        && let Ok(mut s) = self.handle.inner.sid.lock()
                    {
                        *s = sid.into();
                    }
                }
                PacketKind::ConnectError => {
                    return Some(ClientEvent::Error(connect_error(p.data)));
                }
            }
        }
    }

    /// The session is gone: report it, and start reconnecting when asked to.
    fn lost(&mut self, reason: DisconnectReason) -> ClientEvent {
        let was_connected = self.handle.inner.connected.swap(false, Ordering::AcqRel);
        self.handle.drop_acks();
        self.decoder = Decoder::new();
        match &mut self.reconnect {
            Some(r) if was_connected && reason != DisconnectReason::ClientDisconnect => {
                r.attempt = 1;
                r.announced = false;
            }
            _ => self.done = true,
        }
        ClientEvent::Disconnected { reason }
    }

    /// One step of reconnection: announce the attempt, or wait its backoff and dial.
    async fn reconnect_step(&mut self) -> ClientEvent {
        let Some(r) = self.reconnect.as_mut() else {
            self.done = true;
            return ClientEvent::Disconnected {
                reason: DisconnectReason::ReconnectFailed,
            };
        };
        let backoff = r.opts.reconnection.clone().unwrap_or_default();
        if backoff.max_attempts.is_some_and(|max| r.attempt > max) {
            r.attempt = 0;
            self.done = true;
            return ClientEvent::Disconnected {
                reason: DisconnectReason::ReconnectFailed,
            };
        }
        let attempt = r.attempt;
        if !r.announced {
            r.announced = true;
            return ClientEvent::Reconnecting { attempt };
        }
        tokio::time::sleep(backoff.delay(attempt, unit_random())).await;
        match Box::pin(dial(&r.url, &r.opts)).await {
            Ok((engine, _ns, info, upgraded)) => {
                r.attempt = 0;
                r.announced = false;
                if let Ok(mut e) = self.handle.inner.engine.lock() {
                    *e = engine.sender();
                }
                if let Ok(mut s) = self.handle.inner.sid.lock() {
                    *s = info.sid.clone().into_boxed_str();
                }
                self.engine = engine;
                self.upgraded_early = upgraded;
                self.handle.inner.connected.store(true, Ordering::Release);
                ClientEvent::Reconnected { attempt, info }
            }
            Err(e) => {
                r.attempt += 1;
                r.announced = false;
                ClientEvent::Error(e)
            }
        }
    }
}

/// A number in `0..1` for backoff jitter; not cryptographic, only spread.
fn unit_random() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // A multiplicative hash spreads the low bits of the clock over the range.
    let h = nanos.wrapping_mul(2_654_435_761);
    f64::from(h) / f64::from(u32::MAX)
}
