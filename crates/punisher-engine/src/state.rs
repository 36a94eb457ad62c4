//! A worker's state as JavaScript sees it: the virtual users, the "current VU" slot, timers,
//! metrics, HTTP settings, and the single place where Rust enters the context ([`State::enter`]).
//!
//! Architecture invariant: only [`State::enter`] runs JavaScript after init. It sets the
//! current VU, runs the closure, drains the job queue (so promise continuations run in the
//! slot of the VU whose operation completed) and clears the slot. Natives therefore know which
//! user calls them by reading [`State::current`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use punisher_clients::cookies::{CookieJar, SharedJar};
use punisher_clients::http::{HttpClient, HttpShared};
use punisher_core::Segment;
use rquickjs::{Constructor, Context, Ctx, Function, Persistent, Value};
use tokio::sync::{Notify, oneshot};

use crate::barrier::BarrierHub;
use crate::bundle::Bundle;
use crate::error::ScriptError;
use crate::metrics::Metrics;

/// A virtual user's handle in its worker: slot index plus generation, so that a late
/// completion for an ended user never runs in the slot of a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct VuKey {
    index: u32,
    generation: u32,
}

impl VuKey {
    /// As a JS number (exact below 2^53).
    pub(crate) fn to_f64(self) -> f64 {
        ((self.generation as u64) << 32 | self.index as u64) as f64
    }

    pub(crate) fn from_f64(v: f64) -> Option<VuKey> {
        if !(v >= 0.0 && v < (1u64 << 53) as f64) {
            return None;
        }
        let n = v as u64;
        Some(VuKey {
            index: n as u32,
            generation: (n >> 32) as u32,
        })
    }
}

/// How an iteration ended.
#[derive(Debug)]
pub(crate) enum IterationEnd {
    /// The function's result as JSON, for users that asked for it (setup).
    Ok(Option<String>),
    Failed(ScriptError),
}

/// What one virtual user holds while it exists. Kept small: an idle user costs this plus
/// its task and its JS promise chain.
pub(crate) struct VuState {
    /// Worker-local number (`vu.id`).
    pub(crate) id: u64,
    /// Test-wide number (`vu.idInTest`), `k + 1`.
    pub(crate) id_in_test: u64,
    pub(crate) iteration: u64,
    /// `::outer::inner` while inside `group()`.
    pub(crate) group: Option<Rc<str>>,
    /// Created on first use, so users without HTTP cost nothing here.
    pub(crate) http: Option<Rc<HttpClient>>,
    pub(crate) jar: Option<SharedJar>,
    pub(crate) timers: Vec<u32>,
    pub(crate) done: Option<oneshot::Sender<IterationEnd>>,
    /// Whether `done` carries the function's result (setup's data).
    pub(crate) want_result: bool,
    /// Barriers this user arrived at, told to the hub when the user departs.
    pub(crate) barriers: Vec<Rc<str>>,
}

#[derive(Default)]
pub(crate) struct Vus {
    slots: Vec<(u32, Option<VuState>)>,
    free: Vec<u32>,
    pub(crate) live: usize,
}

impl Vus {
    pub(crate) fn insert(&mut self, vu: VuState) -> VuKey {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.0 = slot.0.wrapping_add(1);
            slot.1 = Some(vu);
            return VuKey {
                index,
                generation: slot.0,
            };
        }
        self.slots.push((0, Some(vu)));
        VuKey {
            index: (self.slots.len() - 1) as u32,
            generation: 0,
        }
    }

    pub(crate) fn get(&self, key: VuKey) -> Option<&VuState> {
        match self.slots.get(key.index as usize) {
            Some((generation, Some(vu))) if *generation == key.generation => Some(vu),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: VuKey) -> Option<&mut VuState> {
        match self.slots.get_mut(key.index as usize) {
            Some((generation, Some(vu))) if *generation == key.generation => Some(vu),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: VuKey) -> Option<VuState> {
        let slot = self.slots.get_mut(key.index as usize)?;
        if slot.0 != key.generation || slot.1.is_none() {
            return None;
        }
        self.live -= 1;
        self.free.push(key.index);
        slot.1.take()
    }

    fn drain(&mut self) -> Vec<VuState> {
        self.free.clear();
        self.live = 0;
        self.slots.drain(..).filter_map(|(_, vu)| vu).collect()
    }
}

/// Whether script code may use init-only (`open`) or run-time (`http`, timers) features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Init,
    Run,
}

/// JavaScript values the worker keeps between entries.
pub(crate) struct Hidden {
    pub(crate) runner: Persistent<Function<'static>>,
    /// The `Response` constructor (bootstrap.js).
    pub(crate) make_response: Persistent<Constructor<'static>>,
    pub(crate) default_fn: Option<Persistent<Function<'static>>>,
    pub(crate) setup_fn: Option<Persistent<Function<'static>>>,
    pub(crate) teardown_fn: Option<Persistent<Function<'static>>>,
    pub(crate) handle_summary_fn: Option<Persistent<Function<'static>>>,
    pub(crate) data: Option<Persistent<Value<'static>>>,
}

