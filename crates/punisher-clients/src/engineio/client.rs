//! Connect, the receive driver, the writer and the polling → websocket upgrade.
//!
//! State per session, kept small on purpose (100k sessions per process is the goal):
//! [`EngineClient`] owns the read side (a websocket stream, or the polling connection and
//! its outstanding GET) and the pending upgrade; [`Shared`] (behind an `Arc`, reached by
//! every [`EngineSender`]) owns the write side: the websocket sink, or the queue of packets
//! waiting for the next POST. Nothing is buffered while idle: the POST connection is closed
//! once its queue is empty, and the long-poll allocates its buffer when the answer starts.
//!
//! # Where POSTs go
//! A pong goes on the long-poll's own connection: the GET that brought the ping has just
//! been answered, so its keep-alive connection is free; the pong is POSTed on it and the
//! next GET follows on the same connection. A polling user so costs one TCP connection for
//! its whole life instead of a new connection per ping (every 25 s): at 60,000 polling
//! viewers that was 2,400 connects and closes per second on each side of the loopback.
//!
//! Packets sent while a GET is in flight (emits, the close) need a connection of their own:
//! it is closed once the queue is empty, not kept alive. Keeping it would give every
//! polling user two sockets instead of one (an agent may hold 20,000 files), and it would
//! rarely be reused: a quiet user emits seldom, and servers close idle keep-alive
//! connections long before (node after 5 s). POSTs stay serialized either way (the `post`
//! lock), as the protocol requires.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use url::Url;

use super::packet::{self, Frame, Handshake, Packet};
use super::{CloseReason, EngineError, EngineEvent, EngineOptions, OpenInfo, Transport, http1};
use crate::cookies::SharedJar;
use crate::net::OpenGauge;
use crate::ws::{self, NetStream, RawWs, WsConnectParams, WsError};

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type PollResult = (Option<NetStream>, Result<Vec<u8>, EngineError>);
type WsSink = SplitSink<RawWs, Message>;
type WsStream = SplitStream<RawWs>;

/// Largest polling response accepted when the server announces no `maxPayload`.
const DEFAULT_MAX_BODY: usize = 1_000_000;
/// Extra room above the server's `maxPayload`: the server batches up to it, plus framing.
const BODY_SLACK: usize = 64 * 1024;

/// Where polling requests go, built once per session.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    host: String,
    tls: bool,
    host_header: String,
    /// Path and query, `sid` included once known.
    path_query: String,
    cookie_url: Url,
    jar: Option<SharedJar>,
    /// Extra headers, already rendered as `Name: value\r\n` lines.
    extra_headers: String,
    source: Option<IpAddr>,
    insecure: bool,
    timestamp: bool,
    max_body: usize,
    open_connections: Option<OpenGauge>,
}

impl Target {
    fn head(&self, post_len: Option<usize>) -> String {
        let method = if post_len.is_some() { "POST" } else { "GET" };
        let mut h = String::with_capacity(160 + self.path_query.len() + self.extra_headers.len());
        h.push_str(method);
        h.push(' ');
        h.push_str(&self.path_query);
        if self.timestamp {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            h.push_str(&format!("&t={nanos:x}"));
        }
        h.push_str(" HTTP/1.1\r\nHost: ");
        h.push_str(&self.host_header);
        h.push_str("\r\nAccept: */*\r\n");
        h.push_str(&self.extra_headers);
        if let Some(jar) = &self.jar
            && let Ok(jar) = jar.lock()
            && let Some(c) = jar.header_for(&self.cookie_url)
        {
            h.push_str("Cookie: ");
            h.push_str(&c);
            h.push_str("\r\n");
        }
        if let Some(len) = post_len {
            h.push_str("Content-Type: text/plain;charset=UTF-8\r\nContent-Length: ");
            h.push_str(&len.to_string());
            h.push_str("\r\n");
        }
        h.push_str("\r\n");
        h
    }

    /// A new connection to the server (TCP, and TLS for `https`).
    async fn open(&self) -> Result<NetStream, EngineError> {
        let (s, _) = ws::open_addr(
            self.addr,
            &self.host,
            self.tls,
            self.source,
            self.insecure,
            self.open_connections.as_ref(),
        )
        .await?;
        Ok(s)
    }

