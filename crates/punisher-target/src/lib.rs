//! punisher-target: the demo "TV show" backend that scenarios and tests load.
//!
//! It owns an axum HTTP API and a socketioxide Socket.IO server on the same port, counts
//! everything it receives so that tests can prove the load arrived (`GET /admin/stats`),
//! and can pretend to be slow (`latency`) or flaky (`error_rate`). It must stay cheap per
//! viewer: one target process is meant to hold tens of thousands of sockets, so per-socket
//! state is an id in a set at most, sessions live in a sharded map, counters are atomics.
//! It knows nothing of the rest of punisher.
//!
//! # HTTP contract
//! - `POST /login` `{"guest": true}` or `{"provider": "sns", "token": "..."}` (token
//!   optional): 200 `{"session", "kind"}` and `Set-Cookie: session=<id>; Path=/; HttpOnly`;
//!   anything else 400.
//! - `GET /api/info`, `GET /api/timeline`: 200 JSON with a known session cookie, else 401.
//! - `POST /api/vote` `{"choice": n}`: 200 the first time per session, 409 after, 401
//!   without a session, 400 for a bad body.
//! - `POST /admin/broadcast` `{"room"?, "question"?}`: emits Socket.IO `question` with
//!   `{id, ts}` to every socket (or a room); 200 `{"id", "sockets"}`.
//! - `GET /admin/stats` ([`StatsSnapshot`]), `POST /admin/reset`.
//! - `latency` delays every `/login` and `/api/*` response; `error_rate` turns that
//!   fraction of `/api/*` requests into 500s (counted in `errors_injected` only).
//!
//! # Layout
//! `http` the routes, `sio` the Socket.IO handlers and transport accounting, `sessions`
//! the session store, `stats` counters and snapshots, `delay` precise latency, `relay`
//! several target processes acting as one, `serve` the accept loop and connection
//! settings (idle keep-alive connections are closed after `keep_alive_timeout`).

mod delay;
mod http;
mod relay;
mod serve;
mod sessions;
mod sio;
mod stats;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::layer::SocketIoLayer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use stats::{ByTransport, Logins, SocketStats, StatsSnapshot};

/// How long `serve` waits, after cancellation, for connections to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Between node's `keepAliveTimeout` (5 s) and nginx's `keepalive_timeout` (75 s): long
/// enough that a loaded machine does not cut a slow first request, short enough that a
/// crowd of idle viewers does not pin one HTTP connection each (see `serve`).
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// See [`TargetConfig::heartbeat_grid`]. At 20,000 idle websockets it cuts the target's CPU
/// by ~60% and the generator's by ~45% (benches/RESULTS.md); 1 s saves no more, and 100 ms
/// keeps each burst of pings small.
const DEFAULT_HEARTBEAT_GRID: Duration = Duration::from_millis(100);

/// Target settings. Build it with [`TargetConfig::new`] and set the fields.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Added to every `/login` and `/api/*` response.
    pub latency: Duration,
    /// Fraction (0..=1) of `/api/*` requests answered with a 500.
    pub error_rate: f64,
    /// Serve Socket.IO on `/socket.io` (on by default).
    pub socketio: bool,
    /// Name of the timestamp field of the `question` event (`ts` by default).
    pub ts_field: String,
    /// Other target processes that act as one with this one (see `relay`): admin calls
    /// made to this process are repeated to them and their answers added up. Empty for a
    /// single process.
    pub peers: Vec<SocketAddr>,
    /// An HTTP connection that waits this long for its next request (or for the head of
    /// its first one) is closed. Upgraded websockets are not concerned.
    pub keep_alive_timeout: Duration,
    /// Engine.IO pings of every socket fall on multiples of this period of the wall clock
    /// (`Duration::ZERO`: each socket on its own phase, as upstream socketioxide; default
    /// 100 ms). One setting per process: the last target built in a process sets it for all
    /// of them.
    pub heartbeat_grid: Duration,
    /// Engine.IO ping interval (node's default: 25 s).
    pub ping_interval: Duration,
    /// How long a socket may take to answer a ping before the server drops it (node's
    /// default: 20 s). Longer keeps the sockets of an overloaded client alive through its
    /// lag, which is not what a node backend would do.
    pub ping_timeout: Duration,
}

