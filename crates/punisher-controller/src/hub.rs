//! The hub: one task that owns the agent registry and the current run. Agent sessions and
//! admin calls talk to it through one bounded queue of [`HubEvent`]s; a tick 500 ms after
//! each wall-clock second closes that whole second (journal first, then acks, thresholds
//! and the live view) and a 250 ms check finds lost agents, pings (carrying each agent's
//! clock offset), and moves the run through its states.
//!
//! One task, no locks: every decision about agents and the run is taken in one place, in
//! the order events arrived.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use punisher_core::{Plan, Segment};
use punisher_metrics::{SeriesData, SeriesKey, Snapshot, Summary, SummaryMeta, Tags, Threshold};
use punisher_proto::v1::agent_message::Kind as Msg;
use punisher_proto::v1::controller_message::Kind as Cmd;
use punisher_proto::{ServiceError, v1};
use punisher_results::{AgentInfo, LiveNumbers, ResultsDir, ResultsError, RunInfo};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::codegen::Bytes;

use crate::RunCommand;
use crate::journal::Recorder;
use crate::merge::{Merger, second_of};
use crate::prometheus::{Exposition, Publisher};
use crate::registry::{Agent, AgentTx, Assignment, Conn, Gone};
use crate::view::RunState;

/// Events waiting for the hub. Each agent sends about two per second (report, pong), so
/// this absorbs a burst of 1,000 agents reporting in the same instant; senders wait when
/// it is full (backpressure onto the agents' streams), nothing is dropped.
pub(crate) const EVENT_QUEUE: usize = 4096;

/// The hub closes each wall-clock second this long after it ended. Agents send theirs
/// 100 ms after the boundary (on the controller's clock, corrected by the offset it
/// measured); a report that arrives later than this lands in the next second closed.
const TICK_PHASE: Duration = Duration::from_millis(500);
/// Seconds closed one by one after a delayed tick; a longer gap (a clock jump, a stalled
/// hub) is closed as one interval, labelled with its real length.
const MAX_CATCH_UP_SECONDS: u64 = 30;
const CHECK: Duration = Duration::from_millis(250);
const PING_EVERY: Duration = Duration::from_secs(1);
/// Agents compile the scenario before the start: this long at most.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// After Stop's grace (or an Abort), agents get this long to send their last report.
const STOP_SLACK: Duration = Duration::from_secs(15);
/// A worker this busy, or whose timers fire this late, measures its own queueing.
const SUSPECT_CPU: f64 = 0.9;
const SUSPECT_LAG: Duration = Duration::from_millis(250);
/// Agent log lines are user text: bounded.
const MAX_LOG_BYTES: usize = 4096;
/// The end-of-run files (summary, JUnit, HTML report) of a run are written within this
/// long, or the run ends without them (a stuck disk must not hold the controller).
const RESULTS_FINISH_TIMEOUT: Duration = Duration::from_secs(60);
/// Results writers reporting their end: at most one run finishes at a time.
const RESULTS_DONE_QUEUE: usize = 4;

/// A validated run submission.
pub(crate) struct RunSpec {
    pub(crate) bundle: v1::Bundle,
    pub(crate) plan: Plan,
    pub(crate) thresholds: Vec<Threshold>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) setup_data_json: String,
    pub(crate) wait_agents: u32,
    pub(crate) scenario_name: String,
    pub(crate) workers_per_agent: u32,
    pub(crate) start_delay: Duration,
    /// `--run-id`: the run's id and results folder name; `None`: made up.
    pub(crate) run_id: Option<String>,
    /// The submitter's command line, for `run.json`.
    pub(crate) command_line: Vec<String>,
    /// Load, then hold until [`RunCommand::Start`].
    pub(crate) wait_for_start: bool,
    /// What an agent leaving or lost mid-run means for the run.
    pub(crate) on_agent_loss: crate::AgentLossPolicy,
}

pub(crate) type ViewRx = watch::Receiver<Arc<v1::RunView>>;

pub(crate) enum HubEvent {
    Join {
        hello: v1::Hello,
        peer: Option<SocketAddr>,
        tx: AgentTx,
        cancel: CancellationToken,
        reply: oneshot::Sender<Result<u64, ServiceError>>,
    },
    FromAgent {
        conn: u64,
        msg: v1::AgentMessage,
    },
    Left {
        conn: u64,
        reason: String,
    },
    Submit {
        spec: Box<RunSpec>,
        reply: oneshot::Sender<Result<String, ServiceError>>,
    },
    Status {
        reply: oneshot::Sender<v1::StatusResponse>,
    },
    Watch {
        run_id: String,
        reply: oneshot::Sender<Result<ViewRx, ServiceError>>,
    },
    Command {
        cmd: RunCommand,
        reply: oneshot::Sender<Result<v1::CommandResponse, ServiceError>>,
    },
}

#[derive(Default)]
struct Barrier {
    /// Users arrived here, by agent (cumulative, as the agents count).
    arrived: HashMap<String, u64>,
    /// Users that arrived here and then left the test, by agent (cumulative).
    arrived_then_departed: HashMap<String, u64>,
    released: bool,
}

impl Barrier {
    /// Users settled here over the `counted` agents: (arrived, left the test without
    /// arriving), given each agent's users that left the test (`departed`). The barrier
    /// opens when both add up to the expected count; the views show both.
    fn settled(&self, departed: &HashMap<String, u64>, counted: &[&String]) -> (u64, u64) {
        counted.iter().fold((0, 0), |(arrived, left), id| {
            let here = self.arrived.get(*id).copied().unwrap_or(0);
            let gone = departed.get(*id).copied().unwrap_or(0);
            let both = self.arrived_then_departed.get(*id).copied().unwrap_or(0);
            (arrived + here, left + gone.saturating_sub(both))
        })
    }
}

struct Run {
    id: String,
    /// Submitted with `wait_for_start` and no Start command yet: loads, then holds.
    held: bool,
    spec: RunSpec,
    state: RunState,
    /// Assigned agents, by index.
    agents: Vec<String>,
    load_deadline: Option<Instant>,
    /// The common start instant, monotonic and wall-clock.
    start: Option<(Instant, u64)>,
    stop_deadline: Option<Instant>,
    merger: Merger,
    tick: u64,
    target_users: u64,
    vus_max: u64,
    paused: bool,
    barriers: BTreeMap<String, Barrier>,
    /// Users that left the test, by agent (cumulative): barriers stop waiting for them.
    departed: HashMap<String, u64>,
    messages: Vec<String>,
    /// Departed and lost agents, and the shares others took over from them.
    losses: crate::loss::Losses,
    /// The results folder's writer, until the run's end hands it its last files.
    recorder: Option<Recorder>,
    /// The results folder, shown in views (`None`: no results).
    results_dir: Option<PathBuf>,
    /// `run.json` as known so far.
    info: RunInfo,
    /// The most users each agent ran at once, for `run.json`.
    peak_users: HashMap<String, u64>,
    /// The run is over and its end-of-run files are being written: this is its end state,
    /// shown once they are (a client that sees the run over may rely on its folder).
    finishing: Option<RunState>,
    view: watch::Sender<Arc<v1::RunView>>,
    last_interval: Bytes,
    last_totals: Bytes,
    /// Why the run ended early, for the summary.
    interrupted: Option<String>,
    summary_json: String,
    summary_text: String,
    exit_code: i32,
}

impl Run {
    fn active(&self) -> bool {
        !self.state.is_over()
    }

    /// Active and not writing its end-of-run files: takes reports and commands.
    fn taking_reports(&self) -> bool {
        self.active() && self.finishing.is_none()
    }

    fn started(&self) -> bool {
        matches!(
            self.state,
            RunState::Starting | RunState::Running | RunState::Stopping
        )
    }

