//! One worker: an OS thread with a current_thread tokio runtime, a `LocalSet` and one
//! JavaScript [`Host`]. It runs its share of the executor's users, drains on stop, and sends
//! a [`WorkerReport`] every wall-clock second.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use punisher_clients::http::{DEFAULT_MAX_REDIRECTS, HttpConfig, HttpShared};
use punisher_clients::net::OpenGauge;
use punisher_core::{Executor, Plan, Segment};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::control::{Commands, Control};
use crate::error::{RunError, ScenarioError};
use crate::js::Host;
use crate::metrics::Fixed;
use crate::state::{HttpEnv, IterationEnd, State, StateConfig, VuKey};
use crate::{EngineConfig, Scenario, WorkerReport};

/// Per-worker spacing floor between arrivals: when thousands of users are due at the same
/// instant (a zero ramp), starting them all in one tick makes them oscillate in phase for
/// the whole run; 20 us spreads 50,000 users over a second.
const MIN_ARRIVAL_SPACING: Duration = Duration::from_micros(20);
/// How often looping executors re-read their target (ramping stages).
const TARGET_TICK: Duration = Duration::from_millis(50);

/// Which exported function an iteration calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Default,
    Setup,
    Teardown,
    HandleSummary,
}

/// Everything a worker thread needs.
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    pub(crate) scenario: Arc<Scenario>,
    /// The engine's configuration; `segment` is this worker's share.
    pub(crate) cfg: EngineConfig,
    pub(crate) setup_data: serde_json::Value,
    pub(crate) control: Arc<Control>,
    pub(crate) reports: mpsc::Sender<WorkerReport>,
    /// The common start time of all workers, sent once every worker is ready.
    pub(crate) go: oneshot::Receiver<std::time::Instant>,
}

pub(crate) fn build_host(
    index: usize,
    scenario: &Scenario,
    cfg: &EngineConfig,
    rows: Segment,
    control: Arc<Control>,
) -> Result<Host, RunError> {
    let plan = &cfg.plan;
    let shared = HttpShared::new(HttpConfig {
        insecure: plan.http.insecure_skip_tls_verify,
        max_body_bytes: plan.http.max_body_bytes,
        default_timeout: plan.http.timeout,
        max_redirects: DEFAULT_MAX_REDIRECTS,
        user_agent: concat!("punisher/", env!("CARGO_PKG_VERSION")).to_owned(),
        source_pool: cfg.source_pool.clone(),
        // The worker's one gauge: its WebSocket and Socket.IO clients take it from here.
        open_connections: Some(OpenGauge::new()),
    })
    .map_err(|e| RunError::Http(e.to_string()))?;
    let host = Host::new(
        StateConfig {
            worker: index,
            bundle: Arc::new(scenario.bundle.clone()),
            read_disk: false,
            env: cfg.env.clone(),
            http: Some(HttpEnv {
                shared: Arc::new(shared),
                share_connections: plan.http.share_connections,
            }),
            barriers: cfg.barriers.clone(),
            rows,
        },
        cfg.memory_limit_bytes,
        control,
    )?;
    host.evaluate()?;
    Ok(host)
}

/// Makes `data` (setup's result) the argument of every iteration.
pub(crate) fn set_data(host: &Host, data: &serde_json::Value) -> Result<(), RunError> {
    if data.is_null() {
        return Ok(());
    }
    let text = data.to_string();
    let state = &host.state;
    let saved = state.enter(None, |ctx| {
        ctx.json_parse(text)
            .map(|v| rquickjs::Persistent::save(ctx, v))
            .map_err(|e| e.to_string())
    });
    match saved {
        Some(Ok(v)) => {
            if let Some(h) = state.hidden.borrow_mut().as_mut() {
                h.data = Some(v);
            }
            Ok(())
        }
        Some(Err(e)) => Err(RunError::SetupData(e)),
        None => Err(RunError::Scenario(ScenarioError::Engine(
            "context is gone".into(),
        ))),
    }
}