    /// One polling request on `conn` (opened when `None`, closed when the server does not
    /// keep it). A reused connection that fails before answering is retried once on a new
    /// one: the server may have closed it while it was idle. `fresh` says that `conn` was
    /// just opened, so that a failure on it is not retried (the request may have arrived).
    async fn request(
        &self,
        conn: &mut Option<NetStream>,
        fresh: bool,
        post: Option<&[u8]>,
    ) -> Result<Vec<u8>, EngineError> {
        for attempt in 0..2 {
            let reused = conn.is_some() && !(fresh && attempt == 0);
            let stream = match conn {
                Some(s) => s,
                None => conn.insert(self.open().await?),
            };
            let head = self.head(post.map(<[u8]>::len));
            match http1::exchange(stream, head.as_bytes(), post.unwrap_or(b""), self.max_body).await
            {
                Ok(reply) => {
                    if !reply.keep_alive {
                        *conn = None;
                    }
                    if let Some(jar) = &self.jar
                        && !reply.set_cookie.is_empty()
                        && let Ok(mut jar) = jar.lock()
                    {
                        jar.store_set_cookie(
                            &self.cookie_url,
                            reply.set_cookie.iter().map(String::as_str),
                        );
                    }
                    if reply.status != 200 {
                        let body =
                            String::from_utf8_lossy(&reply.body[..reply.body.len().min(200)])
                                .into_owned();
                        return Err(EngineError::Status {
                            status: reply.status,
                            body,
                        });
                    }
                    return Ok(reply.body);
                }
                Err(EngineError::Io(_)) if reused && attempt == 0 => *conn = None,
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
        Err(EngineError::Closed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Polling,
    /// The probe succeeded: packets wait in the queue until the websocket takes over.
    Upgrading,
    Websocket,
    Closed,
}

#[derive(Debug)]
struct WriteState {
    mode: Mode,
    queue: Vec<Packet>,
}

/// The write side of a session, shared by the driver (pongs) and every sender.
#[derive(Debug)]
struct Shared {
    state: Mutex<WriteState>,
    ws_sink: tokio::sync::Mutex<Option<WsSink>>,
    /// The POST connection; the lock also serializes POSTs, which the protocol requires.
    post: tokio::sync::Mutex<Option<NetStream>>,
    target: Option<Arc<Target>>,
    /// How long the session may go without hearing from the server, and how long a POST
    /// may take (see [`ping_window`]).
    ping_window: Duration,
    /// Set by [`EngineSender::close`], so the end is reported as ours.
    closing: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.state.lock().map(|s| s.mode).unwrap_or(Mode::Closed)
    }

    fn set_mode(&self, mode: Mode) {
        if let Ok(mut s) = self.state.lock() {
            s.mode = mode;
            if mode == Mode::Closed {
                s.queue = Vec::new();
            }
        }
    }

    async fn send(&self, packets: Vec<Packet>) -> Result<(), EngineError> {
        self.send_on(packets, None).await
    }

    /// Like [`Shared::send`]; over polling, POSTs on `free_get` (the long-poll's connection,
    /// while no GET is in flight) when given, instead of on a connection of their own.
    async fn send_on(
        &self,
        packets: Vec<Packet>,
        free_get: Option<&mut Option<NetStream>>,
    ) -> Result<(), EngineError> {
        // Decide under the lock, act after it: the guard must not live across an await.
        let (mode, packets) = {
            let mut st = self.state.lock().map_err(|_| EngineError::Closed)?;
            match st.mode {
                Mode::Closed => return Err(EngineError::Closed),
                Mode::Polling | Mode::Upgrading => {
                    st.queue.extend(packets);
                    (st.mode, Vec::new())
                }
                Mode::Websocket => (Mode::Websocket, packets),
            }
        };
        match mode {
            Mode::Polling => self.flush_polling(free_get).await,
            Mode::Websocket => self.send_ws(packets).await,
            Mode::Upgrading | Mode::Closed => Ok(()),
        }
    }

    async fn send_ws(&self, packets: Vec<Packet>) -> Result<(), EngineError> {
        let mut guard = self.ws_sink.lock().await;
        let sink = guard.as_mut().ok_or(EngineError::Closed)?;
        // A binary event and its attachments go out back to back, under one lock.
        for p in &packets {
            sink.feed(to_ws_message(p)).await.map_err(ws_err)?;
        }
        sink.flush().await.map_err(ws_err)
    }

    fn queue_is_empty(&self) -> Result<bool, EngineError> {
        let st = self.state.lock().map_err(|_| EngineError::Closed)?;
        Ok(st.queue.is_empty())
    }

    /// POSTs everything queued, in batches joined by `\x1e`, until the queue is empty: on
    /// `free_get` when given (it stays open for the next GET), else on a connection of its
    /// own that is closed afterwards (see the module doc).
    async fn flush_polling(
        &self,
        free_get: Option<&mut Option<NetStream>>,
    ) -> Result<(), EngineError> {
        let Some(target) = &self.target else {
            return Err(EngineError::Closed);
        };
        let on_get_connection = free_get.is_some();
        // A POST of its own connects before it queues for the lock. Connecting is not a
        // POST, and a pong that comes meanwhile (it goes on the long-poll's connection)
        // would otherwise wait for this connect as well as for this POST's answer: under a
        // lagging event loop, each is a trip through the whole run queue. Measured with a
        // starved agent: polling viewers whose pongs came too late for the server's ping
        // timeout (benches/RESULTS.md, "The storm in a model"). Not while a POST is in
        // flight: that one takes our packets along when it is answered.
        let post_in_flight = self.post.try_lock().is_err();
        let mut connected = None;
        if !on_get_connection && !post_in_flight && !self.queue_is_empty()? {
            let opened = tokio::time::timeout(self.ping_window, target.open()).await;
            connected = Some(opened.map_err(|_| EngineError::Timeout(self.ping_window))??);
        }
        // Held even when posting on the GET's connection: one POST at a time.
        let mut own = self.post.lock().await;
        let mut fresh = false;
        let conn = match free_get {
            Some(c) => c,
            None => {
                if own.is_none() {
                    *own = connected.take();
                    fresh = own.is_some();
                }
                &mut *own
            }
        };
        loop {
            let batch = {
                let mut st = self.state.lock().map_err(|_| EngineError::Closed)?;
                if st.mode != Mode::Polling || st.queue.is_empty() {
                    break;
                }
                std::mem::take(&mut st.queue)
            };
            let body = packet::encode_payload(&batch);
            let sent = tokio::time::timeout(
                self.ping_window,
                target.request(conn, fresh, Some(body.as_bytes())),
            )
            .await;
            fresh = false;
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    *conn = None;
                    return Err(e);
                }
                Err(_) => {
                    *conn = None;
                    return Err(EngineError::Timeout(self.ping_window));
                }
            }
        }
        if !on_get_connection {
            // Not kept alive between flushes: one fd per polling user (see the module doc).
            *conn = None;
        }
        Ok(())
    }
}

/// How long the session may go without hearing from the server: its ping interval plus its
/// ping timeout (45 s with node's defaults). The long-poll ends the session after that
/// without a ping, and a POST may take as long. engine.io-client sets no timeout on a POST
/// at all (`requestTimeout` is unset by default): a server that is slow to answer is
/// waited for. A POST bounded by the connect timeout (20 s) instead failed the whole
/// session with a transport error under load: at 300,000 viewers on one machine, 31,030 of
/// the 59,571 polling viewers lost their socket and their vote that way, while every
/// websocket viewer, on the same server, kept its own.
fn ping_window(handshake: &Handshake) -> Duration {
    Duration::from_millis(
        handshake
            .ping_interval
            .saturating_add(handshake.ping_timeout),
    )
}

fn to_ws_message(p: &Packet) -> Message {
    match packet::encode_ws(p) {
        Frame::Text(s) => Message::Text(s.into()),
        Frame::Binary(b) => Message::Binary(b),
    }
}

fn ws_err(e: tungstenite::Error) -> EngineError {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            EngineError::Closed
        }
        tungstenite::Error::Io(e) => EngineError::Ws(WsError::Io(e)),
        other => EngineError::Ws(WsError::Protocol(other.to_string())),
    }
}

