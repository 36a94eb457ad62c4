//! Try the dashboard without a cluster: a synthetic run publishes a changing `RunView` once per
//! second and obeys the dashboard's commands; the commands received are printed on exit.
//!
//! ```text
//! cargo run -p punisher-tui --example demo              # a local run that starts at once
//! cargo run -p punisher-tui --example demo -- --wait    # waits for `s`
//! cargo run -p punisher-tui --example demo -- --attached  # as `punisher ctl watch`: q detaches
//! ```

// An example talks to the person who runs it.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use punisher_core::view::{
    AgentHealth, AgentRow, BarrierView, Charts, LogLevel, LogLine, Point, RequestRow, RunCommand,
    RunState, RunView, ThresholdView,
};
use punisher_tui::{DashboardConfig, run_dashboard};
use tokio::sync::{mpsc, watch};

/// Commands the dashboard may queue before the simulation reads them.
const COMMAND_QUEUE: usize = 16;
/// Chart history: five minutes of one-second points.
const HISTORY: usize = 300;
/// Seconds a graceful stop takes in the simulation.
const DRAIN_SECS: f64 = 4.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let wait = args.iter().any(|a| a == "--wait");
    let attached = args.iter().any(|a| a == "--attached");

    let mut sim = Simulation::new(wait);
    let (views_tx, views) = watch::channel(sim.view.clone());
    let (commands_tx, mut commands) = mpsc::channel(COMMAND_QUEUE);
    let simulation = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => {
                        sim.obey(&command);
                        received.push(command);
                        // Show the effect at once rather than at the next tick.
                        let _ = views_tx.send(sim.view.clone());
                    }
                    // The dashboard is gone.
                    None => return received,
                },
                _ = tick.tick() => {
                    sim.step();
                    if views_tx.send(sim.view.clone()).is_err() {
                        return received;
                    }
                }
            }
        }
    });

    let cfg = DashboardConfig {
        attached,
        wait_for_start: wait,
        refresh: Duration::from_secs(1),
    };
    let exit = run_dashboard(cfg, views, commands_tx).await;
    let received = simulation.await?;
    println!("dashboard exit: {exit:?}");
    println!("commands received: {}", received.len());
    for command in received {
        println!("  {command:?}");
    }
    exit?;
    Ok(())
}

/// A pretend run: users ramp toward the target, latency grows with load, one agent is lost.
struct Simulation {
    view: RunView,
    /// Elapsed seconds at which a graceful stop began.
    stopping_since: Option<f64>,
    counts: [u64; 4],
}

const NAMES: [&str; 4] = ["login", "info", "poll", "vote"];

impl Simulation {
    fn new(wait: bool) -> Self {
        let agent = |id: &str, region: &str| AgentRow {
            id: id.into(),
            region: region.into(),
            users: 0,
            connections: 0,
            cpu: 0.05,
            loop_lag_ms: 0.4,
            last_report_age_ms: 300,
            health: AgentHealth::Healthy,
        };
        let threshold = |selector: &str, expression: &str| ThresholdView {
            selector: selector.into(),
            expression: expression.into(),
            observed: None,
            passed: true,
        };
        let view = RunView {
            run_id: "demo-0001".into(),
            scenario: "scenarios/tv_show.js".into(),
            state: if wait {
                RunState::Waiting
            } else {
                RunState::Running
            },
            elapsed_secs: 0.0,
            planned_secs: 600.0,
            users_active: 0,
            users_target: 2000,
            users_arrived: 0,
            requests_per_sec: 0.0,
            error_rate: 0.0,
            thresholds: vec![
                threshold("http_req_duration{name:vote}", "p(99)<500"),
                threshold("http_req_duration", "p(95)<300"),
                threshold("http_req_failed", "rate<0.01"),
            ],
            charts: Charts::default(),
            requests: vec![],
            agents: vec![
                agent("local-0", "local"),
                agent("use1-i-0a1b", "us-east-1"),
                agent("apne1-i-9f8e", "ap-northeast-1"),
            ],
            barriers: vec![BarrierView {
                name: "connected".into(),
                arrived: 0,
                departed: 0,
                expected: 2000,
                released: false,
            }],
            log: vec![],
        };
        Self {
            view,
            stopping_since: None,
            counts: [0; 4],
        }
    }

    fn log(&mut self, level: LogLevel, message: impl Into<String>) {
        let elapsed_secs = self.view.elapsed_secs;
        self.view.log.push(LogLine {
            elapsed_secs,
            level,
            message: message.into(),
        });
        if self.view.log.len() > 50 {
            self.view.log.remove(0);
        }
    }

    fn obey(&mut self, command: &RunCommand) {
        let v = &mut self.view;
        match command {
            RunCommand::Start if v.state == RunState::Waiting => v.state = RunState::Running,
            RunCommand::Scale { users } => {
                v.users_target = *users;
                v.barriers[0].expected = *users;
            }
            RunCommand::PauseArrivals if v.state == RunState::Running => v.state = RunState::Paused,
            RunCommand::ResumeArrivals if v.state == RunState::Paused => {
                v.state = RunState::Running;
            }
            RunCommand::Stop { .. } => {
                v.state = RunState::Stopping;
                self.stopping_since = Some(v.elapsed_secs);
            }
            RunCommand::Abort => v.state = RunState::Aborted,
            _ => {}
        }
        self.log(LogLevel::Info, format!("received {command:?}"));
    }

