//! `report.html`: the sign-off document. One self-contained file (inline CSS and SVG, no
//! script, no font or image to fetch), readable offline years later: verdict, sign-off sheet
//! (each threshold with its observed value), exact parameters, charts over time, a table per
//! request name, checks, all metrics, and the agents (with the windows in which one was gone
//! shaded on the charts).

use std::fmt::Write as _;

use punisher_metrics::summary::{fmt_data, fmt_time};
use punisher_metrics::{MetricSummary, Summary};

use crate::chart::{COLORS, Chart, Line, Span, YUnit, svg};
use crate::dir::{AgentLossWindow, RunInfo, rfc3339};
use crate::escape::xml;
use crate::format::{num, observed};
use crate::timeline::{Timeline, Values};

/// What a report is made of.
pub struct ReportInput<'a> {
    pub run_id: &'a str,
    /// `run.json`; without it the report has no scenario, parameters or agents.
    pub info: Option<&'a RunInfo>,
    pub summary: &'a Summary,
    pub timeline: &'a Timeline,
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1d2330;background:#f4f5f7;font-size:14px}
header{background:#1d2330;color:#fff;padding:20px 32px;display:flex;align-items:center;gap:32px;flex-wrap:wrap}
header h1{margin:0;font-size:22px;font-weight:600}
header .sub{color:#b8c0cc;margin-top:4px;word-break:break-all}
.verdict{font-size:56px;font-weight:800;letter-spacing:2px;padding:4px 28px;border-radius:8px;line-height:1.1}
.verdict.pass{background:#1e8e3e}.verdict.fail{background:#c5221f}
main{padding:16px 32px 40px}
section{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 2px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 12px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#f0f2f5;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.fail td{background:#fce8e6}
.badge{display:inline-block;font-weight:700;padding:1px 8px;border-radius:4px;color:#fff}
.badge.pass{background:#1e8e3e}.badge.fail{background:#c5221f}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow:auto;max-height:480px;white-space:pre-wrap;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#5f6b7a}dd{margin:0;word-break:break-all}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{background:#fff;border:1px solid #e3e6ea;border-radius:6px;flex:1 1 480px;max-width:720px;min-width:0;height:auto}
.chart .ct{font-size:13px;font-weight:600;fill:#1d2330}
.chart .lg{font-size:11px;fill:#1d2330}
.chart .yt{font-size:10px;fill:#5f6b7a;text-anchor:end}
.chart .xt{font-size:10px;fill:#5f6b7a;text-anchor:middle}
.chart .xl{font-size:10px;fill:#8a94a3;text-anchor:middle}
.chart .grid{stroke:#eef0f3;stroke-width:1}
.chart .axis{stroke:#9aa3ae;stroke-width:1}
.note{color:#5f6b7a}
footer{color:#8a94a3;padding:0 32px 24px;font-size:12px}
"#;

/// Renders the report. Every piece of text that comes from the run (scenario, names, tags,
/// options) is escaped: a request may well be named `<script>`.
pub fn render_html(input: &ReportInput<'_>) -> String {
    let s = input.summary;
    let passed = s.passed();
    let verdict = if passed { "PASS" } else { "FAIL" };
    let class = if passed { "pass" } else { "fail" };
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{verdict} · punisher run {}</title><style>{CSS}</style></head><body>",
        xml(input.run_id)
    );

    // Header: verdict, run id, scenario and its hash.
    let scenario = input
        .info
        .map(|i| i.scenario_path.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or(&s.meta.scenario);
    let _ = write!(
        h,
        "<header><div class=\"verdict {class}\" id=\"verdict\">{verdict}</div><div>\
         <h1>punisher run {}</h1><div class=\"sub\">scenario {}</div>",
        xml(input.run_id),
        xml(scenario)
    );
    if let Some(info) = input.info {
        let _ = write!(
            h,
            "<div class=\"sub\">bundle sha256 <code>{}</code></div>",
            xml(info.headline_sha256())
        );
    }
    let _ = write!(
        h,
        "<div class=\"sub\">{} thresholds, {} failed · duration {}</div></div></header><main>",
        s.thresholds.len(),
        s.thresholds.iter().filter(|t| !t.ok).count(),
        xml(&fmt_time(s.meta.duration.as_secs_f64() * 1000.0))
    );
    if let Some(why) = &s.meta.interrupted {
        let _ = write!(
            h,
            "<section><strong>Interrupted:</strong> {}</section>",
            xml(why)
        );
    }

    sign_off(&mut h, s);
    parameters(&mut h, input);
    charts(&mut h, input);
    requests(&mut h, s);
    checks(&mut h, s);
    metrics(&mut h, s);
    agents(&mut h, input.info);
    if let Some(info) = input.info {
        let _ = write!(
            h,
            "<section><h2>Scenario source</h2><details><summary>{} ({} bytes)</summary>\
             <pre>{}</pre></details></section>",
            xml(&info.scenario_path),
            info.scenario.len(),
            xml(&info.scenario)
        );
    }
    let _ = writeln!(
        h,
        "</main><footer>Generated by punisher{} · self-contained file, no network needed</footer></body></html>",
        input
            .info
            .map(|i| format!(" {}", xml(&i.punisher_version)))
            .unwrap_or_default()
    );
    h
}

fn sign_off(h: &mut String, s: &Summary) {
    let _ = write!(h, "<section id=\"sign-off\"><h2>Sign-off sheet</h2>");
    if s.thresholds.is_empty() {
        let _ = write!(
            h,
            "<p class=\"note\">No thresholds: the verdict is PASS by default.</p></section>"
        );
        return;
    }
    let _ = write!(
        h,
        "<table><thead><tr><th>Metric</th><th>Threshold</th><th class=\"n\">Observed</th>\
         <th>Result</th></tr></thead><tbody>"
    );
    for t in &s.thresholds {
        let entry = summary_entry(s, &t.metric);
        let is_time = entry.is_some_and(|e| {
            e.kind == punisher_metrics::MetricKind::Trend
                && e.contains == punisher_metrics::ValueType::Time
        });
        let is_rate = entry.is_some_and(|e| e.kind == punisher_metrics::MetricKind::Rate);
        let shown = match (&t.error, t.observed) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(v)) => {
                let mut o = observed(&t.expression, v, is_time, is_rate);
                if t.no_data {
                    o.push_str(" (no data)");
                }
                o
            }
            (None, None) => "no data".to_owned(),
        };
        let (row, badge) = if t.ok {
            ("pass", "PASS")
        } else {
            ("fail", "FAIL")
        };
        let _ = write!(
            h,
            "<tr class=\"{row}\"><td><code>{}</code></td><td><code>{}</code>{}</td>\
             <td class=\"n\">{}</td><td><span class=\"badge {row}\">{badge}</span></td></tr>",
            xml(&t.metric),
            xml(&t.expression),
            if t.abort_on_fail {
                " <span class=\"note\">(abortOnFail)</span>"
            } else {
                ""
            },
            xml(&shown)
        );
    }
    let _ = write!(h, "</tbody></table></section>");
}

fn summary_entry<'a>(s: &'a Summary, selector: &str) -> Option<&'a MetricSummary> {
    let key = selector.replace(' ', "");
    if key.contains('{') {
        s.series.get(&key)
    } else {
        s.metrics.get(&key)
    }
}

fn parameters(h: &mut String, input: &ReportInput<'_>) {
    let s = input.summary;
    let _ = write!(h, "<section id=\"parameters\"><h2>Parameters</h2><dl>");
    let mut row = |k: &str, v: &str| {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", xml(k), xml(v));
    };
    row("run id", input.run_id);
    if let Some(info) = input.info {
        row("scenario", &info.scenario_path);
        row(
            &format!("bundle sha256 ({} files)", info.bundle.len().max(1)),
            info.headline_sha256(),
        );
        row("entry file sha256", &info.entry_sha256);
        row("punisher version", &info.punisher_version);
        row("command line", &info.command_line.join(" "));
        row("started", &info.started);
        row(
            "ended",
            info.ended
                .as_deref()
                .unwrap_or("not recorded (rebuilt from the journal)"),
        );
        if !info.executor.is_empty() {
            row("executor", &info.executor);
        }
    } else {
        row("scenario", &s.meta.scenario);
        if s.meta.started_unix_ms > 0 {
            row("started", &rfc3339(s.meta.started_unix_ms));
        }
        if !s.meta.executor.is_empty() {
            row("executor", &s.meta.executor);
        }
    }
    row(
        "duration",
        &fmt_time(s.meta.duration.as_secs_f64() * 1000.0),
    );
    row("max users", &s.meta.vus_max.to_string());
    let _ = write!(h, "</dl>");
    if let Some(info) = input.info {
        let options = serde_json::to_string_pretty(&info.options).unwrap_or_else(|_| "null".into());
        let _ = write!(
            h,
            "<h3>Options after overrides</h3><pre id=\"options\">{}</pre>",
            xml(&options)
        );
        if info.bundle.len() > 1 {
            let _ = write!(
                h,
                "<h3>Bundle</h3><table id=\"bundle\"><tr><th>file</th><th>kind</th>\
                 <th>bytes</th><th>sha256</th></tr>"
            );
            for f in &info.bundle {
                let _ = write!(
                    h,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                    xml(&f.path),
                    xml(&f.kind),
                    f.bytes,
                    xml(&f.sha256)
                );
            }
            let _ = write!(h, "</table>");
        }
    }
    let _ = write!(h, "</section>");
}

/// Points of one metric's timeline, x in seconds since `t0`.
fn metric_points(
    tl: &Timeline,
    t0: u64,
    metric: &str,
    f: impl Fn(&Values, f64) -> Option<f64>,
) -> Vec<(f64, f64)> {
    tl.metric(metric)
        .map(|m| {
            m.points
                .iter()
                .filter_map(|p| {
                    let secs = p.end.saturating_sub(p.ts) as f64 / 1000.0;
                    let x = p.end.saturating_sub(t0) as f64 / 1000.0;
                    Some((x, f(&p.values, secs)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn line(label: &str, color: usize, points: Vec<(f64, f64)>) -> Line {
    Line {
        label: label.to_owned(),
        color: COLORS[color % COLORS.len()],
        dashed: false,
        points,
    }
}

fn percentile_lines(tl: &Timeline, t0: u64, metric: &str, with_max: bool) -> Vec<Line> {
    let mut lines = vec![
        line("p50", 2, metric_points(tl, t0, metric, |v, _| v.p50)),
        line("p95", 3, metric_points(tl, t0, metric, |v, _| v.p95)),
        line("p99", 1, metric_points(tl, t0, metric, |v, _| v.p99)),
    ];
    if with_max {
        lines.push(line("max", 5, metric_points(tl, t0, metric, |v, _| v.max)));
    }
    lines
}

fn build_charts(tl: &Timeline, t0: u64) -> Vec<Chart> {
    let mut charts = Vec::new();
    let live = |f: &dyn Fn(&crate::live::LiveNumbers) -> Option<u64>| -> Vec<(f64, f64)> {
        let pts: Vec<(f64, f64)> = tl
            .live
            .iter()
            .filter_map(|p| Some((p.end.saturating_sub(t0) as f64 / 1000.0, f(&p.live)? as f64)))
            .collect();
        // A live number that stayed 0 throughout was not reported: leave it out.
        if pts.iter().all(|p| p.1 == 0.0) {
            Vec::new()
        } else {
            pts
        }
    };

    let mut users = vec![line("active", 0, live(&|l| Some(l.users_active)))];
    let mut target = line("target", 5, live(&|l| Some(l.users_target)));
    target.dashed = true;
    users.push(target);
    if users.iter().all(|l| l.points.is_empty()) {
        users = vec![line("vus", 0, metric_points(tl, t0, "vus", |v, _| v.value))];
    }
    charts.push(Chart {
        title: "Users".into(),
        unit: YUnit::Count,
        lines: users,
        shaded: Vec::new(),
    });

    charts.push(Chart {
        title: "Throughput".into(),
        unit: YUnit::PerSecond,
        lines: vec![
            line(
                "requests",
                0,
                metric_points(tl, t0, "http_reqs", |v, _| v.rate),
            ),
            line(
                "iterations",
                2,
                metric_points(tl, t0, "iterations", |v, _| v.rate),
            ),
        ],
        shaded: Vec::new(),
    });
    charts.push(Chart {
        title: "HTTP request duration".into(),
        unit: YUnit::Millis,
        lines: percentile_lines(tl, t0, "http_req_duration", false),
        shaded: Vec::new(),
    });
    let per_sec =
        |n: Option<u64>, secs: f64| n.map(|n| if secs > 0.0 { n as f64 / secs } else { 0.0 });
    charts.push(Chart {
        title: "Errors".into(),
        unit: YUnit::PerSecond,
        lines: vec![
            line(
                "failed requests",
                1,
                metric_points(tl, t0, "http_req_failed", |v, secs| per_sec(v.passes, secs)),
            ),
            line(
                "iteration errors",
                3,
                metric_points(tl, t0, "iteration_errors", |v, _| v.rate),
            ),
            line(
                "dropped iterations",
                4,
                metric_points(tl, t0, "dropped_iterations", |v, _| v.rate),
            ),
        ],
        shaded: Vec::new(),
    });
    charts.push(Chart {
        title: "Open connections".into(),
        unit: YUnit::Count,
        lines: vec![
            line("connections", 0, live(&|l| l.open_connections)),
            line(
                "WebSocket / Socket.IO sessions",
                4,
                live(&|l| l.open_sockets),
            ),
        ],
        shaded: Vec::new(),
    });
    charts.push(Chart {
        title: "Socket.IO event fan-out latency".into(),
        unit: YUnit::Millis,
        lines: percentile_lines(tl, t0, "socketio_event_latency", true),
        shaded: Vec::new(),
    });
    let messages: Vec<Line> = tl
        .metrics
        .iter()
        .filter(|(name, m)| {
            m.kind == punisher_metrics::MetricKind::Counter
                && (name.starts_with("socketio_") || name.starts_with("ws_msgs"))
        })
        .enumerate()
        .map(|(i, (name, _))| line(name, i, metric_points(tl, t0, name, |v, _| v.rate)))
        .collect();
    charts.push(Chart {
        title: "WebSocket / Socket.IO messages".into(),
        unit: YUnit::PerSecond,
        lines: messages,
        shaded: Vec::new(),
    });
    // Other time trends (iteration_duration, the scenario's own), the HTTP phases excepted.
    for (name, m) in tl
        .metrics
        .iter()
        .filter(|(name, m)| {
            m.value_type == Some(punisher_metrics::ValueType::Time)
                && !name.starts_with("http_req_")
                && *name != "socketio_event_latency"
        })
        .take(8)
    {
        let _ = m;
        charts.push(Chart {
            title: name.clone(),
            unit: YUnit::Millis,
            lines: percentile_lines(tl, t0, name, false),
            shaded: Vec::new(),
        });
    }
    charts
}

fn charts(h: &mut String, input: &ReportInput<'_>) {
    let tl = input.timeline;
    let Some(t0) = tl.start_unix_ms().or(input.info.map(|i| i.started_unix_ms)) else {
        return;
    };
    let losses = input.info.map_or(&[][..], |i| &i.agent_losses[..]);
    let mut charts = build_charts(tl, t0);
    for chart in &mut charts {
        chart.shaded = loss_spans(losses, t0);
    }
    let svgs: Vec<String> = charts.iter().filter_map(svg).collect();
    if svgs.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"charts\"><h2>Over time</h2><div class=\"charts\">"
    );
    for s in svgs {
        h.push_str(&s);
    }
    let _ = write!(h, "</div></section>");
}

/// The windows in which an agent was gone, in seconds since `t0`.
fn loss_spans(losses: &[AgentLossWindow], t0: u64) -> Vec<Span> {
    let secs = |ms: u64| ms.saturating_sub(t0) as f64 / 1000.0;
    losses
        .iter()
        .map(|l| Span {
            from: secs(l.from_unix_ms),
            to: secs(l.to_unix_ms.max(l.from_unix_ms)),
            label: format!("agent {} gone ({})", l.agent, l.reason),
        })
        .collect()
}

fn requests(h: &mut String, s: &Summary) {
    if s.request_names.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"requests\"><h2>Requests by name</h2><table><thead><tr><th>Name</th>\
         <th class=\"n\">Count</th><th class=\"n\">req/s</th><th class=\"n\">p50</th>\
         <th class=\"n\">p95</th><th class=\"n\">p99</th><th class=\"n\">max</th>\
         <th class=\"n\">Failures</th></tr></thead><tbody>"
    );
    for name in &s.request_names {
        let get = |metric: &str| s.series.get(&format!("{metric}{{name:{name}}}"));
        let v = |m: Option<&MetricSummary>, k: &str| m.and_then(|m| m.values.get(k)).copied();
        let d = get("http_req_duration");
        let reqs = get("http_reqs");
        let failed = get("http_req_failed");
        let time = |k: &str| v(d, k).map_or("-".to_owned(), fmt_time);
        let failures = match (v(failed, "passes"), v(failed, "rate")) {
            (Some(n), Some(r)) => format!("{} ({:.2}%)", num(n), r * 100.0),
            _ => "-".to_owned(),
        };
        let failing = v(failed, "passes").is_some_and(|n| n > 0.0);
        let _ = write!(
            h,
            "<tr{}><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            if failing { " class=\"fail\"" } else { "" },
            xml(name),
            v(reqs, "count")
                .or(v(d, "count"))
                .map_or("-".to_owned(), num),
            v(reqs, "rate").map_or("-".to_owned(), |r| format!("{r:.2}")),
            xml(&time("med")),
            xml(&time("p(95)")),
            xml(&time("p(99)")),
            xml(&time("max")),
            xml(&failures)
        );
    }
    let _ = write!(h, "</tbody></table></section>");
}

fn checks(h: &mut String, s: &Summary) {
    if s.checks.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"checks\"><h2>Checks</h2><table><thead><tr><th>Group</th><th>Check</th>\
         <th class=\"n\">Passes</th><th class=\"n\">Fails</th><th class=\"n\">Success</th>\
         </tr></thead><tbody>"
    );
    for c in &s.checks {
        let total = c.passes + c.fails;
        let pct = if total > 0 {
            c.passes as f64 * 100.0 / total as f64
        } else {
            0.0
        };
        let _ = write!(
            h,
            "<tr{}><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{pct:.2}%</td></tr>",
            if c.fails > 0 { " class=\"fail\"" } else { "" },
            xml(&c.group),
            xml(&c.name),
            c.passes,
            c.fails
        );
    }
    let _ = write!(h, "</tbody></table></section>");
}

fn metric_text(m: &MetricSummary) -> String {
    use punisher_metrics::{MetricKind, ValueType};
    let get = |k: &str| m.values.get(k).copied().unwrap_or(0.0);
    let show = |v: f64| match m.contains {
        ValueType::Time => fmt_time(v),
        ValueType::Data => fmt_data(v),
        ValueType::Default => num(v),
    };
    match m.kind {
        MetricKind::Trend => {
            let mut out = format!(
                "avg={} min={} med={} max={}",
                show(get("avg")),
                show(get("min")),
                show(get("med")),
                show(get("max"))
            );
            for (k, v) in &m.values {
                if k.starts_with("p(") {
                    let _ = write!(out, " {k}={}", show(*v));
                }
            }
            let _ = write!(out, " count={}", num(get("count")));
            out
        }
        MetricKind::Counter => match m.contains {
            ValueType::Data => format!("{} ({}/s)", fmt_data(get("count")), fmt_data(get("rate"))),
            _ => format!("{} ({}/s)", num(get("count")), num(get("rate"))),
        },
        MetricKind::Rate => format!(
            "{:.2}% ({} of {})",
            get("rate") * 100.0,
            num(get("passes")),
            num(get("passes") + get("fails"))
        ),
        MetricKind::Gauge => format!(
            "{} (min={} max={})",
            show(get("value")),
            show(get("min")),
            show(get("max"))
        ),
    }
}

fn metrics(h: &mut String, s: &Summary) {
    if s.metrics.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<section id=\"metrics\"><h2>All metrics</h2><table><thead><tr><th>Metric</th>\
         <th>Type</th><th>Values</th></tr></thead><tbody>"
    );
    for (name, m) in &s.metrics {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
            xml(name),
            m.kind,
            xml(&metric_text(m))
        );
    }
    let _ = write!(h, "</tbody></table></section>");
}

fn agents(h: &mut String, info: Option<&RunInfo>) {
    let Some(info) = info.filter(|i| !i.agents.is_empty()) else {
        return;
    };
    let _ = write!(
        h,
        "<section id=\"agents\"><h2>Agents</h2><table><thead><tr><th>Agent</th><th>Host</th>\
         <th>Region</th><th class=\"n\">Cores</th><th class=\"n\">Peak users</th>\
         <th class=\"n\">Clock offset</th><th>State</th></tr></thead><tbody>"
    );
    for a in &info.agents {
        let _ = write!(
            h,
            "<tr{}><td><code>{}</code></td><td>{}</td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{:+.1} ms</td><td>{}</td></tr>",
            if a.state == "lost" || a.state == "left" {
                " class=\"fail\""
            } else {
                ""
            },
            xml(&a.id),
            xml(&a.hostname),
            xml(&a.region),
            a.cores,
            a.peak_users,
            a.clock_offset_ms,
            xml(&a.state)
        );
    }
    let _ = write!(h, "</tbody></table>");
    agent_losses(h, info);
    if !info.messages.is_empty() {
        let _ = write!(h, "<h3>Controller messages</h3><ul class=\"messages\">");
        for m in &info.messages {
            let _ = write!(h, "<li>{}</li>", xml(m));
        }
        let _ = write!(h, "</ul>");
    }
    let _ = write!(h, "</section>");
}

/// The agents that left or were lost during the run, with the window shaded on the charts.
fn agent_losses(h: &mut String, info: &RunInfo) {
    if info.agent_losses.is_empty() {
        return;
    }
    let _ = write!(
        h,
        "<h3 id=\"agent-losses\">Agent losses (shaded on the charts)</h3><table><thead><tr>\
         <th>Agent</th><th>Reason</th><th>Window (UTC)</th><th class=\"n\">Interrupted users</th>\
         <th>Policy</th><th class=\"n\">Reassigned users</th><th>To</th></tr></thead><tbody>"
    );
    for l in &info.agent_losses {
        let _ = write!(
            h,
            "<tr class=\"fail\"><td><code>{}</code></td><td>{}</td><td>{} – {}</td>\
             <td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            xml(&l.agent),
            xml(&l.reason),
            xml(&rfc3339(l.from_unix_ms)),
            xml(&rfc3339(l.to_unix_ms)),
            num(l.interrupted_users as f64),
            xml(&l.policy),
            num(l.reassigned_users as f64),
            xml(&l.reassigned_to.join(", "))
        );
    }
    let _ = write!(h, "</tbody></table>");
}