/// The write handle of a session: cheap to clone, usable from any task.
#[derive(Debug, Clone)]
pub struct EngineSender {
    shared: Arc<Shared>,
}

impl EngineSender {
    /// Sends one packet (a text or binary message, usually).
    pub async fn send(&self, packet: Packet) -> Result<(), EngineError> {
        Box::pin(self.shared.send(vec![packet])).await
    }

    /// Sends packets back to back, in order (over polling, in one POST when possible).
    pub async fn send_all(&self, packets: Vec<Packet>) -> Result<(), EngineError> {
        Box::pin(self.shared.send(packets)).await
    }

    /// Closes the session: over polling with a `close` packet, over websocket with a close
    /// frame. The driver then reports [`CloseReason::ClientClose`].
    pub async fn close(&self) {
        Box::pin(self.close_after(Vec::new())).await;
    }

    /// Sends `last` (a Socket.IO DISCONNECT, say), then closes like [`close`](Self::close).
    /// Over polling, `last` and the `close` packet go in one POST. Over websocket the close
    /// frame is the goodbye, without a `close` packet, as engine.io-client does: every
    /// frame costs a write, a wake-up and a read on each side, which in a crowd leaving at
    /// once (a show's audience after the vote) is most of the goodbye's CPU.
    pub async fn close_after(&self, last: Vec<Packet>) {
        Box::pin(self.close_inner(last)).await;
    }

