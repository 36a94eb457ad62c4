//! The request table (one row per request name) and the agent table (unhealthy agents first, so
//! a short table still shows the lost ones). Titles say how many rows did not fit.

use punisher_core::view::{AgentHealth, RunView};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Row, Table, Widget};

use crate::format;

/// Rows a table of `n` data rows needs (at most `max_rows` shown): borders and the header row.
pub(super) fn height(n: usize, max_rows: usize) -> u16 {
    u16::try_from(n.clamp(1, max_rows))
        .unwrap_or(u16::MAX)
        .saturating_add(3)
}

/// How many data rows fit in `area`.
fn fit(area: Rect) -> usize {
    usize::from(area.height.saturating_sub(3))
}

fn title(name: &str, total: usize, area: Rect, extra: Vec<Span<'static>>) -> Line<'static> {
    let mut spans = vec![Span::raw(format!(" {name} "))];
    spans.extend(extra);
    let shown = fit(area);
    if total > shown {
        spans.push(Span::styled(
            format!("(showing {shown} of {total}) "),
            Style::new().fg(Color::DarkGray),
        ));
    }
    Line::from(spans)
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn header<'a>(names: impl IntoIterator<Item = &'a str>, left: usize) -> Row<'static> {
    let cells = names.into_iter().enumerate().map(|(i, n)| {
        let line = Line::from(n.to_owned());
        Cell::from(if i < left { line } else { line.right_aligned() })
    });
    Row::new(cells).style(Style::new().add_modifier(Modifier::BOLD).fg(Color::Gray))
}

pub(super) fn requests(area: Rect, buf: &mut Buffer, view: &RunView) {
    let rows = view.requests.iter().map(|r| {
        let failures = right(r.failures.to_string());
        let failures = if r.failures > 0 {
            failures.style(Style::new().fg(Color::Red))
        } else {
            failures
        };
        Row::new(vec![
            Cell::from(r.name.clone()),
            right(r.count.to_string()),
            right(format::num(r.rate_per_sec)),
            right(format::num(r.p50_ms)),
            right(format::num(r.p95_ms)),
            right(format::num(r.p99_ms)),
            right(format::num(r.max_ms)),
            failures,
        ])
    });
    let widths = [
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    let title = title(
        "requests",
        view.requests.len(),
        area,
        vec![Span::raw("(ms) ")],
    );
    Table::new(rows, widths)
        .header(header(
            [
                "name", "count", "req/s", "p50", "p95", "p99", "max", "failures",
            ],
            1,
        ))
        .block(Block::bordered().title(title))
        .render(area, buf);
}

/// Worst first: lost, then saturated, then healthy, then agents that left on purpose.
fn severity(h: AgentHealth) -> u8 {
    match h {
        AgentHealth::Lost => 0,
        AgentHealth::Saturated => 1,
        AgentHealth::Healthy => 2,
        AgentHealth::Left => 3,
    }
}

fn health(h: AgentHealth) -> (&'static str, Style) {
    match h {
        AgentHealth::Healthy => ("healthy", Style::new().fg(Color::Green)),
        AgentHealth::Saturated => (
            "saturated",
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        ),
        AgentHealth::Lost => (
            "lost",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        AgentHealth::Left => ("left", Style::new().fg(Color::DarkGray)),
    }
}

pub(super) fn agents(area: Rect, buf: &mut Buffer, view: &RunView) {
    let mut sorted: Vec<_> = view.agents.iter().collect();
    sorted.sort_by_key(|a| severity(a.health));
    let rows = sorted.into_iter().map(|a| {
        let (word, style) = health(a.health);
        let dim = a.health == AgentHealth::Left;
        let row = Row::new(vec![
            Cell::from(a.id.clone()),
            Cell::from(a.region.clone()),
            right(a.users.to_string()),
            right(a.connections.to_string()),
            right(format!("{:.0}%", a.cpu * 100.0)),
            right(format!("{}ms", format::num(a.loop_lag_ms))),
            right(format::age(a.last_report_age_ms)),
            Cell::from(Span::styled(word, style)),
        ]);
        if dim {
            row.style(Style::new().fg(Color::DarkGray))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Min(8),
        Constraint::Length(14),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
    ];
    let lost = view
        .agents
        .iter()
        .filter(|a| a.health == AgentHealth::Lost)
        .count();
    let extra = if lost > 0 {
        vec![Span::styled(
            format!("{lost} lost "),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )]
    } else {
        vec![]
    };
    let title = title("agents", view.agents.len(), area, extra);
    Table::new(rows, widths)
        .header(header(
            [
                "agent", "region", "users", "conns", "cpu", "loop lag", "report", "health",
            ],
            2,
        ))
        .block(Block::bordered().title(title))
        .render(area, buf);
}
