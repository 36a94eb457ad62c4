//! The live view of a run as clients see it: [`RunView`] (decoded from the wire's
//! `v1::RunView`, snapshots and all), [`AgentView`], and the states of runs and agents.

use std::time::Duration;

use punisher_metrics::{Snapshot, Totals};
use punisher_proto::v1;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    WaitingForAgents,
    Loading,
    Starting,
    Running,
    Stopping,
    Finished,
    Failed,
}

impl RunState {
    pub fn is_over(self) -> bool {
        matches!(self, RunState::Finished | RunState::Failed)
    }

    pub(crate) fn to_wire(self) -> i32 {
        (match self {
            RunState::WaitingForAgents => v1::RunState::WaitingForAgents,
            RunState::Loading => v1::RunState::Loading,
            RunState::Starting => v1::RunState::Starting,
            RunState::Running => v1::RunState::Running,
            RunState::Stopping => v1::RunState::Stopping,
            RunState::Finished => v1::RunState::Finished,
            RunState::Failed => v1::RunState::Failed,
        }) as i32
    }

    pub(crate) fn from_wire(v: i32) -> RunState {
        match v1::RunState::try_from(v).unwrap_or(v1::RunState::Unspecified) {
            v1::RunState::WaitingForAgents | v1::RunState::Unspecified => {
                RunState::WaitingForAgents
            }
            v1::RunState::Loading => RunState::Loading,
            v1::RunState::Starting => RunState::Starting,
            v1::RunState::Running => RunState::Running,
            v1::RunState::Stopping => RunState::Stopping,
            v1::RunState::Finished => RunState::Finished,
            v1::RunState::Failed => RunState::Failed,
        }
    }
}

/// What an agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Idle,
    Loading,
    Ready,
    Running,
    Finished,
    /// Stopped reporting without a word: killed, cut off.
    Lost,
    /// Said goodbye before the run ended (spot interruption, TTL, shutdown).
    Left,
}

impl AgentState {
    /// Lost or left: the agent no longer takes part in the run.
    pub fn is_gone(self) -> bool {
        matches!(self, AgentState::Lost | AgentState::Left)
    }

    pub(crate) fn to_wire(self) -> i32 {
        (match self {
            AgentState::Idle => v1::AgentState::Idle,
            AgentState::Loading => v1::AgentState::Loading,
            AgentState::Ready => v1::AgentState::Ready,
            AgentState::Running => v1::AgentState::Running,
            AgentState::Finished => v1::AgentState::Finished,
            AgentState::Lost => v1::AgentState::Lost,
            AgentState::Left => v1::AgentState::Left,
        }) as i32
    }

    pub(crate) fn from_wire(v: i32) -> AgentState {
        match v1::AgentState::try_from(v).unwrap_or(v1::AgentState::Unspecified) {
            v1::AgentState::Idle | v1::AgentState::Unspecified => AgentState::Idle,
            v1::AgentState::Loading => AgentState::Loading,
            v1::AgentState::Ready => AgentState::Ready,
            v1::AgentState::Running => AgentState::Running,
            v1::AgentState::Finished => AgentState::Finished,
            v1::AgentState::Lost => AgentState::Lost,
            v1::AgentState::Left => AgentState::Left,
        }
    }
}

/// One agent as the live view shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AgentView {
    pub agent_id: String,
    pub hostname: String,
    pub region: String,
    pub state: AgentState,
    pub cores: u32,
    pub open_files: u64,
    /// Its share of the test: `[start, end)` of `[0, 1)`.
    pub segment: (f64, f64),
    pub active_users: u64,
    pub cpu_busy_max: f64,
    pub event_loop_lag: Duration,
    /// Overloaded: its latencies include its own queueing.
    pub suspect: bool,
    /// Agent clock minus controller clock, from ping round trips.
    pub clock_offset_ms: f64,
    pub rtt_ms: f64,
    pub reports: u64,
    /// HTTP requests in the reports the controller accepted from it (its part of the merge).
    pub requests: u64,
    pub last_seen: Duration,
    /// Connections its users hold open, as of its last report.
    pub open_connections: u64,
}

impl From<&v1::AgentView> for AgentView {
    fn from(a: &v1::AgentView) -> AgentView {
        let cap = a.capacity.unwrap_or_default();
        let seg = a.segment.unwrap_or_default();
        AgentView {
            agent_id: a.agent_id.clone(),
            hostname: a.hostname.clone(),
            region: a.region.clone(),
            state: AgentState::from_wire(a.state),
            cores: cap.cores,
            open_files: cap.open_files,
            segment: (seg.start, seg.end),
            active_users: a.active_users,
            cpu_busy_max: a.cpu_busy_max,
            event_loop_lag: Duration::from_micros(a.event_loop_lag_us),
            suspect: a.suspect,
            clock_offset_ms: a.clock_offset_ms,
            rtt_ms: a.rtt_ms,
            reports: a.reports,
            requests: a.requests,
            last_seen: Duration::from_millis(a.last_seen_ms_ago),
            open_connections: a.open_connections,
        }
    }
}

