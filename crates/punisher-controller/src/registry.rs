//! The agent registry's records: who joined, over which connection, what share of the
//! current run it holds and how far its reports were accepted, and its clock offset.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use punisher_core::Segment;
use punisher_proto::v1;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::view::AgentState;

/// Messages waiting to be written to one agent's stream. Commands are rare; acks and pings
/// come once a second, so a full queue means the agent stopped reading: it is disconnected.
pub(crate) const AGENT_OUTBOX: usize = 1024;

pub(crate) type AgentTx = mpsc::Sender<Result<v1::ControllerMessage, Status>>;

/// An agent's live stream.
pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) tx: AgentTx,
    pub(crate) cancel: CancellationToken,
}

/// One agent, connected or (during a run) lost.
pub(crate) struct Agent {
    pub(crate) id: String,
    pub(crate) hello: v1::Hello,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) conn: Option<Conn>,
    pub(crate) last_seen: Instant,
    /// When its stream ended (it has none now).
    pub(crate) disconnected_at: Option<Instant>,
    /// Why it is no longer part of the run; `None` while it is (cleared when it rejoins).
    pub(crate) gone: Option<Gone>,
    pub(crate) clock: Clock,
    pub(crate) assignment: Option<Assignment>,
}

/// Why an agent is no longer part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// Silent for too long, or its stream closed and it did not come back.
    Lost,
    /// Said goodbye before its share was done (spot interruption, TTL, shutdown).
    Left,
}

/// An agent's part in the current run.
pub(crate) struct Assignment {
    pub(crate) run_id: String,
    pub(crate) segment: Segment,
    /// Its index among the run's agents.
    pub(crate) index: usize,
    pub(crate) loaded: bool,
    /// The last report merged; the next one must be `accepted_seq + 1`.
    pub(crate) accepted_seq: u64,
    /// A report was merged since the last acknowledgement (sent after the journal write).
    pub(crate) ack_due: bool,
    /// The latest second (first ms) an accepted report went into: the acknowledgement waits
    /// until that second is closed and journaled.
    pub(crate) last_second: u64,
    pub(crate) finished: bool,
    pub(crate) active_users: u64,
    /// The most users active at once during the last reported second.
    pub(crate) peak_users: u64,
    pub(crate) target_users: u64,
    pub(crate) arrived_users: u64,
    pub(crate) cpu_busy_max: f64,
    pub(crate) event_loop_lag_us: u64,
    pub(crate) reports: u64,
    /// HTTP requests (`http_reqs`) in the reports merged from it: its part of the run's
    /// merged count.
    pub(crate) requests: u64,
    pub(crate) suspect: bool,
    pub(crate) suspect_seconds: u64,
    pub(crate) open_connections: u64,
    /// WebSocket and Socket.IO sessions open at the latest report.
    pub(crate) open_sockets: u64,
}

impl Assignment {
    pub(crate) fn new(run_id: String, segment: Segment) -> Assignment {
        Assignment {
            run_id,
            segment,
            index: 0,
            loaded: false,
            accepted_seq: 0,
            ack_due: false,
            last_second: 0,
            finished: false,
            active_users: 0,
            peak_users: 0,
            target_users: 0,
            arrived_users: 0,
            cpu_busy_max: 0.0,
            event_loop_lag_us: 0,
            reports: 0,
            requests: 0,
            suspect: false,
            suspect_seconds: 0,
            open_connections: 0,
            open_sockets: 0,
        }
    }
}

impl Agent {
    pub(crate) fn new(hello: v1::Hello, peer: Option<SocketAddr>, conn: Conn) -> Agent {
        Agent {
            id: hello.agent_id.clone(),
            hello,
            peer,
            conn: Some(conn),
            last_seen: Instant::now(),
            disconnected_at: None,
            gone: None,
            clock: Clock::default(),
            assignment: None,
        }
    }

    /// Lost or left: no longer part of the run.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.is_some()
    }

    pub(crate) fn cores(&self) -> u32 {
        self.hello.capacity.as_ref().map_or(1, |c| c.cores.max(1))
    }

    /// The state shown in views; `run_loading` is whether the run still waits for loads.
    pub(crate) fn state(&self, run_loading: bool) -> AgentState {
        match self.gone {
            Some(Gone::Lost) => return AgentState::Lost,
            Some(Gone::Left) => return AgentState::Left,
            None => {}
        }
        match &self.assignment {
            None => AgentState::Idle,
            Some(a) if !a.loaded => AgentState::Loading,
            Some(_) if run_loading => AgentState::Ready,
            Some(a) if a.finished => AgentState::Finished,
            Some(_) => AgentState::Running,
        }
    }

    /// Drops the connection with a reason the agent sees as the call's status.
    pub(crate) fn disconnect(&mut self, status: Status) {
        if let Some(conn) = self.conn.take() {
            let _ = conn.tx.try_send(Err(status));
            conn.cancel.cancel();
        }
    }

    /// Queues a message; an agent that stopped reading is disconnected.
    pub(crate) fn send(&mut self, kind: v1::controller_message::Kind) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        match conn
            .tx
            .try_send(Ok(v1::ControllerMessage { kind: Some(kind) }))
        {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(agent_id = %self.id, "agent stopped reading its stream; disconnecting it");
                self.disconnect(Status::resource_exhausted(
                    "the agent did not read the controller's messages",
                ));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    pub(crate) fn view(&self, run_loading: bool, now: Instant) -> v1::AgentView {
        let a = self.assignment.as_ref();
        v1::AgentView {
            agent_id: self.id.clone(),
            hostname: self.hello.hostname.clone(),
            region: self.hello.region.clone(),
            state: self.state(run_loading).to_wire(),
            capacity: self.hello.capacity,
            segment: a.map(|a| a.segment.into()),
            active_users: if self.is_gone() {
                0
            } else {
                a.map_or(0, |a| a.active_users)
            },
            cpu_busy_max: a.map_or(0.0, |a| a.cpu_busy_max),
            event_loop_lag_us: a.map_or(0, |a| a.event_loop_lag_us),
            suspect: a.is_some_and(|a| a.suspect),
            clock_offset_ms: self.clock.offset_ms(),
            rtt_ms: self.clock.rtt_ms(),
            reports: a.map_or(0, |a| a.reports),
            requests: a.map_or(0, |a| a.requests),
            last_seen_ms_ago: now.saturating_duration_since(self.last_seen).as_millis() as u64,
            open_connections: if self.is_gone() {
                0
            } else {
                a.map_or(0, |a| a.open_connections)
            },
            instance_id: self.hello.instance_id.clone(),
            zone: self.hello.zone.clone(),
        }
    }
}