impl TargetConfig {
    /// No latency, no errors, Socket.IO on, `ts` field, no peers, node's 25 s ping interval
    /// and 20 s ping timeout, with pings on a 100 ms grid.
    // No `Default` on purpose (STYLE.md: config structs are built explicitly).
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self {
            latency: Duration::ZERO,
            error_rate: 0.0,
            socketio: true,
            ts_field: "ts".to_owned(),
            peers: Vec::new(),
            keep_alive_timeout: DEFAULT_KEEP_ALIVE,
            heartbeat_grid: DEFAULT_HEARTBEAT_GRID,
            ping_interval: sio::PING_INTERVAL,
            ping_timeout: sio::PING_TIMEOUT,
        }
    }

    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(ConfigError::ErrorRate(self.error_rate));
        }
        if self.keep_alive_timeout.is_zero() {
            return Err(ConfigError::KeepAlive);
        }
        if self.ping_interval.as_millis() == 0 {
            return Err(ConfigError::PingInterval);
        }
        if self.ping_timeout.as_millis() == 0 {
            return Err(ConfigError::PingTimeout);
        }
        let grid_ms = self.heartbeat_grid.as_millis();
        if !self.heartbeat_grid.is_zero()
            && (grid_ms == 0 || !self.ping_interval.as_millis().is_multiple_of(grid_ms))
        {
            return Err(ConfigError::HeartbeatGrid {
                grid: self.heartbeat_grid,
                interval: self.ping_interval,
            });
        }
        if self.ts_field.is_empty() || self.ts_field == "id" || self.ts_field == "question" {
            return Err(ConfigError::TsField(self.ts_field.clone()));
        }
        Ok(())
    }
}

/// An invalid [`TargetConfig`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("error rate must be between 0 and 1, got {0}")]
    ErrorRate(f64),
    #[error("timestamp field name {0:?} is empty or taken")]
    TsField(String),
    #[error("the keep-alive timeout must be above zero")]
    KeepAlive,
    #[error("the ping interval must be at least 1 ms")]
    PingInterval,
    #[error("the ping timeout must be at least 1 ms")]
    PingTimeout,
    #[error(
        "the heartbeat grid {grid:?} does not divide the ping interval {interval:?}: use e.g. 100ms, 1s or 0 (off)"
    )]
    HeartbeatGrid { grid: Duration, interval: Duration },
}

/// State shared by every handler.
pub(crate) struct Shared {
    cfg: TargetConfig,
    counters: stats::Counters,
    sessions: sessions::Sessions,
    delayer: delay::Delayer,
    question_id: AtomicU64,
    last_question: Mutex<Option<Value>>,
    polling: sio::PollingSockets,
}

impl Shared {
    fn last_question(&self) -> Option<Value> {
        self.last_question
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_last_question(&self, q: Option<Value>) {
        *self.last_question.lock().unwrap_or_else(|e| e.into_inner()) = q;
    }
}

/// What the HTTP handlers see. The Socket.IO handle lives here rather than in `Shared`:
/// socketioxide's handlers hold `Shared`, so `Shared` holding the server would be a cycle
/// that never frees the target.
#[derive(Clone)]
pub(crate) struct App {
    shared: Arc<Shared>,
    io: SocketIo,
}

impl App {
    fn local_stats(&self) -> StatsSnapshot {
        sio::sweep_upgrades(&self.io, &self.shared);
        self.shared.counters.snapshot()
    }

    fn reset(&self) {
        self.shared.counters.reset();
        self.shared.sessions.clear();
        self.shared.set_last_question(None);
    }
}

/// The demo target: build it, then [`serve`](Target::serve) it or mount its
/// [`router`](Target::router).
pub struct Target {
    app: App,
    layer: Option<SocketIoLayer>,
}

impl Target {
    pub fn new(mut cfg: TargetConfig) -> Target {
        // `validate` is the place to refuse bad values; here they are only made harmless.
        if cfg.error_rate.is_nan() {
            cfg.error_rate = 0.0;
        }
        cfg.error_rate = cfg.error_rate.clamp(0.0, 1.0);
        if cfg.ping_interval.is_zero() {
            cfg.ping_interval = sio::PING_INTERVAL;
        }
        if cfg.ping_timeout.is_zero() {
            cfg.ping_timeout = sio::PING_TIMEOUT;
        }
        let socketio = cfg.socketio;
        engineioxide::set_heartbeat_grid(cfg.heartbeat_grid);
        let shared = Arc::new(Shared {
            delayer: delay::Delayer::new(cfg.latency),
            cfg,
            counters: stats::Counters::default(),
            sessions: sessions::Sessions::new(),
            question_id: AtomicU64::new(0),
            last_question: Mutex::new(None),
            polling: sio::PollingSockets::default(),
        });
        let (layer, io) = sio::build(shared.clone());
        Target {
            app: App { shared, io },
            layer: socketio.then_some(layer),
        }
    }

