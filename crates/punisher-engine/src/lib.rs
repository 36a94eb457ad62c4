//! punisher-engine: the rquickjs host. It turns a scenario script into a [`Scenario`]
//! (options, exports), and runs its virtual users on worker threads: one tokio
//! current_thread runtime and one QuickJS context per worker, where a virtual user is an
//! async call of the default export, not a runtime of its own.
//!
//! # Layout
//! - [`bundle`]: the script, its imports and opened files ([`Bundle`]), as shipped to agents.
//! - `js`: the QuickJS runtime and context, module loader, natives (`punisher`,
//!   `punisher/http`), timers, init-code evaluation.
//! - `state`: the worker's users, the "current VU" slot and the only entry into JavaScript.
//! - `worker`: worker threads, executors (session users, looping users, arrival rate),
//!   draining and per-second reports.
//! - `metrics`: built-in and custom metrics over a `punisher_metrics::Recorder`.
//! - [`barrier`]: [`BarrierHub`] and the in-process [`LocalBarrierHub`].
//! - `clock`: the process's wall clock corrected to the controller's ([`set_clock_offset_us`]).
//!
//! This is the only crate that knows rquickjs. It records metrics and sends one
//! [`WorkerReport`] per worker per second; aggregation, thresholds and output are the caller's.

pub mod barrier;
pub mod bundle;
mod clock;
mod control;
mod error;
mod js;
mod metrics;
mod state;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use punisher_clients::net::SourcePool;
use tokio::sync::mpsc;

pub use barrier::{BarrierError, BarrierHub, LocalBarrierHub};
pub use bundle::Bundle;
pub use clock::{clock_offset_us, set_clock_offset_us, unix_ms_corrected, unix_us_corrected};
pub use error::{Location, RunError, ScenarioError, ScriptError};

use control::Control;
use js::Host;
use state::{IterationEnd, StateConfig};
use worker::{Entry, WorkerSpec};

/// Reports waiting for the caller, across all workers. Each worker sends one per second, so
/// this holds a few seconds of a busy machine; when the caller falls behind, workers wait to
/// send (their recording continues: nothing is lost, reports just arrive later).
const REPORT_CHANNEL_CAPACITY: usize = 256;

/// A checked scenario: its bundle (with opened files) and what its module exports.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scenario {
    pub bundle: Bundle,
    /// The exported `options`, as JSON (null when there are none).
    pub options: serde_json::Value,
    pub has_setup: bool,
    pub has_teardown: bool,
    pub has_handle_summary: bool,
}

/// Compiles the bundle and evaluates its init code in a throwaway runtime: reads
/// `options`, checks that `default` is a function, and adds files read by `open()` to the
/// bundle. Errors carry `file:line:col` and the offending source line.
pub fn inspect(bundle: Bundle, env: &BTreeMap<String, String>) -> Result<Scenario, ScenarioError> {
    let bundle = Arc::new(bundle);
    let control = Arc::new(Control::new());
    control.interrupt_after(js::INIT_TIMEOUT);
    let host = Host::new(
        StateConfig {
            worker: 0,
            bundle: bundle.clone(),
            read_disk: true,
            env: env.clone(),
            http: None,
            barriers: Arc::new(LocalBarrierHub::new(1)),
            rows: punisher_core::Segment::FULL,
        },
        0,
        control,
    )?;
    let info = host.evaluate()?;
    let opened = std::mem::take(&mut *host.state.opened.borrow_mut());
    drop(host);
    let mut bundle = Arc::try_unwrap(bundle).unwrap_or_else(|b| (*b).clone());
    bundle.files.extend(opened);
    Ok(Scenario {
        bundle,
        options: info.options,
        has_setup: info.has_setup,
        has_teardown: info.has_teardown,
        has_handle_summary: info.has_handle_summary,
    })
}

