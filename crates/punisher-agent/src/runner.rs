//! One run on this agent: load (compile the scenario and build the engine configuration),
//! then, at the common start instant, run the engine and fold its per-worker reports into
//! one report per whole wall-clock second. The runner task outlives controller sessions:
//! load goes on while the agent reconnects, and its reports wait in the agent's outbox.
//!
//! Time is the engine's corrected clock (the controller's, see
//! `punisher_engine::set_clock_offset_us`): the start instant, and the seconds reports are
//! labelled with. Workers report at each second boundary; the runner files their snapshots
//! under the second they start in and sends each second once it is over, just after the
//! boundary ([`TICK_PHASE`]), labelled `[s, s + 1000)`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use punisher_engine::{Bundle, EngineCommand, EngineConfig, Scenario};
use punisher_metrics::Snapshot;
use punisher_proto::{ScenarioBundle, convert, v1};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::barrier::RemoteBarrierHub;

/// Commands waiting for the runner (a handful per run).
const COMMAND_QUEUE: usize = 16;
/// Reports waiting for the agent's loop; the runner waits (and the engine's workers keep
/// recording) when the loop falls behind.
const REPORT_QUEUE: usize = 16;
/// The runner sends a second this long after it ended: the workers' reports of that second
/// (sent at the boundary) have arrived by then.
const TICK_PHASE: Duration = Duration::from_millis(100);
/// Seconds the runner holds at most (a worker whose clock jumps must not grow this).
const MAX_PENDING_SECONDS: usize = 64;

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

/// One whole second of this agent's run (`snapshot` is labelled `[s, s + 1000)`; the
/// final report's second is the one the run ended in).
#[derive(Debug)]
pub(crate) struct RunnerReport {
    pub(crate) snapshot: Snapshot,
    pub(crate) active_users: u64,
    /// The most users active at once during the second (sum of the workers' peaks).
    pub(crate) peak_users: u64,
    pub(crate) target_users: u64,
    pub(crate) arrived_users: u64,
    /// TCP connections and WebSocket/Socket.IO sessions open now, over all workers.
    pub(crate) open_connections: u64,
    pub(crate) open_sockets: u64,
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

/// Now, on the corrected clock (the controller's).
fn unix_ms() -> u64 {
    punisher_engine::unix_ms_corrected()
}

/// The whole second (its first millisecond) that `ms` falls in.
fn second_of(ms: u64) -> u64 {
    ms / 1000 * 1000
}

/// How long until the common start instant `start_unix_ms` (on the controller's clock).
fn start_wait(start_unix_ms: u64) -> Duration {
    Duration::from_millis(start_unix_ms.saturating_sub(unix_ms()))
}

/// The next tick: [`TICK_PHASE`] after the next second boundary of the corrected clock
/// (recomputed every time, so that a new clock offset moves the ticks too).
fn next_tick() -> Instant {
    let now = unix_ms();
    let next = second_of(now) + 1000 + TICK_PHASE.as_millis() as u64;
    Instant::now() + Duration::from_millis(next - now)
}

/// The latest state of one worker.
#[derive(Default, Clone, Copy)]
struct WorkerState {
    active: u64,
    peak: u64,
    target: u64,
    arrived: u64,
    cpu: f64,
    connections: u64,
    sockets: u64,
}

async fn run(
    loaded: LoadedRun,
    start_unix_ms: u64,
    mut commands: mpsc::Receiver<EngineCommand>,
    reports: mpsc::Sender<RunnerReport>,
) {
    let final_report = |error: Option<String>| RunnerReport {
        snapshot: {
            let s = second_of(unix_ms());
            Snapshot::empty(s, s + 1000)
        },
        active_users: 0,
        peak_users: 0,
        target_users: 0,
        arrived_users: 0,
        open_connections: 0,
        open_sockets: 0,
        cpu_busy_mean: 0.0,
        cpu_busy_max: 0.0,
        event_loop_lag: Duration::ZERO,
        finished: true,
        error,
        left_over: punisher_engine::LeftOver::default(),
    };
    // Wait for the common instant; a Stop or Abort before it ends the run unstarted, other
    // commands (a scale, an adopted share) apply once the engine runs.
    let wait = start_wait(start_unix_ms);
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
    let mut seconds = Seconds::default();
    let tick = tokio::time::sleep_until(next_tick());
    tokio::pin!(tick);
    let mut commands_open = true;
    let mut error = None;
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
                    if let Err(e) = seconds.add(r.snapshot, r.event_loop_lag) {
                        error.get_or_insert_with(|| format!("cannot merge worker metrics: {e}"));
                    }
                    workers.insert(r.worker, WorkerState {
                        active: if r.finished { 0 } else { r.active_users },
                        peak: r.peak_users,
                        target: r.target_users,
                        arrived: r.arrived_users,
                        cpu: r.cpu_busy,
                        connections: r.open_connections,
                        sockets: r.open_sockets,
                    });
                }
                None => break,
            },
            _ = &mut tick => {
                // Every second before the boundary just passed is over; a worker report of
                // one that comes later still lands in the next second sent.
                let boundary = second_of(unix_ms());
                for report in seconds.take_before(boundary, &workers, error.take()) {
                    if reports.send(report).await.is_err() {
                        handle.command(EngineCommand::Abort);
                        return;
                    }
                }
                tick.as_mut().reset(next_tick());
            }
        }
    }
    // The rest, in order; the last one says the engine finished (and carries any error).
    let mut last = seconds.take_all(&workers, None);
    let mut report = last.pop().unwrap_or_else(|| {
        let s = second_of(unix_ms());
        seconds.report(s, Snapshot::empty(s, s + 1000), &workers, None)
    });
    for earlier in last {
        if reports.send(earlier).await.is_err() {
            return;
        }
    }
    report.finished = true;
    report.error = error.take();
    report.left_over = handle.left_over();
    let _ = reports.send(report).await;
}

