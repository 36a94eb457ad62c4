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

#[cfg(test)]
mod tests {
    use punisher_core::view::ThresholdView;

    use super::super::testing::{empty_view, rows, style_of};
    use super::*;

    fn threshold(
        selector: &str,
        expression: &str,
        observed: Option<f64>,
        passed: bool,
    ) -> ThresholdView {
        ThresholdView {
            selector: selector.into(),
            expression: expression.into(),
            observed,
            passed,
        }
    }

    fn draw(list: Vec<ThresholdView>, width: u16, height: u16) -> Buffer {
        let view = RunView {
            thresholds: list,
            ..empty_view()
        };
        let mut buf = Buffer::empty(Rect::new(0, 0, width, height));
        thresholds(buf.area, &mut buf, &view);
        buf
    }

    /// `check(thresholds, expected rows)`: the panel, 60 wide, as text without its frame.
    #[track_caller]
    fn check(list: Vec<ThresholdView>, title: &str, lines: &[&str]) -> Buffer {
        let buf = draw(list, 60, lines.len() as u16 + 2);
        let all = rows(&buf);
        assert!(
            all[0].starts_with(&format!("┌{title}─")),
            "title {title:?}:\n{}",
            all.join("\n")
        );
        let inside: Vec<String> = all[1..all.len() - 1]
            .iter()
            .map(|r| r.trim_matches('│').trim_end().to_owned())
            .collect();
        assert_eq!(inside, lines, "\n{}", all.join("\n"));
        buf
    }

    #[test]
    fn thresholds_panel_shows_failing_first_with_their_values() {
        let buf = check(
            vec![
                threshold("http_req_failed", "rate<0.01", Some(0.0012), true),
                threshold(
                    "http_req_duration{name:vote}",
                    "p(99)<500",
                    Some(612.3),
                    false,
                ),
                threshold("http_req_duration", "p(95)<300", Some(181.0), true),
                threshold("checks", "rate>0.99", None, false),
            ],
            " thresholds: 2 of 4 failing ",
            &[
                "✗ p(99)<500  612  http_req_duration{name:vote}",
                "✗ rate>0.99  no data  checks",
                "✓ rate<0.01  0.0012  http_req_failed",
                "✓ p(95)<300  181  http_req_duration",
            ],
        );
        let title = style_of(&buf, "thresholds: 2 of 4 failing");
        assert_eq!(title.fg, Some(Color::Red));
        assert!(title.add_modifier.contains(Modifier::BOLD));
        // A failing value stands out; a passing one does not.
        let failing = style_of(&buf, "612");
        assert_eq!(failing.fg, Some(Color::Red));
        assert!(failing.add_modifier.contains(Modifier::BOLD));
        let passing = style_of(&buf, "181");
        assert_ne!(passing.fg, Some(Color::Red));
        assert!(!passing.add_modifier.contains(Modifier::BOLD));
        assert_eq!(style_of(&buf, "✓ rate<0.01").fg, Some(Color::Green));
        assert_eq!(style_of(&buf, "http_req_failed").fg, Some(Color::DarkGray));
    }

    #[test]
    fn thresholds_panel_says_all_pass_or_that_there_are_none() {
        let buf = check(
            vec![threshold("http_req_failed", "rate<0.01", Some(0.0), true)],
            " thresholds: all pass ",
            &["✓ rate<0.01  0.0  http_req_failed"],
        );
        assert_eq!(
            style_of(&buf, "thresholds: all pass").fg,
            Some(Color::Green)
        );
        check(vec![], " thresholds ", &["no thresholds in this scenario"]);
    }

    #[test]
    fn a_short_thresholds_panel_keeps_the_failing_ones() {
        let mut list: Vec<ThresholdView> = (0..6)
            .map(|i| threshold(&format!("m{i}"), "count>0", Some(3.0), true))
            .collect();
        list.push(threshold(
            "http_req_duration",
            "p(95)<300",
            Some(450.0),
            false,
        ));
        check(
            list,
            " thresholds: 1 of 7 failing ",
            &["✗ p(95)<300  450  http_req_duration", "✓ count>0  3.0  m0"],
        );
    }
}
