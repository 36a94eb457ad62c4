//! The live dashboard of `punisher run` and `punisher ctl watch`: it owns the glue between
//! the controller's merged [`punisher_controller::RunView`] and the ratatui dashboard of
//! `punisher-tui`, which draws a [`punisher_core::view::RunView`].
//!
//! - [`ViewMapper`] turns each controller view into the dashboard's view: rates, error rate
//!   and latency percentiles of the last merged second, the per-request-name table from the
//!   run's totals, agents, barriers, thresholds, and the state it must keep across views (the
//!   chart series over time, and the log pane: run messages plus "threshold crossed" and
//!   "barrier released" lines it derives from consecutive views). Pure, so it is unit tested.
//! - [`Dashboard`] runs `punisher_tui::run_dashboard` on its own task (the terminal in raw
//!   mode on the alternate screen) and turns its keys into [`DashboardAction`]s, the same
//!   [`punisher_controller::RunCommand`]s `punisher ctl` sends. [`Dashboard::close`] gives the
//!   terminal back; `punisher_tui` also restores it on panic and when its task is dropped.
//! - [`ctl_watch`]: `punisher ctl watch`, the dashboard attached to a standing controller.
//! - [`LogWriter`]: the binary's tracing output, held back while a dashboard is up;
//!   [`child_line`]: the same for the forwarded stderr of a local run's child processes,
//!   whose warnings and errors also go to the log pane.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use punisher_controller::{AgentState, ClientConfig, ClusterClient, RunCommand, RunState, RunView};
use punisher_core::view as core;
use punisher_metrics::snapshot::TREND_SCALE;
use punisher_metrics::{SeriesData, Snapshot, Totals};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::exit::{self, Failure};

/// One point per merged second: ten minutes of history in the charts.
const MAX_POINTS: usize = 600;
/// The log pane keeps the latest lines only.
const MAX_LOG_LINES: usize = 200;
/// Commands and actions in flight between the keyboard and the caller: a person types them.
const QUEUE: usize = 16;
/// The screen is redrawn this often even without a new view (report ages, the clock).
const REFRESH: Duration = Duration::from_millis(500);

/// Whether a dashboard has the terminal: log lines are held back meanwhile.
static DASHBOARD_UP: AtomicBool = AtomicBool::new(false);
/// Log output held while the dashboard is up (bounded; printed when it leaves).
static HELD_LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());
const MAX_HELD_LOG_BYTES: usize = 64 * 1024;
/// Log writes that did not fit in [`HELD_LOGS`]: said when the dashboard leaves.
static DROPPED_LOGS: AtomicU64 = AtomicU64::new(0);
/// Warnings and errors of child processes on their way to the log pane (taken by the next
/// [`Dashboard::show`]); the oldest go first when the run produces them faster.
static CHILD_PANE: Mutex<VecDeque<(core::LogLevel, String)>> = Mutex::new(VecDeque::new());
const MAX_CHILD_PANE_LINES: usize = 50;

/// The tracing writer of the `punisher` binary: stderr, except while the dashboard has the
/// terminal, where a log line would be drawn over it; those lines are printed when it leaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if DASHBOARD_UP.load(Ordering::Acquire) {
            let mut held = HELD_LOGS.lock().unwrap_or_else(|e| e.into_inner());
            if held.len() + buf.len() <= MAX_HELD_LOG_BYTES {
                held.extend_from_slice(buf);
            } else {
                DROPPED_LOGS.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(buf.len());
        }
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The dashboard left the terminal: the log lines held meanwhile go to stderr.
fn release_logs() {
    DASHBOARD_UP.store(false, Ordering::Release);
    let held = std::mem::take(&mut *HELD_LOGS.lock().unwrap_or_else(|e| e.into_inner()));
    CHILD_PANE.lock().unwrap_or_else(|e| e.into_inner()).clear();
    let dropped = DROPPED_LOGS.swap(0, Ordering::Relaxed);
    use std::io::Write as _;
    if !held.is_empty() {
        let _ = std::io::stderr().write_all(&held);
    }
    if dropped > 0 {
        eprintln!("({dropped} more log lines were dropped while the dashboard was up)");
    }
}

/// A line of a child process's stderr (a local run's agents and demo target), `[name]` in
/// front. Like [`LogWriter`]'s lines it waits while the dashboard has the terminal; its
/// warnings and errors also show in the dashboard's log pane meanwhile.
pub(crate) fn child_line(name: &str, line: &str) {
    use std::io::Write as _;
    let _ = LogWriter.write_all(format!("[{name}] {line}\n").as_bytes());
    if !DASHBOARD_UP.load(Ordering::Acquire) {
        return;
    }
    let (level, message) = parse_child_line(line);
    if matches!(level, core::LogLevel::Warn | core::LogLevel::Error) {
        let mut pane = CHILD_PANE.lock().unwrap_or_else(|e| e.into_inner());
        if pane.len() == MAX_CHILD_PANE_LINES {
            pane.pop_front();
        }
        pane.push_back((level, format!("[{name}] {message}")));
    }
}