/// The body of a worker thread. `ready` learns whether init succeeded.
pub(crate) fn worker_main(spec: WorkerSpec, ready: std::sync::mpsc::Sender<Result<(), RunError>>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(RunError::Thread(e.to_string())));
            return;
        }
    };
    // A worker's data rows are those of its segment (`SharedRows`); shares adopted later
    // bring users, not rows: a departed agent may have used any of its rows.
    let host = build_host(
        spec.index,
        &spec.scenario,
        &spec.cfg,
        spec.cfg.segment,
        spec.control.clone(),
    )
    .and_then(|host| set_data(&host, &spec.setup_data).map(|()| host));
    let host = match host {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut spec = spec;
        let go = std::mem::replace(&mut spec.go, oneshot::channel().1);
        // Without a start signal the run was abandoned before it began.
        if let Ok(start) = go.await {
            run(&host, spec, Instant::from_std(start)).await;
        }
    });
    // Tasks still in the set hold JavaScript handles: drop them before the host.
    drop(local);
    drop(host);
}

/// Scheduler state shared by a worker's tasks.
pub(crate) struct Sched {
    pub(crate) state: Rc<State>,
    control: Arc<Control>,
    start: Instant,
    segment: Segment,
    plan: Plan,
    /// Test-wide number of looping users wanted now.
    wanted: Cell<u64>,
    stopping: Cell<bool>,
    /// This worker's share of the target, for reports.
    target: Cell<u64>,
    arrived: Cell<u64>,
    /// Looping users (by test-wide number) that run now.
    running: RefCell<HashSet<u64>>,
    /// Set when a looping user left, so the target is re-applied.
    dirty: Cell<bool>,
    last_report_ms: Cell<u64>,
    last_cpu: Cell<Duration>,
    /// Departed agents' shares this worker runs too (see `Commands::adopted`).
    adopted: RefCell<Vec<(Segment, u64)>>,
    /// The next user (session users) or arrival (arrival rates) number the schedule would
    /// start: every owned number below it was started, none above. Looping users: 0.
    next_user: Cell<u64>,
}

impl Sched {
    /// Whether user or arrival `k` is this worker's: its own segment, or an adopted share.
    fn owns(&self, k: u64) -> bool {
        self.segment.owns(k)
            || self
                .adopted
                .borrow()
                .iter()
                .any(|(s, from)| k >= *from && s.owns(k))
    }

    /// How many of the users `0..n` are this worker's.
    fn share_below(&self, n: u64) -> u64 {
        let adopted: u64 = self
            .adopted
            .borrow()
            .iter()
            .map(|(s, from)| (*from..n).filter(|k| s.owns(*k)).count() as u64)
            .sum();
        self.segment.count_below(n) + adopted
    }

    /// Takes the shares adopted since the last call (each starting at `floor` at least).
    fn take_adoptions(&self, c: &Commands, floor: u64) -> Vec<(Segment, u64)> {
        let mut adopted = self.adopted.borrow_mut();
        let new: Vec<(Segment, u64)> = c
            .adopted
            .iter()
            .skip(adopted.len())
            .map(|(s, from)| (*s, (*from).max(floor)))
            .collect();
        adopted.extend_from_slice(&new);
        new
    }
}