/// Ping samples kept per agent; the one with the shortest round trip wins (NTP's
/// minimum-delay filter: queueing only ever adds delay, and asymmetrically).
const CLOCK_SAMPLES: usize = 8;

/// The agent's clock offset from ping round trips.
#[derive(Default)]
pub(crate) struct Clock {
    samples: VecDeque<(Duration, f64)>,
}

impl Clock {
    /// One round trip: sent at `t0` (controller), seen at `t1` (agent), back at `t3`
    /// (controller), in Unix microseconds.
    pub(crate) fn sample(&mut self, t0: u64, t1: u64, t3: u64) {
        if t3 < t0 {
            return;
        }
        let rtt = Duration::from_micros(t3 - t0);
        let midpoint = (t0 as f64 + t3 as f64) / 2.0;
        let offset_ms = (t1 as f64 - midpoint) / 1000.0;
        if self.samples.len() == CLOCK_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((rtt, offset_ms));
    }

    fn best(&self) -> Option<(Duration, f64)> {
        self.samples.iter().copied().min_by_key(|(rtt, _)| *rtt)
    }

    pub(crate) fn offset_ms(&self) -> f64 {
        self.best().map_or(0.0, |(_, o)| o)
    }

    pub(crate) fn rtt_ms(&self) -> f64 {
        self.best().map_or(0.0, |(r, _)| r.as_secs_f64() * 1000.0)
    }

    /// The offset the agent should apply, in microseconds: the estimate when it is larger
    /// than its uncertainty (half the best round trip), 0 otherwise. An agent on the
    /// controller's machine (or in its process) keeps its own clock.
    pub(crate) fn applied_offset_us(&self) -> i64 {
        match self.best() {
            Some((rtt, offset_ms)) if offset_ms.abs() * 1000.0 > rtt.as_micros() as f64 / 2.0 => {
                (offset_ms * 1000.0).round() as i64
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offset_prefers_the_shortest_round_trip() {
        let mut c = Clock::default();
        // Agent 5 ms ahead; a 2 ms round trip, then a slow asymmetric one.
        c.sample(1_000_000, 1_006_000, 1_002_000);
        c.sample(2_000_000, 2_045_000, 2_080_000);
        assert!((c.offset_ms() - 5.0).abs() < 1e-9, "{}", c.offset_ms());
        assert!((c.rtt_ms() - 2.0).abs() < 1e-9);
        c.sample(5, 0, 1); // clock went backwards: ignored
        assert!((c.offset_ms() - 5.0).abs() < 1e-9);
        assert_eq!(c.applied_offset_us(), 5_000);
    }

    fn agent() -> Agent {
        let (tx, _rx) = mpsc::channel(1);
        let conn = Conn {
            id: 1,
            tx,
            cancel: CancellationToken::new(),
        };
        Agent::new(v1::Hello::default(), None, conn)
    }

    #[test]
    fn gone_agents_show_why_and_a_rejoin_clears_it() {
        let mut a = agent();
        assert_eq!(a.state(false), AgentState::Idle);
        a.gone = Some(Gone::Left);
        assert_eq!(a.state(false), AgentState::Left);
        // It rejoins (the hub takes `gone`), then goes silent: lost, not left.
        assert!(a.gone.take().is_some());
        assert_eq!(a.state(false), AgentState::Idle);
        a.gone = Some(Gone::Lost);
        assert_eq!(a.state(false), AgentState::Lost);
        assert!(a.is_gone());
    }

    #[test]
    fn an_offset_within_the_uncertainty_is_not_applied() {
        let mut c = Clock::default();
        assert_eq!(c.applied_offset_us(), 0, "no sample yet");
        // 0.3 ms ahead with a 1 ms round trip: within +-0.5 ms, so nothing to correct.
        c.sample(1_000_000, 1_000_800, 1_001_000);
        assert_eq!(c.applied_offset_us(), 0);
        // 3 ms behind with a shorter round trip (the better sample): applied.
        c.sample(2_000_000, 1_997_400, 2_000_800);
        assert_eq!(c.applied_offset_us(), -3_000);
    }
}
