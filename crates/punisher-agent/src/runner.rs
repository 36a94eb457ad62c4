//! One run on this agent: load (compile the scenario and build the engine configuration),
//! then, at the common start instant, run the engine and fold its per-worker reports into
//! one report per second. The runner task outlives controller sessions: load goes on while
//! the agent reconnects, and its reports wait in the agent's outbox.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use punisher_engine::{Bundle, EngineCommand, EngineConfig, Scenario};
use punisher_metrics::Snapshot;
use punisher_proto::{ScenarioBundle, convert, v1};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::barrier::RemoteBarrierHub;

/// Commands waiting for the runner (a handful per run).
const COMMAND_QUEUE: usize = 16;
/// Reports waiting for the agent's loop; the runner waits (and the engine's workers keep
/// recording) when the loop falls behind.
const REPORT_QUEUE: usize = 16;

/// A scenario compiled and ready to start.
pub(crate) struct LoadedRun {
    pub(crate) scenario: Arc<Scenario>,
    pub(crate) engine: EngineConfig,
    pub(crate) setup_data: serde_json::Value,
}

/// What the agent needs to load a run.
pub(crate) struct LoadRequest {
    pub(crate) msg: v1::LoadScenario,
    pub(crate) workers: usize,
    pub(crate) source_pool: Option<Arc<punisher_clients::net::SourcePool>>,
    pub(crate) memory_limit_bytes: usize,
    pub(crate) barriers: Arc<RemoteBarrierHub>,
}

/// Compiles the scenario on a blocking thread (init code is JavaScript run to completion).
pub(crate) async fn load(req: LoadRequest) -> Result<LoadedRun, String> {
    let LoadRequest {
        msg,
        workers,
        source_pool,
        memory_limit_bytes,
        barriers,
    } = req;
    let bundle = ScenarioBundle::try_from(msg.bundle.ok_or("LoadScenario without a bundle")?)
        .map_err(|e| e.to_string())?;
    let plan = convert::plan_from_json(&msg.plan_json).map_err(|e| e.to_string())?;
    let segment = convert::segment_from_wire(msg.segment).map_err(|e| e.to_string())?;
    let setup_data = convert::json_from_wire("setup_data_json", &msg.setup_data_json)
        .map_err(|e| e.to_string())?;
    let env: BTreeMap<String, String> = msg.env;
    let bundle = Bundle {
        entry: bundle.entry,
        sources: bundle.sources,
        files: bundle.files,
    };
    let inspect_env = env.clone();
    let scenario =
        tokio::task::spawn_blocking(move || punisher_engine::inspect(bundle, &inspect_env))
            .await
            .map_err(|e| format!("the scenario check panicked: {e}"))?
            .map_err(|e| e.to_string())?;
    let workers = if msg.workers > 0 {
        msg.workers as usize
    } else {
        workers
    };
    Ok(LoadedRun {
        scenario: Arc::new(scenario),
        engine: EngineConfig {
            workers: workers.max(1),
            plan,
            segment,
            env,
            source_pool,
            memory_limit_bytes,
            barriers,
            test_users: msg.test_users,
        },
        setup_data,
    })
}

/// One second (or the last part) of this agent's run.
#[derive(Debug)]
pub(crate) struct RunnerReport {
    pub(crate) snapshot: Snapshot,
    pub(crate) active_users: u64,
    pub(crate) target_users: u64,
    pub(crate) arrived_users: u64,
    pub(crate) cpu_busy_mean: f64,
    pub(crate) cpu_busy_max: f64,
    pub(crate) event_loop_lag: Duration,
    pub(crate) finished: bool,
    /// The engine could not start (or failed): said once, with the final report.
    pub(crate) error: Option<String>,
    /// With the final report: what the engine did not run (for another agent to adopt when
    /// this one departs) and the users still running when it ended.
    pub(crate) left_over: punisher_engine::LeftOver,
}

/// A started runner.
pub(crate) struct Runner {
    commands: mpsc::Sender<EngineCommand>,
    pub(crate) reports: mpsc::Receiver<RunnerReport>,
    task: JoinHandle<()>,
}

impl Runner {
    /// Starts the engine at `start_unix_ms` (wall clock) and reports every second.
    pub(crate) fn spawn(loaded: LoadedRun, start_unix_ms: u64) -> Runner {
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (report_tx, reports) = mpsc::channel(REPORT_QUEUE);
        let task = tokio::spawn(run(loaded, start_unix_ms, command_rx, report_tx));
        Runner {
            commands,
            reports,
            task,
        }
    }