    async fn close_inner(&self, mut packets: Vec<Packet>) {
        self.shared.closing.store(true, Ordering::Relaxed);
        // Websocket is final until the close; polling may upgrade while its POST is out,
        // and then only the close frame is left to send.
        let before_close_frame = if self.shared.mode() == Mode::Websocket {
            packets
        } else {
            packets.push(Packet::Close);
            let _ = self.shared.send(packets).await;
            Vec::new()
        };
        if self.shared.mode() == Mode::Websocket {
            let mut guard = self.shared.ws_sink.lock().await;
            if let Some(sink) = guard.as_mut() {
                // The close frame only once every packet before it went out.
                let mut fed = true;
                for p in &before_close_frame {
                    fed = fed && sink.feed(to_ws_message(p)).await.is_ok();
                }
                if fed {
                    let _ = sink.close().await;
                }
            }
        }
        self.shared.set_mode(Mode::Closed);
    }

    /// The transport packets currently go over.
    pub fn transport(&self) -> Transport {
        match self.shared.mode() {
            Mode::Websocket => Transport::Websocket,
            _ => {
                if self.shared.target.is_some() {
                    Transport::Polling
                } else {
                    Transport::Websocket
                }
            }
        }
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.mode() == Mode::Closed
    }
}

enum Reader {
    Polling {
        conn: Option<NetStream>,
        inflight: Option<BoxFut<PollResult>>,
    },
    Websocket(WsStream),
    Closed,
}

enum Upgrade {
    None,
    Probing(BoxFut<Result<Box<RawWs>, EngineError>>),
    /// Boxed: the websocket is large and most sessions never upgrade.
    Ready(Box<RawWs>),
}

/// What woke the driver.
enum Woke {
    Poll(PollResult),
    Probe(Result<Box<RawWs>, EngineError>),
    Ws(Option<Result<Message, tungstenite::Error>>),
    Deadline,
}