/// The level and the message of a child's log line. The children log with tracing's default
/// format (`TIME  LEVEL message fields`, ANSI colours included when they are on); a line in
/// another form (a panic, a plain `eprintln!`) is an error if it says so, info otherwise.
fn parse_child_line(line: &str) -> (core::LogLevel, String) {
    let plain = strip_ansi(line);
    let mut rest = plain.trim_start();
    // The timestamp, when the line has one.
    if let Some((first, after)) = rest.split_once(' ')
        && first.len() >= 10
        && first.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && first.as_bytes()[4] == b'-'
    {
        rest = after.trim_start();
    }
    let (word, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let level = match word {
        "ERROR" => Some(core::LogLevel::Error),
        "WARN" => Some(core::LogLevel::Warn),
        "INFO" | "DEBUG" | "TRACE" => Some(core::LogLevel::Info),
        _ => None,
    };
    match level {
        Some(level) => (level, after.trim_start().to_owned()),
        None if rest.starts_with("thread '") || rest.starts_with("Error: ") => {
            (core::LogLevel::Error, rest.to_owned())
        }
        None => (core::LogLevel::Info, rest.to_owned()),
    }
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether `punisher run` / `punisher ctl watch` should show the dashboard: both stdout and
/// stdin are terminals (output piped to a file or a CI log gets status lines) and the user did
/// not pass `--no-tui`.
pub(crate) fn wanted(no_tui: bool) -> bool {
    !no_tui && std::io::stdout().is_terminal() && std::io::stdin().is_terminal()
}

/// How the dashboard is set up for one run.
#[derive(Debug, Clone)]
pub(crate) struct DashboardOptions {
    /// Shown in the header next to the run id; empty: the scenario named in the views.
    pub title: String,
    /// The plan's duration, for "elapsed / planned"; zero when not known (`ctl watch`).
    pub planned: Duration,
    /// Attached to a run that goes on without us (`ctl watch`): `q` detaches. When false
    /// the run is ours: `q` asks, then stops it.
    pub attached: bool,
    /// The run holds after loading until `s` (`--wait-for-start`).
    pub wait_for_start: bool,
}

/// What the user asked for, for the caller to carry out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DashboardAction {
    /// Send this to the run (what `punisher ctl` would send).
    Command(RunCommand),
    /// `q` on an attached run: stop watching, leave the run alone.
    Detach,
}

/// The dashboard on the terminal, for one run.
pub(crate) struct Dashboard {
    mapper: ViewMapper,
    views: watch::Sender<core::RunView>,
    actions: mpsc::Receiver<DashboardAction>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Dashboard {
    /// Takes over the terminal (raw mode, alternate screen) on a task of its own. Fails only
    /// when that task cannot be set up; a terminal that cannot be initialized shows up as
    /// [`Dashboard::action`] returning `None` after the error was printed.
    pub(crate) fn start(opts: DashboardOptions) -> anyhow::Result<Dashboard> {
        let mapper = ViewMapper::new(&opts);
        let (views, views_rx) = watch::channel(mapper.placeholder());
        let (commands_tx, commands) = mpsc::channel(QUEUE);
        let (actions_tx, actions) = mpsc::channel(QUEUE);
        let stop = CancellationToken::new();
        DASHBOARD_UP.store(true, Ordering::Release);
        let cfg = punisher_tui::DashboardConfig {
            attached: opts.attached,
            wait_for_start: opts.wait_for_start,
            refresh: REFRESH,
        };
        let task = tokio::spawn(drive(
            cfg.clone(),
            views_rx,
            commands_tx,
            commands,
            actions_tx,
            stop.clone(),
        ));
        Ok(Dashboard {
            mapper,
            views,
            actions,
            stop,
            task: Some(task),
        })
    }

    /// Shows the latest merged view.
    pub(crate) fn show(&mut self, view: &RunView) {
        let mut mapped = self.mapper.map(view);
        // Child processes' warnings since the last view, stamped with this view's time.
        let children: Vec<_> = CHILD_PANE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        if !children.is_empty() {
            for (level, message) in children {
                self.mapper.push_log(level, message);
            }
            mapped.log = self.mapper.log.clone();
        }
        self.views.send_replace(mapped);
    }

    /// Shows a line in the log pane: what the controller answered to a command, or why it
    /// could not be reached (stderr is under the dashboard, so it cannot go there).
    pub(crate) fn note(&mut self, message: impl Into<String>, error: bool) {
        let level = if error {
            core::LogLevel::Error
        } else {
            core::LogLevel::Info
        };
        self.mapper.push_log(level, message.into());
        let mut view = self.views.borrow().clone();
        view.log = self.mapper.log.clone();
        self.views.send_replace(view);
    }

    /// The next action of the user. Cancel-safe (a `select!` branch next to Ctrl-C and the
    /// views). `None`: the dashboard has left the terminal (quit, Ctrl-C, detach or an error,
    /// whose action came first); the caller goes on with status lines.
    pub(crate) async fn action(&mut self) -> Option<DashboardAction> {
        self.actions.recv().await
    }

    /// Leaves the terminal as it was. Call it before printing the summary.
    pub(crate) async fn close(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        release_logs();
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        // Dropped without close() (an early `?`): the task drops the dashboard's future,
        // whose guard restores the terminal.
        self.stop.cancel();
        if self.task.is_some() {
            release_logs();
        }
    }
}

/// The dashboard's next action; never, when there is none (for a `select!` branch).
pub(crate) async fn next_action(dashboard: &mut Option<Dashboard>) -> Option<DashboardAction> {
    match dashboard {
        Some(d) => d.action().await,
        None => std::future::pending().await,
    }
}

/// `punisher ctl watch`: the dashboard attached to the controller's current (or given) run
/// when stdout is a terminal, status lines otherwise. Returns the run's exit code when it
/// ends, 0 when the user detaches (`q` or Ctrl-C: the run goes on).
pub(crate) async fn ctl_watch(
    conn: &ClientConfig,
    mut client: ClusterClient,
    run_id: &str,
    no_tui: bool,
) -> Result<u8, Failure> {
    let mut views = client
        .watch(run_id)
        .await
        .map_err(crate::follow::client_failure)?;
    let mut tui = wanted(no_tui);
    let mut dashboard: Option<Dashboard> = None;
    // Commands go on a connection of their own, opened at the first key.
    let mut ctl: Option<ClusterClient> = None;
    let mut last: Option<RunView> = None;
    loop {
        tokio::select! {
            view = views.next() => {
                let Some(view) = view else { break };
                let view = view.map_err(crate::follow::client_failure)?;
                if tui && dashboard.is_none() {
                    // Started at the first view: whether the run waits for `s` is known.
                    dashboard = Some(
                        Dashboard::start(DashboardOptions {
                            // The scenario's name comes with each view.
                            title: String::new(),
                            planned: Duration::ZERO,
                            attached: true,
                            wait_for_start: view.waiting_for_start,
                        })
                        .map_err(Failure::run)?,
                    );
                }
                match dashboard.as_mut() {
                    Some(d) => d.show(&view),
                    None if view.state == RunState::Running => {
                        eprintln!("{}", crate::follow::status_line(&view, Duration::ZERO));
                    }
                    None => {}
                }
                let over = view.state.is_over();
                last = Some(view);
                if over {
                    break;
                }
            }
            action = next_action(&mut dashboard) => match action {
                Some(DashboardAction::Command(cmd)) => {
                    let answer = match ctl.as_mut() {
                        Some(c) => c.command(cmd).await,
                        None => match ClusterClient::connect(conn).await {
                            Ok(c) => ctl.insert(c).command(cmd).await,
                            Err(e) => Err(e),
                        },
                    };
                    if let Some(d) = dashboard.as_mut() {
                        match answer {
                            Ok(answer) => d.note(answer, false),
                            Err(e) => d.note(format!("the controller refused: {e}"), true),
                        }
                    }
                }
                Some(DashboardAction::Detach) => {
                    if let Some(d) = dashboard.take() {
                        d.close().await;
                    }
                    let run = last.as_ref().map_or("the run", |v| v.run_id.as_str());
                    eprintln!(
                        "detached; {run} goes on (`punisher ctl watch` to attach again)"
                    );
                    return Ok(exit::PASSED);
                }
                // The dashboard failed (it said why): status lines from now on.
                None => {
                    tui = false;
                    if let Some(d) = dashboard.take() {
                        d.close().await;
                    }
                }
            },
        }
    }
    if let Some(d) = dashboard.take() {
        d.close().await;
    }
    match last {
        Some(v) if v.state.is_over() => {
            for message in &v.messages {
                eprintln!("  {message}");
            }
            #[allow(clippy::print_stdout)] // the summary is the command's output
            if let Some(text) = &v.summary_text {
                println!("{text}");
            }
            Ok(v.exit_code.unwrap_or(exit::RUN_ERROR))
        }
        _ => Err(Failure::run(anyhow::anyhow!(
            "the controller ended the watch before the run ended"
        ))),
    }
}

/// The dashboard task: the ratatui loop, its commands forwarded as actions, until it exits
/// or `stop` fires (dropping the loop's future restores the terminal).
async fn drive(
    cfg: punisher_tui::DashboardConfig,
    views: watch::Receiver<core::RunView>,
    commands_tx: mpsc::Sender<core::RunCommand>,
    mut commands: mpsc::Receiver<core::RunCommand>,
    actions: mpsc::Sender<DashboardAction>,
    stop: CancellationToken,
) {
    let attached = cfg.attached;
    let dashboard = punisher_tui::run_dashboard(cfg, views, commands_tx);
    tokio::pin!(dashboard);
    let exit = loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(command) = commands.recv() => {
                let _ = actions.send(DashboardAction::Command(to_controller(command))).await;
            }
            exit = &mut dashboard => break exit,
        }
    };
    // Keys pressed just before the exit are still queued.
    while let Ok(command) = commands.try_recv() {
        let _ = actions.try_send(DashboardAction::Command(to_controller(command)));
    }
    let action = match exit {
        Ok(punisher_tui::DashboardExit::Detached) => Some(DashboardAction::Detach),
        // Ctrl-C on someone else's run leaves it alone.
        Ok(punisher_tui::DashboardExit::Interrupted) if attached => Some(DashboardAction::Detach),
        // `q` confirmed on our own run, or Ctrl-C (a key in raw mode, so no SIGINT came):
        // stop it gracefully; a second Ctrl-C, now on a normal terminal, aborts.
        Ok(punisher_tui::DashboardExit::Quit | punisher_tui::DashboardExit::Interrupted) => {
            Some(DashboardAction::Command(RunCommand::Stop {
                grace: Duration::from_secs_f64(punisher_tui::app::STOP_GRACE_SECS),
            }))
        }
        Ok(_) => None,
        Err(e) => {
            // The terminal is restored by now: the message is readable.
            eprintln!("the dashboard stopped: {e}; showing status lines");
            None
        }
    };
    if let Some(action) = action {
        let _ = actions.send(action).await;
    }
}