    fn note(&mut self, message: String) {
        tracing::info!(run_id = %self.id, "{message}");
        self.messages.push(message);
    }
}

/// A results writer finished the end-of-run files of a run.
pub(crate) struct ResultsWritten {
    run_id: String,
    problems: Vec<String>,
}

pub(crate) struct Hub {
    results_dir: Option<PathBuf>,
    prometheus: Option<Publisher>,
    results_done_tx: mpsc::Sender<ResultsWritten>,
    results_done_rx: mpsc::Receiver<ResultsWritten>,
    lost_after: Duration,
    agents: BTreeMap<String, Agent>,
    conns: HashMap<u64, String>,
    next_conn: u64,
    run: Option<Run>,
    next_ping: Instant,
    ping_nonce: u64,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The next tick: [`TICK_PHASE`] after a second boundary, the first one still ahead.
fn next_tick() -> Instant {
    let now = unix_ms();
    let mut next = second_of(now) + TICK_PHASE.as_millis() as u64;
    if next <= now {
        next += 1000;
    }
    Instant::now() + Duration::from_millis(next - now)
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn new_run_id() -> String {
    format!("run-{}-{:04x}", unix_ms() / 1000, rand::random::<u16>())
}

/// Runs the hub until `cancel` fires or every sender is gone.
pub(crate) async fn run_hub(
    mut hub: Hub,
    mut events: mpsc::Receiver<HubEvent>,
    cancel: CancellationToken,
) {
    let tick = tokio::time::sleep_until(next_tick());
    tokio::pin!(tick);
    let mut check = tokio::time::interval(CHECK);
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            event = events.recv() => match event {
                Some(event) => hub.handle(event).await,
                None => break,
            },
            Some(done) = hub.results_done_rx.recv() => hub.results_written(done),
            _ = check.tick() => hub.check().await,
            _ = &mut tick => {
                hub.tick().await;
                tick.as_mut().reset(next_tick());
            }
        }
    }
    hub.shutdown();
}

impl Hub {
    pub(crate) fn new(
        results_dir: Option<PathBuf>,
        lost_after: Duration,
        prometheus: Option<Publisher>,
    ) -> Hub {
        let (results_done_tx, results_done_rx) = mpsc::channel(RESULTS_DONE_QUEUE);
        Hub {
            results_dir,
            prometheus,
            results_done_tx,
            results_done_rx,
            lost_after,
            agents: BTreeMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            run: None,
            next_ping: Instant::now(),
            ping_nonce: 0,
        }
    }

