//! The live view of a run ([`RunView`]) that the run loop or the controller publishes once
//! per second, and the commands ([`RunCommand`]) that a dashboard or `punisher ctl` sends.
//! Plain data: percentiles here are already computed from merged histograms.

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for agents to join or for a start signal (`--wait-for-start`).
    Waiting,
    Starting,
    Running,
    /// Arrivals paused; running users go on.
    Paused,
    /// Graceful stop in progress.
    Stopping,
    Finished,
    Aborted,
}

/// A point of a chart: seconds since the start, value.
pub type Point = (f64, f64);

/// One threshold as it stands now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdView {
    /// `http_req_duration{name:vote}`.
    pub selector: String,
    /// `p(99)<500`.
    pub expression: String,
    /// The observed value of the aggregation, when there is data.
    pub observed: Option<f64>,
    pub passed: bool,
}

/// One row of the per-request-name table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    pub name: String,
    pub count: u64,
    pub rate_per_sec: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub failures: u64,
}

/// An agent's health as the controller judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentHealth {
    Healthy,
    /// Its measurements are suspect: CPU or event-loop lag too high.
    Saturated,
    /// No report for too long.
    Lost,
    /// Left with a Goodbye (spot interruption, TTL, shutdown).
    Left,
}

/// One row of the agents table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRow {
    pub id: String,
    pub region: String,
    pub users: u64,
    pub connections: u64,
    /// 0.0 to 1.0 per core, averaged over the agent's workers.
    pub cpu: f64,
    pub loop_lag_ms: f64,
    pub last_report_age_ms: u64,
    pub health: AgentHealth,
}

/// Progress of a barrier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarrierView {
    pub name: String,
    pub arrived: u64,
    /// Users that left the test without reaching it (the barrier does not wait for them).
    #[serde(default)]
    pub departed: u64,
    pub expected: u64,
    pub released: bool,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// A line for the dashboard's log pane (agent lost, threshold crossed, barrier released).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub elapsed_secs: f64,
    pub level: LogLevel,
    pub message: String,
}

/// Chart series over time (the last few minutes; the publisher bounds their length).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Charts {
    pub requests_per_sec: Vec<Point>,
    pub p50_ms: Vec<Point>,
    pub p95_ms: Vec<Point>,
    pub p99_ms: Vec<Point>,
    pub active_users: Vec<Point>,
    pub open_connections: Vec<Point>,
    pub socketio_events_per_sec: Vec<Point>,
}

/// Everything a live view shows, published once per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    pub run_id: String,
    pub scenario: String,
    pub state: RunState,
    pub elapsed_secs: f64,
    pub planned_secs: f64,
    pub users_active: u64,
    pub users_target: u64,
    pub users_arrived: u64,
    pub requests_per_sec: f64,
    /// Failed requests over all requests in the last second.
    pub error_rate: f64,
    pub thresholds: Vec<ThresholdView>,
    pub charts: Charts,
    pub requests: Vec<RequestRow>,
    pub agents: Vec<AgentRow>,
    pub barriers: Vec<BarrierView>,
    pub log: Vec<LogLine>,
}

/// What a dashboard, `punisher ctl` or a signal asks of a running test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum RunCommand {
    /// Start a run that waits for a signal (`--wait-for-start`).
    Start,
    /// Change the test-wide target number of users.
    Scale {
        users: u64,
    },
    PauseArrivals,
    ResumeArrivals,
    /// Stop arrivals and give running iterations `grace_secs` to finish.
    Stop {
        grace_secs: f64,
    },
    Abort,
}
