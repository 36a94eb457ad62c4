//! punisher-agent: dials the controller (it never listens), says Hello with its capacity,
//! runs its share of each run in the engine, streams one report per second, and obeys the
//! controller's commands.
//!
//! # Layout
//! - [`run`]: the agent's life: connect, session, reconnect with backoff, exit on refusal,
//!   dead-man switch, TTL.
//! - `runner`: one run in the engine (load, start at the common instant, per-second reports).
//! - `barrier`: the engine's `BarrierHub` backed by the controller.
//! - `capacity`: cores, open-file limit, memory, host name.
//! - [`imds`]: spot interruption notices (IMDSv2) and the instance's identity.
//!
//! On a spot interruption notice ([`AgentConfig::spot`]) the agent stops its arrivals, lets
//! running users finish for `drain`, sends its final report marked `departing` with the
//! shares it did not start (the controller gives them to the other agents), waits until the
//! controller acknowledged it, says Goodbye and exits with [`AgentExit::SpotInterruption`].
//! A [`LeaveRequest`] (`punisher agent` on SIGTERM) does the same and exits with
//! [`AgentExit::AskedToLeave`].
//!
//! Reports are numbered per run and kept until the controller acknowledged them; after a
//! reconnect the unacknowledged ones are sent again, in order, and the controller counts
//! each exactly once.

mod barrier;
mod capacity;
pub mod imds;
mod runner;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use punisher_engine::EngineCommand;
use punisher_proto::transport::{TokenInterceptor, agent_client};
use punisher_proto::v1::agent_message::Kind as Msg;
use punisher_proto::v1::controller_message::Kind as Cmd;
use punisher_proto::{ClientSecurity, ConnectError, Refusal, convert, v1};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use barrier::RemoteBarrierHub;
use runner::{LoadRequest, LoadedRun, Runner, RunnerReport};

/// Messages waiting to be written to the controller. Reports come once a second; a full
/// queue means the controller stopped reading, and the session is restarted.
const OUTBOUND_QUEUE: usize = 512;
/// Reports kept unacknowledged at most (an hour at one per second); beyond that the oldest
/// is dropped and said so: memory stays bounded when the controller is gone for long.
const MAX_OUTBOX: usize = 3600;
/// The controller must answer Hello this soon.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const HOUSEKEEPING: Duration = Duration::from_millis(250);
/// How long a cancelled agent waits for the controller to close the stream after Goodbye.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);
/// After a spot notice and the drain, this long at most for the final report's
/// acknowledgement before the Goodbye (EC2 gives two minutes in all).
const LEAVE_SLACK: Duration = Duration::from_secs(10);

/// Where the agent runs, when known (cloud metadata); empty strings otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentLabels {
    pub region: String,
    pub zone: String,
    pub instance_id: String,
}

/// How to run an agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// The controller's `HOST:PORT`.
    pub controller: String,
    pub token: String,
    pub security: ClientSecurity,
    /// Stable id; `None`: host name, process id and a random suffix.
    pub agent_id: Option<String>,
    /// Worker threads; `None`: one per core.
    pub workers: Option<usize>,
    /// Stop generating load when the controller has been silent this long (15 s).
    pub controller_timeout: Duration,
    /// Exit after this long (the launcher turns the exit into instance termination).
    pub ttl: Option<Duration>,
    pub source_pool: Option<Arc<punisher_clients::net::SourcePool>>,
    /// QuickJS heap limit per worker; 0 for none.
    pub memory_limit_bytes: usize,
    pub labels: AgentLabels,
    /// Watch for spot interruption notices; `None`: never (not on EC2 spot).
    pub spot: Option<SpotWatch>,
}

/// Where and how often to look for a spot interruption notice.
#[derive(Debug, Clone)]
pub struct SpotWatch {
    /// The instance metadata service: [`imds::DEFAULT_BASE_URL`] on EC2.
    pub imds_url: String,
    /// Poll interval ([`imds::DEFAULT_INTERVAL`]: 5 s).
    pub interval: Duration,
    /// After a notice, running users get this long to finish before they are interrupted
    /// (keep it well under the two minutes EC2 gives).
    pub drain: Duration,
}