    async fn handle(&mut self, event: HubEvent) {
        match event {
            HubEvent::Join {
                hello,
                peer,
                tx,
                cancel,
                reply,
            } => {
                let result = self.join(hello, peer, tx, cancel);
                let ok = result.is_ok();
                let _ = reply.send(result);
                if ok {
                    self.try_allocate().await;
                }
            }
            HubEvent::FromAgent { conn, msg } => self.on_agent_message(conn, msg).await,
            HubEvent::Left { conn, reason } => self.left(conn, &reason),
            HubEvent::Submit { spec, reply } => {
                let result = self.submit(*spec);
                let _ = reply.send(result);
                self.try_allocate().await;
            }
            HubEvent::Status { reply } => {
                let _ = reply.send(self.status());
            }
            HubEvent::Watch { run_id, reply } => {
                let _ = reply.send(self.watch(&run_id));
            }
            HubEvent::Command { cmd, reply } => {
                let result = self.command(cmd).await;
                let _ = reply.send(result);
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Agents

    fn join(
        &mut self,
        hello: v1::Hello,
        peer: Option<SocketAddr>,
        tx: AgentTx,
        cancel: CancellationToken,
    ) -> Result<u64, ServiceError> {
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let conn = Conn {
            id: conn_id,
            tx,
            cancel,
        };
        let id = hello.agent_id.clone();
        let run_active = self.run.as_ref().filter(|r| r.active());
        let agent = match self.agents.get_mut(&id) {
            Some(existing) => {
                if let Some(old) = existing.conn.take() {
                    old.cancel.cancel();
                    self.conns.remove(&old.id);
                }
                existing.hello = hello;
                existing.peer = peer;
                existing.conn = Some(conn);
                existing.last_seen = Instant::now();
                existing.disconnected_at = None;
                // An assignment of a run that is over means nothing any more.
                if existing
                    .assignment
                    .as_ref()
                    .is_some_and(|a| run_active.is_none_or(|r| r.id != a.run_id))
                {
                    existing.assignment = None;
                }
                existing
            }
            None => self
                .agents
                .entry(id.clone())
                .or_insert_with(|| Agent::new(hello, peer, conn)),
        };
        self.conns.insert(conn_id, id.clone());
        let was_lost = agent.gone.take().is_some();
        let (run_id, last_acked_seq) = agent
            .assignment
            .as_ref()
            .map_or((String::new(), 0), |a| (a.run_id.clone(), a.accepted_seq));
        agent.send(Cmd::Welcome(v1::Welcome {
            controller_version: punisher_proto::SOFTWARE_VERSION.to_owned(),
            protocol: punisher_proto::PROTOCOL_VERSION,
            controller_unix_ms: unix_ms(),
            run_id: run_id.clone(),
            last_acked_seq,
        }));
        tracing::info!(agent_id = %id, ?peer, rejoined = !run_id.is_empty(), "agent joined");
        if !run_id.is_empty()
            && let Some(run) = self.run.as_mut()
        {
            // Resend what a reconnecting agent may have missed.
            for (name, b) in &run.barriers {
                if b.released {
                    agent.send(Cmd::BarrierRelease(v1::BarrierRelease {
                        run_id: run.id.clone(),
                        name: name.clone(),
                    }));
                }
            }
            if run.paused {
                agent.send(Cmd::Pause(v1::PauseArrivals {
                    run_id: run.id.clone(),
                }));
            }
            // A Load or Start lost with the old connection is sent again (agents treat
            // repeats as no-ops or restart loading).
            if let Some(a) = agent.assignment.as_ref() {
                if run.state == RunState::Loading && !a.loaded {
                    let plan_json = punisher_proto::convert::plan_to_json(&run.spec.plan);
                    let load = load_message(run, &plan_json, a.segment, a.index, run.agents.len());
                    agent.send(Cmd::Load(load));
                } else if let Some((_, at_unix_ms)) = run.start.filter(|_| run.started()) {
                    agent.send(Cmd::Start(v1::Start {
                        run_id: run.id.clone(),
                        at_unix_ms,
                    }));
                    // Shares it took over from departed agents (repeats are no-ops).
                    if let Some(shares) = run.losses.adopted.get(&id) {
                        agent.send(adopt_message(&run.id, shares));
                    }
                }
            }
            if was_lost {
                run.note(format!("agent {id} rejoined"));
            }
        }
        Ok(conn_id)
    }

    fn left(&mut self, conn: u64, reason: &str) {
        let Some(id) = self.conns.remove(&conn) else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        if agent.conn.as_ref().is_some_and(|c| c.id == conn) {
            agent.conn = None;
            agent.disconnected_at = Some(Instant::now());
        }
        tracing::info!(agent_id = %id, reason, "agent stream ended");
        let in_run = agent.assignment.is_some() && self.run.as_ref().is_some_and(Run::active);
        if agent.conn.is_none() && !in_run {
            self.agents.remove(&id);
        }
    }

    fn disconnect(&mut self, id: &str, status: Status) {
        tracing::warn!(agent_id = %id, reason = %status.message(), "disconnecting agent");
        if let Some(agent) = self.agents.get_mut(id) {
            agent.disconnect(status);
        }
    }

    async fn on_agent_message(&mut self, conn: u64, msg: v1::AgentMessage) {
        let Some(id) = self.conns.get(&conn).cloned() else {
            return;
        };
        let Some(agent) = self.agents.get_mut(&id) else {
            return;
        };
        if agent.conn.as_ref().is_none_or(|c| c.id != conn) {
            return; // a message from a replaced connection
        }
        agent.last_seen = Instant::now();
        match msg.kind {
            None => self.disconnect(
                &id,
                Status::invalid_argument("empty or unknown agent message"),
            ),
            Some(Msg::Hello(_)) => self.disconnect(
                &id,
                Status::invalid_argument("a session has one Hello, at its start"),
            ),
            Some(Msg::Report(report)) => self.on_report(&id, report).await,
            Some(Msg::BarrierArrive(b)) => self.on_barrier(&id, b),
            Some(Msg::BarrierDepart(d)) => self.on_barrier_depart(&id, d),
            Some(Msg::Log(log)) => {
                let mut text = log.message;
                if text.len() > MAX_LOG_BYTES {
                    let mut cut = MAX_LOG_BYTES;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                match v1::log::Level::try_from(log.level) {
                    Ok(v1::log::Level::Error) => tracing::error!(agent_id = %id, "{text}"),
                    Ok(v1::log::Level::Warn) => tracing::warn!(agent_id = %id, "{text}"),
                    _ => tracing::info!(agent_id = %id, "{text}"),
                }
            }
            Some(Msg::Goodbye(g)) => {
                tracing::info!(agent_id = %id, reason = %g.reason, "agent said goodbye");
                let unfinished = agent.assignment.as_ref().is_some_and(|a| !a.finished);
                agent.disconnect(Status::ok("goodbye"));
                if unfinished && let Some(run) = self.run.as_mut().filter(|r| r.active()) {
                    agent.gone = Some(Gone::Left);
                    run.note(format!("agent {id} left the run: {}", g.reason));
                    self.agent_gone(&id, &g.reason, None);
                    self.after_lost().await;
                }
            }
            Some(Msg::Pong(p)) => {
                agent
                    .clock
                    .sample(p.ping_sent_unix_us, p.agent_unix_us, unix_us())
            }
            Some(Msg::Loaded(l)) => self.on_loaded(&id, l).await,
        }
    }

    async fn on_report(&mut self, id: &str, report: v1::Report) {
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        let run = self
            .run
            .as_mut()
            .filter(|r| r.taking_reports() && r.id == report.run_id);
        let assignment = agent
            .assignment
            .as_mut()
            .filter(|a| a.run_id == report.run_id);
        let (Some(run), Some(a)) = (run, assignment) else {
            // A report of a run that is over (or unknown): acknowledge it so that the
            // agent forgets it, and count nothing.
            agent.send(Cmd::Ack(v1::ReportAck {
                run_id: report.run_id,
                seq: report.seq,
            }));
            return;
        };
        if report.seq <= a.accepted_seq {
            let seq = a.accepted_seq;
            agent.send(Cmd::Ack(v1::ReportAck {
                run_id: report.run_id,
                seq,
            }));
            return;
        }
        if report.seq != a.accepted_seq + 1 {
            let status = Status::invalid_argument(format!(
                "report {} after {}: reports are numbered without gaps",
                report.seq, a.accepted_seq
            ));
            self.disconnect(id, status);
            return;
        }
        let (second, requests) = match run
            .merger
            .add_report_counting(&report.snapshot, "http_reqs")
        {
            Ok(added) => added,
            Err(e) => {
                let status = Status::invalid_argument(format!("report {}: {e}", report.seq));
                self.disconnect(id, status);
                return;
            }
        };
        a.accepted_seq = report.seq;
        a.ack_due = true;
        a.last_second = a.last_second.max(second);
        a.reports += 1;
        a.requests += requests as u64;
        a.active_users = report.active_users;
        a.peak_users = report.peak_users.max(report.active_users);
        // At least this agent's peak, also when the run ends before the next tick sums them.
        run.vus_max = run.vus_max.max(a.peak_users);
        a.target_users = report.target_users;
        a.arrived_users = report.arrived_users;
        a.cpu_busy_max = report.cpu_busy_max;
        a.event_loop_lag_us = report.event_loop_lag_us;
        a.open_connections = report.open_connections;
        a.open_sockets = report.open_sockets;
        a.suspect = report.cpu_busy_max > SUSPECT_CPU
            || Duration::from_micros(report.event_loop_lag_us) > SUSPECT_LAG;
        if a.suspect {
            a.suspect_seconds += 1;
        }
        if report.finished {
            a.finished = true;
            a.active_users = 0;
            if report.departing {
                // It leaves before its share is done (a spot interruption): what it did not
                // start goes to the others, per the run's policy.
                agent.gone = Some(Gone::Left);
                let departure = crate::loss::Departure {
                    shares: report
                        .left_over
                        .iter()
                        .filter_map(|s| {
                            let segment =
                                punisher_proto::convert::segment_from_wire(s.segment).ok()?;
                            Some((segment, s.from_user))
                        })
                        .collect(),
                    interrupted_users: report.interrupted_users,
                    from_unix_ms: report.departed_unix_ms,
                };
                let reason = if report.departure_reason.is_empty() {
                    "departed".to_owned()
                } else {
                    report.departure_reason.clone()
                };
                self.agent_gone(id, &reason, Some(departure));
                self.check_barriers();
            }
            self.maybe_finish().await;
        }
    }

    fn on_barrier(&mut self, id: &str, b: v1::BarrierArrive) {
        let Some(run) = self.run.as_mut().filter(|r| r.active() && r.id == b.run_id) else {
            return;
        };
        if b.name.is_empty() || b.name.len() > punisher_proto::MAX_BARRIER_NAME_BYTES {
            self.disconnect(
                id,
                Status::invalid_argument("barrier name empty or too long"),
            );
            return;
        }
        if !run.barriers.contains_key(&b.name)
            && run.barriers.len() >= punisher_proto::MAX_BARRIERS_PER_RUN
        {
            self.disconnect(
                id,
                Status::resource_exhausted("too many barriers in one run"),
            );
            return;
        }
        let barrier = run.barriers.entry(b.name).or_default();
        let count = barrier.arrived.entry(id.to_owned()).or_insert(0);
        *count = (*count).max(b.arrived);
        self.check_barriers();
    }

    /// Users of agent `id` left the test: barriers they never reached stop waiting.
    fn on_barrier_depart(&mut self, id: &str, d: v1::BarrierDepart) {
        let Some(run) = self.run.as_mut().filter(|r| r.active() && r.id == d.run_id) else {
            return;
        };
        let new_names = d
            .arrived_then_departed
            .keys()
            .filter(|name| !run.barriers.contains_key(*name))
            .count();
        if d.arrived_then_departed
            .keys()
            .any(|name| name.is_empty() || name.len() > punisher_proto::MAX_BARRIER_NAME_BYTES)
        {
            self.disconnect(
                id,
                Status::invalid_argument("barrier name empty or too long"),
            );
            return;
        }
        if run.barriers.len() + new_names > punisher_proto::MAX_BARRIERS_PER_RUN {
            self.disconnect(
                id,
                Status::resource_exhausted("too many barriers in one run"),
            );
            return;
        }
        // Counts are cumulative: the highest seen is the truth (a resend repeats one).
        let departed = run.departed.entry(id.to_owned()).or_insert(0);
        *departed = (*departed).max(d.departed);
        for (name, n) in d.arrived_then_departed {
            let barrier = run.barriers.entry(name).or_default();
            let count = barrier
                .arrived_then_departed
                .entry(id.to_owned())
                .or_insert(0);
            *count = (*count).max(n);
        }
        self.check_barriers();
    }

    /// Releases every barrier that all expected users reached or left the test without
    /// reaching: all users of the test except those of lost agents (who will never arrive).
    fn check_barriers(&mut self) {
        let Some(run) = self.run.as_mut().filter(|r| r.active()) else {
            return;
        };
        let lost_users =
            crate::loss::lost_users(&run.agents, &self.agents, &run.losses, run.target_users);
        let expected = run.target_users.saturating_sub(lost_users);
        // Agents still in the run; a lost agent's users are out of `expected`, so its
        // arrivals and departures are out of the sums too.
        let counted: Vec<&String> = run
            .agents
            .iter()
            .filter(|id| self.agents.get(*id).is_some_and(|a| !a.is_gone()))
            .collect();
        let mut released = Vec::new();
        for (name, b) in run.barriers.iter_mut() {
            // Users settled here: arrived, or left the test without arriving.
            let (arrived, left) = b.settled(&run.departed, &counted);
            if !b.released && arrived + left >= expected {
                b.released = true;
                released.push(name.clone());
            }
        }
        for name in released {
            tracing::info!(run_id = %run.id, barrier = %name, expected, "barrier released");
            for id in &run.agents {
                if let Some(agent) = self.agents.get_mut(id) {
                    agent.send(Cmd::BarrierRelease(v1::BarrierRelease {
                        run_id: run.id.clone(),
                        name: name.clone(),
                    }));
                }
            }
        }
    }

    async fn on_loaded(&mut self, id: &str, loaded: v1::Loaded) {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.state == RunState::Loading && r.id == loaded.run_id)
        else {
            return;
        };
        if !loaded.error.is_empty() {
            let reason = format!("agent {id} could not load the scenario: {}", loaded.error);
            self.fail_run(reason).await;
            return;
        }
        if let Some(a) = self
            .agents
            .get_mut(id)
            .and_then(|a| a.assignment.as_mut())
            .filter(|a| a.run_id == run.id)
        {
            a.loaded = true;
        }
        let all = run.agents.iter().all(|id| {
            self.agents
                .get(id)
                .and_then(|a| a.assignment.as_ref())
                .is_some_and(|a| a.loaded)
        });
        if all && run.held {
            run.load_deadline = None;
            run.note("loaded on every agent: waiting for a start signal".into());
            self.publish(None);
        } else if all {
            self.start_loaded();
        }
    }

    /// Every agent loaded: sets the common start instant and sends it.
    fn start_loaded(&mut self) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let start_ms = unix_ms() + run.spec.start_delay.as_millis() as u64;
        run.start = Some((Instant::now() + run.spec.start_delay, start_ms));
        run.state = RunState::Starting;
        run.load_deadline = None;
        for id in &run.agents {
            if let Some(agent) = self.agents.get_mut(id) {
                agent.send(Cmd::Start(v1::Start {
                    run_id: run.id.clone(),
                    at_unix_ms: start_ms,
                }));
            }
        }
        tracing::info!(run_id = %run.id, agents = run.agents.len(), start_ms, "run starting");
        self.publish(None);
    }

    // ---------------------------------------------------------------------------------
    // Runs

    fn submit(&mut self, spec: RunSpec) -> Result<String, ServiceError> {
        if let Some(run) = self.run.as_ref().filter(|r| r.active()) {
            return Err(ServiceError::Conflict(format!(
                "run {} is in progress ({:?}); wait for it, or end it with `punisher ctl stop` \
                 or `punisher ctl abort`",
                run.id, run.state
            )));
        }
        let id = spec.run_id.clone().unwrap_or_else(new_run_id);
        let info = run_info(&id, &spec);
        // The folder is created now, so that a taken run id or an unwritable disk refuses
        // the submission before any agent is busy; the thread writes `run.json` itself.
        let recorder = match &self.results_dir {
            Some(base) => {
                let dir = ResultsDir::create(base, &id).map_err(|e| match e {
                    ResultsError::InvalidRunId(_) => ServiceError::Invalid(e.to_string()),
                    ResultsError::Exists(_) => {
                        ServiceError::Conflict(format!("{e}: choose another run id"))
                    }
                    e => ServiceError::Internal(format!("cannot create the results folder: {e}")),
                })?;
                let recorder = Recorder::start(dir, info.clone()).map_err(|e| {
                    ServiceError::Internal(format!("cannot start the results writer: {e}"))
                })?;
                tracing::info!(run_id = %id, dir = %recorder.path().display(), "results folder created");
                Some(recorder)
            }
            None => None,
        };
        if let Some(prometheus) = &self.prometheus {
            // Scrapes show the new run from now on (counters restart from zero).
            prometheus.publish(Exposition::default());
        }
        let target_users = spec.plan.executor.max_users();
        let (view, _) = watch::channel(Arc::new(v1::RunView::default()));
        tracing::info!(run_id = %id, scenario = %spec.scenario_name, wait_agents = spec.wait_agents, "run submitted");
        self.run = Some(Run {
            id: id.clone(),
            held: spec.wait_for_start,
            spec,
            state: RunState::WaitingForAgents,
            agents: Vec::new(),
            load_deadline: None,
            start: None,
            stop_deadline: None,
            merger: Merger::new(),
            tick: 0,
            target_users,
            vus_max: 0,
            paused: false,
            barriers: BTreeMap::new(),
            departed: HashMap::new(),
            messages: Vec::new(),
            losses: Default::default(),
            results_dir: recorder.as_ref().map(|r| r.path().to_owned()),
            recorder,
            info,
            peak_users: HashMap::new(),
            finishing: None,
            view,
            last_interval: Default::default(),
            last_totals: Default::default(),
            interrupted: None,
            summary_json: String::new(),
            summary_text: String::new(),
            exit_code: -1,
        });
        self.publish(None);
        Ok(id)
    }

    /// Assigns a waiting run to every idle agent once enough have joined.
    async fn try_allocate(&mut self) {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.state == RunState::WaitingForAgents)
        else {
            return;
        };
        let idle: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.conn.is_some() && !a.is_gone() && a.assignment.is_none())
            .map(|a| a.id.clone())
            .collect();
        if idle.len() < run.spec.wait_agents.max(1) as usize {
            self.publish(None);
            return;
        }
        // Users, loops and arrival rates follow the segments: in proportion to cores.
        let weights: Vec<f64> = idle
            .iter()
            .map(|id| f64::from(self.agents[id].cores()))
            .collect();
        let segments = Segment::FULL.split(&weights);
        let plan_json = punisher_proto::convert::plan_to_json(&run.spec.plan);
        for (index, (id, segment)) in idle.iter().zip(&segments).enumerate() {
            let Some(agent) = self.agents.get_mut(id) else {
                continue;
            };
            let mut assignment = Assignment::new(run.id.clone(), *segment);
            assignment.index = index;
            agent.assignment = Some(assignment);
            agent.send(Cmd::Load(load_message(
                run,
                &plan_json,
                *segment,
                index,
                idle.len(),
            )));
        }
        run.agents = idle;
        run.state = RunState::Loading;
        run.load_deadline = Some(Instant::now() + LOAD_TIMEOUT);
        run.info.agents = agent_infos(run, &self.agents);
        if let Some(recorder) = run.recorder.as_mut() {
            recorder.update_info(run.info.clone());
        }
        tracing::info!(run_id = %run.id, agents = run.agents.len(), "run allocated");
        self.publish(None);
    }