/// The dashboard's command as the controller's client takes it.
fn to_controller(command: core::RunCommand) -> RunCommand {
    match command {
        core::RunCommand::Start => RunCommand::Start,
        core::RunCommand::Scale { users } => RunCommand::Scale(users),
        core::RunCommand::PauseArrivals => RunCommand::Pause,
        core::RunCommand::ResumeArrivals => RunCommand::Resume,
        core::RunCommand::Stop { grace_secs } => RunCommand::Stop {
            grace: Duration::try_from_secs_f64(grace_secs).unwrap_or(Duration::ZERO),
        },
        core::RunCommand::Abort => RunCommand::Abort {
            reason: "aborted from the dashboard".into(),
        },
    }
}

/// Controller views in, dashboard views out; remembers what the dashboard shows over time.
#[derive(Debug, Clone)]
pub(crate) struct ViewMapper {
    title: String,
    planned: Duration,
    charts: core::Charts,
    log: Vec<core::LogLine>,
    run_id: String,
    last_tick: u64,
    messages_seen: usize,
    /// Each threshold's last verdict, by selector and expression.
    thresholds_passed: Vec<(String, String, bool)>,
    barriers_released: Vec<String>,
    elapsed_secs: f64,
}

impl ViewMapper {
    pub(crate) fn new(opts: &DashboardOptions) -> ViewMapper {
        ViewMapper {
            title: opts.title.clone(),
            planned: opts.planned,
            charts: core::Charts::default(),
            log: Vec::new(),
            run_id: String::new(),
            last_tick: 0,
            messages_seen: 0,
            thresholds_passed: Vec::new(),
            barriers_released: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    /// What the screen shows before the first view.
    fn placeholder(&self) -> core::RunView {
        core::RunView {
            run_id: "-".into(),
            scenario: self.title.clone(),
            state: core::RunState::Waiting,
            elapsed_secs: 0.0,
            planned_secs: self.planned.as_secs_f64(),
            users_active: 0,
            users_target: 0,
            users_arrived: 0,
            requests_per_sec: 0.0,
            error_rate: 0.0,
            thresholds: Vec::new(),
            charts: core::Charts::default(),
            requests: Vec::new(),
            agents: Vec::new(),
            barriers: Vec::new(),
            log: self.log.clone(),
        }
    }

    fn push_log(&mut self, level: core::LogLevel, message: String) {
        self.log.push(core::LogLine {
            elapsed_secs: self.elapsed_secs,
            level,
            message,
        });
        if self.log.len() > MAX_LOG_LINES {
            let extra = self.log.len() - MAX_LOG_LINES;
            self.log.drain(..extra);
        }
    }

    /// The dashboard's view of `v`; call it with every view, in order.
    pub(crate) fn map(&mut self, v: &RunView) -> core::RunView {
        if v.run_id != self.run_id {
            // Another run on the same controller (`ctl watch` of the next run): start over.
            let log = std::mem::take(&mut self.log);
            *self = ViewMapper {
                log,
                run_id: v.run_id.clone(),
                ..ViewMapper::new(&DashboardOptions {
                    title: self.title.clone(),
                    planned: self.planned,
                    attached: false,
                    wait_for_start: false,
                })
            };
        }
        self.elapsed_secs = v.elapsed.as_secs_f64();
        let interval = Interval::of(&v.interval);
        for message in v.messages.iter().skip(self.messages_seen) {
            self.push_log(level_of(message), message.clone());
        }
        self.messages_seen = self.messages_seen.max(v.messages.len());
        self.threshold_log(v);
        self.barrier_log(v);
        let open_connections: u64 = v
            .agents
            .iter()
            .filter(|a| !a.state.is_gone())
            .map(|a| a.open_connections)
            .sum();
        if v.tick > self.last_tick {
            self.last_tick = v.tick;
            let t = self.elapsed_secs;
            let c = &mut self.charts;
            push(&mut c.requests_per_sec, (t, interval.requests_per_sec));
            if let Some([p50, p95, p99]) = interval.percentiles_ms {
                push(&mut c.p50_ms, (t, p50));
                push(&mut c.p95_ms, (t, p95));
                push(&mut c.p99_ms, (t, p99));
            }
            push(&mut c.active_users, (t, v.active_users as f64));
            push(&mut c.open_connections, (t, open_connections as f64));
            push(
                &mut c.socketio_events_per_sec,
                (t, interval.socketio_events_per_sec),
            );
        }
        core::RunView {
            run_id: v.run_id.clone(),
            scenario: if self.title.is_empty() {
                v.scenario_name.clone()
            } else {
                self.title.clone()
            },
            state: state_of(v),
            elapsed_secs: self.elapsed_secs,
            planned_secs: if v.planned.is_zero() {
                self.planned
            } else {
                v.planned
            }
            .as_secs_f64(),
            users_active: v.active_users,
            users_target: v.target_users,
            users_arrived: v.arrived_users,
            requests_per_sec: interval.requests_per_sec,
            error_rate: interval.error_rate,
            thresholds: v
                .thresholds
                .iter()
                .map(|t| core::ThresholdView {
                    selector: t.selector.clone(),
                    expression: t.expression.clone(),
                    observed: t.observed,
                    passed: t.passed,
                })
                .collect(),
            charts: self.charts.clone(),
            requests: request_rows(&v.totals, &v.interval, interval.seconds),
            agents: v.agents.iter().map(agent_row).collect(),
            barriers: v
                .barriers
                .iter()
                .map(|b| core::BarrierView {
                    name: b.name.clone(),
                    arrived: b.arrived,
                    departed: b.departed,
                    expected: b.expected,
                    released: b.released,
                })
                .collect(),
            log: self.log.clone(),
        }
    }

    /// A line when a threshold starts failing or passes again (only once there is data).
    fn threshold_log(&mut self, v: &RunView) {
        for t in &v.thresholds {
            if t.observed.is_none() {
                continue;
            }
            let before = self
                .thresholds_passed
                .iter_mut()
                .find(|(s, e, _)| *s == t.selector && *e == t.expression);
            let was = match before {
                Some((_, _, passed)) => std::mem::replace(passed, t.passed),
                None => {
                    self.thresholds_passed.push((
                        t.selector.clone(),
                        t.expression.clone(),
                        t.passed,
                    ));
                    true
                }
            };
            // Rates are fractions, latencies milliseconds.
            let observed = t.observed.map_or_else(String::new, |o| {
                if o.abs() >= 1.0 {
                    format!(" ({o:.1})")
                } else {
                    format!(" ({o:.4})")
                }
            });
            if was && !t.passed {
                self.push_log(
                    core::LogLevel::Warn,
                    format!(
                        "threshold {} {} crossed{observed}",
                        t.selector, t.expression
                    ),
                );
            } else if !was && t.passed {
                self.push_log(
                    core::LogLevel::Info,
                    format!(
                        "threshold {} {} passes again{observed}",
                        t.selector, t.expression
                    ),
                );
            }
        }
    }

    fn barrier_log(&mut self, v: &RunView) {
        for b in v.barriers.iter().filter(|b| b.released) {
            if !self.barriers_released.contains(&b.name) {
                self.barriers_released.push(b.name.clone());
                self.push_log(
                    core::LogLevel::Info,
                    format!(
                        "barrier {} released ({}/{} users)",
                        b.name, b.arrived, b.expected
                    ),
                );
            }
        }
    }
}

fn push(series: &mut Vec<core::Point>, point: core::Point) {
    series.push(point);
    if series.len() > MAX_POINTS {
        let extra = series.len() - MAX_POINTS;
        series.drain(..extra);
    }
}

fn state_of(v: &RunView) -> core::RunState {
    match v.state {
        RunState::WaitingForAgents | RunState::Loading => core::RunState::Waiting,
        RunState::Starting => core::RunState::Starting,
        RunState::Running if v.paused => core::RunState::Paused,
        RunState::Running => core::RunState::Running,
        RunState::Stopping => core::RunState::Stopping,
        RunState::Finished => core::RunState::Finished,
        RunState::Failed => core::RunState::Aborted,
    }
}

/// Run messages are plain text; the words that say something went wrong make them stand out.
fn level_of(message: &str) -> core::LogLevel {
    let m = message.to_ascii_lowercase();
    if ["fail", "abort", "cannot", "could not", "error"]
        .iter()
        .any(|w| m.contains(w))
    {
        core::LogLevel::Error
    } else if [
        "lost",
        "left",
        "overloaded",
        "did not",
        "crossed",
        "stopping",
    ]
    .iter()
    .any(|w| m.contains(w))
    {
        core::LogLevel::Warn
    } else {
        core::LogLevel::Info
    }
}

fn agent_row(a: &punisher_controller::AgentView) -> core::AgentRow {
    let health = if a.state == AgentState::Lost {
        core::AgentHealth::Lost
    } else if a.state == AgentState::Left {
        core::AgentHealth::Left
    } else if a.suspect {
        core::AgentHealth::Saturated
    } else {
        core::AgentHealth::Healthy
    };
    core::AgentRow {
        id: if a.hostname.is_empty() || a.agent_id.contains(&a.hostname) {
            a.agent_id.clone()
        } else {
            format!("{} ({})", a.agent_id, a.hostname)
        },
        region: if a.region.is_empty() {
            "-".into()
        } else {
            a.region.clone()
        },
        users: a.active_users,
        connections: a.open_connections,
        cpu: a.cpu_busy_max,
        loop_lag_ms: a.event_loop_lag.as_secs_f64() * 1000.0,
        last_report_age_ms: u64::try_from(a.last_seen.as_millis()).unwrap_or(u64::MAX),
        health,
    }
}

/// The numbers of the last merged second.
struct Interval {
    seconds: f64,
    requests_per_sec: f64,
    error_rate: f64,
    percentiles_ms: Option<[f64; 3]>,
    socketio_events_per_sec: f64,
}

impl Interval {
    fn of(s: &Snapshot) -> Interval {
        let seconds = s.end_unix_ms.saturating_sub(s.start_unix_ms) as f64 / 1000.0;
        let per_sec = |n: f64| if seconds > 0.0 { n / seconds } else { 0.0 };
        let mut requests = 0.0;
        let mut failed = (0u64, 0u64);
        let mut events = 0.0;
        let mut durations: Option<hdrhistogram::Histogram<u64>> = None;
        for (key, data) in &s.series {
            match (key.metric.as_ref(), data) {
                ("http_reqs", SeriesData::Counter { sum }) => requests += sum,
                (
                    "socketio_events_received" | "socketio_events_sent",
                    SeriesData::Counter { sum },
                ) => {
                    events += sum;
                }
                ("http_req_failed", SeriesData::Rate { passes, total }) => {
                    failed.0 += passes;
                    failed.1 += total;
                }
                ("http_req_duration", SeriesData::Trend { hist, .. }) => match &mut durations {
                    Some(h) => {
                        let _ = h.add(hist.as_ref());
                    }
                    None => durations = Some(hist.as_ref().clone()),
                },
                _ => {}
            }
        }
        Interval {
            seconds,
            requests_per_sec: per_sec(requests),
            error_rate: if failed.1 > 0 {
                failed.0 as f64 / failed.1 as f64
            } else {
                0.0
            },
            percentiles_ms: durations
                .filter(|h| !h.is_empty())
                .map(|h| [0.50, 0.95, 0.99].map(|q| ms(h.value_at_quantile(q)))),
            socketio_events_per_sec: per_sec(events),
        }
    }
}

fn ms(units: u64) -> f64 {
    units as f64 / TREND_SCALE
}

/// One row per request name (`{ name: ... }`, the URL by default): the run's totals for
/// counts and percentiles, the last merged second for the rate.
fn request_rows(totals: &Totals, interval: &Snapshot, seconds: f64) -> Vec<core::RequestRow> {
    #[derive(Default)]
    struct Acc {
        count: f64,
        failures: u64,
        rate: f64,
        hist: Option<hdrhistogram::Histogram<u64>>,
    }
    let mut rows: std::collections::BTreeMap<String, Acc> = Default::default();
    let name_of = |key: &punisher_metrics::SeriesKey| key.tags.get("name").map(str::to_owned);
    for (key, data) in totals.series() {
        let Some(name) = name_of(key) else { continue };
        match (key.metric.as_ref(), data) {
            ("http_reqs", SeriesData::Counter { sum }) => {
                rows.entry(name).or_default().count += sum
            }
            ("http_req_failed", SeriesData::Rate { passes, .. }) => {
                rows.entry(name).or_default().failures += passes;
            }
            ("http_req_duration", SeriesData::Trend { hist, .. }) => {
                let acc = rows.entry(name).or_default();
                match &mut acc.hist {
                    Some(h) => {
                        let _ = h.add(hist.as_ref());
                    }
                    None => acc.hist = Some(hist.as_ref().clone()),
                }
            }
            _ => {}
        }
    }
    if seconds > 0.0 {
        for (key, data) in &interval.series {
            if let ("http_reqs", SeriesData::Counter { sum }) = (key.metric.as_ref(), data)
                && let Some(acc) = name_of(key).and_then(|n| rows.get_mut(&n))
            {
                acc.rate += sum / seconds;
            }
        }
    }
    rows.into_iter()
        .map(|(name, acc)| {
            let q = |q: f64| {
                acc.hist
                    .as_ref()
                    .map_or(0.0, |h| ms(h.value_at_quantile(q)))
            };
            core::RequestRow {
                name,
                count: acc.count as u64,
                rate_per_sec: acc.rate,
                p50_ms: q(0.50),
                p95_ms: q(0.95),
                p99_ms: q(0.99),
                max_ms: acc.hist.as_ref().map_or(0.0, |h| ms(h.max())),
                failures: acc.failures,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use punisher_controller::{AgentView, BarrierView, ThresholdView};
    use punisher_metrics::{MetricKind, Recorder, Tags, ValueType};
    use punisher_tui::{App, DashboardConfig};

    use super::*;

    /// One merged second `[start, start + 1 s)`: `login` 100 requests of 10 ms (2 failed),
    /// `vote` 200 of 50 ms, and 40 Socket.IO events.
    fn second(start_ms: u64) -> Snapshot {
        let mut r = Recorder::new();
        for (name, count, ms, failed) in [("login", 100, 10.0, 2), ("vote", 200, 50.0, 0)] {
            let tags = Tags::new([("name", name)]);
            let reqs = r
                .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
                .unwrap();
            let duration = r
                .series(
                    MetricKind::Trend,
                    ValueType::Time,
                    "http_req_duration",
                    &tags,
                )
                .unwrap();
            let fails = r
                .series(
                    MetricKind::Rate,
                    ValueType::Default,
                    "http_req_failed",
                    &tags,
                )
                .unwrap();
            for i in 0..count {
                r.add_counter(reqs, 1.0);
                r.add_trend(duration, ms);
                r.add_rate(fails, i < failed);
            }
        }
        let events = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "socketio_events_received",
                &Tags::empty(),
            )
            .unwrap();
        r.add_counter(events, 40.0);
        r.take_snapshot(start_ms, start_ms + 1000)
    }

    fn agent(id: &str, region: &str, state: AgentState, users: u64) -> AgentView {
        AgentView {
            agent_id: id.into(),
            hostname: String::new(),
            region: region.into(),
            state,
            cores: 4,
            open_files: 65536,
            segment: (0.0, 0.5),
            active_users: users,
            cpu_busy_max: 0.35,
            event_loop_lag: Duration::from_millis(3),
            suspect: false,
            clock_offset_ms: 0.0,
            rtt_ms: 0.2,
            reports: 12,
            requests: 0,
            last_seen: Duration::from_millis(400),
            open_connections: users * 2,
        }
    }

    #[test]
    fn a_suspect_agent_shows_as_saturated() {
        // The controller suspects an agent whose CPU or event loop is past its limits: its
        // numbers are less trustworthy, and the dashboard says "saturated".
        let suspect = AgentView {
            suspect: true,
            cpu_busy_max: 0.97,
            event_loop_lag: Duration::from_millis(180),
            ..agent("agent-5", "eu-west-1", AgentState::Running, 40)
        };
        let row = agent_row(&suspect);
        assert_eq!(row.health, core::AgentHealth::Saturated);
        assert_eq!((row.cpu, row.loop_lag_ms), (0.97, 180.0));
        // Lost or left wins over suspect: the agent is gone.
        for (state, health) in [
            (AgentState::Lost, core::AgentHealth::Lost),
            (AgentState::Left, core::AgentHealth::Left),
        ] {
            let gone = AgentView {
                state,
                ..suspect.clone()
            };
            assert_eq!(agent_row(&gone).health, health);
        }
        // On the screen, through the mapper.
        let mut mapper = ViewMapper::new(&opts(false));
        let mut v = view(3);
        v.agents.push(suspect);
        let s = screen(mapper.map(&v), false, 120, 40);
        assert_contains(
            line_with(&s, "agent-5"),
            &["eu-west-1", "97%", "180ms", "saturated"],
        );
    }

    #[test]
    fn agents_that_said_goodbye_show_as_left_not_lost() {
        let left = agent_row(&agent("agent-3", "ap-south-1", AgentState::Left, 0));
        assert_eq!(left.health, core::AgentHealth::Left);
        let lost = agent_row(&agent("agent-4", "ap-south-1", AgentState::Lost, 0));
        assert_eq!(lost.health, core::AgentHealth::Lost);
    }

    /// Run `r-1` at merged second `tick` (totals: `tick` seconds like [`second`]).
    fn view(tick: u64) -> RunView {
        let mut totals = Totals::new();
        for i in 0..tick {
            totals.add(&second(1_000 * i)).unwrap();
        }
        RunView {
            run_id: "r-1".into(),
            state: RunState::Running,
            tick,
            started_unix_ms: 0,
            elapsed: Duration::from_secs(tick),
            active_users: 90,
            target_users: 100,
            arrived_users: 100,
            agents: vec![
                agent("agent-1", "eu-west-1", AgentState::Running, 90),
                AgentView {
                    last_seen: Duration::from_secs(21),
                    ..agent("agent-2", "us-east-1", AgentState::Lost, 0)
                },
            ],
            interval: second(1_000 * tick.saturating_sub(1)),
            totals,
            thresholds: vec![
                ThresholdView {
                    selector: "http_req_duration".into(),
                    expression: "p(95)<40".into(),
                    passed: false,
                    observed: Some(50.0),
                    abort_on_fail: false,
                },
                ThresholdView {
                    selector: "http_req_failed".into(),
                    expression: "rate<0.01".into(),
                    passed: true,
                    observed: Some(0.0067),
                    abort_on_fail: false,
                },
            ],
            summary_json: None,
            summary_text: None,
            exit_code: None,
            messages: vec!["agent agent-2 lost: no message for 3.2s".into()],
            paused: false,
            results_dir: None,
            barriers: vec![BarrierView {
                name: "connected".into(),
                arrived: 60,
                departed: 5,
                expected: 100,
                released: false,
            }],
            waiting_for_start: false,
            planned: Duration::ZERO,
            scenario_name: "scenarios/tv_show.js".into(),
        }
    }

    fn opts(wait_for_start: bool) -> DashboardOptions {
        DashboardOptions {
            title: "tv_show.js".into(),
            planned: Duration::from_secs(60),
            attached: false,
            wait_for_start,
        }
    }

    fn screen(view: core::RunView, wait_for_start: bool, width: u16, height: u16) -> String {
        let cfg = DashboardConfig {
            attached: false,
            wait_for_start,
            refresh: REFRESH,
        };
        punisher_tui::render_text(&App::new(&cfg, view), width, height)
    }

    #[track_caller]
    fn assert_contains(screen: &str, needles: &[&str]) {
        for needle in needles {
            assert!(
                screen.contains(needle),
                "{needle:?} not on the screen:\n{screen}"
            );
        }
    }

    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
    }

    #[test]
    fn a_running_view_maps_every_number() {
        let mut mapper = ViewMapper::new(&opts(false));
        let v = mapper.map(&view(3));
        assert_eq!(v.run_id, "r-1");
        assert_eq!(v.state, core::RunState::Running);
        assert_eq!((v.elapsed_secs, v.planned_secs), (3.0, 60.0));
        assert_eq!(
            (v.users_active, v.users_target, v.users_arrived),
            (90, 100, 100)
        );
        assert_eq!(v.requests_per_sec, 300.0);
        assert!((v.error_rate - 2.0 / 300.0).abs() < 1e-9);
        // Counts and percentiles over the run (3 s), the rate over the last second.
        let vote = &v.requests[1];
        assert_eq!(
            (vote.name.as_str(), vote.count, vote.failures),
            ("vote", 600, 0)
        );
        assert_eq!(vote.rate_per_sec, 200.0);
        assert!((vote.p99_ms - 50.0).abs() < 0.1, "{vote:?}");
        let login = &v.requests[0];
        assert_eq!((login.count, login.failures), (300, 6));
        assert!((login.max_ms - 10.0).abs() < 0.1, "{login:?}");
        assert_eq!(v.agents[0].connections, 180);
        assert_eq!(v.agents[0].loop_lag_ms, 3.0);
        assert_eq!(v.agents[1].health, core::AgentHealth::Lost);
        assert_eq!(v.agents[1].last_report_age_ms, 21_000);
        assert_eq!((v.barriers[0].arrived, v.barriers[0].departed), (60, 5));
        assert_eq!(v.thresholds[0].observed, Some(50.0));
        let c = &v.charts;
        assert_eq!(c.requests_per_sec, vec![(3.0, 300.0)]);
        assert_eq!(c.socketio_events_per_sec, vec![(3.0, 40.0)]);
        // The lost agent's connections are gone.
        assert_eq!(c.open_connections, vec![(3.0, 180.0)]);
        assert_eq!(c.active_users, vec![(3.0, 90.0)]);
        assert!((c.p50_ms[0].1 - 50.0).abs() < 0.1, "{:?}", c.p50_ms);
    }

    #[test]
    fn the_whole_screen_shows_the_mapped_view() {
        let mut mapper = ViewMapper::new(&opts(false));
        let s = screen(mapper.map(&view(3)), false, 120, 40);
        assert_contains(
            &s,
            &[
                "run r-1 · tv_show.js",
                "RUNNING",
                "users 90/100",
                "arrived 100",
                "300 req/s",
                "errors 0.67%",
                "thresholds: 1 of 2 failing",
                "✗ p(95)<40",
                "connected 60+5 left/100",
                "agent agent-2 lost",
                "threshold http_req_duration p(95)<40 crossed",
                "socket.io",
                "connections",
            ],
        );
        let vote = line_with(&s, "│vote ");
        assert_contains(vote, &["600", "200"]);
        let agent = line_with(&s, "agent-1");
        assert_contains(agent, &["eu-west-1", "90", "180"]);
        assert_contains(line_with(&s, "agent-2"), &["lost"]);
    }

    #[test]
    fn a_small_terminal_shows_fewer_panels() {
        let mut mapper = ViewMapper::new(&opts(false));
        let s = screen(mapper.map(&view(3)), false, 60, 14);
        assert_contains(&s, &["RUNNING", "users 90/100"]);
        assert!(!s.contains("│vote "), "{s}");
        let s = screen(mapper.map(&view(4)), false, 10, 3);
        assert_contains(&s, &["terminal"]);
    }

    #[test]
    fn crossings_and_releases_are_logged_once() {
        let mut mapper = ViewMapper::new(&opts(false));
        let mut v = view(1);
        mapper.map(&v);
        v.tick = 2;
        v.thresholds[0].passed = true;
        v.barriers[0].released = true;
        v.barriers[0].arrived = 100;
        let mapped = mapper.map(&v);
        v.tick = 3;
        let again = mapper.map(&v);
        let messages: Vec<&str> = again.log.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "agent agent-2 lost: no message for 3.2s",
                "threshold http_req_duration p(95)<40 crossed (50.0)",
                "threshold http_req_duration p(95)<40 passes again (50.0)",
                "barrier connected released (100/100 users)",
            ]
        );
        assert_eq!(mapped.log.len(), 4);
        assert_eq!(again.log[0].level, core::LogLevel::Warn);
        assert_eq!(again.log[1].level, core::LogLevel::Warn);
        assert_eq!(again.log[1].elapsed_secs, 1.0);
    }

    #[test]
    fn charts_take_one_point_per_merged_second_and_restart_with_a_new_run() {
        let mut mapper = ViewMapper::new(&opts(false));
        let v = view(1);
        mapper.map(&v);
        // The same second again (a state change): no new point.
        let mapped = mapper.map(&RunView {
            state: RunState::Stopping,
            ..v.clone()
        });
        assert_eq!(mapped.charts.requests_per_sec.len(), 1);
        assert_eq!(mapped.state, core::RunState::Stopping);
        for tick in 2..=700 {
            mapper.map(&RunView {
                tick,
                elapsed: Duration::from_secs(tick),
                ..v.clone()
            });
        }
        let mapped = mapper.map(&view(701));
        assert_eq!(mapped.charts.active_users.len(), MAX_POINTS);
        assert_eq!(mapped.charts.active_users.last().unwrap().0, 701.0);
        let next = mapper.map(&RunView {
            run_id: "r-2".into(),
            ..view(1)
        });
        assert_eq!(next.charts.requests_per_sec.len(), 1);
    }

    #[test]
    fn states_map_and_a_held_run_asks_for_s() {
        let mut mapper = ViewMapper::new(&opts(true));
        let held = RunView {
            state: RunState::Loading,
            tick: 0,
            waiting_for_start: true,
            ..view(0)
        };
        let mapped = mapper.map(&held);
        assert_eq!(mapped.state, core::RunState::Waiting);
        assert_contains(
            &screen(mapped, true, 120, 40),
            &["press s to start the run"],
        );
        let paused = RunView {
            paused: true,
            ..view(1)
        };
        assert_eq!(mapper.map(&paused).state, core::RunState::Paused);
        let failed = RunView {
            state: RunState::Failed,
            ..view(1)
        };
        assert_eq!(mapper.map(&failed).state, core::RunState::Aborted);
    }

    #[test]
    fn dashboard_commands_are_the_ones_ctl_sends() {
        assert_eq!(to_controller(core::RunCommand::Start), RunCommand::Start);
        assert_eq!(
            to_controller(core::RunCommand::Scale { users: 110 }),
            RunCommand::Scale(110)
        );
        assert_eq!(
            to_controller(core::RunCommand::PauseArrivals),
            RunCommand::Pause
        );
        assert_eq!(
            to_controller(core::RunCommand::ResumeArrivals),
            RunCommand::Resume
        );
        assert_eq!(
            to_controller(core::RunCommand::Stop { grace_secs: 30.0 }),
            RunCommand::Stop {
                grace: Duration::from_secs(30)
            }
        );
        assert!(matches!(
            to_controller(core::RunCommand::Abort),
            RunCommand::Abort { .. }
        ));
    }

    #[test]
    fn log_lines_wait_while_the_dashboard_is_up() {
        use std::io::Write as _;
        DASHBOARD_UP.store(true, Ordering::Release);
        LogWriter.write_all(b"held line\n").unwrap();
        assert_eq!(HELD_LOGS.lock().unwrap().as_slice(), b"held line\n");
        // A child's lines wait too; its warnings also go to the log pane.
        child_line(
            "agent 1",
            "2026-11-22T13:39:17.123456Z  \u{1b}[33m WARN\u{1b}[0m engine error",
        );
        child_line("agent 1", "2026-11-22T13:39:17.123456Z  INFO loaded");
        assert_eq!(
            HELD_LOGS.lock().unwrap().as_slice(),
            "held line\n[agent 1] 2026-11-22T13:39:17.123456Z  \u{1b}[33m WARN\u{1b}[0m engine error\n[agent 1] 2026-11-22T13:39:17.123456Z  INFO loaded\n".as_bytes()
        );
        assert_eq!(
            CHILD_PANE
                .lock()
                .unwrap()
                .iter()
                .cloned()
                .collect::<Vec<_>>(),
            vec![(core::LogLevel::Warn, "[agent 1] engine error".to_owned())]
        );
        // Bounded: past the cap, lines are counted, not kept.
        for _ in 0..MAX_HELD_LOG_BYTES / 16 {
            LogWriter.write_all(b"0123456789abcde\n").unwrap();
        }
        assert!(HELD_LOGS.lock().unwrap().len() <= MAX_HELD_LOG_BYTES);
        assert!(DROPPED_LOGS.load(Ordering::Relaxed) > 0);
        for i in 0..MAX_CHILD_PANE_LINES + 5 {
            child_line("agent 2", &format!("ERROR failure {i}"));
        }
        assert_eq!(CHILD_PANE.lock().unwrap().len(), MAX_CHILD_PANE_LINES);
        release_logs();
        assert!(HELD_LOGS.lock().unwrap().is_empty());
        assert!(CHILD_PANE.lock().unwrap().is_empty());
        assert_eq!(DROPPED_LOGS.load(Ordering::Relaxed), 0);
        assert!(!DASHBOARD_UP.load(Ordering::Acquire));
    }

    #[test]
    fn child_lines_are_parsed_for_the_log_pane() {
        use self::core::LogLevel::{Error, Info, Warn};
        let cases = [
            (
                "2026-11-22T13:39:17.123Z ERROR cannot connect",
                Error,
                "cannot connect",
            ),
            (
                "\u{1b}[2m2026-11-22T13:39:17Z\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m slow agent_id=a",
                Warn,
                "slow agent_id=a",
            ),
            ("  INFO joined", Info, "joined"),
            (
                "thread 'main' panicked at src/x.rs:1:1",
                Error,
                "thread 'main' panicked at src/x.rs:1:1",
            ),
            ("Error: cannot bind", Error, "Error: cannot bind"),
            ("plain words", Info, "plain words"),
            ("", Info, ""),
        ];
        for (line, level, message) in cases {
            assert_eq!(
                parse_child_line(line),
                (level, message.to_owned()),
                "{line:?}"
            );
        }
        assert_eq!(strip_ansi("a\u{1b}[1;31mb\u{1b}[0mc\u{1b}"), "abc");
    }

    #[test]
    fn notes_reach_the_log_pane() {
        let mut d = ViewMapper::new(&opts(false));
        d.push_log(
            core::LogLevel::Error,
            "the controller refused: no run".into(),
        );
        assert_eq!(d.placeholder().log.len(), 1);
    }
}