pub(crate) struct Timer {
    pub(crate) vu: Option<VuKey>,
    pub(crate) abort: tokio::task::AbortHandle,
}

/// HTTP settings of the worker; clients are made per user on demand.
pub(crate) struct HttpEnv {
    pub(crate) shared: Arc<HttpShared>,
    pub(crate) share_connections: bool,
}

pub(crate) struct State {
    pub(crate) worker: usize,
    ctx: RefCell<Option<Context>>,
    pub(crate) current: Cell<Option<VuKey>>,
    pub(crate) vus: RefCell<Vus>,
    pub(crate) next_vu_id: Cell<u64>,
    pub(crate) phase: Cell<Phase>,
    pub(crate) bundle: Arc<Bundle>,
    /// `inspect` mode: `open()` reads the disk and records what it read.
    pub(crate) read_disk: bool,
    pub(crate) opened: RefCell<BTreeMap<String, Vec<u8>>>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) metrics: RefCell<Metrics>,
    pub(crate) http: Option<HttpEnv>,
    pub(crate) barriers: Arc<dyn BarrierHub>,
    /// The share of data rows (`SharedRows`) this host owns: its worker's segment.
    pub(crate) rows: Segment,
    pub(crate) timers: RefCell<HashMap<u32, Timer>>,
    pub(crate) next_timer: Cell<u32>,
    pub(crate) hidden: RefCell<Option<Hidden>>,
    errors_logged: RefCell<HashSet<String>>,
    /// Users in an iteration (or a session) right now.
    pub(crate) active: Cell<u64>,
    /// The most users active at once since the last report: a user who starts and ends
    /// between two reports still counts towards `vus_max`.
    pub(crate) peak_active: Cell<u64>,
    /// Woken whenever a user ends, for drains.
    pub(crate) user_ended: Notify,
    /// The users' WebSocket and Socket.IO connections.
    pub(crate) conns: crate::js::Conns,
}

pub(crate) struct StateConfig {
    pub(crate) worker: usize,
    pub(crate) bundle: Arc<Bundle>,
    pub(crate) read_disk: bool,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) http: Option<HttpEnv>,
    pub(crate) barriers: Arc<dyn BarrierHub>,
    /// Which data rows `SharedRows` gives this host: a worker's segment; none for the
    /// host of `setup()` and `teardown()`; all for `inspect`.
    pub(crate) rows: Segment,
}

impl State {
    pub(crate) fn new(cfg: StateConfig, ctx: Context) -> Rc<State> {
        Rc::new(State {
            worker: cfg.worker,
            ctx: RefCell::new(Some(ctx)),
            current: Cell::new(None),
            vus: RefCell::new(Vus::default()),
            next_vu_id: Cell::new(1),
            phase: Cell::new(Phase::Init),
            bundle: cfg.bundle,
            read_disk: cfg.read_disk,
            opened: RefCell::new(BTreeMap::new()),
            env: cfg.env,
            metrics: RefCell::new(Metrics::new()),
            http: cfg.http,
            barriers: cfg.barriers,
            rows: cfg.rows,
            timers: RefCell::new(HashMap::new()),
            next_timer: Cell::new(1),
            hidden: RefCell::new(None),
            errors_logged: RefCell::new(HashSet::new()),
            active: Cell::new(0),
            peak_active: Cell::new(0),
            user_ended: Notify::new(),
            conns: crate::js::Conns::new(),
        })
    }