    /// One second of the pretend run.
    fn step(&mut self) {
        let state = self.view.state;
        if matches!(
            state,
            RunState::Waiting | RunState::Finished | RunState::Aborted
        ) {
            return;
        }
        self.view.elapsed_secs += 1.0;
        let t = self.view.elapsed_secs;
        let v = &mut self.view;

        // Users: arrive at up to 100/s toward the target, leave at 400/s when stopping.
        match state {
            RunState::Running if v.users_active < v.users_target => {
                let arriving = (v.users_target - v.users_active).min(100);
                v.users_active += arriving;
                v.users_arrived += arriving;
            }
            RunState::Running => v.users_active = v.users_target,
            RunState::Stopping => v.users_active = v.users_active.saturating_sub(400),
            _ => {}
        }
        let users = v.users_active as f64;
        let wobble = (t / 7.0).sin();
        v.requests_per_sec = users * 0.25 * (1.0 + 0.1 * wobble);
        let p50 = 20.0 + users / 100.0 + 3.0 * wobble;
        let p95 = p50 * 3.5;
        let p99 = p50 * 6.0 + 40.0 * (t / 3.0).cos().abs();
        v.error_rate = if users > 2500.0 {
            0.004 * (users / 2500.0)
        } else {
            0.0005
        };

        let push = |series: &mut Vec<Point>, y: f64| {
            series.push((t, y));
            if series.len() > HISTORY {
                series.remove(0);
            }
        };
        let c = &mut v.charts;
        push(&mut c.requests_per_sec, v.requests_per_sec);
        push(&mut c.p50_ms, p50);
        push(&mut c.p95_ms, p95);
        push(&mut c.p99_ms, p99);
        push(&mut c.active_users, users);
        push(&mut c.open_connections, users * 0.8);
        push(
            &mut c.socketio_events_per_sec,
            users * 0.05 * (1.0 + (t / 5.0).cos().abs()),
        );

        for (i, count) in self.counts.iter_mut().enumerate() {
            *count += (v.requests_per_sec * [0.05, 0.05, 0.8, 0.1][i]) as u64;
        }
        v.requests = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let scale = [1.6, 0.6, 1.0, 2.2][i];
                RequestRow {
                    name: (*name).into(),
                    count: self.counts[i],
                    rate_per_sec: v.requests_per_sec * [0.05, 0.05, 0.8, 0.1][i],
                    p50_ms: p50 * scale,
                    p95_ms: p95 * scale,
                    p99_ms: p99 * scale,
                    max_ms: p99 * scale * 2.5,
                    failures: (self.counts[i] as f64 * v.error_rate) as u64,
                }
            })
            .collect();

        let vote_p99 = p99 * 2.2;
        let values = [vote_p99, p95, v.error_rate];
        let limits = [500.0, 300.0, 0.01];
        for ((th, value), limit) in v.thresholds.iter_mut().zip(values).zip(limits) {
            th.observed = Some(value);
            th.passed = value < limit;
        }

        // Agents share the users; the third stops reporting after 20 s.
        let share = v.users_active / 3;
        for (i, a) in v.agents.iter_mut().enumerate() {
            let lost = i == 2 && t >= 20.0;
            if lost {
                a.last_report_age_ms += 1000;
                a.health = AgentHealth::Lost;
                continue;
            }
            a.users = share;
            a.connections = share * 8 / 10;
            a.cpu = (0.1 + share as f64 / 2500.0).min(1.0);
            a.loop_lag_ms = 0.5 + a.cpu * a.cpu * 60.0;
            a.last_report_age_ms = 200 + (i as u64 * 170);
            a.health = if a.cpu > 0.85 {
                AgentHealth::Saturated
            } else {
                AgentHealth::Healthy
            };
        }
        if t == 20.0 {
            self.log(LogLevel::Error, "agent apne1-i-9f8e lost: no report for 5s");
        }

        let v = &mut self.view;
        let barrier = &mut v.barriers[0];
        if !barrier.released {
            barrier.arrived = v.users_active.min(barrier.expected);
            if barrier.arrived >= barrier.expected && barrier.expected > 0 {
                barrier.released = true;
                self.log(LogLevel::Info, "barrier connected released");
            }
        }

        if let Some(since) = self.stopping_since
            && (t - since >= DRAIN_SECS || self.view.users_active == 0)
        {
            self.view.state = RunState::Finished;
            self.view.users_active = 0;
            self.log(LogLevel::Info, "run finished");
        }
        if self.view.elapsed_secs >= self.view.planned_secs && self.view.state == RunState::Running
        {
            self.view.state = RunState::Finished;
        }
    }
}