/// The read side and driver of one Engine.IO session. Keep calling [`EngineClient::next`]:
/// it answers pings, watches the ping deadline and completes the upgrade.
pub struct EngineClient {
    shared: Arc<Shared>,
    reader: Reader,
    upgrade: Upgrade,
    /// The rest of a polling payload not yet handed out, and where the next packet starts.
    body: String,
    pos: usize,
    deadline: Instant,
    done: bool,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient")
            .field("mode", &self.shared.mode())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Resolves when `f` does, or never when there is no future.
async fn maybe<F: Future + Unpin + ?Sized>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl EngineClient {
    /// Opens a session on `url` (`http(s)://host:port`, `ws(s)://` accepted too; its path
    /// and query are ignored: `opts.path` and `opts.query` are used).
    pub async fn connect(
        url: &str,
        opts: &EngineOptions,
    ) -> Result<(EngineClient, OpenInfo), EngineError> {
        let base = Url::parse(url).map_err(|e| EngineError::InvalidUrl(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https" | "ws" | "wss") || base.host_str().is_none() {
            return Err(EngineError::InvalidUrl(format!("unsupported url {url:?}")));
        }
        let first = *opts
            .transports
            .first()
            .ok_or_else(|| EngineError::InvalidUrl("no transport given".into()))?;
        let start = std::time::Instant::now();
        // Boxed: the handshake futures are large and callers hold theirs in long-lived tasks.
        let opened = tokio::time::timeout(opts.timeout, async {
            match first {
                Transport::Polling => Box::pin(Self::open_polling(&base, opts)).await,
                Transport::Websocket => Box::pin(Self::open_websocket(&base, opts)).await,
            }
        })
        .await
        .map_err(|_| EngineError::Timeout(opts.timeout))??;
        let (client, handshake) = opened;
        Ok((
            client,
            OpenInfo {
                handshake,
                transport: first,
                duration: start.elapsed(),
            },
        ))
    }

    fn new(shared: Shared, reader: Reader) -> EngineClient {
        let deadline = Instant::now() + shared.ping_window;
        EngineClient {
            shared: Arc::new(shared),
            reader,
            upgrade: Upgrade::None,
            body: String::new(),
            pos: 0,
            deadline,
            done: false,
        }
    }

    async fn open_websocket(
        base: &Url,
        opts: &EngineOptions,
    ) -> Result<(EngineClient, Handshake), EngineError> {
        let url = engine_url(base, opts, Transport::Websocket, None)?;
        let (ws, _) = ws::connect_raw(&url, &ws_params(opts)).await?;
        let (sink, mut stream) = ws.split();
        let handshake = loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => match packet::decode_text(t.as_str())? {
                    Packet::Open(h) => break h,
                    other => {
                        return Err(EngineError::Handshake(format!(
                            "expected an open packet, got {:?}",
                            other.type_char()
                        )));
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    return Err(EngineError::Handshake("binary frame before open".into()));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ws_err(e)),
                None => return Err(EngineError::Closed),
            }
        };
        let shared = Shared {
            state: Mutex::new(WriteState {
                mode: Mode::Websocket,
                queue: Vec::new(),
            }),
            ws_sink: tokio::sync::Mutex::new(Some(sink)),
            post: tokio::sync::Mutex::new(None),
            target: None,
            ping_window: ping_window(&handshake),
            closing: AtomicBool::new(false),
        };
        let client = EngineClient::new(shared, Reader::Websocket(stream));
        Ok((client, handshake))
    }

    async fn open_polling(
        base: &Url,
        opts: &EngineOptions,
    ) -> Result<(EngineClient, Handshake), EngineError> {
        let url = engine_url(base, opts, Transport::Polling, None)?;
        let (addr, host, tls) = ws::resolve(&url, opts.resolver.as_deref()).await?;
        let mut extra_headers = String::new();
        for (n, v) in &opts.headers {
            let bad = |s: &str| s.bytes().any(|b| b == b'\r' || b == b'\n');
            if n.is_empty() || bad(n) || bad(v) || !n.bytes().all(crate::http::is_token_byte) {
                return Err(EngineError::InvalidUrl(format!("invalid header {n:?}")));
            }
            extra_headers.push_str(&format!("{n}: {v}\r\n"));
        }
        let mut cookie_url = url.clone();
        cookie_url.set_query(None);
        let mut target = Target {
            addr,
            host: host.to_owned(),
            tls,
            host_header: host_header(&url),
            path_query: path_query(&url),
            cookie_url,
            jar: opts.jar.clone(),
            extra_headers,
            source: opts.source,
            insecure: opts.insecure,
            timestamp: opts.timestamp_requests,
            max_body: DEFAULT_MAX_BODY + BODY_SLACK,
            open_connections: opts.open_connections.clone(),
        };
        let mut conn = None;
        let body = target.request(&mut conn, false, None).await?;
        let body = String::from_utf8(body).map_err(|_| packet::PacketError::Utf8)?;
        let (first, rest) = match body.split_once(packet::SEPARATOR) {
            Some((a, b)) => (a, b),
            None => (body.as_str(), ""),
        };
        let handshake = match packet::decode_text(first)? {
            Packet::Open(h) => h,
            other => {
                return Err(EngineError::Handshake(format!(
                    "expected an open packet, got {:?}",
                    other.type_char()
                )));
            }
        };
        if let Some(max) = handshake.max_payload {
            target.max_body = usize::try_from(max)
                .unwrap_or(usize::MAX)
                .saturating_add(BODY_SLACK);
        }
        let with_sid = engine_url(base, opts, Transport::Polling, Some(&handshake.sid))?;
        target.path_query = path_query(&with_sid);
        let rest = rest.to_owned();
        let shared = Shared {
            state: Mutex::new(WriteState {
                mode: Mode::Polling,
                queue: Vec::new(),
            }),
            ws_sink: tokio::sync::Mutex::new(None),
            post: tokio::sync::Mutex::new(None),
            target: Some(Arc::new(target)),
            ping_window: ping_window(&handshake),
            closing: AtomicBool::new(false),
        };
        let mut client = EngineClient::new(
            shared,
            Reader::Polling {
                conn,
                inflight: None,
            },
        );
        client.body = rest;
        if opts.transports.contains(&Transport::Websocket)
            && handshake.upgrades.iter().any(|u| u == "websocket")
        {
            let url = engine_url(base, opts, Transport::Websocket, Some(&handshake.sid))?;
            let params = ws_params(opts);
            let timeout = opts.timeout;
            client.upgrade = Upgrade::Probing(Box::pin(async move {
                tokio::time::timeout(timeout, probe(url, params))
                    .await
                    .unwrap_or(Err(EngineError::Timeout(timeout)))
            }));
        }
        Ok((client, handshake))
    }

    /// A write handle for this session.
    pub fn sender(&self) -> EngineSender {
        EngineSender {
            shared: self.shared.clone(),
        }
    }

    /// The transport the session reads from now.
    pub fn transport(&self) -> Transport {
        match self.reader {
            Reader::Polling { .. } => Transport::Polling,
            _ => Transport::Websocket,
        }
    }

    /// The next message or session event; `None` once [`EngineEvent::Closed`] was returned.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        loop {
            if self.done {
                return None;
            }
            if let Some(item) = self.take_pending() {
                match item {
                    Ok(p) => match self.on_packet(p).await {
                        Some(ev) => return Some(ev),
                        None => continue,
                    },
                    Err(e) => return Some(self.finish(CloseReason::ParseError(e.to_string()))),
                }
            }
            if matches!(self.upgrade, Upgrade::Ready(_))
                && matches!(self.reader, Reader::Polling { inflight: None, .. })
            {
                return Some(match Box::pin(self.finish_upgrade()).await {
                    Ok(()) => EngineEvent::Upgraded,
                    Err(e) => self.finish(CloseReason::TransportError(e.to_string())),
                });
            }
            // Our goodbye went out and the long-poll in flight came back: another GET
            // would only earn a 400 for a session that is gone.
            if self.shared.closing.load(Ordering::Relaxed)
                && matches!(self.reader, Reader::Polling { inflight: None, .. })
            {
                return Some(self.finish(CloseReason::ClientClose));
            }
            let woke = self.wait().await;
            match woke {
                Woke::Deadline => return Some(self.finish(CloseReason::PingTimeout)),
                Woke::Poll((conn, result)) => {
                    if let Reader::Polling { conn: c, inflight } = &mut self.reader {
                        *inflight = None;
                        *c = conn;
                    }
                    match result {
                        Ok(body) => match String::from_utf8(body) {
                            Ok(s) => {
                                self.body = s;
                                self.pos = 0;
                            }
                            Err(_) => {
                                let e = packet::PacketError::Utf8.to_string();
                                return Some(self.finish(CloseReason::ParseError(e)));
                            }
                        },
                        Err(e) => {
                            return Some(self.finish(CloseReason::TransportError(e.to_string())));
                        }
                    }
                }
                Woke::Probe(Ok(ws)) => {
                    let upgrading = {
                        let Ok(mut st) = self.shared.state.lock() else {
                            return None;
                        };
                        if st.mode == Mode::Polling {
                            st.mode = Mode::Upgrading;
                            true
                        } else {
                            false
                        }
                    };
                    self.upgrade = if upgrading {
                        Upgrade::Ready(ws)
                    } else {
                        Upgrade::None
                    };
                }
                Woke::Probe(Err(e)) => {
                    self.upgrade = Upgrade::None;
                    return Some(EngineEvent::UpgradeFailed(e.to_string()));
                }
                Woke::Ws(msg) => match msg {
                    Some(Ok(Message::Text(t))) => match packet::decode_text(t.as_str()) {
                        Ok(p) => {
                            if let Some(ev) = self.on_packet(p).await {
                                return Some(ev);
                            }
                        }
                        Err(e) => {
                            return Some(self.finish(CloseReason::ParseError(e.to_string())));
                        }
                    },
                    Some(Ok(Message::Binary(b))) => return Some(EngineEvent::Binary(b)),
                    Some(Ok(_)) => {}
                    None
                    | Some(Err(
                        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
                    )) => return Some(self.finish(CloseReason::TransportClose)),
                    Some(Err(e)) => {
                        return Some(self.finish(CloseReason::TransportError(e.to_string())));
                    }
                },
            }
        }
    }

    /// Waits for the transport, the upgrade probe or the ping deadline.
    async fn wait(&mut self) -> Woke {
        let deadline = self.deadline;
        let paused = matches!(self.upgrade, Upgrade::Ready(_));
        let probing = match &mut self.upgrade {
            Upgrade::Probing(f) => Some(f),
            _ => None,
        };
        match &mut self.reader {
            Reader::Polling { conn, inflight } => {
                if inflight.is_none() && !paused {
                    let Some(target) = self.shared.target.clone() else {
                        return Woke::Deadline;
                    };
                    let mut c = conn.take();
                    *inflight = Some(Box::pin(async move {
                        let r = target.request(&mut c, false, None).await;
                        (c, r)
                    }));
                }
                // Biased: what has arrived is read before the deadline is looked at (see
                // the websocket arm).
                tokio::select! {
                    biased;
                    r = maybe(inflight.as_mut()) => Woke::Poll(r),
                    r = maybe(probing) => Woke::Probe(r),
                    () = tokio::time::sleep_until(deadline) => Woke::Deadline,
                }
            }
            // Biased: a ping that has arrived is read before the deadline is looked at. A
            // busy client polls this late, when both are ready, and an unbiased select then
            // picked the deadline half of the time: the generator's own lag reported as the
            // server's ping timeout.
            Reader::Websocket(stream) => tokio::select! {
                biased;
                m = stream.next() => Woke::Ws(m),
                () = tokio::time::sleep_until(deadline) => Woke::Deadline,
            },
            Reader::Closed => Woke::Ws(None),
        }
    }

    /// The next packet of the current polling payload, if any is left.
    fn take_pending(&mut self) -> Option<Result<Packet, packet::PacketError>> {
        if self.pos >= self.body.len() {
            if self.body.capacity() > 0 {
                // Free the payload: an idle session keeps no buffer.
                self.body = String::new();
                self.pos = 0;
            }
            return None;
        }
        let rest = &self.body[self.pos..];
        let (item, used) = match rest.find(packet::SEPARATOR) {
            Some(i) => (&rest[..i], i + packet::SEPARATOR.len_utf8()),
            None => (rest, rest.len()),
        };
        let p = packet::decode_polling_packet(item);
        self.pos += used;
        Some(p)
    }

    async fn on_packet(&mut self, p: Packet) -> Option<EngineEvent> {
        match p {
            Packet::Ping(data) => {
                self.deadline = Instant::now() + self.shared.ping_window;
                let pong = vec![Packet::Pong(data)];
                // Over polling the ping came with a GET's answer, so that GET's connection
                // is free: the pong goes on it (see the module doc).
                let free_get = match &mut self.reader {
                    Reader::Polling {
                        conn,
                        inflight: None,
                    } if conn.is_some() => Some(conn),
                    _ => None,
                };
                // Boxed: a POST future is large and pongs are rare; the idle driver stays small.
                if let Err(e) = Box::pin(self.shared.send_on(pong, free_get)).await {
                    return Some(self.finish(CloseReason::TransportError(e.to_string())));
                }
                None
            }
            Packet::Message(s) => Some(EngineEvent::Message(s)),
            Packet::Binary(b) => Some(EngineEvent::Binary(b)),
            Packet::Close => Some(self.finish(CloseReason::TransportClose)),
            Packet::Open(_) | Packet::Pong(_) | Packet::Upgrade | Packet::Noop => None,
        }
    }

    /// Moves the session onto the probed websocket: waits for an in-flight POST, sends `5`,
    /// then everything queued meanwhile, and switches readers.
    async fn finish_upgrade(&mut self) -> Result<(), EngineError> {
        let Upgrade::Ready(ws) = std::mem::replace(&mut self.upgrade, Upgrade::None) else {
            return Ok(());
        };
        let (sink, stream) = (*ws).split();
        let mut post = self.shared.post.lock().await;
        *post = None;
        let mut guard = self.shared.ws_sink.lock().await;
        let sink = guard.insert(sink);
        sink.send(Message::text("5")).await.map_err(ws_err)?;
        loop {
            let batch = {
                let mut st = self.shared.state.lock().map_err(|_| EngineError::Closed)?;
                if st.mode != Mode::Upgrading {
                    return Err(EngineError::Closed);
                }
                if st.queue.is_empty() {
                    st.mode = Mode::Websocket;
                    break;
                }
                std::mem::take(&mut st.queue)
            };
            for p in &batch {
                sink.feed(to_ws_message(p)).await.map_err(ws_err)?;
            }
            sink.flush().await.map_err(ws_err)?;
        }
        drop(guard);
        drop(post);
        self.reader = Reader::Websocket(stream);
        Ok(())
    }

    fn finish(&mut self, reason: CloseReason) -> EngineEvent {
        self.done = true;
        self.shared.set_mode(Mode::Closed);
        self.reader = Reader::Closed;
        self.upgrade = Upgrade::None;
        self.body = String::new();
        let reason = if self.shared.closing.load(Ordering::Relaxed) {
            CloseReason::ClientClose
        } else {
            reason
        };
        EngineEvent::Closed(reason)
    }
}