/// A threshold's state on the merged data so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ThresholdView {
    pub selector: String,
    pub expression: String,
    pub passed: bool,
    pub observed: Option<f64>,
    pub abort_on_fail: bool,
}

/// A cluster-wide barrier's progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BarrierView {
    pub name: String,
    /// Users that reached it, on the agents still in the run.
    pub arrived: u64,
    /// Users that left the test without reaching it: it opens at `arrived + departed ==
    /// expected`.
    pub departed: u64,
    /// Every user of the test but those of lost agents.
    pub expected: u64,
    pub released: bool,
}

/// The merged view of a run, once per merged second.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run_id: String,
    pub state: RunState,
    /// Merged seconds so far.
    pub tick: u64,
    pub started_unix_ms: u64,
    pub elapsed: Duration,
    pub active_users: u64,
    pub target_users: u64,
    pub arrived_users: u64,
    pub agents: Vec<AgentView>,
    /// The last merged second.
    pub interval: Snapshot,
    /// The whole run so far.
    pub totals: Totals,
    pub thresholds: Vec<ThresholdView>,
    pub summary_json: Option<serde_json::Value>,
    pub summary_text: Option<String>,
    /// Set once the run is over: 0 passed, 99 thresholds failed, 1 could not complete.
    pub exit_code: Option<u8>,
    pub messages: Vec<String>,
    pub paused: bool,
    pub barriers: Vec<BarrierView>,
    /// Submitted with `wait_for_start` and not started yet (loading, or loaded and holding).
    pub waiting_for_start: bool,
    /// The plan's duration (zero: open-ended).
    pub planned: Duration,
    /// The scenario as submitted.
    pub scenario_name: String,
    /// The run's results folder on the controller's machine, once created (`None` with
    /// `--no-results`, or before the run was accepted).
    pub results_dir: Option<String>,
}

/// A view whose snapshots cannot be decoded (a newer controller, a corrupt message).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid run view from the controller: {0}")]
pub struct ViewError(pub String);

impl TryFrom<&v1::RunView> for RunView {
    type Error = ViewError;
    fn try_from(v: &v1::RunView) -> Result<RunView, ViewError> {
        let decode = |bytes: &[u8]| -> Result<Snapshot, ViewError> {
            if bytes.is_empty() {
                return Ok(Snapshot::empty(0, 0));
            }
            Snapshot::decode(bytes).map_err(|e| ViewError(e.to_string()))
        };
        let interval = decode(&v.interval_snapshot)?;
        let mut totals = Totals::new();
        let total_snapshot = decode(&v.totals_snapshot)?;
        if !v.totals_snapshot.is_empty() {
            totals
                .add(&total_snapshot)
                .map_err(|e| ViewError(e.to_string()))?;
        }
        let summary_json = if v.summary_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&v.summary_json).map_err(|e| ViewError(e.to_string()))?)
        };
        Ok(RunView {
            run_id: v.run_id.clone(),
            state: RunState::from_wire(v.state),
            tick: v.tick,
            started_unix_ms: v.started_unix_ms,
            elapsed: Duration::from_millis(v.elapsed_ms),
            active_users: v.active_users,
            target_users: v.target_users,
            arrived_users: v.arrived_users,
            agents: v.agents.iter().map(AgentView::from).collect(),
            interval,
            totals,
            thresholds: v
                .thresholds
                .iter()
                .map(|t| ThresholdView {
                    selector: t.selector.clone(),
                    expression: t.expression.clone(),
                    passed: t.passed,
                    observed: t.has_observed.then_some(t.observed),
                    abort_on_fail: t.abort_on_fail,
                })
                .collect(),
            summary_json,
            summary_text: (!v.summary_text.is_empty()).then(|| v.summary_text.clone()),
            exit_code: u8::try_from(v.exit_code).ok(),
            messages: v.messages.clone(),
            paused: v.paused,
            barriers: v
                .barriers
                .iter()
                .map(|b| BarrierView {
                    name: b.name.clone(),
                    arrived: b.arrived,
                    departed: b.departed,
                    expected: b.expected,
                    released: b.released,
                })
                .collect(),
            waiting_for_start: v.waiting_for_start,
            planned: Duration::from_millis(v.planned_ms),
            scenario_name: v.scenario_name.clone(),
            results_dir: (!v.results_dir.is_empty()).then(|| v.results_dir.clone()),
        })
    }
}
