//! Fixtures for the dashboard tests: a realistic mid-run view and a screen-to-text helper.

use std::time::Duration;

use punisher_core::view::{
    AgentHealth, AgentRow, BarrierView, Charts, LogLevel, LogLine, Point, RequestRow, RunState,
    RunView, ThresholdView,
};
use punisher_tui::{App, DashboardConfig, render};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;

/// 60 one-second points of `f(t)`, ending at 312 s.
fn series(f: impl Fn(f64) -> f64) -> Vec<Point> {
    (0..60)
        .map(|i| 253.0 + f64::from(i))
        .map(|t| (t, f(t)))
        .collect()
}

/// Five minutes into the TV show: 3 agents (one lost), 4 request names, one failing threshold,
/// the `connected` barrier half way.
pub(crate) fn fixture() -> RunView {
    let threshold = |selector: &str, expression: &str, observed: f64, passed: bool| ThresholdView {
        selector: selector.into(),
        expression: expression.into(),
        observed: Some(observed),
        passed,
    };
    let request = |name: &str, count, rate, p50, p95, p99, max, failures| RequestRow {
        name: name.into(),
        count,
        rate_per_sec: rate,
        p50_ms: p50,
        p95_ms: p95,
        p99_ms: p99,
        max_ms: max,
        failures,
    };
    let agent = |id: &str, region: &str, users, connections, cpu, lag, age, health| AgentRow {
        id: id.into(),
        region: region.into(),
        users,
        connections,
        cpu,
        loop_lag_ms: lag,
        last_report_age_ms: age,
        health,
    };
    let log = |t: f64, level, message: &str| LogLine {
        elapsed_secs: t,
        level,
        message: message.into(),
    };
    RunView {
        run_id: "r-7f3a".into(),
        scenario: "tv_show.js".into(),
        state: RunState::Running,
        elapsed_secs: 312.0,
        planned_secs: 1800.0,
        users_active: 1200,
        users_target: 2000,
        users_arrived: 1350,
        requests_per_sec: 523.4,
        error_rate: 0.0012,
        thresholds: vec![
            threshold("http_req_failed", "rate<0.01", 0.0012, true),
            threshold("http_req_duration{name:vote}", "p(99)<500", 612.3, false),
            threshold("http_req_duration", "p(95)<300", 181.0, true),
            threshold("checks", "rate>0.99", 0.998, true),
        ],
        charts: Charts {
            requests_per_sec: series(|t| 500.0 + 30.0 * (t / 7.0).sin()),
            p50_ms: series(|t| 40.0 + 5.0 * (t / 5.0).sin()),
            p95_ms: series(|t| 180.0 + 20.0 * (t / 6.0).sin()),
            p99_ms: series(|t| 600.0 + 40.0 * (t / 4.0).sin()),
            active_users: series(|t| 4.0 * t - 48.0),
            open_connections: series(|t| 3.2 * t),
            socketio_events_per_sec: series(|t| 80.0 + 10.0 * (t / 3.0).cos()),
        },
        requests: vec![
            request("login", 1350, 4.3, 35.2, 120.0, 310.0, 890.0, 0),
            request("info", 1340, 4.3, 12.1, 45.0, 98.0, 240.0, 0),
            request("poll", 98_000, 500.1, 20.4, 150.2, 410.7, 1290.0, 118),
            request("vote", 220, 14.7, 80.3, 390.0, 612.3, 1500.0, 2),
        ],
        agents: vec![
            agent(
                "agent-use1-a",
                "us-east-1",
                600,
                600,
                0.42,
                1.2,
                420,
                AgentHealth::Healthy,
            ),
            agent(
                "agent-euw1-a",
                "eu-west-1",
                600,
                598,
                0.93,
                48.0,
                380,
                AgentHealth::Saturated,
            ),
            agent(
                "agent-apn1-a",
                "ap-northeast-1",
                0,
                0,
                0.0,
                0.0,
                21_000,
                AgentHealth::Lost,
            ),
        ],
        barriers: vec![BarrierView {
            name: "connected".into(),
            arrived: 750,
            departed: 0,
            expected: 1500,
            released: false,
        }],
        log: vec![
            log(301.0, LogLevel::Info, "scaled to 2000 users"),
            log(
                305.5,
                LogLevel::Warn,
                "agent agent-euw1-a saturated: loop lag 48ms",
            ),
            log(
                309.0,
                LogLevel::Error,
                "agent agent-apn1-a lost: no report for 21s",
            ),
            log(
                311.0,
                LogLevel::Warn,
                "threshold p(99)<500 on http_req_duration{name:vote} crossed",
            ),
        ],
    }
}

pub(crate) fn config(attached: bool) -> DashboardConfig {
    DashboardConfig {
        attached,
        wait_for_start: false,
        refresh: Duration::from_secs(1),
    }
}

pub(crate) fn app(view: RunView) -> App {
    App::new(&config(false), view)
}

/// The buffer as text, one line per row (wide characters count once).
pub(crate) fn text(buf: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Renders `app` on a `width` x `height` TestBackend and returns the screen's text.
pub(crate) fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| render(frame, app)).unwrap();
    text(terminal.backend().buffer())
}

/// The one line of `screen` that contains `needle`.
pub(crate) fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
}

#[track_caller]
pub(crate) fn assert_contains(screen: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            screen.contains(needle),
            "{needle:?} not on the screen:\n{screen}"
        );
    }
}
