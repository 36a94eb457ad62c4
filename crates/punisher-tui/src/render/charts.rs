//! Charts over time: a 2x2 grid of line charts in the full layout (req/s; p50/p95/p99 latency;
//! active users and open connections; Socket.IO events/s), a row of sparklines in the medium
//! one. Titles carry the latest values in the series' colours and so serve as the legend.

use punisher_core::view::{Point, RunView};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Sparkline, Widget};

use crate::format;

/// Rows of the sparkline row: one border above and below, two of bars.
pub(super) const SPARKLINE_HEIGHT: u16 = 4;

/// A named series with its colour.
struct Series<'a> {
    name: &'a str,
    points: &'a [Point],
    color: Color,
}

impl Series<'_> {
    fn latest(&self) -> Option<f64> {
        self.points.last().map(|p| p.1)
    }
}

pub(super) fn grid(area: Rect, buf: &mut Buffer, view: &RunView) {
    let c = &view.charts;
    let [top, bottom] = Layout::vertical([Constraint::Fill(1); 2]).areas(area);
    let [a, b] = Layout::horizontal([Constraint::Fill(1); 2]).areas(top);
    let [d, e] = Layout::horizontal([Constraint::Fill(1); 2]).areas(bottom);
    chart(
        a,
        buf,
        "",
        "",
        &[series("req/s", &c.requests_per_sec, Color::Cyan)],
    );
    chart(
        b,
        buf,
        "latency",
        " ms",
        &[
            series("p50", &c.p50_ms, Color::Green),
            series("p95", &c.p95_ms, Color::Yellow),
            series("p99", &c.p99_ms, Color::Red),
        ],
    );
    chart(
        d,
        buf,
        "",
        "",
        &[
            series("users", &c.active_users, Color::Blue),
            series("connections", &c.open_connections, Color::Magenta),
        ],
    );
    chart(
        e,
        buf,
        "socket.io",
        "",
        &[series("events/s", &c.socketio_events_per_sec, Color::Green)],
    );
}

fn series<'a>(name: &'a str, points: &'a [Point], color: Color) -> Series<'a> {
    Series {
        name,
        points,
        color,
    }
}

/// The title: `label` then each series' name and latest value in its colour, then `unit`.
fn title(label: &str, unit: &str, all: &[Series<'_>]) -> Line<'static> {
    let mut spans = vec![Span::raw(" ")];
    if !label.is_empty() {
        spans.push(Span::raw(format!("{label} ")));
    }
    for s in all {
        let value = s.latest().map_or_else(|| "-".to_owned(), format::num);
        spans.push(Span::styled(
            format!("{} {value} ", s.name),
            Style::new().fg(s.color),
        ));
    }
    if !unit.is_empty() {
        spans.push(Span::raw(format!("{} ", unit.trim())));
    }
    Line::from(spans)
}

fn chart(area: Rect, buf: &mut Buffer, label: &str, unit: &str, all: &[Series<'_>]) {
    let finite = |p: &&Point| p.0.is_finite() && p.1.is_finite();
    let xs = all
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).map(|p| p.0));
    let (x_min, x_max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    let (x_min, x_max) = if x_min.is_finite() && x_max > x_min {
        (x_min, x_max)
    } else if x_min.is_finite() {
        (x_min, x_min + 1.0)
    } else {
        (0.0, 1.0)
    };
    let y_max = all
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).map(|p| p.1))
        .fold(0.0_f64, f64::max);
    // Head room above the highest point so the line does not run along the border.
    let y_top = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let datasets = all
        .iter()
        .map(|s| {
            Dataset::default()
                .name(s.name.to_owned())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(s.color))
                .data(s.points)
        })
        .collect();
    let grey = Style::new().fg(Color::DarkGray);
    Chart::new(datasets)
        .block(Block::bordered().title(title(label, unit, all)))
        .legend_position(None)
        .x_axis(
            Axis::default()
                .bounds([x_min, x_max])
                .style(grey)
                .labels([format::clock(x_min), format::clock(x_max)]),
        )
        .y_axis(
            Axis::default()
                .bounds([0.0, y_top])
                .style(grey)
                .labels(["0".to_owned(), format::compact(y_max)]),
        )
        .render(area, buf);
}

pub(super) fn sparklines(area: Rect, buf: &mut Buffer, view: &RunView) {
    let c = &view.charts;
    let cells = Layout::horizontal([Constraint::Fill(1); 4]).split(area);
    let all = [
        series("req/s", &c.requests_per_sec, Color::Cyan),
        series("p99 ms", &c.p99_ms, Color::Red),
        series("users", &c.active_users, Color::Blue),
        series("sio ev/s", &c.socketio_events_per_sec, Color::Green),
    ];
    for (s, cell) in all.iter().zip(cells.iter()) {
        sparkline(*cell, buf, s);
    }
}

fn sparkline(area: Rect, buf: &mut Buffer, s: &Series<'_>) {
    let block = Block::bordered().title(title("", "", std::slice::from_ref(s)));
    let fit = usize::from(block.inner(area).width);
    let skip = s.points.len().saturating_sub(fit);
    // Sparklines take whole numbers; the cast saturates and maps NaN to 0.
    let data: Vec<u64> = s.points[skip..]
        .iter()
        .map(|p| p.1.max(0.0).round() as u64)
        .collect();
    Sparkline::default()
        .block(block)
        .style(Style::new().fg(s.color))
        .data(data)
        .render(area, buf);
}
