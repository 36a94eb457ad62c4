//! Hand-written SVG line charts for the HTML report: axes with rounded ticks, one polyline
//! per series, a legend. No script, no external resource: the report must render offline.

use std::fmt::Write as _;

use crate::escape::xml;
use crate::format::{clock, num};

/// How the y values are labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum YUnit {
    Millis,
    Count,
    PerSecond,
}

pub(crate) struct Line {
    pub(crate) label: String,
    pub(crate) color: &'static str,
    pub(crate) dashed: bool,
    /// (seconds since the run's start, value)
    pub(crate) points: Vec<(f64, f64)>,
}

pub(crate) struct Chart {
    pub(crate) title: String,
    pub(crate) unit: YUnit,
    pub(crate) lines: Vec<Line>,
    /// Spans shaded behind the lines: the windows in which an agent was gone.
    pub(crate) shaded: Vec<Span>,
}

/// A span of the x axis (seconds since the run's start) shaded behind a chart's lines,
/// with the text shown when hovering it.
pub(crate) struct Span {
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) label: String,
}

/// Agent-loss windows are rarely wider than a few seconds: they stay this wide at least,
/// so that one second in a 30-minute run can still be seen.
const MIN_SPAN_PX: f64 = 3.0;

/// Series colours, distinguishable and readable on white.
pub(crate) const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f",
];

const W: f64 = 600.0;
const H: f64 = 250.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 588.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 214.0;
/// More points than this are reduced to the maximum of each bucket, so that spikes stay
/// visible and the file stays small (a 30-minute run has 1,800 seconds).
const MAX_POINTS: usize = 600;

/// A round step near `raw` (1, 2, 2.5 or 5 times a power of ten).
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A step in seconds that reads well on a clock.
fn time_step(span: f64) -> f64 {
    const STEPS: [f64; 14] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
    ];
    let raw = span / 6.0;
    STEPS
        .iter()
        .copied()
        .find(|s| *s >= raw)
        .unwrap_or(14_400.0)
}

fn downsample(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    points
        .chunks(points.len().div_ceil(MAX_POINTS))
        .map(|c| {
            let x = c[c.len() / 2].0;
            let y = c.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            (x, y)
        })
        .collect()
}

/// `12.50` -> `12.5`, `3.00` -> `3`.
fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Short time labels for an axis: `0`, `250µs`, `12.5ms`, `1.5s`, `2m`.
fn axis_time(ms: f64) -> String {
    if ms == 0.0 {
        "0".to_owned()
    } else if ms < 1.0 {
        format!("{}µs", trim(format!("{:.1}", ms * 1000.0)))
    } else if ms < 1000.0 {
        format!("{}ms", trim(format!("{ms:.2}")))
    } else if ms < 120_000.0 {
        format!("{}s", trim(format!("{:.2}", ms / 1000.0)))
    } else {
        format!("{}m", trim(format!("{:.1}", ms / 60_000.0)))
    }
}

fn y_label(unit: YUnit, v: f64) -> String {
    match unit {
        YUnit::Millis => axis_time(v),
        YUnit::Count => num(v),
        YUnit::PerSecond => format!("{}/s", num(v)),
    }
}