/// Report boundaries are whole seconds of the corrected clock (the controller's), so that
/// every agent's seconds are the same seconds.
fn unix_ms() -> u64 {
    crate::clock::unix_ms_corrected()
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

async fn run(host: &Host, spec: WorkerSpec, start: Instant) {
    let sched = Rc::new(Sched {
        state: host.state.clone(),
        control: spec.control.clone(),
        start,
        segment: spec.cfg.segment,
        plan: spec.cfg.plan.clone(),
        wanted: Cell::new(0),
        stopping: Cell::new(false),
        target: Cell::new(0),
        arrived: Cell::new(0),
        running: RefCell::new(HashSet::new()),
        dirty: Cell::new(false),
        last_report_ms: Cell::new(unix_ms()),
        last_cpu: Cell::new(thread_cpu()),
        adopted: RefCell::new(Vec::new()),
        next_user: Cell::new(0),
    });
    let reporter = tokio::task::spawn_local(report_loop(sched.clone(), spec.reports.clone()));
    let mut commands = spec.control.commands.subscribe();
    let executor = spec.cfg.plan.executor.clone();
    tokio::select! {
        _ = run_executor(&sched, &executor) => {}
        _ = commands.wait_for(|c| c.aborted) => {}
    }
    // What this worker leaves undone, for another agent to adopt if this one departs.
    let next = sched.next_user.get();
    let mut shares = vec![(sched.segment, next)];
    shares.extend(
        sched
            .adopted
            .borrow()
            .iter()
            .map(|(s, from)| (*s, (*from).max(next))),
    );
    if let Ok(mut l) = spec.control.left_over.lock() {
        *l = Some(crate::LeftOver {
            shares,
            interrupted_users: sched.state.active.get(),
        });
    }
    reporter.abort();
    let report = make_report(&sched, true, Duration::ZERO);
    let _ = spec.reports.send(report).await;
}

async fn run_executor(sched: &Rc<Sched>, executor: &Executor) {
    match executor {
        Executor::SessionUsers {
            users,
            ramp_up,
            max_duration,
        } => session_users(sched, *users, *ramp_up, *max_duration).await,
        Executor::ConstantVus { .. } | Executor::RampingVus { .. } => {
            looping(sched, executor).await
        }
        Executor::ConstantArrivalRate {
            pre_allocated_vus,
            max_vus,
            ..
        } => arrival_rate(sched, executor, *pre_allocated_vus, *max_vus).await,
    }
}

fn commands(rx: &watch::Receiver<Commands>) -> Commands {
    rx.borrow().clone()
}

/// Runs one call of `entry` as user `key`. Returns false when it could not complete (the
/// user is gone, or the call was interrupted); records iteration metrics for `Default`.
pub(crate) async fn iterate(
    state: &Rc<State>,
    key: VuKey,
    entry: Entry,
    scheduled: Option<Instant>,
) -> Option<IterationEnd> {
    let (tx, rx) = oneshot::channel();
    {
        let mut vus = state.vus.borrow_mut();
        let vu = vus.get_mut(key)?;
        vu.done = Some(tx);
        if vu.iteration > 0 {
            // As in k6, cookies are per iteration; connections are kept.
            if let Some(jar) = &vu.jar
                && let Ok(mut jar) = jar.lock()
            {
                jar.clear();
            }
        }
    }
    let began = scheduled.unwrap_or_else(Instant::now);
    let started = state.enter(Some(key), |ctx| -> bool {
        let (runner, f, data) = {
            let hidden = state.hidden.borrow();
            let Some(h) = hidden.as_ref() else {
                return false;
            };
            let f = match entry {
                Entry::Default => h.default_fn.clone(),
                Entry::Setup => h.setup_fn.clone(),
                Entry::Teardown => h.teardown_fn.clone(),
                Entry::HandleSummary => h.handle_summary_fn.clone(),
            };
            (h.runner.clone(), f, h.data.clone())
        };
        let (Ok(runner), Some(Ok(f))) = (runner.restore(ctx), f.map(|f| f.restore(ctx))) else {
            return false;
        };
        let data = match data.map(|d| d.restore(ctx)) {
            Some(Ok(d)) => d,
            _ => rquickjs::Value::new_undefined(ctx.clone()),
        };
        runner.call::<_, ()>((f, data, key.to_f64())).is_ok()
    });
    if started != Some(true) {
        return None;
    }
    let end = rx.await.ok()?;
    if let Some(vu) = state.vus.borrow_mut().get_mut(key) {
        vu.iteration += 1;
    }
    if entry == Entry::Default {
        let mut m = state.metrics.borrow_mut();
        m.count(Fixed::Iterations, 1.0);
        m.iteration_duration(began.elapsed());
        if matches!(end, IterationEnd::Failed(_)) {
            m.count(Fixed::IterationErrors, 1.0);
        }
    }
    if let IterationEnd::Failed(err) = &end
        && entry == Entry::Default
    {
        state.log_error_once("iteration failed", err);
    }
    // An iteration (a session) ends with the goodbyes of the WebSocket and Socket.IO
    // connections it left open; the user counts as active until they are said.
    state.close_connections(key).await;
    Some(end)
}

/// Waits until every user ended, at most `grace` (forever when `None`, unless a stop
/// command brings a grace). Past the grace, running script code is interrupted.
async fn drain(sched: &Rc<Sched>, grace: Option<Duration>) {
    let state = &sched.state;
    let mut rx = sched.control.commands.subscribe();
    let mut deadline = grace.map(|g| Instant::now() + g);
    if let Some(g) = grace {
        sched.control.interrupt_after(g);
    }
    loop {
        let c = commands(&rx);
        if c.aborted {
            return;
        }
        if let Some(g) = c.stop {
            let d = Instant::now() + g;
            if deadline.is_none_or(|cur| d < cur) {
                deadline = Some(d);
            }
        }
        if state.active.get() == 0 {
            return;
        }
        let ended = state.user_ended.notified();
        let until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ended => {}
            _ = until => {
                sched.control.interrupt_after(Duration::ZERO);
                return;
            }
            _ = rx.changed() => {}
        }
    }
}