/// How to run a scenario on this machine (or on this agent).
#[derive(Clone)]
pub struct EngineConfig {
    pub workers: usize,
    pub plan: punisher_core::Plan,
    /// The share of the test this engine runs (the whole test locally).
    pub segment: punisher_core::Segment,
    /// `__ENV`.
    pub env: BTreeMap<String, String>,
    pub source_pool: Option<Arc<SourcePool>>,
    /// QuickJS heap limit per worker; 0 for none.
    pub memory_limit_bytes: usize,
    pub barriers: Arc<dyn BarrierHub>,
    /// Users in the whole test (all agents), for barriers and `vu.idInTest`.
    pub test_users: u64,
}

/// What a worker tells its caller every wall-clock second, and once more when it finished.
#[derive(Debug)]
pub struct WorkerReport {
    pub worker: usize,
    /// Metrics recorded since the previous report.
    pub snapshot: punisher_metrics::Snapshot,
    /// Users in a session or an iteration right now.
    pub active_users: u64,
    /// The most users in a session or an iteration at once since the previous report.
    pub peak_users: u64,
    /// This worker's share of the wanted users.
    pub target_users: u64,
    /// Users (or arrivals) started so far.
    pub arrived_users: u64,
    pub finished: bool,
    /// How late the report timer fired: a busy worker.
    pub event_loop_lag: Duration,
    /// Share of the interval the worker thread was on a CPU (0..1).
    pub cpu_busy: f64,
    /// TCP connections the worker's users hold open now: HTTP keep-alive and in flight,
    /// WebSocket, and Engine.IO (Socket.IO) polling and websocket streams.
    pub open_connections: u64,
    /// WebSocket and Socket.IO sessions open now.
    pub open_sockets: u64,
}

/// Commands to a running engine; they go to every worker.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EngineCommand {
    /// Stop arrivals; in-flight iterations get `grace`, then running code is interrupted.
    Stop {
        grace: Duration,
    },
    /// Interrupt everything now.
    Abort,
    /// Change the test-wide user target (session users: arrivals continue at the same
    /// rate up to the new number; looping users: the new number of looping users).
    ScaleUsers(u64),
    PauseArrivals,
    ResumeArrivals,
    /// Also run a departed agent's share: the users (or arrivals) numbered `from_user` and
    /// above that `segment` owns. Session users whose time already came start at once;
    /// looping users start as usual; arrival rates take over from the next arrival. The
    /// segment is split among the workers like the engine's own. Repeats are ignored.
    Adopt {
        segment: punisher_core::Segment,
        from_user: u64,
    },
}

/// What an engine did not run of its share, known once every worker finished: the
/// `(segment, from_user)` shares another engine can [`EngineCommand::Adopt`] so that no user
/// runs twice and none is skipped, and how many users were still running when it ended
/// (interrupted by a stop's grace or an abort).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeftOver {
    pub shares: Vec<(punisher_core::Segment, u64)>,
    pub interrupted_users: u64,
}

/// A running engine: its reports and its command line.
pub struct RunHandle {
    reports: mpsc::Receiver<WorkerReport>,
    controls: Vec<Arc<Control>>,
}

impl RunHandle {
    /// The next report of any worker; `None` when every worker finished.
    pub async fn next_report(&mut self) -> Option<WorkerReport> {
        self.reports.recv().await
    }

    /// Sends `cmd` to every worker.
    pub fn command(&self, cmd: EngineCommand) {
        if let EngineCommand::Adopt { segment, from_user } = cmd {
            let parts = segment.split(&vec![1.0; self.controls.len()]);
            for (c, part) in self.controls.iter().zip(parts) {
                c.commands.send_if_modified(|s| {
                    let share = (part, from_user);
                    let new = !s.adopted.contains(&share);
                    if new {
                        s.adopted.push(share);
                    }
                    new
                });
            }
            return;
        }
        for c in &self.controls {
            match cmd {
                EngineCommand::Abort => c.abort(),
                EngineCommand::Stop { grace } => {
                    c.interrupt_after(grace);
                    c.commands.send_modify(|s| {
                        s.stop = Some(s.stop.map_or(grace, |g| g.min(grace)));
                    });
                }
                EngineCommand::ScaleUsers(n) => c.commands.send_modify(|s| s.target = Some(n)),
                EngineCommand::PauseArrivals => c.commands.send_modify(|s| s.paused = true),
                EngineCommand::ResumeArrivals => c.commands.send_modify(|s| s.paused = false),
                EngineCommand::Adopt { .. } => {}
            }
        }
    }