/// The chart as an `<svg>` element; `None` when it has no point to draw.
pub(crate) fn svg(chart: &Chart) -> Option<String> {
    let lines: Vec<(&Line, Vec<(f64, f64)>)> = chart
        .lines
        .iter()
        .map(|l| {
            let pts: Vec<(f64, f64)> = l
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            (l, downsample(&pts))
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let x_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.0))
        .chain(chart.shaded.iter().map(|span| span.to))
        .filter(|x| x.is_finite())
        .fold(0.0, f64::max)
        .max(1.0);
    let y_top = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let y_step = nice_step(if y_top > 0.0 { y_top / 4.0 } else { 0.25 });
    let y_max = (y_top / y_step).ceil().max(1.0) * y_step;
    let sx = |x: f64| LEFT + x / x_max * (RIGHT - LEFT);
    let sy = |y: f64| BOTTOM - y.max(0.0) / y_max * (BOTTOM - TOP);

    let mut s = String::new();
    let title = xml(&chart.title);
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{title}" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(s, r#"<text x="{LEFT}" y="18" class="ct">{title}</text>"#);
    // Legend, right-aligned on the title line.
    let mut lx = RIGHT;
    for (line, _) in lines.iter().rev() {
        let label = xml(&line.label);
        let width = 16.0 + 6.5 * line.label.chars().count() as f64;
        lx -= width + 10.0;
        let dash = if line.dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<line x1="{lx:.1}" y1="14" x2="{:.1}" y2="14" stroke="{}" stroke-width="2.5"{dash}/><text x="{:.1}" y="18" class="lg">{label}</text>"#,
            lx + 12.0,
            line.color,
            lx + 16.0
        );
    }
    // Grid and y ticks.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = sy(y);
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" y1="{py:.1}" x2="{RIGHT}" y2="{py:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="yt">{}</text>"#,
            LEFT - 6.0,
            py + 4.0,
            xml(&y_label(chart.unit, y))
        );
        y += y_step;
    }
    // X ticks.
    let x_step = time_step(x_max);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = write!(
            s,
            r#"<line x1="{px:.1}" y1="{BOTTOM}" x2="{px:.1}" y2="{:.1}" class="axis"/><text x="{px:.1}" y="{:.1}" class="xt">{}</text>"#,
            BOTTOM + 4.0,
            BOTTOM + 17.0,
            clock(x)
        );
        x += x_step;
    }
    let _ = write!(
        s,
        r#"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" class="axis"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}" class="axis"/>"#
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" class="xl">elapsed (m:ss)</text>"#,
        (LEFT + RIGHT) / 2.0,
        H - 4.0
    );
    for span in &chart.shaded {
        let (from, to) = (span.from.clamp(0.0, x_max), span.to.clamp(0.0, x_max));
        if !(from.is_finite() && to.is_finite()) || to < from {
            continue;
        }
        let width = (sx(to) - sx(from)).max(MIN_SPAN_PX);
        let _ = write!(
            s,
            r##"<rect class="lost" x="{:.1}" y="{TOP}" width="{width:.1}" height="{:.1}" fill="#c5221f" fill-opacity="0.18"><title>{}</title></rect>"##,
            sx(from).min(RIGHT - width),
            BOTTOM - TOP,
            xml(&span.label)
        );
    }
    for (line, pts) in &lines {
        let dash = if line.dashed {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        if pts.len() == 1 {
            let (x, y) = pts[0];
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                sx(x),
                sy(y),
                line.color
            );
            continue;
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.8"{dash} points=""#,
            line.color
        );
        for (i, (x, y)) in pts.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{:.1},{:.1}", sx(*x), sy(*y));
        }
        s.push_str(r#""><title>"#);
        s.push_str(&xml(&line.label));
        s.push_str("</title></polyline>");
    }
    s.push_str("</svg>");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_labels_are_short() {
        let cases = [
            (0.0, "0"),
            (0.25, "250µs"),
            (12.5, "12.5ms"),
            (500.0, "500ms"),
            (1500.0, "1.5s"),
            (300_000.0, "5m"),
        ];
        for (ms, expect) in cases {
            assert_eq!(axis_time(ms), expect);
        }
    }

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(12.0), 20.0);
        assert_eq!(nice_step(230.0), 250.0);
        assert_eq!(time_step(50.0), 10.0);
        assert_eq!(time_step(1800.0), 300.0);
    }

    #[test]
    fn empty_chart_is_omitted_and_labels_are_escaped() {
        let mut chart = Chart {
            title: "<users>".into(),
            unit: YUnit::Count,
            lines: vec![Line {
                label: "a&b".into(),
                color: COLORS[0],
                dashed: false,
                points: vec![],
            }],
            shaded: Vec::new(),
        };
        assert!(svg(&chart).is_none());
        chart.lines[0].points = (0..2000).map(|i| (i as f64, (i % 7) as f64)).collect();
        let s = svg(&chart).unwrap();
        assert!(s.contains("&lt;users&gt;") && s.contains("a&amp;b"), "{s}");
        assert!(!s.contains("<users>"));
        let polyline = s
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(polyline.split(' ').count() <= MAX_POINTS, "downsampled");
    }

    #[test]
    fn loss_windows_are_shaded_at_their_time_and_never_vanish() {
        let chart = Chart {
            title: "users".into(),
            unit: YUnit::Count,
            lines: vec![Line {
                label: "active".into(),
                color: COLORS[0],
                dashed: false,
                points: (0..=100).map(|i| (f64::from(i), 10.0)).collect(),
            }],
            shaded: vec![
                Span {
                    from: 50.0,
                    to: 75.0,
                    label: "agent <a> left".into(),
                },
                // Handled in the same millisecond it was noticed: still a visible band.
                Span {
                    from: 20.0,
                    to: 20.0,
                    label: "agent b lost".into(),
                },
            ],
        };
        let s = svg(&chart).unwrap();
        let rects: Vec<&str> = s.split("<rect class=\"lost\" ").skip(1).collect();
        assert_eq!(rects.len(), 2, "{s}");
        let attr = |r: &str, name: &str| -> f64 {
            let start = r.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            r[start..].split('"').next().unwrap().parse().unwrap()
        };
        // x = LEFT + t / 100 * (RIGHT - LEFT)
        let px = |t: f64| LEFT + t / 100.0 * (RIGHT - LEFT);
        assert!((attr(rects[0], "x") - px(50.0)).abs() < 0.1, "{}", rects[0]);
        assert!((attr(rects[0], "width") - (px(75.0) - px(50.0))).abs() < 0.1);
        assert!((attr(rects[1], "x") - px(20.0)).abs() < 0.1);
        assert_eq!(attr(rects[1], "width"), MIN_SPAN_PX);
        assert!(rects[0].contains("<title>agent &lt;a&gt; left</title>"));
        // Shaded behind the data: the rectangles come before the line.
        assert!(s.find("<rect").unwrap() < s.find("<polyline").unwrap());
    }
}
