//! Pure drawing of an [`App`]: [`render`] picks a layout for the terminal size and each panel
//! draws one part of the [`punisher_core::view::RunView`] into a buffer.
//!
//! Breakpoints, so that a small terminal shows fewer panels rather than garbage:
//! - full (at least [`FULL_WIDTH`] x [`FULL_HEIGHT`]): header, four charts beside thresholds and
//!   barriers, the request and agent tables, the log pane;
//! - medium (at least [`MEDIUM_WIDTH`] x [`MEDIUM_HEIGHT`]): header, thresholds and barriers,
//!   the request and agent tables, then sparklines and the log if rows are left;
//! - small: header with the key numbers, thresholds;
//! - below [`MIN_WIDTH`] x [`MIN_HEIGHT`]: one line asking for a bigger terminal.
//!
//! Every layout ends with the footer (keys and the last feedback) and draws the overlays.

mod charts;
mod header;
mod overlay;
mod panels;
mod tables;

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Widget, Wrap};

use crate::app::App;

pub const FULL_WIDTH: u16 = 100;
pub const FULL_HEIGHT: u16 = 38;
pub const MEDIUM_WIDTH: u16 = 80;
pub const MEDIUM_HEIGHT: u16 = 24;
pub const MIN_WIDTH: u16 = 20;
pub const MIN_HEIGHT: u16 = 4;

/// Which set of panels fits the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breakpoint {
    TooSmall,
    Small,
    Medium,
    Full,
}

impl Breakpoint {
    pub fn for_area(area: Rect) -> Self {
        if area.width >= FULL_WIDTH && area.height >= FULL_HEIGHT {
            Self::Full
        } else if area.width >= MEDIUM_WIDTH && area.height >= MEDIUM_HEIGHT {
            Self::Medium
        } else if area.width >= MIN_WIDTH && area.height >= MIN_HEIGHT {
            Self::Small
        } else {
            Self::TooSmall
        }
    }
}