    /// What the workers did not run (their shares from where each stopped), once they all
    /// finished; workers still running contribute nothing.
    pub fn left_over(&self) -> LeftOver {
        let mut out = LeftOver::default();
        for c in &self.controls {
            if let Ok(l) = c.left_over.lock()
                && let Some(l) = l.as_ref()
            {
                out.shares.extend_from_slice(&l.shares);
                out.interrupted_users += l.interrupted_users;
            }
        }
        out
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.controls.len()
    }
}

impl Drop for RunHandle {
    /// Nobody listens any more: stop the workers rather than leave threads behind.
    fn drop(&mut self) {
        for c in &self.controls {
            c.abort();
        }
    }
}

/// Starts the workers, each evaluating the scenario's init code first. Returns once every
/// worker is ready (or with the first init error).
pub fn start(
    scenario: Arc<Scenario>,
    cfg: EngineConfig,
    setup_data: serde_json::Value,
) -> Result<RunHandle, RunError> {
    if cfg.workers == 0 {
        return Err(RunError::Config("workers must be at least 1".into()));
    }
    let segments = cfg.segment.split(&vec![1.0; cfg.workers]);
    let (tx, rx) = mpsc::channel(REPORT_CHANNEL_CAPACITY);
    let mut controls = Vec::with_capacity(cfg.workers);
    let mut readies = Vec::with_capacity(cfg.workers);
    let mut gos = Vec::with_capacity(cfg.workers);
    for (index, segment) in segments.into_iter().enumerate() {
        let control = Arc::new(Control::new());
        controls.push(control.clone());
        let (go_tx, go) = tokio::sync::oneshot::channel();
        gos.push(go_tx);
        let spec = WorkerSpec {
            index,
            scenario: scenario.clone(),
            cfg: EngineConfig {
                segment,
                ..cfg.clone()
            },
            setup_data: setup_data.clone(),
            control,
            reports: tx.clone(),
            go,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("punisher-worker-{index}"))
            .spawn(move || worker::worker_main(spec, ready_tx))
            .map_err(|e| RunError::Thread(e.to_string()))?;
        readies.push(ready_rx);
    }
    drop(tx);
    let handle = RunHandle {
        reports: rx,
        controls,
    };
    // Init takes milliseconds; waiting here keeps `start` simple for callers and turns an
    // init failure on any worker into an error before any user starts.
    for (index, ready) in readies.into_iter().enumerate() {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(RunError::WorkerLost(index)),
        }
    }
    // One start instant for all workers, so their schedules line up.
    let now = std::time::Instant::now();
    for go in gos {
        let _ = go.send(now);
    }
    Ok(handle)
}

/// Runs `setup()` once on its own thread; its JSON result (null without setup) is passed
/// to every user. Its requests are not part of the run's metrics.
pub async fn run_setup(
    scenario: &Scenario,
    cfg: &EngineConfig,
) -> Result<serde_json::Value, RunError> {
    if !scenario.has_setup {
        return Ok(serde_json::Value::Null);
    }
    lifecycle(
        scenario,
        cfg,
        Entry::Setup,
        serde_json::Value::Null,
        cfg.plan.setup_timeout,
    )
    .await
}

/// Runs `teardown(data)` once on its own thread.
pub async fn run_teardown(
    scenario: &Scenario,
    cfg: &EngineConfig,
    data: &serde_json::Value,
) -> Result<(), RunError> {
    if !scenario.has_teardown {
        return Ok(());
    }
    lifecycle(
        scenario,
        cfg,
        Entry::Teardown,
        data.clone(),
        cfg.plan.teardown_timeout,
    )
    .await
    .map(|_| ())
}

