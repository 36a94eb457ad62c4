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

#[cfg(test)]
mod tests {
    use punisher_core::view::AgentRow;
    use ratatui::style::{Color, Modifier};

    use super::super::testing::{empty_view, rows, style_of};
    use super::*;

    fn agent(id: &str, health: AgentHealth, cpu: f64, lag_ms: f64, age_ms: u64) -> AgentRow {
        AgentRow {
            id: id.into(),
            region: "eu-west-1".into(),
            users: 250,
            connections: 500,
            cpu,
            loop_lag_ms: lag_ms,
            last_report_age_ms: age_ms,
            health,
        }
    }

    fn draw(agent_rows: Vec<AgentRow>, width: u16, height: u16) -> Buffer {
        let view = RunView {
            agents: agent_rows,
            ..empty_view()
        };
        let mut buf = Buffer::empty(Rect::new(0, 0, width, height));
        agents(buf.area, &mut buf, &view);
        buf
    }

    /// The data rows (between the header and the bottom border), trimmed of borders.
    fn data_rows(buf: &Buffer) -> Vec<String> {
        let all = rows(buf);
        all[2..all.len() - 1]
            .iter()
            .map(|r| r.trim_matches('│').trim_end().to_owned())
            .collect()
    }

    #[test]
    fn agents_table_puts_the_worst_first_with_every_column() {
        let buf = draw(
            vec![
                agent("a-healthy", AgentHealth::Healthy, 0.42, 3.0, 400),
                agent("a-left", AgentHealth::Left, 0.0, 0.0, 9_000),
                agent("a-lost", AgentHealth::Lost, 0.10, 1.0, 21_000),
                agent("a-saturated", AgentHealth::Saturated, 0.97, 180.0, 800),
            ],
            80,
            7,
        );
        let all = rows(&buf);
        assert!(all[0].starts_with("┌ agents 1 lost ─"), "{}", all[0]);
        let header: Vec<&str> = all[1].trim_matches('│').split_whitespace().collect();
        assert_eq!(
            header,
            [
                "agent", "region", "users", "conns", "cpu", "loop", "lag", "report", "health"
            ]
        );
        let words: Vec<Vec<String>> = data_rows(&buf)
            .iter()
            .map(|r| r.split_whitespace().map(str::to_owned).collect())
            .collect();
        assert_eq!(
            words,
            [
                [
                    "a-lost",
                    "eu-west-1",
                    "250",
                    "500",
                    "10%",
                    "1.0ms",
                    "21.0s",
                    "lost"
                ],
                [
                    "a-saturated",
                    "eu-west-1",
                    "250",
                    "500",
                    "97%",
                    "180ms",
                    "800ms",
                    "saturated"
                ],
                [
                    "a-healthy",
                    "eu-west-1",
                    "250",
                    "500",
                    "42%",
                    "3.0ms",
                    "400ms",
                    "healthy"
                ],
                [
                    "a-left",
                    "eu-west-1",
                    "250",
                    "500",
                    "0%",
                    "0.0ms",
                    "9.0s",
                    "left"
                ],
            ]
        );
        // Numbers are right-aligned under their header: `users` ends where `250` ends.
        let users_end = all[1].find("users").unwrap() + "users".len();
        assert_eq!(
            all[2].find("250").unwrap() + 3,
            users_end,
            "{}\n{}",
            all[1],
            all[2]
        );
        // The state says it in colour too.
        let lost = style_of(&buf, "lost     │");
        assert_eq!(lost.fg, Some(Color::Red));
        assert!(lost.add_modifier.contains(Modifier::BOLD));
        assert_eq!(style_of(&buf, "saturated│").fg, Some(Color::Yellow));
        assert_eq!(style_of(&buf, "healthy  │").fg, Some(Color::Green));
        // An agent that left on purpose is dimmed, all of its row.
        assert_eq!(style_of(&buf, "a-left").fg, Some(Color::DarkGray));
    }

    #[test]
    fn a_short_agents_table_says_how_many_rows_it_hides_and_keeps_the_lost() {
        let mut list: Vec<AgentRow> = (0..5)
            .map(|i| agent(&format!("a-{i}"), AgentHealth::Healthy, 0.3, 2.0, 500))
            .collect();
        list.push(agent("a-gone", AgentHealth::Lost, 0.0, 0.0, 30_000));
        // Two data rows fit between the borders and the header.
        let buf = draw(list, 80, 5);
        let all = rows(&buf);
        assert!(
            all[0].contains(" agents 1 lost (showing 2 of 6) "),
            "{}",
            all[0]
        );
        let shown = data_rows(&buf);
        assert_eq!(shown.len(), 2);
        assert!(shown[0].starts_with("a-gone "), "{shown:?}");
        assert!(shown[1].starts_with("a-0 "), "{shown:?}");
    }

    #[test]
    fn an_empty_agents_table_still_draws_its_frame() {
        let buf = draw(vec![], 80, 4);
        let all = rows(&buf);
        assert!(all[0].starts_with("┌ agents ─"), "{}", all[0]);
        assert!(all[1].contains("agent") && all[1].contains("health"));
        assert!(all[3].starts_with("└"));
    }
}