/// Worker snapshots filed by the whole second they start in, until the second is sent.
#[derive(Default)]
struct Seconds {
    pending: BTreeMap<u64, Snapshot>,
    /// Seconds before this one were sent: a late snapshot goes into the next one sent.
    sent_before: u64,
    worst_lag: Duration,
}

impl Seconds {
    fn add(
        &mut self,
        snapshot: Snapshot,
        lag: Duration,
    ) -> Result<(), punisher_metrics::MetricsError> {
        self.worst_lag = self.worst_lag.max(lag);
        let mut second = second_of(snapshot.start_unix_ms).max(self.sent_before);
        if self.pending.len() >= MAX_PENDING_SECONDS
            && !self.pending.contains_key(&second)
            && let Some(&latest) = self.pending.keys().next_back()
        {
            second = latest;
        }
        self.pending
            .entry(second)
            .or_insert_with(|| Snapshot::empty(second, second + 1000))
            .merge_owned(snapshot)
    }

    /// One report per second that ended by `boundary` (at least one, maybe empty, so that
    /// the controller hears from us every second).
    fn take_before(
        &mut self,
        boundary: u64,
        workers: &BTreeMap<usize, WorkerState>,
        error: Option<String>,
    ) -> Vec<RunnerReport> {
        let later = self.pending.split_off(&boundary);
        let done = std::mem::replace(&mut self.pending, later);
        let mut snapshots: Vec<(u64, Snapshot)> = done.into_iter().collect();
        if snapshots.is_empty() && boundary > self.sent_before {
            let second = boundary.saturating_sub(1000);
            snapshots.push((second, Snapshot::empty(second, boundary)));
        }
        self.sent_before = self.sent_before.max(boundary);
        self.reports(snapshots, workers, error)
    }

    /// Every second held, in order (the run ended).
    fn take_all(
        &mut self,
        workers: &BTreeMap<usize, WorkerState>,
        error: Option<String>,
    ) -> Vec<RunnerReport> {
        let snapshots: Vec<(u64, Snapshot)> =
            std::mem::take(&mut self.pending).into_iter().collect();
        if let Some((last, _)) = snapshots.last() {
            self.sent_before = self.sent_before.max(last + 1000);
        }
        self.reports(snapshots, workers, error)
    }

    fn reports(
        &mut self,
        snapshots: Vec<(u64, Snapshot)>,
        workers: &BTreeMap<usize, WorkerState>,
        mut error: Option<String>,
    ) -> Vec<RunnerReport> {
        snapshots
            .into_iter()
            .map(|(second, snapshot)| self.report(second, snapshot, workers, error.take()))
            .collect()
    }

