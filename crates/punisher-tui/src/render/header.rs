//! The header: run id, scenario and state in the title, then the key numbers as "chips" packed
//! into as many lines as the width needs, so a narrow terminal wraps them instead of cutting.
//! A banner line says when the run waits for `s` or has ended.

use punisher_core::view::{AgentHealth, RunState, RunView};
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Widget};

use crate::app::App;
use crate::format;

/// Spaces between two chips on a line.
const GAP: &str = "   ";

/// Rows the header needs at this width, borders included.
pub(super) fn height(app: &App, width: u16, compact: bool) -> u16 {
    let lines = lines(app, width.saturating_sub(2), compact);
    u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2)
}

pub(super) fn draw(area: Rect, buf: &mut Buffer, app: &App, compact: bool) {
    let view = app.view();
    let title = Line::from(vec![
        Span::styled(" punisher ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!("· run {} · {} ", view.run_id, view.scenario)),
    ]);
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    block.render(area, buf);
    Paragraph::new(lines(app, inner.width, compact)).render(inner, buf);
}

fn lines(app: &App, width: u16, compact: bool) -> Vec<Line<'static>> {
    let mut lines = pack(chips(app.view(), compact), usize::from(width));
    if let Some(banner) = banner(app) {
        lines.push(banner);
    }
    lines
}

/// The key numbers, most important first: on a narrow terminal the last ones wrap.
fn chips(view: &RunView, compact: bool) -> Vec<Vec<Span<'static>>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let mut chips = vec![
        // Centred in a fixed width so the chips after it do not move when the state changes.
        vec![Span::styled(
            format!(" {:^8} ", state_name(view.state)),
            state_style(view.state),
        )],
        // No planned duration (an open-ended run, or not known): the elapsed time alone.
        vec![Span::styled(
            if view.planned_secs > 0.0 {
                format!(
                    "{} / {}",
                    format::clock(view.elapsed_secs),
                    format::clock(view.planned_secs)
                )
            } else {
                format::clock(view.elapsed_secs)
            },
            bold,
        )],
        vec![
            Span::raw("users "),
            Span::styled(format!("{}/{}", view.users_active, view.users_target), bold),
        ],
        vec![Span::raw(format!("arrived {}", view.users_arrived))],
        vec![
            Span::styled(format::num(view.requests_per_sec), bold),
            Span::raw(" req/s"),
        ],
    ];
    let error_style = if view.error_rate > 0.0 {
        Style::new().fg(Color::Red)
    } else {
        bold
    };
    chips.push(vec![
        Span::raw("errors "),
        Span::styled(format::percent(view.error_rate), error_style),
    ]);
    if !view.agents.is_empty() {
        chips.push(agents_chip(view));
    }
    // The barrier panel shows progress when there is room for it; otherwise this chip does.
    if let Some(b) = view
        .barriers
        .iter()
        .find(|b| !b.released)
        .filter(|_| compact)
    {
        chips.push(vec![Span::raw(format!(
            "barrier {} {}",
            b.name,
            super::panels::barrier_count(b)
        ))]);
    }
    chips
}

fn agents_chip(view: &RunView) -> Vec<Span<'static>> {
    let count = |h: AgentHealth| view.agents.iter().filter(|a| a.health == h).count();
    let (lost, saturated) = (count(AgentHealth::Lost), count(AgentHealth::Saturated));
    let mut chip = vec![Span::raw(format!("agents {}", view.agents.len()))];
    let mut sep = ": ";
    if lost > 0 {
        chip.push(Span::raw(sep));
        chip.push(Span::styled(
            format!("{lost} lost"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ));
        sep = ", ";
    }
    if saturated > 0 {
        chip.push(Span::raw(sep));
        chip.push(Span::styled(
            format!("{saturated} saturated"),
            Style::new().fg(Color::Yellow),
        ));
    }
    chip
}

fn banner(app: &App) -> Option<Line<'static>> {
    let view = app.view();
    let style = Style::new().fg(Color::Black).add_modifier(Modifier::BOLD);
    let text = if app.view_closed() && !matches!(view.state, RunState::Finished | RunState::Aborted)
    {
        Some((
            " no more updates from the run: q to leave ",
            style.bg(Color::Yellow),
        ))
    } else if app.run_ended() {
        let text = if view.state == RunState::Aborted {
            " run aborted: q to leave "
        } else {
            " run finished: q to leave "
        };
        Some((text, style.bg(Color::Blue)))
    } else if view.state == RunState::Waiting && app.wait_for_start() {
        Some((
            " waiting for start: press s to start the run ",
            style.bg(Color::Cyan),
        ))
    } else {
        None
    };
    text.map(|(t, s)| Line::from(Span::styled(t, s)))
}

/// Greedy packing of chips into lines at most `width` wide.
fn pack(chips: Vec<Vec<Span<'static>>>, width: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<Line<'static>> = Vec::new();
    let mut current: Vec<Span<'static>> = Vec::new();
    let mut used = 0;
    for chip in chips {
        let w: usize = chip.iter().map(Span::width).sum();
        if !current.is_empty() && used + GAP.len() + w > width {
            lines.push(Line::from(std::mem::take(&mut current)));
            used = 0;
        }
        if !current.is_empty() {
            current.push(Span::raw(GAP));
            used += GAP.len();
        }
        used += w;
        current.extend(chip);
    }
    if !current.is_empty() {
        lines.push(Line::from(current));
    }
    lines
}

fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Waiting => "WAITING",
        RunState::Starting => "STARTING",
        RunState::Running => "RUNNING",
        RunState::Paused => "PAUSED",
        RunState::Stopping => "STOPPING",
        RunState::Finished => "FINISHED",
        RunState::Aborted => "ABORTED",
    }
}

fn state_style(state: RunState) -> Style {
    let color = match state {
        RunState::Waiting | RunState::Starting => Color::Cyan,
        RunState::Running => Color::Green,
        RunState::Paused | RunState::Stopping => Color::Yellow,
        RunState::Finished => Color::Blue,
        RunState::Aborted => Color::Red,
    };
    Style::new()
        .fg(Color::Black)
        .bg(color)
        .add_modifier(Modifier::BOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chips_wrap_to_the_width() {
        let chips = vec![
            vec![Span::raw("aaaa")],
            vec![Span::raw("bbbb")],
            vec![Span::raw("cc")],
        ];
        let lines = pack(chips.clone(), 11);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].width(), 11);
        assert_eq!(pack(chips.clone(), 100).len(), 1);
        // A chip wider than the line still gets a line of its own, never an empty line.
        assert_eq!(pack(chips, 2).len(), 3);
    }
}