/// Why the agent ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// The caller cancelled (Ctrl-C, SIGTERM).
    Cancelled,
    /// `--ttl` ran out.
    TtlExpired,
    /// EC2 announced a spot interruption: the agent drained, reported and said Goodbye.
    SpotInterruption,
    /// It was asked to leave ([`LeaveRequest`], SIGTERM): it drained, reported and said
    /// Goodbye, as on a spot notice.
    AskedToLeave,
}

/// A way to ask a running agent to leave cleanly, as a spot notice does: no new arrivals,
/// running users get `drain` to finish, the final report says which users it did not start
/// (the controller hands them to the other agents), then Goodbye. `punisher agent` asks on
/// its first SIGTERM or Ctrl-C (an instance shutting down at its TTL, a Kubernetes pod being
/// evicted) and cancels on the second.
#[derive(Debug, Clone)]
pub struct LeaveRequest {
    pub requested: CancellationToken,
    pub drain: Duration,
}

/// Why the agent gave up: nothing a retry could fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Connect(ConnectError),
    #[error("invalid agent configuration: {0}")]
    Config(String),
}

impl From<ConnectError> for AgentError {
    fn from(e: ConnectError) -> AgentError {
        match e {
            ConnectError::Refused(r) => AgentError::Refused(r),
            e => AgentError::Connect(e),
        }
    }
}