    /// A report of one second: labelled as the whole second, whatever the workers' stamps
    /// (a late snapshot filed under a later second keeps its own in `snapshot`).
    fn report(
        &mut self,
        second: u64,
        mut snapshot: Snapshot,
        workers: &BTreeMap<usize, WorkerState>,
        error: Option<String>,
    ) -> RunnerReport {
        snapshot.start_unix_ms = second;
        snapshot.end_unix_ms = second + 1000;
        let n = workers.len().max(1) as f64;
        RunnerReport {
            left_over: punisher_engine::LeftOver::default(),
            snapshot,
            active_users: workers.values().map(|w| w.active).sum(),
            peak_users: workers.values().map(|w| w.peak).sum(),
            target_users: workers.values().map(|w| w.target).sum(),
            arrived_users: workers.values().map(|w| w.arrived).sum(),
            open_connections: workers.values().map(|w| w.connections).sum(),
            open_sockets: workers.values().map(|w| w.sockets).sum(),
            cpu_busy_mean: workers.values().map(|w| w.cpu).sum::<f64>() / n,
            cpu_busy_max: workers.values().map(|w| w.cpu).fold(0.0, f64::max),
            event_loop_lag: std::mem::take(&mut self.worst_lag),
            finished: false,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use punisher_metrics::{MetricKind, Recorder, SeriesData, Tags, ValueType};

    fn requests(n: u64, start: u64, end: u64) -> Snapshot {
        let mut r = Recorder::new();
        let reqs = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "http_reqs",
                &Tags::empty(),
            )
            .unwrap();
        for _ in 0..n {
            r.add_counter(reqs, 1.0);
        }
        r.take_snapshot(start, end)
    }

    fn count(report: &RunnerReport) -> f64 {
        match report.snapshot.series.values().next() {
            Some(SeriesData::Counter { sum }) => *sum,
            _ => 0.0,
        }
    }

    fn label(report: &RunnerReport) -> (u64, u64) {
        (report.snapshot.start_unix_ms, report.snapshot.end_unix_ms)
    }

    #[test]
    fn the_controller_clock_offset_moves_the_start_and_the_seconds() {
        // This machine's clock is 10 s behind the controller's: an instant 10.5 s ahead on
        // our own clock is 0.5 s ahead on the controller's.
        let machine = punisher_engine::unix_ms_corrected();
        punisher_engine::set_clock_offset_us(-10_000_000);
        let wait = start_wait(machine + 10_500);
        let corrected = unix_ms();
        punisher_engine::set_clock_offset_us(0);
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(corrected >= machine + 10_000, "{corrected} vs {machine}");
        // Without the offset, the same instant is 10.5 s away.
        assert!(start_wait(machine + 10_500) > Duration::from_secs(10));
    }

    #[test]
    fn reports_are_whole_seconds_and_count_everything_once() {
        let workers = BTreeMap::new();
        let mut s = Seconds::default();
        // Two workers' first reports start mid-second; their boundary reports right after
        // 2000 and 3000.
        s.add(requests(1, 1_400, 2_003), Duration::ZERO).unwrap();
        s.add(requests(2, 1_400, 2_001), Duration::from_millis(7))
            .unwrap();
        s.add(requests(4, 2_003, 3_002), Duration::ZERO).unwrap();
        let sent = s.take_before(3_000, &workers, Some("oops".into()));
        assert_eq!(sent.len(), 2);
        assert_eq!(label(&sent[0]), (1_000, 2_000));
        assert_eq!(count(&sent[0]), 3.0);
        assert_eq!(sent[0].error.as_deref(), Some("oops"));
        assert_eq!(sent[0].event_loop_lag, Duration::from_millis(7));
        assert_eq!(label(&sent[1]), (2_000, 3_000));
        assert_eq!(count(&sent[1]), 4.0);
        // A second with nothing reported still says so, once.
        let sent = s.take_before(4_000, &workers, None);
        assert_eq!(sent.len(), 1);
        assert_eq!(label(&sent[0]), (3_000, 4_000));
        assert_eq!(count(&sent[0]), 0.0);
        assert!(s.take_before(4_000, &workers, None).is_empty());
        // A late snapshot of a second already sent goes into the next one.
        s.add(requests(8, 2_500, 3_400), Duration::ZERO).unwrap();
        s.add(requests(16, 4_001, 4_300), Duration::ZERO).unwrap();
        let rest = s.take_all(&workers, None);
        assert_eq!(rest.len(), 1);
        assert_eq!(label(&rest[0]), (4_000, 5_000));
        assert_eq!(count(&rest[0]), 24.0);
    }
}
