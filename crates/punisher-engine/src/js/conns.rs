//! The long-lived connections of a worker's users (`punisher/ws` and `punisher/socketio`):
//! which user owns which connection, how to close them when the user's session ends, the
//! JavaScript dispatchers that deliver their events, and their metrics.
//!
//! A connection is one `spawn_local` task that reads it and enters JavaScript (through
//! [`State::enter`], as the connection's owner) for every event. Nothing JavaScript is kept
//! per connection on the Rust side: the socket objects live in a `Map` of the module's
//! JavaScript, keyed by the connection id, and one dispatcher function per module is the
//! only persistent handle. An idle connection therefore costs its client, its task and one
//! small JavaScript object.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use punisher_clients::net::Resolver;
use punisher_clients::socketio::SocketIo;
use punisher_metrics::{MetricKind, SeriesId, Tags, ValueType};
use rquickjs::{Ctx, Function, Persistent, Value};
use tokio::sync::Notify;

use crate::metrics::SCENARIO;
use crate::state::{State, VuKey};

/// How long a connection closed at the end of its user's session may take to say goodbye
/// (Socket.IO DISCONNECT, WebSocket close handshake) before it is dropped.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Distinct Socket.IO event names kept apart in `socketio_events_received{event}` and
/// `socketio_event_latency{event}`; a server inventing names must not grow memory forever.
const MAX_EVENT_NAMES: usize = 200;
/// The `event` tag of events past [`MAX_EVENT_NAMES`].
const OVERFLOW_EVENT: &str = "(other)";

/// Which module's dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Module {
    Ws,
    SocketIo,
}

/// The metrics of both modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Metric {
    WsSessions,
    WsConnecting,
    WsMsgsSent,
    WsMsgsReceived,
    WsSessionDuration,
    WsErrors,
    SioConnectDuration,
    SioConnectErrors,
    SioUpgrades,
    SioEventsReceived,
    SioEventsSent,
    SioAckDuration,
    SioDisconnects,
    SioEventLatency,
}

impl Metric {
    fn def(self) -> (MetricKind, ValueType, &'static str) {
        use MetricKind::{Counter, Trend};
        use ValueType::{Default, Time};
        match self {
            Metric::WsSessions => (Counter, Default, "ws_sessions"),
            Metric::WsConnecting => (Trend, Time, "ws_connecting"),
            Metric::WsMsgsSent => (Counter, Default, "ws_msgs_sent"),
            Metric::WsMsgsReceived => (Counter, Default, "ws_msgs_received"),
            Metric::WsSessionDuration => (Trend, Time, "ws_session_duration"),
            Metric::WsErrors => (Counter, Default, "ws_errors"),
            Metric::SioConnectDuration => (Trend, Time, "socketio_connect_duration"),
            Metric::SioConnectErrors => (Counter, Default, "socketio_connect_errors"),
            Metric::SioUpgrades => (Counter, Default, "socketio_upgrades"),
            Metric::SioEventsReceived => (Counter, Default, "socketio_events_received"),
            Metric::SioEventsSent => (Counter, Default, "socketio_events_sent"),
            Metric::SioAckDuration => (Trend, Time, "socketio_ack_duration"),
            Metric::SioDisconnects => (Counter, Default, "socketio_disconnects"),
            Metric::SioEventLatency => (Trend, Time, "socketio_event_latency"),
        }
    }

    /// The name of the extra tag some metrics carry (`event`, `reason`, `error_code`).
    fn extra_tag(self) -> Option<&'static str> {
        match self {
            Metric::SioEventsReceived | Metric::SioEventLatency => Some("event"),
            Metric::SioDisconnects => Some("reason"),
            Metric::SioConnectErrors | Metric::WsErrors => Some("error_code"),
            _ => None,
        }
    }
}

/// Tags of one sample beyond the scenario: transport and the metric's extra tag.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample<'a> {
    pub(crate) transport: Option<&'static str>,
    pub(crate) extra: Option<&'a str>,
}

impl Sample<'_> {
    pub(crate) fn transport(t: &'static str) -> Sample<'static> {
        Sample {
            transport: Some(t),
            extra: None,
        }
    }
}

/// Set once when a connection's driver ended; awaitable.
#[derive(Default)]
pub(crate) struct Ended {
    done: std::cell::Cell<bool>,
    notify: Notify,
}

impl Ended {
    pub(crate) fn set(&self) {
        self.done.set(true);
        self.notify.notify_waiters();
    }

    pub(crate) async fn wait(&self) {
        loop {
            let wait = self.notify.notified();
            if self.done.get() {
                return;
            }
            wait.await;
        }
    }
}

/// Closes a connection: what its owner's end (or the script) triggers.
#[derive(Clone)]
pub(crate) enum Closer {
    /// A Socket.IO socket: its handle, the signal that stops its driver, and its end.
    SocketIo {
        handle: SocketIo,
        kill: Rc<Notify>,
        ended: Rc<Ended>,
    },
    /// A WebSocket: the signal its driver turns into a close frame.
    Ws(Rc<super::ws::WsOut>),
}