/// Times the controller reads (report and departure times) are on its clock: corrected.
fn unix_ms() -> u64 {
    punisher_engine::unix_ms_corrected()
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// This agent's part of one run. It outlives sessions: a reconnect resumes it.
struct Current {
    run_id: String,
    barriers: Arc<RemoteBarrierHub>,
    loading: Option<JoinHandle<Result<LoadedRun, String>>>,
    loaded: Option<LoadedRun>,
    /// A Start that arrived before loading finished.
    start_at: Option<u64>,
    runner: Option<Runner>,
    outbox: VecDeque<v1::Report>,
    next_seq: u64,
    /// The engine sent its last report.
    finished: bool,
    deadman_fired: bool,
    /// When barrier counts last went to the controller (they are sent in batches).
    barriers_flushed_at: Option<Instant>,
}

impl Current {
    fn new(run_id: String) -> Current {
        Current {
            run_id,
            barriers: Arc::new(RemoteBarrierHub::default()),
            loading: None,
            loaded: None,
            start_at: None,
            runner: None,
            outbox: VecDeque::new(),
            next_seq: 1,
            finished: false,
            deadman_fired: false,
            barriers_flushed_at: None,
        }
    }

    /// Ends the run here: an engine that runs is aborted (its last report still comes).
    fn abort(&mut self) {
        if let Some(runner) = &self.runner {
            runner.command(EngineCommand::Abort);
        } else {
            // Never started: nothing to report.
            if let Some(loading) = self.loading.take() {
                loading.abort();
            }
            self.loaded = None;
            self.start_at = None;
            self.finished = true;
        }
    }

    fn start(&mut self, at: u64) {
        match self.loaded.take() {
            Some(loaded) => self.runner = Some(Runner::spawn(loaded, at)),
            None => self.start_at = Some(at),
        }
    }
}

/// What woke the agent's loop.
enum Event {
    Controller(Result<Option<v1::ControllerMessage>, Status>),
    Leave(Option<LeaveNotice>),
    Loaded(Result<LoadedRun, String>),
    Report(Option<RunnerReport>),
    Barrier,
    Housekeeping,
    Cancelled,
}

/// How a session ended.
enum SessionEnd {
    Lost(String),
    Refused(Refusal),
    Exit(AgentExit),
}

struct Agent {
    cfg: AgentConfig,
    token: TokenInterceptor,
    id: String,
    hostname: String,
    workers: usize,
    current: Option<Current>,
    last_heard: Instant,
    deadline: Option<Instant>,
    /// A spot notice or a leave request, whichever comes first; `None` once answered.
    leave: Option<oneshot::Receiver<LeaveNotice>>,
    /// Stops the spot watcher when the agent ends.
    _watch_guard: tokio_util::sync::DropGuard,
    /// Set by a spot notice or a leave request: the agent drains, reports and exits.
    leaving: Option<Leaving>,
}

/// Why the agent leaves before its run ends, and how long its running users get.
#[derive(Debug)]
struct LeaveNotice {
    reason: String,
    drain: Duration,
    exit: AgentExit,
}

/// An agent on its way out.
struct Leaving {
    reason: String,
    exit: AgentExit,
    /// When the notice came: arrivals stopped then.
    since_unix_ms: u64,
    /// Goodbye by then, whatever is unacknowledged.
    deadline: Instant,
}

/// Runs the agent until it is cancelled, its TTL runs out, or the controller refuses it.
pub async fn run(cfg: AgentConfig, cancel: CancellationToken) -> Result<AgentExit, AgentError> {
    let never = LeaveRequest {
        requested: CancellationToken::new(),
        drain: Duration::ZERO,
    };
    run_until_asked_to_leave(cfg, never, cancel).await
}

/// [`run`], and leaves cleanly (as on a spot notice) once `leave` is requested.
pub async fn run_until_asked_to_leave(
    cfg: AgentConfig,
    leave: LeaveRequest,
    cancel: CancellationToken,
) -> Result<AgentExit, AgentError> {
    let token = TokenInterceptor::new(&cfg.token)?;
    if cfg.controller_timeout.is_zero() {
        return Err(AgentError::Config(
            "--controller-timeout must be longer than 0".into(),
        ));
    }
    if cfg.spot.as_ref().is_some_and(|s| s.interval.is_zero()) {
        return Err(AgentError::Config(
            "the spot notice poll interval must be longer than 0".into(),
        ));
    }
    let hostname = capacity::hostname();
    let id = cfg.agent_id.clone().unwrap_or_else(|| {
        format!(
            "{hostname}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        )
    });
    let workers = cfg.workers.unwrap_or_else(capacity::default_workers).max(1);
    let (tx, rx) = oneshot::channel();
    let stop = CancellationToken::new();
    tokio::spawn(watch_for_leaving(cfg.spot.clone(), leave, tx, stop.clone()));
    let mut agent = Agent {
        leave: Some(rx),
        _watch_guard: stop.drop_guard(),
        leaving: None,
        deadline: cfg.ttl.map(|t| Instant::now() + t),
        cfg,
        token,
        id,
        hostname,
        workers,
        current: None,
        last_heard: Instant::now(),
    };
    tracing::info!(agent_id = %agent.id, controller = %agent.cfg.controller, workers, "agent starting");
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    loop {
        // Connecting may take seconds (a black-holed address): the run, its reports and
        // the dead-man switch go on meanwhile.
        let (controller, security) = (agent.cfg.controller.clone(), agent.cfg.security.clone());
        let connect = punisher_proto::transport::connect(&controller, &security, CONNECT_TIMEOUT);
        tokio::pin!(connect);
        let connected = loop {
            tokio::select! {
                c = &mut connect => break c,
                e = next_event(&mut agent.current, &mut agent.leave, None, &mut housekeeping, &cancel) => {
                    if let Some(exit) = agent.handle_offline(e) {
                        return Ok(exit);
                    }
                }
            }
        };
        match connected {
            Ok(channel) => match agent.session(channel, &cancel, &mut housekeeping).await {
                SessionEnd::Exit(exit) => return Ok(exit),
                SessionEnd::Refused(r) => {
                    agent.stop_all();
                    return Err(r.into());
                }
                SessionEnd::Lost(reason) => {
                    tracing::warn!(agent_id = %agent.id, %reason, "lost the controller; reconnecting");
                    backoff = BACKOFF_MIN;
                    warned = false;
                }
            },
            Err(e) if e.is_retryable() => {
                if !warned {
                    tracing::warn!(agent_id = %agent.id, error = %e, "controller unreachable; retrying with backoff");
                    warned = true;
                }
            }
            Err(e) => {
                agent.stop_all();
                return Err(e.into());
            }
        }
        // Wait before the next attempt, still collecting reports and watching the clocks.
        let until = Instant::now() + backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        loop {
            let event = tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                e = next_event(&mut agent.current, &mut agent.leave, None, &mut housekeeping, &cancel) => e,
            };
            if let Some(exit) = agent.handle_offline(event) {
                return Ok(exit);
            }
        }
    }
}

/// Sends the first of a spot interruption notice (when `spot` watches for one) and a leave
/// request; ends without sending when `stop` is cancelled.
async fn watch_for_leaving(
    spot: Option<SpotWatch>,
    leave: LeaveRequest,
    tx: oneshot::Sender<LeaveNotice>,
    stop: CancellationToken,
) {
    let spot_notice = async {
        match &spot {
            Some(w) => imds::watch_spot_interruption(&w.imds_url, w.interval, stop.clone()).await,
            None => std::future::pending().await,
        }
    };
    let notice = tokio::select! {
        () = stop.cancelled() => return,
        Some(notice) = spot_notice => LeaveNotice {
            reason: notice.reason(),
            drain: spot.as_ref().map_or(Duration::ZERO, |w| w.drain),
            exit: AgentExit::SpotInterruption,
        },
        () = leave.requested.cancelled() => LeaveNotice {
            reason: "asked to leave: shutting down".to_owned(),
            drain: leave.drain,
            exit: AgentExit::AskedToLeave,
        },
    };
    let _ = tx.send(notice);
}

/// Waits for whatever happens next; borrows the run's parts only while waiting.
async fn next_event(
    current: &mut Option<Current>,
    leave: &mut Option<oneshot::Receiver<LeaveNotice>>,
    inbound: Option<&mut Streaming<v1::ControllerMessage>>,
    housekeeping: &mut Interval,
    cancel: &CancellationToken,
) -> Event {
    let (loading, reports, barriers) = match current {
        Some(Current {
            loading,
            runner,
            barriers,
            barriers_flushed_at,
            ..
        }) => (
            loading.as_mut(),
            runner.as_mut().map(|r| &mut r.reports),
            Some((barriers.clone(), *barriers_flushed_at)),
        ),
        None => (None, None, None),
    };
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Event::Cancelled,
        m = async { match inbound { Some(s) => s.message().await, None => std::future::pending().await } } => Event::Controller(m),
        r = async { match reports { Some(r) => r.recv().await, None => std::future::pending().await } } => Event::Report(r),
        l = async { match loading { Some(h) => h.await, None => std::future::pending().await } } => {
            Event::Loaded(l.unwrap_or_else(|e| Err(format!("loading failed: {e}"))))
        }
        _ = async { match &barriers { Some((b, flushed_at)) => b.changes_due(*flushed_at).await, None => std::future::pending().await } } => Event::Barrier,
        n = async { match leave { Some(rx) => rx.await.ok(), None => std::future::pending().await } } => Event::Leave(n),
        _ = housekeeping.tick() => Event::Housekeeping,
    }
}