    /// Passes a command on; a runner that already finished ignores it.
    pub(crate) fn command(&self, cmd: EngineCommand) {
        if self.commands.try_send(cmd).is_err() {
            tracing::debug!(?cmd, "runner busy or finished; command dropped");
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Dropping the task drops its RunHandle, which aborts the workers.
        self.task.abort();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The latest state of one worker.
#[derive(Default, Clone, Copy)]
struct WorkerState {
    active: u64,
    target: u64,
    arrived: u64,
    cpu: f64,
}

async fn run(
    loaded: LoadedRun,
    start_unix_ms: u64,
    mut commands: mpsc::Receiver<EngineCommand>,
    reports: mpsc::Sender<RunnerReport>,
) {
    let final_report = |error: Option<String>| RunnerReport {
        snapshot: Snapshot::empty(unix_ms(), unix_ms()),
        active_users: 0,
        target_users: 0,
        arrived_users: 0,
        cpu_busy_mean: 0.0,
        cpu_busy_max: 0.0,
        event_loop_lag: Duration::ZERO,
        finished: true,
        error,
        left_over: punisher_engine::LeftOver::default(),
    };
    // Wait for the common instant; a Stop or Abort before it ends the run unstarted, other
    // commands (a scale, an adopted share) apply once the engine runs.
    let wait = Duration::from_millis(start_unix_ms.saturating_sub(unix_ms()));
    let sleep = tokio::time::sleep(wait);
    tokio::pin!(sleep);
    let mut early = Vec::new();
    loop {
        tokio::select! {
            _ = &mut sleep => break,
            cmd = commands.recv() => match cmd {
                None | Some(EngineCommand::Abort | EngineCommand::Stop { .. }) => {
                    // Nothing started: the whole share is left over (for a departing agent,
                    // the others take it over).
                    let mut report = final_report(None);
                    report.left_over.shares.push((loaded.engine.segment, 0));
                    for cmd in &early {
                        if let EngineCommand::Adopt { segment, from_user } = cmd {
                            report.left_over.shares.push((*segment, *from_user));
                        }
                    }
                    let _ = reports.send(report).await;
                    return;
                }
                Some(cmd) if early.len() < COMMAND_QUEUE => early.push(cmd),
                Some(cmd) => tracing::warn!(?cmd, "too many commands before the start; dropped"),
            },
        }
    }
    let LoadedRun {
        scenario,
        engine,
        setup_data,
    } = loaded;
    let started =
        tokio::task::spawn_blocking(move || punisher_engine::start(scenario, engine, setup_data))
            .await;
    let mut handle = match started {
        Ok(Ok(handle)) => {
            for cmd in early {
                handle.command(cmd);
            }
            handle
        }
        Ok(Err(e)) => {
            let _ = reports
                .send(final_report(Some(format!("cannot start the engine: {e}"))))
                .await;
            return;
        }
        Err(e) => {
            let _ = reports
                .send(final_report(Some(format!("engine start panicked: {e}"))))
                .await;
            return;
        }
    };
    let mut workers: BTreeMap<usize, WorkerState> = BTreeMap::new();
    let mut interval = Snapshot::empty(0, 0);
    let mut interval_start = unix_ms();
    let mut worst_lag = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut commands_open = true;
    let mut error = None;
    let summarize = |workers: &BTreeMap<usize, WorkerState>,
                     interval: &mut Snapshot,
                     start: &mut u64,
                     worst_lag: &mut Duration,
                     finished: bool,
                     error: Option<String>| {
        let now = unix_ms();
        let mut snapshot = std::mem::replace(interval, Snapshot::empty(0, 0));
        snapshot.start_unix_ms = *start;
        snapshot.end_unix_ms = now.max(*start);
        *start = now;
        let n = workers.len().max(1) as f64;
        RunnerReport {
            left_over: punisher_engine::LeftOver::default(),
            snapshot,
            active_users: workers.values().map(|w| w.active).sum(),
            target_users: workers.values().map(|w| w.target).sum(),
            arrived_users: workers.values().map(|w| w.arrived).sum(),
            cpu_busy_mean: workers.values().map(|w| w.cpu).sum::<f64>() / n,
            cpu_busy_max: workers.values().map(|w| w.cpu).fold(0.0, f64::max),
            event_loop_lag: std::mem::take(worst_lag),
            finished,
            error,
        }
    };
    loop {
        tokio::select! {
            cmd = commands.recv(), if commands_open => match cmd {
                Some(cmd) => handle.command(cmd),
                // The agent dropped us: stop generating load now.
                None => {
                    commands_open = false;
                    handle.command(EngineCommand::Abort);
                }
            },
            report = handle.next_report() => match report {
                Some(r) => {
                    if let Err(e) = interval.merge(&r.snapshot) {
                        error.get_or_insert_with(|| format!("cannot merge worker metrics: {e}"));
                    }
                    worst_lag = worst_lag.max(r.event_loop_lag);
                    workers.insert(r.worker, WorkerState {
                        active: if r.finished { 0 } else { r.active_users },
                        target: r.target_users,
                        arrived: r.arrived_users,
                        cpu: r.cpu_busy,
                    });
                }
                None => break,
            },
            _ = tick.tick() => {
                let report = summarize(&workers, &mut interval, &mut interval_start, &mut worst_lag, false, error.take());
                if reports.send(report).await.is_err() {
                    handle.command(EngineCommand::Abort);
                    return;
                }
            }
        }
    }
    let mut report = summarize(
        &workers,
        &mut interval,
        &mut interval_start,
        &mut worst_lag,
        true,
        error.take(),
    );
    report.left_over = handle.left_over();
    let _ = reports.send(report).await;
}
