//! The footer (key hints and the last feedback line) and the overlays drawn above everything:
//! help, the abort and quit questions, the number of users being typed.

use punisher_core::view::RunState;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Widget, Wrap};

use super::Breakpoint;
use crate::app::{App, Mode, STOP_GRACE_SECS};

pub(super) fn footer(area: Rect, buf: &mut Buffer, app: &App, breakpoint: Breakpoint) {
    let key_style = Style::new().fg(Color::Black).bg(Color::Gray);
    let keys = hints(app, breakpoint);
    let mut spans = Vec::new();
    for (k, d) in keys {
        spans.push(Span::styled(format!(" {k} "), key_style));
        spans.push(Span::raw(format!(" {d} ")));
    }
    let hints = Line::from(spans);
    let status = app.status().map(|s| {
        let style = if s.is_error {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Green)
        };
        Line::styled(format!("{} ", s.text), style).right_aligned()
    });
    let status_width = status
        .as_ref()
        .map_or(0, |l| l.width())
        .min(usize::from(area.width / 2));
    let [left, right] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(u16::try_from(status_width).unwrap_or(0)),
    ])
    .areas(area);
    hints.render(left, buf);
    if let Some(status) = status {
        status.render(right, buf);
    }
}

/// The keys that mean something now, worded for the current state.
fn hints(app: &App, breakpoint: Breakpoint) -> Vec<(&'static str, &'static str)> {
    let quit = if app.attached() {
        "detach"
    } else if app.run_ended() {
        "leave"
    } else {
        "quit"
    };
    if app.run_ended() || breakpoint == Breakpoint::Small {
        return vec![("q", quit), ("?", "help")];
    }
    let state = app.view().state;
    let mut keys = Vec::new();
    if state == RunState::Waiting {
        keys.push(("s", "start"));
    }
    keys.extend([("+/-", "scale"), ("u", "users")]);
    match state {
        RunState::Paused => keys.push(("p", "resume")),
        RunState::Running | RunState::Starting => keys.push(("p", "pause")),
        _ => {}
    }
    if state != RunState::Stopping {
        keys.push(("x", "stop"));
    }
    keys.extend([("a", "abort"), ("q", quit), ("?", "help")]);
    keys
}

pub(super) fn draw(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    match app.mode() {
        Mode::Normal => {}
        Mode::Help => help(area, frame.buffer_mut(), app),
        Mode::ConfirmAbort => question(
            area,
            frame.buffer_mut(),
            " abort ",
            "Abort the run? Every user stops now, without grace.",
            "y abort   n cancel",
            Color::Red,
        ),
        Mode::ConfirmQuit => question(
            area,
            frame.buffer_mut(),
            " quit ",
            "Quit? This stops the local run.",
            "y quit   n cancel",
            Color::Yellow,
        ),
        Mode::TypingUsers(typed) => {
            let popup = centered(area, 44, 5);
            let block = Block::bordered()
                .title(" scale ")
                .border_style(Style::new().fg(Color::Cyan));
            let inner = block.inner(popup);
            let lines = vec![
                Line::from(format!("Target users (now {}):", app.view().users_target)),
                Line::from(vec![
                    Span::raw("> "),
                    Span::styled(typed.clone(), Style::new().add_modifier(Modifier::BOLD)),
                ]),
                Line::styled("Enter apply   Esc cancel", Style::new().fg(Color::DarkGray)),
            ];
            let buf = frame.buffer_mut();
            Clear.render(popup, buf);
            Paragraph::new(lines).block(block).render(popup, buf);
            let typed_width = u16::try_from(typed.len()).unwrap_or(0);
            let x = inner.x.saturating_add(2).saturating_add(typed_width);
            if inner.height >= 2 && x < inner.right() {
                frame.set_cursor_position(Position::new(x, inner.y + 1));
            }
        }
    }
}

fn help(area: Rect, buf: &mut Buffer, app: &App) {
    let quit = if app.attached() {
        "detach: the run goes on"
    } else {
        "quit (asks first: this stops the local run)"
    };
    let grace = format!("graceful stop ({STOP_GRACE_SECS:.0}s for running iterations)");
    let rows: Vec<(&str, &str)> = vec![
        ("s", "start a run waiting for a signal"),
        ("+", "scale the target users up by 10%"),
        ("-", "scale the target users down by 10%"),
        ("u", "type a number of users, Enter"),
        ("p", "pause / resume arrivals"),
        ("x", grace.as_str()),
        ("a", "abort now (asks first)"),
        ("q", quit),
        ("?", "this help; Esc closes it"),
        ("Ctrl-C", "leave, as on SIGINT"),
    ];
    let mut lines: Vec<Line<'_>> = rows
        .into_iter()
        .map(|(k, d)| {
            Line::from(vec![
                Span::styled(
                    format!("{k:>7}  "),
                    Style::new().add_modifier(Modifier::BOLD),
                ),
                Span::raw(d),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Every key sends the same command as `punisher ctl`.",
        Style::new().fg(Color::DarkGray),
    ));
    let height = u16::try_from(lines.len())
        .unwrap_or(u16::MAX)
        .saturating_add(2);
    let popup = centered(area, 62, height);
    Clear.render(popup, buf);
    Paragraph::new(lines)
        .block(
            Block::bordered()
                .title(" keys ")
                .border_style(Style::new().fg(Color::Cyan)),
        )
        .render(popup, buf);
}

fn question(area: Rect, buf: &mut Buffer, title: &str, text: &str, keys: &str, color: Color) {
    let popup = centered(area, 48, 6);
    let lines = vec![
        Line::from(text.to_owned()),
        Line::raw(""),
        Line::styled(keys.to_owned(), Style::new().add_modifier(Modifier::BOLD)),
    ];
    Clear.render(popup, buf);
    Paragraph::new(lines)
        .wrap(Wrap { trim: true })
        .block(
            Block::bordered()
                .title(title.to_owned())
                .border_style(Style::new().fg(color)),
        )
        .render(popup, buf);
}

/// A `width` x `height` rectangle in the middle of `area`, shrunk to fit it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}