    fn broadcast(&mut self, make: impl Fn(&str) -> Cmd) {
        let Some(run) = self.run.as_ref() else {
            return;
        };
        for id in &run.agents {
            if let Some(agent) = self.agents.get_mut(id) {
                agent.send(make(&run.id));
            }
        }
    }

    async fn command(&mut self, cmd: RunCommand) -> Result<v1::CommandResponse, ServiceError> {
        let Some(run) = self.run.as_mut().filter(|r| r.taking_reports()) else {
            return Err(ServiceError::NotFound("no run in progress".into()));
        };
        let run_id = run.id.clone();
        let before_start = !run.started();
        let message = match cmd {
            RunCommand::Start if !run.held => {
                return Err(ServiceError::Conflict(format!(
                    "run {run_id} is not waiting for a start signal"
                )));
            }
            RunCommand::Start => {
                run.held = false;
                run.note("start signal received".into());
                // Loaded everywhere (no load deadline left): start now; still loading: the
                // last Loaded starts it.
                if run.state == RunState::Loading && run.load_deadline.is_none() {
                    self.start_loaded();
                }
                "starting".into()
            }
            RunCommand::Scale(users) => {
                run.target_users = users;
                run.note(format!("scaled to {users} users"));
                self.broadcast(|run_id| {
                    Cmd::Scale(v1::Scale {
                        run_id: run_id.to_owned(),
                        users,
                    })
                });
                self.check_barriers();
                format!("scaling to {users} users")
            }
            RunCommand::Pause => {
                run.paused = true;
                run.note("arrivals paused".into());
                self.broadcast(|run_id| {
                    Cmd::Pause(v1::PauseArrivals {
                        run_id: run_id.to_owned(),
                    })
                });
                "arrivals paused".into()
            }
            RunCommand::Resume => {
                run.paused = false;
                run.note("arrivals resumed".into());
                self.broadcast(|run_id| {
                    Cmd::Resume(v1::ResumeArrivals {
                        run_id: run_id.to_owned(),
                    })
                });
                "arrivals resumed".into()
            }
            RunCommand::Stop { grace } if !before_start => {
                run.state = RunState::Stopping;
                run.stop_deadline = Some(Instant::now() + grace + STOP_SLACK);
                run.interrupted
                    .get_or_insert_with(|| "stopped by the operator".into());
                run.note(format!("stopping (grace {grace:?})"));
                let grace_ms = grace.as_millis() as u64;
                self.broadcast(|run_id| {
                    Cmd::Stop(v1::Stop {
                        run_id: run_id.to_owned(),
                        grace_ms,
                    })
                });
                "stopping".into()
            }
            RunCommand::Abort { reason } if !before_start => {
                self.abort_run(format!("aborted by the operator: {reason}"));
                "aborting".into()
            }
            RunCommand::Stop { .. } | RunCommand::Abort { .. } => {
                self.fail_run("cancelled by the operator before it started".into())
                    .await;
                "cancelled".into()
            }
        };
        self.publish(None);
        Ok(v1::CommandResponse { run_id, message })
    }

