//! The small panels: thresholds (failing first), barrier gauges and the log pane.

use punisher_core::view::{BarrierView, LogLevel, RunView};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, LineGauge, Paragraph, Widget};

use crate::format;

pub(super) fn thresholds_height(view: &RunView) -> u16 {
    rows(view.thresholds.len().max(1))
}

pub(super) fn barriers_height(view: &RunView) -> u16 {
    rows(view.barriers.len())
}

/// Rows of a bordered panel holding `n` lines, capped so one panel cannot eat the screen.
fn rows(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX).saturating_add(2)
}

/// One line per threshold: `✗ p(99)<500  612  http_req_duration{name:vote}`, failing first so
/// that a short panel still shows what matters.
pub(super) fn thresholds(area: Rect, buf: &mut Buffer, view: &RunView) {
    let failing = view.thresholds.iter().filter(|t| !t.passed).count();
    let title = if view.thresholds.is_empty() {
        Span::raw(" thresholds ")
    } else if failing == 0 {
        Span::styled(" thresholds: all pass ", Style::new().fg(Color::Green))
    } else {
        Span::styled(
            format!(
                " thresholds: {failing} of {} failing ",
                view.thresholds.len()
            ),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    };
    let mut sorted: Vec<_> = view.thresholds.iter().collect();
    sorted.sort_by_key(|t| t.passed);
    let mut lines: Vec<Line<'_>> = sorted
        .into_iter()
        .map(|t| {
            let (mark, color) = if t.passed {
                ("✓", Color::Green)
            } else {
                ("✗", Color::Red)
            };
            let value_style = if t.passed {
                Style::new()
            } else {
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
            };
            Line::from(vec![
                Span::styled(
                    format!("{mark} "),
                    Style::new().fg(color).add_modifier(Modifier::BOLD),
                ),
                Span::styled(t.expression.clone(), Style::new().fg(color)),
                Span::raw("  "),
                Span::styled(format::observed(t.observed), value_style),
                Span::raw("  "),
                Span::styled(t.selector.clone(), Style::new().fg(Color::DarkGray)),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::styled(
            "no thresholds in this scenario",
            Style::new().fg(Color::DarkGray),
        ));
    }
    Paragraph::new(lines)
        .block(Block::bordered().title(title))
        .render(area, buf);
}

/// `750/1500`, or `750+20 left/1500` when users left the test without reaching it: the
/// barrier opens when both add up to the expected count.
pub(super) fn barrier_count(b: &BarrierView) -> String {
    if b.departed == 0 {
        format!("{}/{}", b.arrived, b.expected)
    } else {
        format!("{}+{} left/{}", b.arrived, b.departed, b.expected)
    }
}

/// One gauge line per barrier: `connected ━━━━━━──── 750/1500`; users that left the test
/// without reaching it fill the gauge too, since the barrier no longer waits for them.
pub(super) fn barriers(area: Rect, buf: &mut Buffer, view: &RunView) {
    let block = Block::bordered().title(" barriers ");
    let inner = block.inner(area);
    block.render(area, buf);
    let rows = Layout::vertical(vec![Constraint::Length(1); view.barriers.len()]).split(inner);
    for (b, row) in view.barriers.iter().zip(rows.iter()) {
        let ratio = if b.expected == 0 {
            0.0
        } else {
            ((b.arrived + b.departed) as f64 / b.expected as f64).clamp(0.0, 1.0)
        };
        let (label, color) = if b.released {
            (
                format!("{} released {}", b.name, barrier_count(b)),
                Color::Green,
            )
        } else {
            let percent = (ratio * 100.0).floor();
            (
                format!("{} {} {percent:.0}%", b.name, barrier_count(b)),
                Color::Cyan,
            )
        };
        // A thick filled part reads as progress even without colours.
        LineGauge::default()
            .ratio(ratio)
            .label(label)
            .filled_symbol("━")
            .unfilled_symbol("─")
            .filled_style(Style::new().fg(color))
            .unfilled_style(Style::new().fg(Color::DarkGray))
            .render(*row, buf);
    }
}

pub(super) fn log_height(view: &RunView, max_lines: usize) -> u16 {
    rows(view.log.len().clamp(1, max_lines))
}

/// The newest log lines that fit, oldest at the top.
pub(super) fn log(area: Rect, buf: &mut Buffer, view: &RunView) {
    let fit = usize::from(area.height.saturating_sub(2));
    let skip = view.log.len().saturating_sub(fit);
    let lines: Vec<Line<'_>> = view.log[skip..]
        .iter()
        .map(|l| {
            let (tag, style) = match l.level {
                LogLevel::Info => ("info ", Style::new().fg(Color::DarkGray)),
                LogLevel::Warn => ("warn ", Style::new().fg(Color::Yellow)),
                LogLevel::Error => ("error", Style::new().fg(Color::Red)),
            };
            Line::from(vec![
                Span::styled(
                    format!("{} ", format::clock(l.elapsed_secs)),
                    Style::new().fg(Color::DarkGray),
                ),
                Span::styled(tag, style),
                Span::raw(" "),
                Span::raw(l.message.as_str()),
            ])
        })
        .collect();
    let lines = if lines.is_empty() {
        vec![Line::styled(
            "nothing to report yet",
            Style::new().fg(Color::DarkGray),
        )]
    } else {
        lines
    };
    Paragraph::new(lines)
        .block(Block::bordered().title(" log "))
        .render(area, buf);
}