/// Where a message goes: the live session's queue, or nowhere while offline.
type Out<'a> = Option<&'a mpsc::Sender<v1::AgentMessage>>;

fn send(out: Out<'_>, kind: Msg) -> Result<(), String> {
    let Some(out) = out else {
        return Ok(());
    };
    out.try_send(v1::AgentMessage { kind: Some(kind) })
        .map_err(|_| "the controller stopped reading our stream".to_owned())
}

impl Agent {
    fn hello(&self) -> v1::AgentMessage {
        v1::AgentMessage {
            kind: Some(Msg::Hello(v1::Hello {
                agent_id: self.id.clone(),
                version: punisher_proto::SOFTWARE_VERSION.to_owned(),
                protocol: punisher_proto::PROTOCOL_VERSION,
                capacity: Some(capacity::capacity(self.workers)),
                hostname: self.hostname.clone(),
                region: self.cfg.labels.region.clone(),
                zone: self.cfg.labels.zone.clone(),
                instance_id: self.cfg.labels.instance_id.clone(),
                run_id: self
                    .current
                    .as_ref()
                    .map(|c| c.run_id.clone())
                    .unwrap_or_default(),
            })),
        }
    }

    async fn session(
        &mut self,
        channel: tonic::transport::Channel,
        cancel: &CancellationToken,
        housekeeping: &mut Interval,
    ) -> SessionEnd {
        let (out, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let _ = out.try_send(self.hello());
        let mut client = agent_client(channel, self.token.clone());
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async move {
            let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
            let first = inbound.message().await?;
            Ok::<_, Status>((inbound, first))
        });
        tokio::pin!(handshake);
        // As while connecting, the run goes on during the handshake.
        let answer = loop {
            tokio::select! {
                a = &mut handshake => break a,
                e = next_event(&mut self.current, &mut self.leave, None, housekeeping, cancel) => {
                    if let Some(exit) = self.handle_offline(e) {
                        return SessionEnd::Exit(exit);
                    }
                }
            }
        };
        let (mut inbound, welcome) = match answer {
            Err(_) => return SessionEnd::Lost("no answer to Hello".into()),
            Ok(Err(status)) => return end_from_status(status),
            Ok(Ok((
                inbound,
                Some(v1::ControllerMessage {
                    kind: Some(Cmd::Welcome(w)),
                }),
            ))) => (inbound, w),
            Ok(Ok(_)) => return SessionEnd::Lost("the controller did not welcome us".into()),
        };
        if welcome.protocol != punisher_proto::PROTOCOL_VERSION {
            return SessionEnd::Refused(Refusal::Version {
                ours: punisher_proto::PROTOCOL_VERSION,
                theirs: welcome.protocol,
            });
        }
        self.last_heard = Instant::now();
        tracing::info!(agent_id = %self.id, run_id = %welcome.run_id, last_acked = welcome.last_acked_seq, "joined the controller");
        if let Err(reason) = self.resume(&welcome, &out).await {
            return SessionEnd::Lost(reason);
        }
        loop {
            let event = next_event(
                &mut self.current,
                &mut self.leave,
                Some(&mut inbound),
                housekeeping,
                cancel,
            )
            .await;
            let result = match event {
                Event::Controller(Ok(Some(msg))) => {
                    self.last_heard = Instant::now();
                    self.on_command(msg, Some(&out))
                }
                Event::Controller(Ok(None)) => {
                    return SessionEnd::Lost("the controller closed the stream".into());
                }
                Event::Controller(Err(status)) => return end_from_status(status),
                Event::Cancelled => {
                    let _ = send(
                        Some(&out),
                        Msg::Goodbye(v1::Goodbye {
                            reason: "agent stopping".into(),
                        }),
                    );
                    // The controller closes the stream on Goodbye: wait for that (briefly),
                    // so that the Goodbye is delivered before this process may exit.
                    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    })
                    .await;
                    return SessionEnd::Exit(self.exit(Some(&out), AgentExit::Cancelled));
                }
                other => match self.on_local(other, Some(&out)) {
                    Ok(Some(exit)) => return SessionEnd::Exit(exit),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                },
            };
            if let Err(reason) = result {
                return SessionEnd::Lost(reason);
            }
        }
    }

    /// After Welcome: forget what the controller has, resend the rest, in order.
    async fn resume(
        &mut self,
        welcome: &v1::Welcome,
        out: &mpsc::Sender<v1::AgentMessage>,
    ) -> Result<(), String> {
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        if current.run_id != welcome.run_id {
            // The controller no longer has us in this run (it ended, or the controller
            // restarted): stop it and forget it.
            tracing::warn!(agent_id = %self.id, run_id = %current.run_id, "the controller does not know our run; stopping it");
            self.current = None;
            return Ok(());
        }
        current.outbox.retain(|r| r.seq > welcome.last_acked_seq);
        let mut messages: Vec<Msg> = Vec::new();
        if current.loaded.is_some() {
            // Loaded and waiting for Start: our Loaded may have been lost with the stream.
            messages.push(Msg::Loaded(v1::Loaded {
                run_id: current.run_id.clone(),
                error: String::new(),
            }));
        }
        messages.extend(current.outbox.iter().cloned().map(Msg::Report));
        messages.extend(current.barriers.pending().into_messages(&current.run_id));
        tracing::info!(agent_id = %self.id, resent = messages.len(), "resuming the run");
        for kind in messages {
            let sent = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                out.send(v1::AgentMessage { kind: Some(kind) }),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return Err("cannot resend reports".into());
            }
        }
        Ok(())
    }

    fn on_command(&mut self, msg: v1::ControllerMessage, out: Out<'_>) -> Result<(), String> {
        let Some(kind) = msg.kind else {
            return Ok(());
        };
        let matches = |current: &Option<Current>, run_id: &str| {
            current.as_ref().is_some_and(|c| c.run_id == run_id)
        };
        match kind {
            Cmd::Ping(p) => {
                // The controller's clock is the run's: the engine labels time with ours
                // corrected by its estimate. The Pong carries our own clock, uncorrected, so
                // that the estimate stays the whole offset.
                punisher_engine::set_clock_offset_us(p.agent_offset_us);
                send(
                    out,
                    Msg::Pong(v1::Pong {
                        nonce: p.nonce,
                        ping_sent_unix_us: p.sent_unix_us,
                        agent_unix_us: unix_us(),
                    }),
                )?
            }
            Cmd::Ack(a) => {
                if let Some(c) = self.current.as_mut().filter(|c| c.run_id == a.run_id) {
                    c.outbox.retain(|r| r.seq > a.seq);
                }
                self.forget_finished();
            }
            Cmd::Load(load) if self.leaving.is_some() => {
                let error = match &self.leaving {
                    Some(l) => format!("this agent is leaving ({})", l.reason),
                    None => String::new(),
                };
                send(
                    out,
                    Msg::Loaded(v1::Loaded {
                        run_id: load.run_id,
                        error,
                    }),
                )?;
            }
            Cmd::Load(load) => {
                if let Some(mut old) = self.current.take() {
                    old.abort();
                }
                tracing::info!(agent_id = %self.id, run_id = %load.run_id, "loading a scenario");
                let mut current = Current::new(load.run_id.clone());
                let request = LoadRequest {
                    msg: load,
                    workers: self.workers,
                    source_pool: self.cfg.source_pool.clone(),
                    memory_limit_bytes: self.cfg.memory_limit_bytes,
                    barriers: current.barriers.clone(),
                };
                current.loading = Some(tokio::spawn(runner::load(request)));
                self.current = Some(current);
            }
            Cmd::Start(s) if matches(&self.current, &s.run_id) => {
                if let Some(c) = self.current.as_mut() {
                    tracing::info!(agent_id = %self.id, run_id = %s.run_id, at = s.at_unix_ms, "start");
                    c.start(s.at_unix_ms);
                }
            }
            Cmd::Scale(s) if matches(&self.current, &s.run_id) => {
                self.engine(EngineCommand::ScaleUsers(s.users));
            }
            Cmd::Pause(p) if matches(&self.current, &p.run_id) => {
                self.engine(EngineCommand::PauseArrivals);
            }
            Cmd::Resume(r) if matches(&self.current, &r.run_id) => {
                self.engine(EngineCommand::ResumeArrivals);
            }
            Cmd::Stop(s) if matches(&self.current, &s.run_id) => {
                let grace = Duration::from_millis(s.grace_ms);
                if let Some(c) = self.current.as_mut() {
                    match &c.runner {
                        Some(r) => r.command(EngineCommand::Stop { grace }),
                        None => c.abort(),
                    }
                }
            }
            Cmd::Abort(a) if matches(&self.current, &a.run_id) => {
                tracing::info!(agent_id = %self.id, reason = %a.reason, "abort");
                if let Some(c) = self.current.as_mut() {
                    c.abort();
                }
                self.forget_finished();
            }
            Cmd::Adopt(a) if matches(&self.current, &a.run_id) => {
                let running = self
                    .current
                    .as_ref()
                    .is_some_and(|c| c.runner.is_some() || c.loaded.is_some());
                if !running || self.leaving.is_some() {
                    send(
                        out,
                        Msg::Log(v1::Log {
                            level: v1::log::Level::Warn as i32,
                            message: "cannot take over a departed agent's users: our share \
                                      already ended"
                                .into(),
                        }),
                    )?;
                }
                for share in a.shares {
                    match convert::segment_from_wire(share.segment) {
                        Ok(segment) => {
                            tracing::info!(agent_id = %self.id, ?segment, from_user = share.from_user, "adopting a departed agent's users");
                            self.engine(EngineCommand::Adopt {
                                segment,
                                from_user: share.from_user,
                            });
                        }
                        Err(e) => {
                            tracing::warn!(agent_id = %self.id, error = %e, "invalid adopted share")
                        }
                    }
                }
            }
            Cmd::BarrierRelease(b) if matches(&self.current, &b.run_id) => {
                if let Some(c) = &self.current {
                    c.barriers.release(&b.name);
                }
            }
            // Commands for a run we do not have, and a second Welcome: nothing to do.
            _ => {}
        }
        Ok(())
    }

    fn engine(&self, cmd: EngineCommand) {
        if let Some(runner) = self.current.as_ref().and_then(|c| c.runner.as_ref()) {
            runner.command(cmd);
        }
    }

    /// Events that do not come from the controller; `Ok(Some(exit))` ends the agent.
    fn on_local(&mut self, event: Event, out: Out<'_>) -> Result<Option<AgentExit>, String> {
        match event {
            Event::Loaded(result) => {
                let Some(c) = self.current.as_mut() else {
                    return Ok(None);
                };
                c.loading = None;
                let error = match result {
                    Ok(loaded) => {
                        c.loaded = Some(loaded);
                        if let Some(at) = c.start_at.take() {
                            c.start(at);
                        }
                        String::new()
                    }
                    Err(e) => {
                        tracing::warn!(agent_id = %self.id, error = %e, "cannot load the scenario");
                        c.finished = true;
                        e
                    }
                };
                send(
                    out,
                    Msg::Loaded(v1::Loaded {
                        run_id: c.run_id.clone(),
                        error,
                    }),
                )?;
            }
            Event::Report(Some(report)) => self.on_report(report, out)?,
            Event::Report(None) => {
                if let Some(c) = self.current.as_mut() {
                    c.runner = None;
                    c.finished = true;
                }
            }
            Event::Barrier | Event::Housekeeping => {
                self.flush_barriers(out)?;
                if matches!(event, Event::Housekeeping) {
                    self.check_deadman();
                    self.forget_finished();
                    if self.deadline.is_some_and(|d| Instant::now() >= d) {
                        tracing::info!(agent_id = %self.id, "TTL reached; exiting");
                        let _ = send(
                            out,
                            Msg::Goodbye(v1::Goodbye {
                                reason: "TTL reached".into(),
                            }),
                        );
                        return Ok(Some(self.exit(out, AgentExit::TtlExpired)));
                    }
                    if let Some(exit) = self.check_leave(out) {
                        return Ok(Some(exit));
                    }
                }
            }
            Event::Leave(notice) => {
                self.leave = None;
                if let Some(notice) = notice {
                    self.on_leave_notice(notice);
                    if let Some(exit) = self.check_leave(out) {
                        return Ok(Some(exit));
                    }
                }
            }
            Event::Cancelled => return Ok(Some(self.exit(out, AgentExit::Cancelled))),
            Event::Controller(_) => {}
        }
        Ok(None)
    }

    /// A spot interruption is coming, or the agent was asked to leave: no new arrivals,
    /// running users get the drain, and the engine's final report will say what it left
    /// (see [`Agent::on_report`]).
    fn on_leave_notice(&mut self, notice: LeaveNotice) {
        let LeaveNotice {
            reason,
            drain,
            exit,
        } = notice;
        tracing::warn!(agent_id = %self.id, %reason, ?drain, "draining and leaving");
        if let Some(c) = self.current.as_mut() {
            match &c.runner {
                Some(r) => r.command(EngineCommand::Stop { grace: drain }),
                None => c.abort(),
            }
        }
        self.leaving = Some(Leaving {
            reason,
            exit,
            since_unix_ms: unix_ms(),
            deadline: Instant::now() + drain + LEAVE_SLACK,
        });
    }

    /// Leaving and done (the final report acknowledged, or no time left): Goodbye and exit.
    fn check_leave(&mut self, out: Out<'_>) -> Option<AgentExit> {
        let leaving = self.leaving.as_ref()?;
        let done = self.current.is_none();
        if !done && Instant::now() < leaving.deadline {
            return None;
        }
        if !done {
            tracing::warn!(agent_id = %self.id, "leaving before the controller acknowledged every report");
        }
        let _ = send(
            out,
            Msg::Goodbye(v1::Goodbye {
                reason: leaving.reason.clone(),
            }),
        );
        let exit = leaving.exit;
        Some(self.exit(out, exit))
    }

    /// Offline: reports go to the outbox, clocks keep ticking.
    fn handle_offline(&mut self, event: Event) -> Option<AgentExit> {
        self.on_local(event, None).unwrap_or_default()
    }

    fn on_report(&mut self, report: RunnerReport, out: Out<'_>) -> Result<(), String> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        if let Some(error) = &report.error {
            tracing::warn!(agent_id = %self.id, %error, "engine error");
            send(
                out,
                Msg::Log(v1::Log {
                    level: v1::log::Level::Error as i32,
                    message: error.clone(),
                }),
            )?;
        }
        let seq = c.next_seq;
        c.next_seq += 1;
        c.finished |= report.finished;
        let wire = v1::Report {
            run_id: c.run_id.clone(),
            seq,
            snapshot: report.snapshot.encode().into(),
            active_users: report.active_users,
            peak_users: report.peak_users,
            target_users: report.target_users,
            arrived_users: report.arrived_users,
            open_connections: report.open_connections,
            open_sockets: report.open_sockets,
            cpu_busy_mean: report.cpu_busy_mean,
            cpu_busy_max: report.cpu_busy_max,
            event_loop_lag_us: report.event_loop_lag.as_micros() as u64,
            finished: report.finished,
            sent_unix_ms: unix_ms(),
            departing: report.finished && self.leaving.is_some(),
            left_over: if report.finished && self.leaving.is_some() {
                report
                    .left_over
                    .shares
                    .iter()
                    .map(|(segment, from_user)| v1::Share {
                        segment: Some((*segment).into()),
                        from_user: *from_user,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            interrupted_users: report.left_over.interrupted_users,
            departure_reason: match &self.leaving {
                Some(l) if report.finished => l.reason.clone(),
                _ => String::new(),
            },
            departed_unix_ms: match &self.leaving {
                Some(l) if report.finished => l.since_unix_ms,
                _ => 0,
            },
        };
        if c.outbox.len() >= MAX_OUTBOX
            && let Some(dropped) = c.outbox.pop_front()
        {
            tracing::error!(agent_id = %self.id, seq = dropped.seq, "outbox full: oldest unacknowledged report dropped");
        }
        // Encoded: its histograms go back to the workers instead of being freed.
        report.snapshot.recycle();
        c.outbox.push_back(wire.clone());
        send(out, Msg::Report(wire))
    }

    fn flush_barriers(&mut self, out: Out<'_>) -> Result<(), String> {
        let Some(c) = &mut self.current else {
            return Ok(());
        };
        if out.is_none() {
            return Ok(()); // resent from `pending()` after the reconnect
        }
        let messages = c.barriers.take_changes().into_messages(&c.run_id);
        if !messages.is_empty() {
            c.barriers_flushed_at = Some(Instant::now());
        }
        for message in messages {
            send(out, message)?;
        }
        Ok(())
    }

    /// Stops generating load when the controller has been silent too long.
    fn check_deadman(&mut self) {
        let silent = self.last_heard.elapsed();
        if silent < self.cfg.controller_timeout {
            return;
        }
        let Some(c) = self
            .current
            .as_mut()
            .filter(|c| !c.finished && !c.deadman_fired)
        else {
            return;
        };
        tracing::warn!(
            agent_id = %self.id,
            run_id = %c.run_id,
            silent_s = silent.as_secs(),
            "the controller has been silent too long: stopping the load (dead-man switch)"
        );
        c.deadman_fired = true;
        c.abort();
    }

    /// Drops a finished run once the controller has all of its reports.
    fn forget_finished(&mut self) {
        if self.current.as_ref().is_some_and(|c| {
            c.finished && c.outbox.is_empty() && c.runner.is_none() && c.loading.is_none()
        }) {
            self.current = None;
        }
    }

    fn stop_all(&mut self) {
        if let Some(mut c) = self.current.take() {
            c.abort();
        }
    }

    fn exit(&mut self, _out: Out<'_>, exit: AgentExit) -> AgentExit {
        self.stop_all();
        exit
    }
}

fn end_from_status(status: Status) -> SessionEnd {
    match Refusal::from_status(&status, punisher_proto::PROTOCOL_VERSION) {
        Some(r) => SessionEnd::Refused(r),
        None => SessionEnd::Lost(format!("{:?}: {}", status.code(), status.message())),
    }
}