/// Draws the whole dashboard for `app` into `frame`.
pub fn render(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    let breakpoint = Breakpoint::for_area(area);
    if breakpoint == Breakpoint::TooSmall {
        Paragraph::new(Line::from("terminal too small").style(Style::new().fg(Color::Yellow)))
            .wrap(Wrap { trim: true })
            .render(area, frame.buffer_mut());
        return;
    }
    let compact = breakpoint == Breakpoint::Small;
    let header_height = header::height(app, area.width, compact);
    let [header_area, body, footer_area] = Layout::vertical([
        Constraint::Length(header_height),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    let buf = frame.buffer_mut();
    header::draw(header_area, buf, app, compact);
    match breakpoint {
        Breakpoint::Full => full(body, buf, app),
        Breakpoint::Medium => medium(body, buf, app),
        Breakpoint::Small | Breakpoint::TooSmall => small(body, buf, app),
    }
    overlay::footer(footer_area, buf, app, breakpoint);
    overlay::draw(frame, app);
}

/// The dashboard for `app` drawn on a `width` x `height` in-memory terminal, as text: one
/// line per row. For tests of callers that map their own views (they need no ratatui).
pub fn render_text(app: &App, width: u16, height: u16) -> String {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .unwrap_or_else(|e| match e {});
    // TestBackend cannot fail to draw.
    let _ = terminal.draw(|frame| render(frame, app));
    let buf = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

fn full(area: Rect, buf: &mut Buffer, app: &App) {
    let view = app.view();
    // At this breakpoint every minimum fits; the charts take what the tables and the log leave.
    let [agents_h, requests_h, log_h, charts_h] = allot(
        area.height,
        [
            (4, tables::height(view.agents.len(), 8)),
            (4, tables::height(view.requests.len(), 8)),
            (3, panels::log_height(view, 6)),
            (14, u16::MAX),
        ],
    );
    let [top, requests, agents, log] = Layout::vertical([
        Constraint::Length(charts_h),
        Constraint::Length(requests_h),
        Constraint::Length(agents_h),
        Constraint::Length(log_h),
    ])
    .areas(area);
    let [charts_area, side] = Layout::horizontal([
        Constraint::Fill(1),
        Constraint::Length(side_width(area.width)),
    ])
    .areas(top);
    charts::grid(charts_area, buf, view);
    thresholds_and_barriers(side, buf, app, true);
    tables::requests(requests, buf, view);
    tables::agents(agents, buf, view);
    panels::log(log, buf, view);
}

fn medium(area: Rect, buf: &mut Buffer, app: &App) {
    let view = app.view();
    let status_want = panels::thresholds_height(view)
        .max(panels::barriers_height(view))
        .min(6);
    // In order of importance: what fails, which agents are lost, per-request numbers; trends
    // and the log only get the rows left over.
    let [status_h, agents_h, requests_h] = allot(
        area.height,
        [
            (3, status_want),
            (4, tables::height(view.agents.len(), 8)),
            (4, tables::height(view.requests.len(), 8)),
        ],
    );
    let left = area.height.saturating_sub(status_h + agents_h + requests_h);
    let [sparks_h, log_h] = allot(
        left,
        [
            (charts::SPARKLINE_HEIGHT, charts::SPARKLINE_HEIGHT),
            (3, u16::MAX),
        ],
    );
    let [status, sparks, requests, agents, log] = Layout::vertical([
        Constraint::Length(status_h),
        Constraint::Length(sparks_h),
        Constraint::Length(requests_h),
        Constraint::Length(agents_h),
        Constraint::Length(log_h),
    ])
    .areas(area);
    thresholds_and_barriers(status, buf, app, false);
    charts::sparklines(sparks, buf, view);
    tables::requests(requests, buf, view);
    tables::agents(agents, buf, view);
    panels::log(log, buf, view);
}

/// Shares `total` rows among panels given as `(min, want)` in order of importance: each gets
/// its minimum while rows remain (a panel that cannot have it gets none and is left out), then
/// the rows left over go to each in turn up to what it wants.
fn allot<const N: usize>(total: u16, panels: [(u16, u16); N]) -> [u16; N] {
    let mut left = total;
    let mut rows = [0; N];
    for (row, &(min, _)) in rows.iter_mut().zip(&panels) {
        if min <= left {
            *row = min;
            left -= min;
        }
    }
    for (row, &(_, want)) in rows.iter_mut().zip(&panels) {
        if *row > 0 {
            let more = want.saturating_sub(*row).min(left);
            *row += more;
            left -= more;
        }
    }
    rows
}

fn small(area: Rect, buf: &mut Buffer, app: &App) {
    panels::thresholds(area, buf, app.view());
}

/// Thresholds above barriers in a column (full layout), or side by side in a row.
fn thresholds_and_barriers(area: Rect, buf: &mut Buffer, app: &App, column: bool) {
    let view = app.view();
    if view.barriers.is_empty() {
        panels::thresholds(area, buf, view);
        return;
    }
    let [a, b] = if column {
        Layout::vertical([
            Constraint::Fill(1),
            Constraint::Length(panels::barriers_height(view).min(area.height / 2)),
        ])
        .areas(area)
    } else {
        Layout::horizontal([Constraint::Fill(3), Constraint::Fill(2)]).areas(area)
    };
    panels::thresholds(a, buf, view);
    panels::barriers(b, buf, view);
}

/// The side column: wide enough for a threshold line, never more than a third of the screen.
fn side_width(total: u16) -> u16 {
    (total / 3).clamp(36, 56)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allot_gives_minimums_by_importance_then_the_rest() {
        assert_eq!(allot(19, [(3, 6), (4, 6), (4, 7), (4, 4)]), [6, 5, 4, 4]);
        // A panel whose minimum does not fit is left out.
        assert_eq!(allot(10, [(3, 6), (4, 6), (4, 7), (4, 4)]), [6, 4, 0, 0]);
        // The last panel takes what the others do not want.
        assert_eq!(
            allot(40, [(4, 6), (4, 7), (3, 6), (10, u16::MAX)]),
            [6, 7, 6, 21]
        );
    }
}

/// What the widget tests share: an empty view to fill, and a buffer read back as text.
#[cfg(test)]
pub(super) mod testing {
    use punisher_core::view::{Charts, RunState, RunView};
    use ratatui::buffer::Buffer;
    use ratatui::layout::Position;
    use ratatui::style::Style;

    pub(crate) fn empty_view() -> RunView {
        RunView {
            run_id: "r".into(),
            scenario: "s.js".into(),
            state: RunState::Running,
            elapsed_secs: 0.0,
            planned_secs: 0.0,
            users_active: 0,
            users_target: 0,
            users_arrived: 0,
            requests_per_sec: 0.0,
            error_rate: 0.0,
            thresholds: vec![],
            charts: Charts::default(),
            requests: vec![],
            agents: vec![],
            barriers: vec![],
            log: vec![],
        }
    }

    /// The buffer's rows as text, trailing blanks kept (borders show where a row ends).
    pub(crate) fn rows(buf: &Buffer) -> Vec<String> {
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect()
    }

    /// The style of the first cell of `text` on the screen.
    #[track_caller]
    pub(crate) fn style_of(buf: &Buffer, text: &str) -> Style {
        let rows = rows(buf);
        for (y, row) in rows.iter().enumerate() {
            if let Some(byte) = row.find(text) {
                let x = row[..byte].chars().count();
                let pos = Position::new(x as u16, y as u16);
                return buf[pos].style();
            }
        }
        panic!("{text:?} not in\n{}", rows.join("\n"));
    }
}