/// Opens the websocket of an upgrade and runs the probe: `2probe` out, `3probe` back.
async fn probe(url: Url, params: WsConnectParams) -> Result<Box<RawWs>, EngineError> {
    let (mut ws, _) = ws::connect_raw(&url, &params).await?;
    ws.send(Message::text("2probe")).await.map_err(ws_err)?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "3probe" => return Ok(Box::new(ws)),
            Some(Ok(Message::Text(t))) => {
                return Err(EngineError::Handshake(format!(
                    "unexpected probe answer {:?}",
                    t.as_str().chars().take(20).collect::<String>()
                )));
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(EngineError::Handshake("binary probe answer".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ws_err(e)),
            None => return Err(EngineError::Closed),
        }
    }
}

fn ws_params(opts: &EngineOptions) -> WsConnectParams {
    WsConnectParams {
        headers: opts.headers.clone(),
        subprotocols: Vec::new(),
        jar: opts.jar.clone(),
        source: opts.source,
        timeout: opts.timeout,
        insecure: opts.insecure,
        max_message_size: opts.max_message_size,
        read_buffer_size: opts.ws_read_buffer,
        resolver: opts.resolver.clone(),
        open_connections: opts.open_connections.clone(),
    }
}

/// The URL of an Engine.IO request: scheme for the transport, `opts.path`, then
/// `EIO=4&transport=..`, the user's query and `sid` when known.
pub(crate) fn engine_url(
    base: &Url,
    opts: &EngineOptions,
    transport: Transport,
    sid: Option<&str>,
) -> Result<Url, EngineError> {
    let tls = matches!(base.scheme(), "https" | "wss");
    let scheme = match (transport, tls) {
        (Transport::Polling, false) => "http",
        (Transport::Polling, true) => "https",
        (Transport::Websocket, false) => "ws",
        (Transport::Websocket, true) => "wss",
    };
    let host = base
        .host_str()
        .ok_or_else(|| EngineError::InvalidUrl("missing host".into()))?;
    let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
    let mut path = opts.path.clone();
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let mut url = Url::parse(&format!("{scheme}://{host}{port}{path}"))
        .map_err(|e| EngineError::InvalidUrl(e.to_string()))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("EIO", "4");
        q.append_pair("transport", transport.as_str());
        for (k, v) in &opts.query {
            q.append_pair(k, v);
        }
        if let Some(sid) = sid {
            q.append_pair("sid", sid);
        }
    }
    Ok(url)
}

fn path_query(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}