    fn abort_run(&mut self, reason: String) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        run.state = RunState::Stopping;
        run.stop_deadline = Some(Instant::now() + STOP_SLACK);
        run.interrupted.get_or_insert_with(|| reason.clone());
        run.note(reason.clone());
        self.broadcast(|run_id| {
            Cmd::Abort(v1::Abort {
                run_id: run_id.to_owned(),
                reason: reason.clone(),
            })
        });
    }

    /// Ends a run that could not complete (exit code 1).
    async fn fail_run(&mut self, reason: String) {
        let Some(run) = self.run.as_mut().filter(|r| r.taking_reports()) else {
            return;
        };
        run.note(reason.clone());
        run.exit_code = 1;
        run.interrupted.get_or_insert_with(|| reason.clone());
        self.broadcast(|run_id| {
            Cmd::Abort(v1::Abort {
                run_id: run_id.to_owned(),
                reason: reason.clone(),
            })
        });
        self.finish_run(RunState::Failed).await;
    }

    /// An agent of the started run departed (`departure`: its final report said what it
    /// left) or was lost (estimated from its last report): applies the run's
    /// [`crate::AgentLossPolicy`] once, and records the window in the run's messages.
    fn agent_gone(&mut self, id: &str, reason: &str, departure: Option<crate::loss::Departure>) {
        use crate::AgentLossPolicy;
        use crate::loss::{AgentLoss, shares_count, split_shares};
        let Some(run) = self.run.as_mut().filter(|r| r.started() && r.active()) else {
            return;
        };
        let Some(agent) = self.agents.get(id) else {
            return;
        };
        let Some(a) = agent.assignment.as_ref() else {
            return;
        };
        if !run.losses.gone.insert(id.to_owned()) {
            return;
        }
        let now_ms = unix_ms();
        let how = if departure.is_some() {
            "left the run"
        } else {
            "was lost"
        };
        let departure = departure.unwrap_or_else(|| crate::loss::Departure {
            shares: run
                .losses
                .estimated_left_over(id, a.segment, a.arrived_users),
            interrupted_users: a.active_users,
            from_unix_ms: now_ms.saturating_sub(
                Instant::now()
                    .saturating_duration_since(agent.last_seen)
                    .as_millis() as u64,
            ),
        });
        // While stopping, arrivals are over everywhere: there is nothing left to hand over.
        let policy = if run.state == RunState::Stopping {
            AgentLossPolicy::Continue
        } else {
            run.spec.on_agent_loss
        };
        let mut loss = AgentLoss {
            agent: id.to_owned(),
            reason: reason.to_owned(),
            policy,
            from_unix_ms: if departure.from_unix_ms == 0 {
                now_ms
            } else {
                departure.from_unix_ms
            },
            to_unix_ms: now_ms,
            interrupted_users: departure.interrupted_users,
            reassigned_users: shares_count(&departure.shares, run.target_users),
            to: Vec::new(),
        };
        if policy == AgentLossPolicy::Reassign {
            let survivors: Vec<String> = run
                .agents
                .iter()
                .filter(|other| other.as_str() != id)
                .filter(|other| {
                    self.agents.get(*other).is_some_and(|o| {
                        !o.is_gone()
                            && o.conn.is_some()
                            && o.assignment.as_ref().is_some_and(|a| !a.finished)
                    })
                })
                .cloned()
                .collect();
            let weights: Vec<f64> = survivors
                .iter()
                .map(|s| f64::from(self.agents[s].cores()))
                .collect();
            let parts = split_shares(&departure.shares, &weights);
            for (survivor, part) in survivors.iter().zip(parts) {
                if part.is_empty() {
                    continue;
                }
                if let Some(agent) = self.agents.get_mut(survivor) {
                    agent.send(adopt_message(&run.id, &part));
                }
                run.losses
                    .adopted
                    .entry(survivor.clone())
                    .or_default()
                    .extend(part);
            }
            if !survivors.is_empty() {
                run.losses
                    .reassigned
                    .insert(id.to_owned(), departure.shares.clone());
            }
            loss.to = survivors;
        }
        run.note(loss.to_message());
        // Into run.json at once: a controller that dies later still leaves the window.
        run.info.agent_losses.push(loss.to_window());
        run.info.messages.clone_from(&run.messages);
        let info = run.info.clone();
        if let Some(recorder) = run.recorder.as_mut() {
            recorder.update_info(info);
        }
        if policy == AgentLossPolicy::Abort {
            // The run could not complete as asked: exit code 1, whatever the thresholds say.
            run.exit_code = 1;
            self.abort_run(format!("agent {id} {how} and --on-agent-loss is abort"));
        }
    }

    /// An agent of the run was lost: before the start the run cannot go on; after it,
    /// barriers stop waiting for its users and the run may be complete.
    async fn after_lost(&mut self) {
        if self
            .run
            .as_ref()
            .is_some_and(|r| r.state == RunState::Loading)
        {
            self.fail_run("an agent was lost while loading the scenario".into())
                .await;
        } else {
            self.check_barriers();
            self.maybe_finish().await;
            self.publish(None);
        }
    }

    /// Finishes the run when every agent finished or is lost.
    async fn maybe_finish(&mut self) {
        let Some(run) = self.run.as_ref().filter(|r| r.started()) else {
            return;
        };
        let done = run.agents.iter().all(|id| {
            self.agents
                .get(id)
                .is_none_or(|a| a.is_gone() || a.assignment.as_ref().is_none_or(|a| a.finished))
        });
        if !done {
            return;
        }
        let all_lost = run
            .agents
            .iter()
            .all(|id| self.agents.get(id).is_none_or(|a| a.is_gone()));
        if all_lost {
            if let Some(run) = self.run.as_mut() {
                run.note("every agent was lost".into());
                run.exit_code = 1;
            }
            self.finish_run(RunState::Failed).await;
        } else {
            self.finish_run(RunState::Finished).await;
        }
    }

    /// The last interval, final thresholds, the summary, and the end state.
    async fn finish_run(&mut self, state: RunState) {
        if self.run.as_ref().is_none_or(|r| r.finishing.is_some()) {
            return;
        }
        let started = self.run.as_ref().is_some_and(Run::started);
        if started {
            self.merge_tick(true).await;
        }
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let totals = run.merger.totals();
        let outcomes: Vec<_> = run
            .spec
            .thresholds
            .iter()
            .map(|t| (t.clone(), t.evaluate(totals)))
            .collect();
        let passed = outcomes.iter().all(|(_, o)| o.passed);
        let (start_instant, start_ms) = run.start.unwrap_or((Instant::now(), unix_ms()));
        let mut meta = SummaryMeta::new(
            run.spec.scenario_name.clone(),
            run.spec.plan.executor.kind(),
            Instant::now().saturating_duration_since(start_instant),
            run.vus_max,
        );
        meta.started_unix_ms = start_ms;
        meta.interrupted = run.interrupted.clone();
        let summary = Summary::build(totals, &outcomes, meta);
        let mut text = summary.render_text();
        let mut notes = Vec::new();
        for id in &run.agents {
            let Some(agent) = self.agents.get(id) else {
                continue;
            };
            if agent.is_gone() && agent.assignment.as_ref().is_some_and(|a| a.finished) {
                // It departed with a final report (a spot interruption): nothing is missing.
                notes.push(format!(
                    "agent {id} left the run early (see agent_loss); all of its reports are included"
                ));
            } else if agent.is_gone() {
                notes.push(format!(
                    "agent {id} was lost; its users' data up to its last acknowledged report is included"
                ));
            }
            if let Some(a) = agent.assignment.as_ref().filter(|a| a.suspect_seconds > 0) {
                notes.push(format!(
                    "agent {id} was overloaded for {} s (CPU or event-loop lag): its latencies \
                     include its own queueing",
                    a.suspect_seconds
                ));
            }
        }
        for note in &notes {
            text.push_str(&format!("\n  ! {note}"));
        }
        text.push('\n');
        run.messages.extend(notes);
        let json = summary.to_json();
        if run.exit_code < 0 {
            run.exit_code = if passed { 0 } else { 99 };
        }
        run.summary_json = json.to_string();
        run.summary_text = text;
        if let Some(recorder) = run.recorder.take() {
            // The end state is shown once the folder is complete; until then the run takes
            // no reports, commands or ticks (`finishing`), and the hub goes on serving.
            run.info.agents = agent_infos(run, &self.agents);
            run.info.messages.clone_from(&run.messages);
            run.info.started_unix_ms = start_ms;
            run.info.started = punisher_results::rfc3339(start_ms);
            run.info.finish(unix_ms());
            run.finishing = Some(state);
            let written = recorder.finish(run.info.clone(), summary);
            let done = self.results_done_tx.clone();
            let run_id = run.id.clone();
            tokio::spawn(async move {
                let problems = match tokio::time::timeout(RESULTS_FINISH_TIMEOUT, written).await {
                    Ok((_, problems)) => problems,
                    Err(_) => vec![format!(
                        "the results writer did not finish within {RESULTS_FINISH_TIMEOUT:?}"
                    )],
                };
                let _ = done.send(ResultsWritten { run_id, problems }).await;
            });
            return;
        }
        self.complete_run(state);
    }

    /// The end-of-run files of the current run are written (or failed).
    fn results_written(&mut self, done: ResultsWritten) {
        let Some(run) = self.run.as_mut().filter(|r| r.id == done.run_id) else {
            return;
        };
        let Some(state) = run.finishing.take() else {
            return;
        };
        for problem in done.problems {
            run.note(format!("results: {problem}"));
        }
        self.complete_run(state);
    }

    /// Shows the run's end state and frees its agents.
    fn complete_run(&mut self, state: RunState) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        run.state = state;
        tracing::info!(run_id = %run.id, exit_code = run.exit_code, ?state, "run over");
        let assigned = run.agents.clone();
        // The final view shows each agent as the run ended.
        self.publish(None);
        // Agents are free for the next run; lost agents that never came back are forgotten.
        for id in assigned {
            let remove = match self.agents.get_mut(&id) {
                Some(agent) => {
                    agent.assignment = None;
                    agent.conn.is_none()
                }
                None => false,
            };
            if remove {
                self.agents.remove(&id);
            }
        }
    }

    /// Closes the whole wall-clock seconds that ended (all that is held when `last`: the
    /// run is over), each once, as `[s, s + 1000]`: journal, acknowledgements, thresholds,
    /// live view.
    async fn merge_tick(&mut self, last: bool) {
        let Some(run) = self
            .run
            .as_mut()
            .filter(|r| r.started() && r.finishing.is_none())
        else {
            return;
        };
        let now_ms = unix_ms();
        // The first second is the one the run started in; seconds closed are never closed
        // again (a late report lands in the next one).
        let first = second_of(run.start.map_or(now_ms, |s| s.1));
        let from = run.merger.closed_before().max(first);
        let through = if last {
            let held = run.merger.last_open_second().map_or(0, |s| s + 1000);
            held.max(second_of(now_ms) + 1000).max(from + 1000)
        } else {
            second_of(now_ms)
        };
        if through <= from {
            return; // no second ended since the last tick (or the clock stepped back)
        }
        // Usually one second; after a delayed tick each second on its own; after a long gap
        // one interval as long as the gap (never a second that pretends to be one).
        let seconds = (through - from) / 1000;
        let intervals: Vec<(u64, u64)> = if seconds > MAX_CATCH_UP_SECONDS {
            vec![(from, through)]
        } else {
            (0..seconds)
                .map(|i| (from + i * 1000, from + i * 1000 + 1000))
                .collect()
        };
        let mut active = 0;
        let mut peak = 0;
        let mut live = 0;
        let mut open_connections = 0;
        let mut open_sockets = 0;
        for id in &run.agents {
            if let Some(agent) = self.agents.get(id).filter(|a| !a.is_gone()) {
                live += 1;
                let users = agent.assignment.as_ref().map_or(0, |a| a.active_users);
                active += users;
                peak += agent.assignment.as_ref().map_or(0, |a| a.peak_users);
                open_connections += agent.assignment.as_ref().map_or(0, |a| a.open_connections);
                open_sockets += agent.assignment.as_ref().map_or(0, |a| a.open_sockets);
                let peak = run.peak_users.entry(id.clone()).or_insert(0);
                *peak = (*peak).max(users);
            }
        }
        // The agents' peaks of their last seconds: may add up users of different instants
        // of one second, never misses a user who came and went between two ticks.
        run.vus_max = run.vus_max.max(active).max(peak);
        let live = LiveNumbers {
            users_active: active,
            users_target: run.target_users,
            open_connections: Some(open_connections),
            open_sockets: Some(open_sockets),
            agents: live,
        };
        let mut encoded = None;
        for (start, end) in intervals {
            let at = now_ms.clamp(start, end - 1);
            if let Err(e) = run.merger.add_local(&user_gauges(active, run.vus_max, at)) {
                run.note(format!("cannot record vus: {e}"));
            }
            let closed = match run.merger.close_interval(start, end) {
                Ok(c) => c,
                Err(e) => {
                    run.note(format!("cannot merge the interval: {e}"));
                    return;
                }
            };
            run.tick += 1;
            if run.tick == 1 && run.recorder.is_some() {
                // The start instant and the agents' clock offsets are known by now.
                if let Some((_, start_ms)) = run.start {
                    run.info.started_unix_ms = start_ms;
                    run.info.started = punisher_results::rfc3339(start_ms);
                }
                run.info.agents = agent_infos(run, &self.agents);
                let info = run.info.clone();
                if let Some(recorder) = run.recorder.as_mut() {
                    recorder.update_info(info);
                }
            }
            if let Some(recorder) = run.recorder.as_mut() {
                // Journal first: the writer thread has the second before anyone is shown it.
                recorder.append(closed.snapshot, live.clone());
            }
            encoded = Some(closed.encoded);
        }
        let Some(encoded) = encoded else {
            return;
        };
        // The seconds are journalled (or queued to the writer, which never loses them short
        // of a crash): acknowledge the reports that went into them, so that agents may
        // forget them. A report filed in a second still open waits for its close.
        let closed_before = run.merger.closed_before();
        for id in &run.agents {
            if let Some(agent) = self.agents.get_mut(id)
                && let Some(a) = agent
                    .assignment
                    .as_mut()
                    .filter(|a| a.ack_due && a.last_second < closed_before)
            {
                a.ack_due = false;
                let seq = a.accepted_seq;
                agent.send(Cmd::Ack(v1::ReportAck {
                    run_id: run.id.clone(),
                    seq,
                }));
            }
        }
        run.last_interval = encoded.into();
        run.last_totals = run.merger.encode_totals().into();
        if let Some(prometheus) = &self.prometheus {
            prometheus.publish(Exposition {
                totals: run.last_totals.clone(),
                live: Some(live),
            });
        }
        let thresholds = threshold_views(run);
        if !last && run.state == RunState::Running {
            let elapsed = run.start.map_or(Duration::ZERO, |(i, _)| {
                Instant::now().saturating_duration_since(i)
            });
            let failing = run
                .spec
                .thresholds
                .iter()
                .zip(&thresholds)
                .find(|(t, v)| {
                    t.spec.abort_on_fail
                        && !v.passed
                        && t.spec.delay_abort_eval.is_none_or(|d| elapsed >= d)
                })
                .map(|(t, _)| format!("{}: {}", t.spec.selector, t.spec.expression));
            if let Some(failing) = failing {
                self.abort_run(format!(
                    "threshold {failing} crossed and has abortOnFail: aborting the run on every agent"
                ));
            }
        }
        self.publish(Some(thresholds));
    }

    async fn tick(&mut self) {
        if self
            .run
            .as_ref()
            .is_some_and(|r| matches!(r.state, RunState::Running | RunState::Stopping))
        {
            self.merge_tick(false).await;
        }
    }

    async fn check(&mut self) {
        let now = Instant::now();
        // Lost agents: silent for `lost_after`, or disconnected for two thirds of it (a
        // dead process closes its connection: no need to wait for the full silence, while a
        // network blip gets time to reconnect).
        let lost_after = self.lost_after;
        let silent: Vec<String> = self
            .agents
            .values()
            .filter(|a| {
                !a.is_gone()
                    && (now.saturating_duration_since(a.last_seen) > lost_after
                        || a.disconnected_at.is_some_and(|at| {
                            now.saturating_duration_since(at) > lost_after * 2 / 3
                        }))
            })
            .map(|a| a.id.clone())
            .collect();
        let run_active = self.run.as_ref().is_some_and(Run::active);
        let mut lost_any = false;
        for id in silent {
            let Some(agent) = self.agents.get_mut(&id) else {
                continue;
            };
            agent.disconnect(Status::deadline_exceeded("no message from the agent"));
            let unfinished = agent.assignment.as_ref().is_some_and(|a| !a.finished);
            if run_active && unfinished {
                agent.gone = Some(Gone::Lost);
                lost_any = true;
                let why = if agent.disconnected_at.is_some() {
                    "its connection closed and it did not come back"
                } else {
                    "no message"
                };
                let message = format!(
                    "agent {id} ({}) lost: {why} for {:?}",
                    agent.hello.hostname,
                    now.saturating_duration_since(agent.last_seen)
                );
                tracing::warn!(agent_id = %id, "agent lost");
                if let Some(run) = self.run.as_mut() {
                    run.note(message);
                }
                self.agent_gone(&id, why, None);
            } else if agent.assignment.is_none() {
                self.agents.remove(&id);
            }
        }
        if lost_any {
            self.after_lost().await;
        }
        if let Some(run) = self.run.as_mut() {
            match run.state {
                RunState::Loading if run.load_deadline.is_some_and(|d| now >= d) => {
                    self.fail_run(format!(
                        "not every agent loaded the scenario within {LOAD_TIMEOUT:?}"
                    ))
                    .await;
                }
                RunState::Starting
                    if run.finishing.is_none() && run.start.is_some_and(|(at, _)| now >= at) =>
                {
                    run.state = RunState::Running;
                    self.publish(None);
                }
                RunState::Stopping if run.stop_deadline.is_some_and(|d| now >= d) => {
                    for id in run.agents.clone() {
                        if let Some(agent) = self.agents.get_mut(&id)
                            && agent.assignment.as_ref().is_some_and(|a| !a.finished)
                            && !agent.is_gone()
                        {
                            agent.gone = Some(Gone::Lost);
                            agent.disconnect(Status::deadline_exceeded("did not stop in time"));
                            run.note(format!("agent {id} did not finish within the grace period"));
                        }
                    }
                    self.maybe_finish().await;
                }
                _ => {}
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + PING_EVERY;
            self.ping_nonce += 1;
            let sent_unix_us = unix_us();
            for agent in self.agents.values_mut() {
                // Each agent gets its own offset: it labels time on the controller's clock.
                let ping = v1::Ping {
                    nonce: self.ping_nonce,
                    sent_unix_us,
                    agent_offset_us: agent.clock.applied_offset_us(),
                };
                agent.send(Cmd::Ping(ping));
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Views

    fn publish(&mut self, thresholds: Option<Vec<v1::ThresholdView>>) {
        let now = Instant::now();
        let Some(run) = self.run.as_ref() else {
            return;
        };
        let loading = run.state == RunState::Loading;
        let agents: Vec<v1::AgentView> = if run.agents.is_empty() {
            self.agents.values().map(|a| a.view(loading, now)).collect()
        } else {
            run.agents
                .iter()
                .filter_map(|id| self.agents.get(id))
                .map(|a| a.view(loading, now))
                .collect()
        };
        let thresholds = thresholds.unwrap_or_else(|| run.view.borrow().thresholds.clone());
        let elapsed = run.start.map_or(0, |(at, _)| {
            now.saturating_duration_since(at).as_millis() as u64
        });
        let view = v1::RunView {
            run_id: run.id.clone(),
            state: run.state.to_wire(),
            tick: run.tick,
            started_unix_ms: run.start.map_or(0, |s| s.1),
            elapsed_ms: elapsed,
            active_users: agents.iter().map(|a| a.active_users).sum(),
            target_users: run.target_users,
            arrived_users: run
                .agents
                .iter()
                .filter_map(|id| self.agents.get(id)?.assignment.as_ref())
                .map(|a| a.arrived_users)
                .sum(),
            agents,
            interval_snapshot: run.last_interval.clone(),
            totals_snapshot: run.last_totals.clone(),
            thresholds,
            summary_json: run.summary_json.clone(),
            summary_text: run.summary_text.clone(),
            exit_code: run.exit_code,
            messages: run.messages.clone(),
            paused: run.paused,
            results_dir: run
                .results_dir
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            barriers: barrier_views(run, &self.agents),
            waiting_for_start: run.held && !run.started(),
            planned_ms: run.spec.plan.executor.planned_duration().as_millis() as u64,
            scenario_name: run.spec.scenario_name.clone(),
        };
        run.view.send_replace(Arc::new(view));
    }

    fn status(&self) -> v1::StatusResponse {
        let now = Instant::now();
        let loading = self
            .run
            .as_ref()
            .is_some_and(|r| r.state == RunState::Loading);
        let run = self.run.as_ref().map(|r| (**r.view.borrow()).clone());
        v1::StatusResponse {
            controller_version: punisher_proto::SOFTWARE_VERSION.to_owned(),
            agents: self.agents.values().map(|a| a.view(loading, now)).collect(),
            has_run: run.is_some(),
            run,
        }
    }

    fn watch(&self, run_id: &str) -> Result<ViewRx, ServiceError> {
        match &self.run {
            Some(run) if run_id.is_empty() || run.id == run_id => Ok(run.view.subscribe()),
            Some(run) => Err(ServiceError::NotFound(format!(
                "run {run_id} is not the current or last run (that is {})",
                run.id
            ))),
            None => Err(ServiceError::NotFound("no run was submitted yet".into())),
        }
    }

    fn shutdown(&mut self) {
        for agent in self.agents.values_mut() {
            agent.disconnect(Status::unavailable("the controller is shutting down"));
        }
    }
}

fn load_message(
    run: &Run,
    plan_json: &str,
    segment: Segment,
    index: usize,
    count: usize,
) -> v1::LoadScenario {
    v1::LoadScenario {
        run_id: run.id.clone(),
        bundle: Some(run.spec.bundle.clone()),
        plan_json: plan_json.to_owned(),
        env: run.spec.env.clone(),
        segment: Some(segment.into()),
        test_users: run.target_users,
        setup_data_json: run.spec.setup_data_json.clone(),
        workers: run.spec.workers_per_agent,
        agent_index: index as u32,
        agent_count: count as u32,
    }
}

fn adopt_message(run_id: &str, shares: &[(Segment, u64)]) -> Cmd {
    Cmd::Adopt(v1::Adopt {
        run_id: run_id.to_owned(),
        shares: shares
            .iter()
            .map(|(segment, from_user)| v1::Share {
                segment: Some((*segment).into()),
                from_user: *from_user,
            })
            .collect(),
    })
}

/// Each barrier's progress, counted as [`Hub::check_barriers`] counts: over the agents still
/// in the run, expecting every user of the test but those of lost agents.
fn barrier_views(run: &Run, agents: &BTreeMap<String, Agent>) -> Vec<v1::BarrierView> {
    let lost_users = crate::loss::lost_users(&run.agents, agents, &run.losses, run.target_users);
    let expected = run.target_users.saturating_sub(lost_users);
    let counted: Vec<&String> = run
        .agents
        .iter()
        .filter(|id| agents.get(*id).is_some_and(|a| !a.is_gone()))
        .collect();
    run.barriers
        .iter()
        .map(|(name, b)| {
            let (arrived, departed) = b.settled(&run.departed, &counted);
            v1::BarrierView {
                name: name.clone(),
                arrived,
                expected,
                released: b.released,
                departed,
            }
        })
        .collect()
}

fn threshold_views(run: &Run) -> Vec<v1::ThresholdView> {
    let totals = run.merger.totals();
    run.spec
        .thresholds
        .iter()
        .map(|t| {
            let o = t.evaluate(totals);
            v1::ThresholdView {
                selector: t.spec.selector.clone(),
                expression: t.spec.expression.clone(),
                passed: o.passed,
                has_observed: o.observed.is_some(),
                observed: o.observed.unwrap_or(0.0),
                abort_on_fail: t.spec.abort_on_fail,
            }
        })
        .collect()
}

/// `vus` and `vus_max` are cluster-level gauges: agents report active users, the hub sums.
fn user_gauges(active: u64, vus_max: u64, now_ms: u64) -> Snapshot {
    let mut snapshot = Snapshot::empty(now_ms, now_ms);
    for (name, value) in [("vus", active), ("vus_max", vus_max)] {
        let value = value as f64;
        snapshot.series.insert(
            SeriesKey::new(name, Tags::empty()),
            SeriesData::Gauge {
                last: value,
                min: value,
                max: value,
                at_unix_ms: now_ms,
            },
        );
    }
    snapshot
}

/// `run.json` as known at submission: the scenario, the plan after overrides.
fn run_info(id: &str, spec: &RunSpec) -> RunInfo {
    let bundle = &spec.bundle;
    let text = bundle.sources.get(&bundle.entry).map_or("", String::as_str);
    let options = serde_json::to_value(&spec.plan).unwrap_or(serde_json::Value::Null);
    let mut info = RunInfo::new(
        id,
        punisher_proto::SOFTWARE_VERSION,
        &spec.scenario_name,
        text,
        options,
        spec.command_line.clone(),
        unix_ms(),
    );
    info.set_bundle(
        &bundle.entry,
        bundle
            .sources
            .iter()
            .map(|(p, s)| (p.as_str(), s.as_bytes())),
        bundle.files.iter().map(|(p, b)| (p.as_str(), &b[..])),
    );
    info.executor = spec.plan.executor.kind().to_owned();
    info.thresholds = spec.plan.thresholds.clone();
    info
}

/// The run's agents as `run.json` lists them: where they ran, their clock offsets (from
/// ping round trips), the most users each ran, how they ended.
fn agent_infos(run: &Run, agents: &BTreeMap<String, Agent>) -> Vec<AgentInfo> {
    run.agents
        .iter()
        .filter_map(|id| agents.get(id))
        .map(|a| AgentInfo {
            id: a.id.clone(),
            hostname: a.hello.hostname.clone(),
            region: a.hello.region.clone(),
            clock_offset_ms: a.clock.offset_ms(),
            cores: a.cores(),
            peak_users: run.peak_users.get(&a.id).copied().unwrap_or(0),
            state: match a.state(run.state == RunState::Loading) {
                crate::view::AgentState::Idle => "idle",
                crate::view::AgentState::Loading => "loading",
                crate::view::AgentState::Ready => "ready",
                crate::view::AgentState::Running => "running",
                crate::view::AgentState::Finished => "finished",
                crate::view::AgentState::Lost => "lost",
                crate::view::AgentState::Left => "left",
            }
            .to_owned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_barrier_counts_arrivals_and_users_that_left_without_arriving() {
        let (a, b, lost) = ("a".to_owned(), "b".to_owned(), "lost".to_owned());
        let mut barrier = Barrier::default();
        barrier.arrived.insert(a.clone(), 40);
        barrier.arrived.insert(b.clone(), 30);
        barrier.arrived.insert(lost.clone(), 25);
        // Of agent a's 7 users that left the test, 2 had arrived here first.
        barrier.arrived_then_departed.insert(a.clone(), 2);
        let departed = HashMap::from([(a.clone(), 7), (b.clone(), 1), (lost.clone(), 9)]);
        // The lost agent is not counted: its users are out of the expected count too.
        assert_eq!(barrier.settled(&departed, &[&a, &b]), (70, 6));
        // Counts arrive out of step (cumulative maxima): never fewer than none left.
        barrier.arrived_then_departed.insert(b.clone(), 3);
        assert_eq!(barrier.settled(&departed, &[&a, &b]), (70, 5));
    }
}