    /// Runs `f` in the context as user `vu`, then drains the job queue in that user's slot.
    /// Returns `None` after shutdown, or when `vu` is given but that user has ended.
    pub(crate) fn enter<R>(
        &self,
        vu: Option<VuKey>,
        f: impl for<'js> FnOnce(&Ctx<'js>) -> R,
    ) -> Option<R> {
        if let Some(key) = vu
            && self.vus.borrow().get(key).is_none()
        {
            return None;
        }
        let ctx = self.ctx.borrow().clone()?;
        Some(ctx.with(|ctx| {
            self.current.set(vu);
            let r = f(&ctx);
            // Exceptions of jobs are already handled by the runner's handlers; what is left
            // (an interrupted job, an unhandled rejection) is dropped here.
            while ctx.execute_pending_job() {}
            self.current.set(None);
            r
        }))
    }

    /// Creates a user (not yet running anything).
    pub(crate) fn add_vu(&self, id_in_test: u64) -> VuKey {
        let id = self.next_vu_id.get();
        self.next_vu_id.set(id + 1);
        self.vus.borrow_mut().insert(VuState {
            id,
            id_in_test,
            iteration: 0,
            group: None,
            http: None,
            jar: None,
            timers: Vec::new(),
            done: None,
            want_result: false,
            barriers: Vec::new(),
        })
    }

    /// Ends a user: cancels its timers, closes its connections (by dropping its client, and
    /// its WebSocket and Socket.IO connections with a goodbye).
    pub(crate) fn remove_vu(&self, key: VuKey) {
        self.conns.vu_ended(key);
        let vu = self.vus.borrow_mut().remove(key);
        if let Some(vu) = vu {
            let mut timers = self.timers.borrow_mut();
            for id in vu.timers {
                if let Some(t) = timers.remove(&id) {
                    t.abort.abort();
                }
            }
        }
        self.user_ended.notify_waiters();
    }

    /// Closes the user's WebSocket and Socket.IO connections, each with its goodbye (bounded
    /// by a grace); the future holds no borrow of the state.
    pub(crate) fn close_connections(&self, key: VuKey) -> impl std::future::Future<Output = ()> {
        self.conns.close_vu(key)
    }

    /// A session user left the test: barriers it never reached must not wait for it.
    pub(crate) fn depart_barriers(&self, key: VuKey) {
        let reached = self
            .vus
            .borrow_mut()
            .get_mut(key)
            .map(|v| std::mem::take(&mut v.barriers))
            .unwrap_or_default();
        let names: Vec<&str> = reached.iter().map(|n| &**n).collect();
        self.barriers.depart(&names);
    }

    /// Closes the idle keep-alive connections that their server already closed, the
    /// users' and the worker pool's; returns how many (see `HttpClient::close_dead_idle`).
    pub(crate) fn close_dead_http(&self) -> usize {
        let Some(env) = &self.http else {
            return 0;
        };
        let users: usize = self
            .vus
            .borrow()
            .slots
            .iter()
            .filter_map(|(_, vu)| vu.as_ref()?.http.as_ref())
            .map(|client| client.close_dead_idle())
            .sum();
        users + env.shared.close_dead_idle()
    }

    /// The user's HTTP client, made on first use.
    pub(crate) fn client_for(&self, key: Option<VuKey>) -> Option<Rc<HttpClient>> {
        let env = self.http.as_ref()?;
        let mut vus = self.vus.borrow_mut();
        let vu = vus.get_mut(key?)?;
        if vu.http.is_none() {
            let jar = vu.jar.get_or_insert_with(CookieJar::shared).clone();
            vu.http = Some(Rc::new(HttpClient::new(
                env.shared.clone(),
                jar,
                env.share_connections,
            )));
        }
        vu.http.clone()
    }

    pub(crate) fn group_of(&self, key: Option<VuKey>) -> Option<Rc<str>> {
        key.and_then(|k| self.vus.borrow().get(k).and_then(|v| v.group.clone()))
    }

    /// Logs a script error once per distinct message (with its location).
    pub(crate) fn log_error_once(&self, what: &str, err: &ScriptError) {
        let text = err.short();
        let mut seen = self.errors_logged.borrow_mut();
        // Bounded, so a script throwing unique messages cannot grow memory forever.
        if seen.len() < 1000 && seen.insert(text.clone()) {
            tracing::warn!(worker = self.worker, "{what}: {text}");
        }
    }

    /// Converts a caught JS error into a [`ScriptError`] with its location in our sources.
    pub(crate) fn script_error<'js>(&self, ctx: &Ctx<'js>, value: Value<'js>) -> ScriptError {
        script_error(ctx, value, &self.bundle)
    }

    /// TCP connections the worker's clients hold open now (0 without HTTP, in `inspect`).
    pub(crate) fn open_connections(&self) -> u64 {
        self.http
            .as_ref()
            .and_then(|h| h.shared.config().open_connections.as_ref())
            .map_or(0, |g| g.get())
    }

    /// Drops every JavaScript handle the worker holds and the context itself. Must run
    /// before the runtime is dropped (QuickJS aborts on leaked handles) and after every task
    /// that holds handles is gone.
    pub(crate) fn shutdown(&self) {
        self.hidden.borrow_mut().take();
        self.conns.shutdown();
        for (_, t) in self.timers.borrow_mut().drain() {
            t.abort.abort();
        }
        drop(self.vus.borrow_mut().drain());
        self.ctx.borrow_mut().take();
    }
}

/// Builds a [`ScriptError`] from a thrown value.
pub(crate) fn script_error<'js>(ctx: &Ctx<'js>, value: Value<'js>, bundle: &Bundle) -> ScriptError {
    let _ = ctx;
    if let Some(obj) = value.as_object() {
        let message: Option<String> = obj.get("message").ok();
        let stack: Option<String> = obj.get("stack").ok();
        let kind: Option<String> = obj.get("name").ok();
        if message.is_some() || stack.is_some() {
            let location = stack.as_deref().and_then(|s| {
                crate::error::location_from_stack(s, |f| bundle.sources.contains_key(f))
            });
            let source_line = location.as_ref().and_then(|loc| {
                bundle
                    .sources
                    .get(&loc.file)
                    .and_then(|src| src.lines().nth(loc.line.saturating_sub(1) as usize))
                    .map(str::to_owned)
            });
            return ScriptError {
                location,
                kind: kind.unwrap_or_default(),
                message: message.unwrap_or_default(),
                source_line,
            };
        }
    }
    let text = match value.as_string().and_then(|s| s.to_string().ok()) {
        Some(s) => s,
        None => ctx
            .json_stringify(value.clone())
            .ok()
            .flatten()
            .and_then(|s| s.to_string().ok())
            .unwrap_or_else(|| format!("{:?}", value.type_of())),
    };
    ScriptError::plain(text)
}