struct Conn {
    vu: VuKey,
    closer: Closer,
}

/// A metric, its transport tag and its extra tag's value.
type SeriesKey = (Metric, Option<&'static str>, Option<Box<str>>);

#[derive(Default)]
struct Inner {
    next_id: u32,
    open: HashMap<u32, Conn>,
    by_vu: HashMap<VuKey, Vec<u32>>,
    ws_dispatch: Option<Persistent<Function<'static>>>,
    sio_dispatch: Option<Persistent<Function<'static>>>,
    series: HashMap<SeriesKey, SeriesId>,
    event_names: HashSet<Box<str>>,
}

/// The worker's connections (one per [`State`]).
pub(crate) struct Conns {
    inner: RefCell<Inner>,
    /// `options.socketio.tsField`: the server timestamp field of events.
    ts_field: RefCell<Box<str>>,
    /// The worker's DNS cache for both modules.
    pub(crate) resolver: Arc<Resolver>,
}

impl Conns {
    pub(crate) fn new() -> Conns {
        Conns {
            inner: RefCell::new(Inner::default()),
            ts_field: RefCell::new("ts".into()),
            resolver: Arc::new(Resolver::new()),
        }
    }

    /// Reads `options.socketio` (the scenario's exported options).
    pub(crate) fn configure(&self, options: &serde_json::Value) {
        if let Some(f) = options
            .get("socketio")
            .and_then(|s| s.get("tsField"))
            .and_then(|f| f.as_str())
            .filter(|f| !f.is_empty())
        {
            *self.ts_field.borrow_mut() = f.into();
        }
    }

    pub(crate) fn ts_field(&self) -> std::cell::Ref<'_, Box<str>> {
        self.ts_field.borrow()
    }

    pub(crate) fn set_dispatch(&self, module: Module, f: Persistent<Function<'static>>) {
        let mut inner = self.inner.borrow_mut();
        match module {
            Module::Ws => inner.ws_dispatch = Some(f),
            Module::SocketIo => inner.sio_dispatch = Some(f),
        }
    }

    fn dispatch(&self, module: Module) -> Option<Persistent<Function<'static>>> {
        let inner = self.inner.borrow();
        match module {
            Module::Ws => inner.ws_dispatch.clone(),
            Module::SocketIo => inner.sio_dispatch.clone(),
        }
    }

    /// Registers a connection of `vu`; returns its id.
    pub(crate) fn add(&self, vu: VuKey, closer: Closer) -> u32 {
        let mut inner = self.inner.borrow_mut();
        let mut id = inner.next_id.wrapping_add(1).max(1);
        while inner.open.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        inner.next_id = id;
        inner.open.insert(id, Conn { vu, closer });
        inner.by_vu.entry(vu).or_default().push(id);
        id
    }

    /// WebSocket and Socket.IO connections open now (connected, not yet ended).
    pub(crate) fn open_count(&self) -> usize {
        self.inner.borrow().open.len()
    }

    /// Forgets a connection whose driver ended.
    pub(crate) fn remove(&self, id: u32) {
        let mut inner = self.inner.borrow_mut();
        let Some(conn) = inner.open.remove(&id) else {
            return;
        };
        if let Some(ids) = inner.by_vu.get_mut(&conn.vu) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                inner.by_vu.remove(&conn.vu);
            }
        }
    }

    /// The Socket.IO handle of connection `id`.
    pub(crate) fn socketio(&self, id: u32) -> Option<SocketIo> {
        match self.inner.borrow().open.get(&id).map(|c| &c.closer) {
            Some(Closer::SocketIo { handle, .. }) => Some(handle.clone()),
            _ => None,
        }
    }

    /// The WebSocket output of connection `id`.
    pub(crate) fn ws(&self, id: u32) -> Option<Rc<super::ws::WsOut>> {
        match self.inner.borrow().open.get(&id).map(|c| &c.closer) {
            Some(Closer::Ws(out)) => Some(out.clone()),
            _ => None,
        }
    }

    /// Starts closing connection `id` (the script's `close()`); see [`close`].
    pub(crate) fn close(&self, id: u32, drop_after: bool) {
        if let Some(conn) = self.inner.borrow().open.get(&id) {
            close(&conn.closer, drop_after);
        }
    }

    /// Closes the connections of `vu` (a session ends): completes when each said goodbye
    /// or [`CLOSE_GRACE`] passed. Their drivers stop without telling JavaScript.
    pub(crate) fn close_vu(&self, vu: VuKey) -> impl std::future::Future<Output = ()> + 'static {
        let closers: Vec<Closer> = {
            let inner = self.inner.borrow();
            inner
                .by_vu
                .get(&vu)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| inner.open.get(id).map(|c| c.closer.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        async move {
            if !closers.is_empty() {
                futures_util::future::join_all(closers.into_iter().map(close_and_wait)).await;
            }
        }
    }

    /// The user is gone: close what is still open (in background tasks: a goodbye takes a
    /// round trip). Their events no longer reach JavaScript, since the user is gone.
    pub(crate) fn vu_ended(&self, vu: VuKey) {
        let ids = self.inner.borrow_mut().by_vu.remove(&vu);
        let Some(ids) = ids else { return };
        let inner = self.inner.borrow();
        for id in ids {
            if let Some(conn) = inner.open.get(&id) {
                close(&conn.closer, true);
            }
        }
    }

    /// Records one sample.
    pub(crate) fn record(&self, state: &State, metric: Metric, sample: Sample<'_>, value: f64) {
        let id = {
            let mut inner = self.inner.borrow_mut();
            let extra = match (metric, sample.extra) {
                (Metric::SioEventsReceived | Metric::SioEventLatency, Some(name)) => {
                    if inner.event_names.contains(name) {
                        Some(name)
                    } else if inner.event_names.len() < MAX_EVENT_NAMES {
                        inner.event_names.insert(name.into());
                        Some(name)
                    } else {
                        Some(OVERFLOW_EVENT)
                    }
                }
                (_, e) => e,
            };
            let key = (metric, sample.transport, extra.map(Box::from));
            match inner.series.get(&key) {
                Some(id) => *id,
                None => {
                    let (kind, vt, name) = metric.def();
                    let mut pairs = vec![("scenario", SCENARIO)];
                    if let Some(t) = sample.transport {
                        pairs.push(("transport", t));
                    }
                    if let (Some(tag), Some(v)) = (metric.extra_tag(), extra) {
                        pairs.push((tag, v));
                    }
                    let Ok(id) = state.metrics.borrow_mut().recorder.series(
                        kind,
                        vt,
                        name,
                        &Tags::new(pairs),
                    ) else {
                        // Only a script metric of the same name and another kind fails here.
                        return;
                    };
                    inner.series.insert(key, id);
                    id
                }
            }
        };
        let (kind, _, _) = metric.def();
        let mut m = state.metrics.borrow_mut();
        match kind {
            MetricKind::Trend => m.recorder.add_trend(id, value),
            _ => m.recorder.add_counter(id, value),
        }
    }

    /// Drops every JavaScript handle (before the context goes) and forgets the connections;
    /// their tasks are dropped with the worker's task set.
    pub(crate) fn shutdown(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.ws_dispatch = None;
        inner.sio_dispatch = None;
        inner.open.clear();
        inner.by_vu.clear();
    }
}