    /// The HTTP routes with the Socket.IO layer (when enabled). Every router returned
    /// shares this target's state.
    pub fn router(&self) -> Router {
        let router = http::routes(self.app.clone());
        match &self.layer {
            // The copy runs before socketioxide, which keeps the handshake's request parts
            // for the socket's lifetime (see `sio::detach_from_read_buffer`).
            Some(layer) => router
                .layer(layer.clone())
                .layer(axum::middleware::map_request(sio::detach_from_read_buffer)),
            None => router,
        }
    }

    /// The counters of this process (peers are added by `GET /admin/stats` only).
    pub fn stats(&self) -> StatsSnapshot {
        self.app.local_stats()
    }

    /// A cheap handle for reading stats while the target is being served.
    pub fn handle(&self) -> TargetHandle {
        TargetHandle {
            app: self.app.clone(),
        }
    }

    /// Serves HTTP and Socket.IO on `listener` until `cancel` fires, then closes every
    /// socket and waits up to 5 s for connections to drain.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) -> io::Result<()> {
        let router = self.router();
        let app = self.app.clone();
        // Websocket and long-poll connections never go idle by themselves.
        let close_sockets = async move { sio::close_all(&app.io, &app.shared).await };
        let keep_alive = self.app.shared.cfg.keep_alive_timeout;
        serve::serve(
            listener,
            router,
            keep_alive,
            cancel,
            close_sockets,
            SHUTDOWN_GRACE,
        )
        .await
    }
}

/// Reads the stats of a target that is being served.
#[derive(Clone)]
pub struct TargetHandle {
    app: App,
}

impl TargetHandle {
    /// This process's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.app.local_stats()
    }

    /// Same as `POST /admin/reset?local=true`.
    pub fn reset(&self) {
        self.app.reset();
    }
}

/// A target served in a task of the current runtime (`punisher run --demo-target`, tests).
pub struct RunningTarget {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub addr: SocketAddr,
    pub handle: TargetHandle,
    pub cancel: CancellationToken,
    pub join: JoinHandle<io::Result<()>>,
}

impl RunningTarget {
    pub fn stats(&self) -> StatsSnapshot {
        self.handle.stats()
    }

    /// Cancels the target and waits for it to stop.
    pub async fn shutdown(self) -> io::Result<()> {
        self.cancel.cancel();
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        }
    }
}

/// Connections waiting to be accepted. The kernel caps it at `net.core.somaxconn`; tokio's
/// default (1,024) overflows when thousands of viewers connect within a second, and each
/// overflow costs the client a SYN retransmission (1 s, then 3 s...).
const LISTEN_BACKLOG: u32 = 65_535;

/// Binds `addr` for a target, with a listen backlog sized for connection bursts.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Binds 127.0.0.1:0 and serves a target there in a tokio task.
pub async fn spawn_local_target(cfg: TargetConfig) -> io::Result<RunningTarget> {
    let listener = bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(spawn_on(listener, cfg))
}

fn spawn_on(listener: TcpListener, cfg: TargetConfig) -> RunningTarget {
    // A listener bound by us always has a local address.
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let target = Target::new(cfg);
    let handle = target.handle();
    let cancel = CancellationToken::new();
    let join = tokio::spawn(target.serve(listener, cancel.clone()));
    RunningTarget {
        url: format!("http://{addr}"),
        addr,
        handle,
        cancel,
        join,
    }
}

/// Serves `n` targets on 127.0.0.1 in this process, each knowing the others as peers:
/// what `punisher target --processes N` does with child processes, for tests.
pub async fn spawn_local_cluster(cfg: TargetConfig, n: usize) -> io::Result<Vec<RunningTarget>> {
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        listeners.push(bind_listener(SocketAddr::from(([127, 0, 0, 1], 0)))?);
    }
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<io::Result<Vec<_>>>()?;
    Ok(listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let mut cfg = cfg.clone();
            cfg.peers = peers_of(&addrs, i);
            spawn_on(listener, cfg)
        })
        .collect())
}

/// The peers of process `index` among `addrs`: everybody else.
pub fn peers_of(addrs: &[SocketAddr], index: usize) -> Vec<SocketAddr> {
    addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, a)| *a)
        .collect()
}

/// `n` consecutive ports from `base`: the listen addresses of `--processes N`.
pub fn consecutive_addrs(base: SocketAddr, n: usize) -> Vec<SocketAddr> {
    (0..n)
        .filter_map(|i| {
            let port = base.port().checked_add(u16::try_from(i).ok()?)?;
            Some(SocketAddr::new(base.ip(), port))
        })
        .collect()
}