/// `handleSummary()` gets this long, as in k6.
const HANDLE_SUMMARY_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the scenario's `handleSummary(data)` once on its own thread, as k6 does at the end
/// of a run: `data` is the run's summary (`summary.json`'s document), and the function
/// returns the files to write, `{ 'path': content }`, where the keys `stdout` and `stderr`
/// mean printing. `None` when the scenario exports no `handleSummary`; an empty map when it
/// returned nothing. String contents are kept as they are; other values are written as
/// their JSON text. Its requests are not part of the run's metrics.
pub async fn run_handle_summary(
    scenario: &Scenario,
    cfg: &EngineConfig,
    summary: &serde_json::Value,
) -> Result<Option<BTreeMap<String, String>>, RunError> {
    if !scenario.has_handle_summary {
        return Ok(None);
    }
    let returned = lifecycle(
        scenario,
        cfg,
        Entry::HandleSummary,
        summary.clone(),
        HANDLE_SUMMARY_TIMEOUT,
    )
    .await?;
    summary_files(returned).map(Some)
}

/// The files `handleSummary()` returned, checked.
fn summary_files(returned: serde_json::Value) -> Result<BTreeMap<String, String>, RunError> {
    match returned {
        serde_json::Value::Null => Ok(BTreeMap::new()),
        serde_json::Value::Object(map) => map
            .into_iter()
            .map(|(path, content)| {
                if path.is_empty() {
                    return Err(RunError::HandleSummaryResult(
                        "a key is empty; keys are file paths, 'stdout' or 'stderr'".into(),
                    ));
                }
                let content = match content {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                Ok((path, content))
            })
            .collect(),
        other => Err(RunError::HandleSummaryResult(format!(
            "it returned {}",
            match other {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                _ => "a boolean",
            }
        ))),
    }
}

async fn lifecycle(
    scenario: &Scenario,
    cfg: &EngineConfig,
    entry: Entry,
    data: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, RunError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let scenario = scenario.clone();
    let cfg = cfg.clone();
    let control = Arc::new(Control::new());
    let thread_control = control.clone();
    std::thread::Builder::new()
        .name("punisher-lifecycle".into())
        .spawn(move || {
            let result = lifecycle_thread(&scenario, &cfg, entry, &data, thread_control);
            let _ = tx.send(result);
        })
        .map_err(|e| RunError::Thread(e.to_string()))?;
    let what = match entry {
        Entry::Setup => "setup()",
        Entry::HandleSummary => "handleSummary()",
        _ => "teardown()",
    };
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(RunError::WorkerLost(0)),
        Err(_) => {
            control.abort();
            Err(RunError::Timeout { what, timeout })
        }
    }
}

fn lifecycle_thread(
    scenario: &Scenario,
    cfg: &EngineConfig,
    entry: Entry,
    data: &serde_json::Value,
    control: Arc<Control>,
) -> Result<serde_json::Value, RunError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Thread(e.to_string()))?;
    // setup() and teardown() take no data rows: every row is some user's.
    let host = worker::build_host(
        0,
        scenario,
        cfg,
        punisher_core::Segment::EMPTY,
        control.clone(),
    )?;
    worker::set_data(&host, data)?;
    let local = tokio::task::LocalSet::new();
    let state = host.state.clone();
    let result = local.block_on(&rt, async {
        let key = state.add_vu(0);
        if let Some(vu) = state.vus.borrow_mut().get_mut(key) {
            vu.want_result = true;
        }
        let mut commands = control.commands.subscribe();
        let end = tokio::select! {
            end = worker::iterate(&state, key, entry, None) => end,
            _ = commands.wait_for(|c| c.aborted) => None,
        };
        state.remove_vu(key);
        end
    });
    drop(local);
    drop(state);
    drop(host);
    match result {
        Some(IterationEnd::Ok(json)) => match json {
            Some(text) => {
                serde_json::from_str(&text).map_err(|e| RunError::SetupData(e.to_string()))
            }
            None => Ok(serde_json::Value::Null),
        },
        Some(IterationEnd::Failed(err)) => Err(match entry {
            Entry::Setup => RunError::Setup(err),
            Entry::HandleSummary => RunError::HandleSummary(err),
            _ => RunError::Teardown(err),
        }),
        None => Err(RunError::WorkerLost(0)),
    }
}