/// Starts closing a connection. `drop_after` stops its driver once the goodbye was sent
/// (the owner is gone, so nobody listens to what comes after).
pub(crate) fn close(closer: &Closer, drop_after: bool) {
    if drop_after {
        tokio::task::spawn_local(close_and_wait(closer.clone()));
        return;
    }
    match closer {
        Closer::SocketIo { handle, .. } => {
            let handle = handle.clone();
            tokio::task::spawn_local(async move {
                let _ = tokio::time::timeout(CLOSE_GRACE, handle.disconnect()).await;
            });
        }
        Closer::Ws(out) => out.close(None, false),
    }
}

/// Says goodbye on a connection whose owner is gone, then stops its driver.
async fn close_and_wait(closer: Closer) {
    match closer {
        Closer::SocketIo {
            handle,
            kill,
            ended,
        } => {
            // After the goodbye the driver sees the session close and ends by itself (also
            // when the script closed the socket just before its session ended).
            let bye = async {
                handle.disconnect().await;
                ended.wait().await;
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, bye).await;
            kill.notify_one();
        }
        Closer::Ws(out) => {
            out.close(None, true);
            let _ = tokio::time::timeout(CLOSE_GRACE, out.ended.wait()).await;
        }
    }
}

/// Calls a module's dispatcher with `args`, as user `vu` (or as nobody for `None`, used for
/// the last message of a connection whose owner may be gone). An exception in a handler is
/// logged once; it does not end the connection.
pub(crate) fn dispatch(
    state: &Rc<State>,
    module: Module,
    vu: Option<VuKey>,
    args: impl for<'js> FnOnce(&Ctx<'js>) -> rquickjs::Result<Vec<Value<'js>>>,
) {
    let Some(f) = state.conns.dispatch(module) else {
        return;
    };
    let st = state.clone();
    state.enter(vu, move |ctx| {
        let Ok(f) = f.restore(ctx) else { return };
        let args = match args(ctx) {
            Ok(a) => a,
            Err(e) => {
                report(ctx, &st, e);
                return;
            }
        };
        let mut call = rquickjs::function::Args::new(ctx.clone(), args.len());
        for a in args {
            if call.push_arg(a).is_err() {
                return;
            }
        }
        if let Err(e) = f.call_arg::<Value<'_>>(call) {
            report(ctx, &st, e);
        }
    });
}

fn report(ctx: &Ctx<'_>, state: &State, e: rquickjs::Error) {
    let err = match e {
        rquickjs::Error::Exception => state.script_error(ctx, ctx.catch()),
        other => crate::error::ScriptError::plain(other.to_string()),
    };
    state.log_error_once("event handler failed", &err);
}