/// Waits for a command change or `until`, whichever first. Returns true on a command change.
async fn wait(rx: &mut watch::Receiver<Commands>, until: Instant) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => false,
        r = rx.changed() => r.is_ok(),
    }
}

fn user_started(state: &State) {
    let active = state.active.get() + 1;
    state.active.set(active);
    state.peak_active.set(state.peak_active.get().max(active));
}

fn user_ended(state: &State) {
    state.active.set(state.active.get().saturating_sub(1));
    state.user_ended.notify_waiters();
}

async fn session_users(
    sched: &Rc<Sched>,
    users: u64,
    ramp_up: Duration,
    max_duration: Option<Duration>,
) {
    let mut rx = sched.control.commands.subscribe();
    let spacing = ramp_up.as_secs_f64() / users as f64;
    let cap = max_duration.map(|d| sched.start + d);
    let mut limit = users;
    sched.target.set(sched.share_below(limit));
    let mut k = 0u64;
    let mut local_n = 0u64;
    let mut paused_since: Option<Instant> = None;
    let mut paused_total = Duration::ZERO;
    loop {
        let c = commands(&rx);
        if c.stop.is_some() || c.aborted {
            break;
        }
        if let Some(t) = c.target
            && t != limit
        {
            limit = t;
            sched.target.set(sched.share_below(limit));
        }
        if c.paused {
            paused_since.get_or_insert_with(Instant::now);
            if rx.changed().await.is_err() {
                break;
            }
            continue;
        }
        if let Some(since) = paused_since.take() {
            paused_total += since.elapsed();
        }
        let adopted = sched.take_adoptions(&c, 0);
        for (s, from) in &adopted {
            // A departed agent's users whose time already came start now; the rest follow
            // the schedule.
            for late in *from..k.min(limit) {
                if s.owns(late) {
                    spawn_session_user(sched, late);
                }
            }
        }
        if !adopted.is_empty() {
            sched.target.set(sched.share_below(limit));
        }
        if cap.is_some_and(|c| Instant::now() >= c) {
            break;
        }
        if k >= limit {
            // Every arrival is out. While sessions still run, a ScaleUsers can add more.
            if sched.state.active.get() == 0 {
                break;
            }
            let ended = sched.state.user_ended.notified();
            let capped = async {
                match cap {
                    Some(c) => tokio::time::sleep_until(c).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ended => {}
                _ = capped => {}
                r = rx.changed() => if r.is_err() { break },
            }
            continue;
        }
        if !sched.owns(k) {
            k += 1;
            sched.next_user.set(k);
            continue;
        }
        let due = (sched.start + paused_total + Duration::from_secs_f64(spacing * k as f64))
            .max(sched.start + paused_total + MIN_ARRIVAL_SPACING * local_n as u32);
        if due > Instant::now() && wait(&mut rx, due).await {
            continue;
        }
        spawn_session_user(sched, k);
        k += 1;
        sched.next_user.set(k);
        local_n += 1;
    }
    // Sessions run to their end unless capped or stopped.
    let grace = cap.map(|c| c.saturating_duration_since(Instant::now()) + sched.plan.graceful_stop);
    drain(sched, grace).await;
}

fn spawn_session_user(sched: &Rc<Sched>, k: u64) {
    let sched = sched.clone();
    let state = sched.state.clone();
    user_started(&state);
    sched.arrived.set(sched.arrived.get() + 1);
    let key = state.add_vu(k + 1);
    tokio::task::spawn_local(async move {
        let _ = iterate(&state, key, Entry::Default, None).await;
        state.depart_barriers(key);
        state.remove_vu(key);
        user_ended(&state);
    });
}

async fn looping(sched: &Rc<Sched>, executor: &Executor) {
    let mut rx = sched.control.commands.subscribe();
    let end = sched.start + executor.planned_duration();
    let mut applied: Option<u64> = None;
    loop {
        let c = commands(&rx);
        let now = Instant::now();
        if c.stop.is_some() || c.aborted || now >= end {
            break;
        }
        let target = c
            .target
            .unwrap_or_else(|| executor.target_vus_at(now - sched.start));
        sched.wanted.set(target);
        if !sched.take_adoptions(&c, 0).is_empty() {
            applied = None;
        }
        if applied != Some(target) || sched.dirty.replace(false) {
            if applied != Some(target) {
                sched.target.set(sched.share_below(target));
            }
            applied = Some(target);
            for k in 0..target {
                if sched.owns(k) && !sched.running.borrow().contains(&k) {
                    spawn_looping_user(sched, k);
                }
            }
        }
        let next = (now + TARGET_TICK).min(end);
        wait(&mut rx, next).await;
    }
    sched.wanted.set(0);
    sched.stopping.set(true);
    drain(sched, Some(sched.plan.graceful_stop)).await;
}

fn spawn_looping_user(sched: &Rc<Sched>, k: u64) {
    let sched = sched.clone();
    let state = sched.state.clone();
    sched.running.borrow_mut().insert(k);
    user_started(&state);
    sched.arrived.set(sched.arrived.get() + 1);
    let key = state.add_vu(k + 1);
    tokio::task::spawn_local(async move {
        while !sched.stopping.get() && k < sched.wanted.get() {
            if iterate(&state, key, Entry::Default, None).await.is_none() {
                break;
            }
        }
        sched.running.borrow_mut().remove(&k);
        sched.dirty.set(true);
        state.remove_vu(key);
        user_ended(&state);
    });
}

async fn arrival_rate(sched: &Rc<Sched>, executor: &Executor, pre_allocated: u64, max_vus: u64) {
    let state = &sched.state;
    let mut rx = sched.control.commands.subscribe();
    let idle: Rc<RefCell<Vec<VuKey>>> = Rc::new(RefCell::new(Vec::new()));
    let mut all: Vec<VuKey> = Vec::new();
    for k in 0..pre_allocated {
        if sched.segment.owns(k) {
            let key = state.add_vu(k + 1);
            idle.borrow_mut().push(key);
            all.push(key);
        }
    }
    // Users beyond the pre-allocated ones, by test-wide number, made when needed.
    let mut next_new = pre_allocated;
    sched.target.set(all.len() as u64);
    let mut n = 0u64;
    let mut paused = false;
    loop {
        let c = commands(&rx);
        if c.stop.is_some() || c.aborted {
            break;
        }
        paused = c.paused;
        // An open model takes over a departed agent's arrivals from now on: the ones it
        // missed are not made up.
        sched.take_adoptions(&c, n);
        let Some(offset) = executor.arrival_offset(n) else {
            break;
        };
        if !sched.owns(n) {
            n += 1;
            sched.next_user.set(n);
            continue;
        }
        let due = sched.start + offset;
        if due > Instant::now() && wait(&mut rx, due).await {
            continue;
        }
        n += 1;
        sched.next_user.set(n);
        if paused {
            continue;
        }
        sched.arrived.set(sched.arrived.get() + 1);
        let vu = idle.borrow_mut().pop().or_else(|| {
            while next_new < max_vus && !sched.segment.owns(next_new) {
                next_new += 1;
            }
            (next_new < max_vus).then(|| {
                let key = state.add_vu(next_new + 1);
                next_new += 1;
                all.push(key);
                sched.target.set(all.len() as u64);
                key
            })
        });
        let Some(vu) = vu else {
            state
                .metrics
                .borrow_mut()
                .count(Fixed::DroppedIterations, 1.0);
            continue;
        };
        user_started(state);
        let (state2, idle2) = (state.clone(), idle.clone());
        tokio::task::spawn_local(async move {
            let _ = iterate(&state2, vu, Entry::Default, Some(due)).await;
            idle2.borrow_mut().push(vu);
            user_ended(&state2);
        });
    }
    let _ = paused;
    drain(sched, Some(sched.plan.graceful_stop)).await;
    for key in all {
        state.remove_vu(key);
    }
}

/// Every this many reports, idle HTTP connections closed by their server are closed here too.
const CLOSE_DEAD_HTTP_EVERY: u64 = 5;

async fn report_loop(sched: Rc<Sched>, reports: mpsc::Sender<WorkerReport>) {
    for n in 1u64.. {
        if n % CLOSE_DEAD_HTTP_EVERY == 0 {
            // Unconstrained: each readiness check spends tokio's cooperative budget (128
            // per task poll), after which every connection would look alive.
            let closed = tokio::task::unconstrained(async { sched.state.close_dead_http() }).await;
            if closed > 0 {
                tracing::trace!(
                    closed,
                    "closed idle HTTP connections their server had closed"
                );
            }
        }
        let now_ms = unix_ms();
        let next_ms = (now_ms / 1000 + 1) * 1000;
        let due = Instant::now() + Duration::from_millis(next_ms - now_ms);
        tokio::time::sleep_until(due).await;
        let lag = Instant::now().saturating_duration_since(due);
        let report = make_report(&sched, false, lag);
        if reports.send(report).await.is_err() {
            return;
        }
    }
}

fn make_report(sched: &Sched, finished: bool, lag: Duration) -> WorkerReport {
    let end_ms = unix_ms().max(sched.last_report_ms.get());
    let start_ms = sched.last_report_ms.replace(end_ms);
    let snapshot = sched
        .state
        .metrics
        .borrow_mut()
        .recorder
        .take_snapshot(start_ms, end_ms);
    let cpu = thread_cpu();
    let used = cpu.saturating_sub(sched.last_cpu.replace(cpu));
    let wall = Duration::from_millis(end_ms - start_ms);
    let cpu_busy = if wall.is_zero() {
        0.0
    } else {
        (used.as_secs_f64() / wall.as_secs_f64()).min(1.0)
    };
    WorkerReport {
        worker: sched.state.worker,
        snapshot,
        active_users: sched.state.active.get(),
        peak_users: sched.state.peak_active.replace(sched.state.active.get()),
        target_users: sched.target.get(),
        arrived_users: sched.arrived.get(),
        finished,
        event_loop_lag: lag,
        cpu_busy,
        open_connections: sched.state.open_connections(),
        open_sockets: sched.state.conns.open_count() as u64,
    }
}
