//! Integration tests of punisher-results: journal round trip (exact totals), the interval
//! logs read by the HdrHistogram reader, crash tolerance, the HTML report (text, and in
//! headless Chromium when installed), JUnit, Prometheus exposition, and compare.

mod util;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use punisher_metrics::{SeriesData, Tags, Totals};
use punisher_results::dir::{JUNIT_XML, REPORT_HTML, SUMMARY_JSON, TIMESERIES_JSONL};
use punisher_results::{
    Journal, LiveNumbers, ReportInput, ResultsDir, RunFigures, Timeline, Tolerance, compare,
    prometheus, render_html,
};
use util::{START_MS, WEIRD_NAME, fixture_seconds, run_info, skip, summary_of, totals_of};

fn journal_run(
    dir: &ResultsDir,
    seconds: &[(punisher_metrics::Snapshot, LiveNumbers)],
) -> Timeline {
    let mut journal = dir.journal().unwrap();
    for (snap, live) in seconds {
        journal.append(snap, live).unwrap();
    }
    assert_eq!(journal.seconds(), seconds.len() as u64);
    journal.timeline().clone()
}

fn trend_figures(data: &SeriesData) -> Vec<u64> {
    let SeriesData::Trend { hist, .. } = data else {
        panic!("not a trend: {data:?}")
    };
    let mut v: Vec<u64> = [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]
        .iter()
        .map(|q| hist.value_at_quantile(*q))
        .collect();
    v.extend([hist.len(), hist.min(), hist.max()]);
    v
}

#[test]
fn journal_replay_gives_back_the_exact_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ResultsDir::create(tmp.path(), "run-1").unwrap();
    let seconds = fixture_seconds(20);
    let timeline = journal_run(&dir, &seconds);
    let original = totals_of(&seconds);

    let replayed = Journal::replay(dir.path()).unwrap();
    assert!(replayed.warnings.is_empty(), "{:?}", replayed.warnings);
    assert_eq!(replayed.seconds, 20);
    // Every series, histograms included, bit for bit; and the same elapsed time.
    assert_eq!(replayed.totals.as_snapshot(), original.as_snapshot());
    assert_eq!(replayed.totals.elapsed(), original.elapsed());
    for metric in [
        "http_req_duration",
        "http_req_waiting",
        "queue_depth",
        "mixed",
    ] {
        for filter in [
            Tags::empty(),
            Tags::new([("name", "vote")]),
            Tags::new([("k", "v w")]),
        ] {
            let a = original
                .aggregate(metric, &filter)
                .map(|d| trend_figures(&d));
            let b = replayed
                .totals
                .aggregate(metric, &filter)
                .map(|d| trend_figures(&d));
            assert_eq!(a, b, "{metric}{filter}");
        }
    }
    // The fractional counter (0.1 + 0.2 per second) survives JSON exactly.
    assert_eq!(
        replayed.totals.aggregate("score", &Tags::empty()),
        original.aggregate("score", &Tags::empty())
    );
    // The timeline read back equals the one built while writing.
    assert_eq!(replayed.timeline, timeline);
    assert_eq!(replayed.timeline.live.len(), 20);
}

#[test]
fn interval_logs_are_standard_and_tagged_per_sub_series() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ResultsDir::create(tmp.path(), "run-hlog").unwrap();
    let seconds = fixture_seconds(5);
    journal_run(&dir, &seconds);

    let bytes = fs::read(dir.file("http_req_duration.hlog")).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(
        text.starts_with("#[Histogram log format version 1.3]\n"),
        "{text}"
    );
    assert!(text.contains("\"StartTimestamp\",\"Interval_Length\""));

    let mut deserializer = Deserializer::new();
    let mut base = None;
    let mut untagged = Vec::new();
    let mut tagged: BTreeMap<String, u64> = BTreeMap::new();
    for entry in IntervalLogIterator::new(&bytes) {
        match entry.unwrap() {
            LogEntry::BaseTime(t) => base = Some(t),
            LogEntry::StartTime(t) => assert_eq!(t.as_millis() as u64, START_MS),
            LogEntry::Interval(i) => {
                use base64::Engine as _;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(i.encoded_histogram())
                    .unwrap();
                let h: hdrhistogram::Histogram<u64> =
                    deserializer.deserialize(&mut &raw[..]).unwrap();
                assert_eq!(i.duration().as_millis(), 1000);
                match i.tag() {
                    None => untagged.push((i.start_timestamp().as_millis() as u64, h.len())),
                    Some(tag) => *tagged.entry(tag.as_str().to_owned()).or_default() += h.len(),
                }
            }
        }
    }
    assert_eq!(base.map(|b| b.as_millis() as u64), Some(START_MS));
    // One untagged line per second, the whole metric.
    let per_second: Vec<(u64, u64)> = seconds
        .iter()
        .enumerate()
        .map(|(i, (s, _))| {
            let mut t = Totals::new();
            t.add(s).unwrap();
            let n = match t.aggregate("http_req_duration", &Tags::empty()) {
                Some(SeriesData::Trend { hist, .. }) => hist.len(),
                _ => 0,
            };
            (i as u64 * 1000, n)
        })
        .collect();
    assert_eq!(untagged, per_second);
    // Tagged lines: one tag per sub-series, `k:v` joined by `;`, readable as is.
    assert!(
        tagged.contains_key("method:POST;name:vote;scenario:default;status:200"),
        "{tagged:?}"
    );
    assert!(
        tagged
            .contains_key("method:POST;name:<poll>%2C%20&%20\"more\";scenario:default;status:503"),
        "{tagged:?}"
    );
    let total_tagged: u64 = tagged.values().sum();
    assert_eq!(total_tagged, per_second.iter().map(|p| p.1).sum::<u64>());

    // A metric whose only series has no tags has untagged lines only.
    let plain = fs::read(dir.file("queue_depth.hlog")).unwrap();
    let intervals: Vec<_> = IntervalLogIterator::new(&plain)
        .filter_map(|e| match e.unwrap() {
            LogEntry::Interval(i) => Some(i.tag().is_none()),
            _ => None,
        })
        .collect();
    assert_eq!(intervals, vec![true; 5]);
}

#[test]
fn replay_after_a_crash_loses_at_most_the_second_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ResultsDir::create(tmp.path(), "run-crash").unwrap();
    let seconds = fixture_seconds(8);
    journal_run(&dir, &seconds);
    // The crash: the last second's logs were written but only half of its first JSON line.
    let jsonl = dir.file(TIMESERIES_JSONL);
    let text = fs::read_to_string(&jsonl).unwrap();
    let last_ts = START_MS + 7 * 1000;
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(&format!("\"ts\":{last_ts},")))
        .collect();
    let first_lost = text
        .lines()
        .find(|l| l.contains(&format!("\"ts\":{last_ts},")))
        .unwrap();
    let mut cut = keep.join("\n");
    cut.push('\n');
    cut.push_str(&first_lost[..first_lost.len() / 2]);
    fs::write(&jsonl, cut).unwrap();
    // And a log line torn in the middle.
    let hlog = dir.file("iteration_duration.hlog");
    let mut bytes = fs::read(&hlog).unwrap();
    bytes.extend_from_slice(b"8.000,1.000,12.3,HISTFAAAA");
    fs::write(&hlog, bytes).unwrap();

    let replayed = Journal::replay(dir.path()).unwrap();
    let expected = totals_of(&seconds[..7]);
    assert_eq!(replayed.totals.as_snapshot(), expected.as_snapshot());
    assert_eq!(replayed.seconds, 7);
    let warnings = replayed.warnings.join("\n");
    assert!(warnings.contains("unreadable line"), "{warnings}");
    assert!(
        warnings.contains("missing from timeseries.jsonl"),
        "{warnings}"
    );
    assert!(warnings.contains("iteration_duration.hlog"), "{warnings}");
}

#[test]
fn a_journal_restarted_on_the_same_folder_keeps_what_was_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ResultsDir::create(tmp.path(), "run-restart").unwrap();
    let seconds = fixture_seconds(10);
    journal_run(&dir, &seconds[..4]);
    journal_run(&dir, &seconds[4..]);
    let replayed = Journal::replay(dir.path()).unwrap();
    assert!(replayed.warnings.is_empty(), "{:?}", replayed.warnings);
    assert_eq!(
        replayed.totals.as_snapshot(),
        totals_of(&seconds).as_snapshot()
    );
}

#[test]
fn results_dir_refuses_bad_ids_and_reuse() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(ResultsDir::create(tmp.path(), "../x").is_err());
    let dir = ResultsDir::create(tmp.path(), "r1").unwrap();
    let mut info = run_info("r1");
    info.finish(START_MS + 20_000);
    dir.write_run_info(&info).unwrap();
    assert_eq!(dir.read_run_info().unwrap(), info);
    assert_eq!(
        info.entry_sha256,
        punisher_results::sha256_hex(info.scenario.as_bytes())
    );
    assert_eq!(info.ended.as_deref(), Some("2026-01-01T00:00:20.000Z"));
    let e = ResultsDir::create(tmp.path(), "r1").unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(Journal::replay(&tmp.path().join("nope")).is_err());
}

/// Writes a complete run folder as the run loop would at its end; returns the folder.
fn complete_run(base: &Path, run_id: &str, seconds: u64) -> ResultsDir {
    let dir = ResultsDir::create(base, run_id).unwrap();
    let mut info = run_info(run_id);
    dir.write_run_info(&info).unwrap();
    let fixture = fixture_seconds(seconds);
    let timeline = journal_run(&dir, &fixture);
    info.finish(START_MS + seconds * 1000);
    dir.write_run_info(&info).unwrap();
    let summary = summary_of(&totals_of(&fixture));
    dir.write_outputs(Some(&info), &summary, &timeline).unwrap();
    // To look at a complete folder: PUNISHER_KEEP_RESULTS=/tmp/somewhere cargo test ...
    if let Ok(keep) = std::env::var("PUNISHER_KEEP_RESULTS") {
        let to = Path::new(&keep).join(run_id);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

#[test]
fn report_rebuilt_from_the_journal_matches_the_live_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = complete_run(tmp.path(), "run-report", 12);
    let live_summary = dir.read_summary_json().unwrap();
    let live_html = fs::read_to_string(dir.file(REPORT_HTML)).unwrap();

    let replayed = Journal::replay(dir.path()).unwrap();
    let summary = replayed.summary(None);
    assert_eq!(summary.to_json(), live_summary);
    let html = render_html(&ReportInput {
        run_id: "run-report",
        info: replayed.info.as_ref(),
        summary: &summary,
        timeline: &replayed.timeline,
    });
    assert_eq!(html, live_html);
}

#[test]
fn report_html_is_self_contained_and_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = complete_run(tmp.path(), "run-html", 12);
    let html = fs::read_to_string(dir.file(REPORT_HTML)).unwrap();

    // Verdict: `http_req_duration p(95)<1` fails on purpose.
    assert!(html.contains(r#"<div class="verdict fail" id="verdict">FAIL</div>"#));
    for t in [
        "http_req_duration{name:vote}</code></td><td><code>p(99)&lt;500",
        "http_req_duration</code></td><td><code>p(95)&lt;1",
        "http_req_failed</code></td><td><code>rate&lt;0.5",
        "checks</code></td><td><code>rate&gt;0.99",
    ] {
        assert!(html.contains(t), "missing threshold row {t}");
    }
    assert!(html.contains("<span class=\"badge pass\">PASS</span>"));
    assert!(html.contains("<span class=\"badge fail\">FAIL</span>"));
    // Per-request rows, the weird name escaped and never raw.
    for name in ["login", "vote", "&lt;poll&gt;, &amp; &quot;more&quot;"] {
        assert!(
            html.contains(&format!("<tr class=\"fail\"><td><code>{name}</code></td>")),
            "{name}"
        );
    }
    assert!(!html.contains(WEIRD_NAME));
    assert!(!html.contains("<script"), "options must be escaped");
    assert!(html.contains("&lt;/pre&gt;&lt;script&gt;"));
    // Hash, agents, parameters.
    let info = run_info("x");
    assert!(html.contains(&info.entry_sha256));
    assert!(html.contains(&info.bundle_sha256));
    assert!(html.contains("agent-us-1") && html.contains("eu-west-1") && html.contains("-1.2 ms"));
    assert!(html.contains("punisher run scenarios/&lt;tv&gt;.js --users 50"));
    // Charts: every series the fixture has, as inline SVG.
    for title in [
        "Users",
        "Throughput",
        "HTTP request duration",
        "Errors",
        "Open connections",
        "Socket.IO event fan-out latency",
        "WebSocket / Socket.IO messages",
        "iteration_duration",
    ] {
        assert!(
            html.contains(&format!("class=\"ct\">{title}</text>")),
            "chart {title}"
        );
    }
    // Nothing to fetch: no scripts, stylesheets, images or fonts by URL.
    for bad in ["<script", "<link", "<img", "@import", "url(", "src="] {
        assert!(!html.contains(bad), "{bad}");
    }
    let urls: Vec<&str> = html
        .match_indices("http")
        .map(|(i, _)| &html[i..html.len().min(i + 30)])
        .collect();
    assert!(
        urls.iter()
            .all(|u| u.starts_with("http://www.w3.org/2000/svg") || u.starts_with("http_")),
        "{urls:?}"
    );

    // JUnit next to it: one case per threshold.
    let junit = fs::read_to_string(dir.file(JUNIT_XML)).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 5);
    assert_eq!(junit.matches("<failure ").count(), 2);
    assert!(
        junit.contains(r#"name="http_req_duration: p(95)&lt;1""#),
        "{junit}"
    );
    assert!(dir.file(SUMMARY_JSON).exists());
}

#[test]
fn charts_without_data_are_left_out() {
    let seconds = fixture_seconds(4);
    let mut timeline = Timeline::new();
    for (s, _) in &seconds {
        let mut s = s.clone();
        s.series.retain(|k, _| !k.metric.starts_with("socketio_"));
        timeline.push_second(&s, &LiveNumbers::default());
    }
    let summary = summary_of(&totals_of(&seconds));
    let html = render_html(&ReportInput {
        run_id: "r",
        info: None,
        summary: &summary,
        timeline: &timeline,
    });
    assert!(html.contains("class=\"ct\">HTTP request duration</text>"));
    assert!(
        html.contains("class=\"ct\">Users</text>"),
        "falls back on the vus gauge"
    );
    for gone in ["Socket.IO", "Open connections"] {
        assert!(!html.contains(gone), "{gone}");
    }
}

/// Renders the report in headless Chromium (Debian's package, which CI installs), takes a
/// screenshot and reads the page's text back.
#[test]
fn report_renders_in_headless_chromium() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        skip("/usr/bin/chromium is not installed (apt-get install chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = complete_run(tmp.path(), "run-chromium", 30);
    let report = dir.file(REPORT_HTML);
    let profile = tmp.path().join("profile");
    let shot = tmp.path().join("shot.png");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
    ];
    let url = format!("file://{}", report.display());
    let run = |extra: &[String]| {
        let out = std::process::Command::new(chromium)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&[
        format!("--screenshot={}", shot.display()),
        format!(
            "--window-size={}",
            std::env::var("PUNISHER_SCREENSHOT_SIZE").unwrap_or_else(|_| "1280,2000".into())
        ),
    ]);
    let png = fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 30_000,
        "screenshot too small to show anything: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("PUNISHER_KEEP_SCREENSHOT") {
        fs::copy(&shot, keep).unwrap();
    }
    let dom = String::from_utf8(run(&["--dump-dom".into()]).stdout).unwrap();
    assert!(
        dom.contains(r#"id="verdict">FAIL</div>"#),
        "{}",
        &dom[..dom.len().min(2000)]
    );
    assert!(dom.contains("p(99)&lt;500") && dom.contains("rate&gt;0.99"));
    assert!(dom.contains("Requests by name"));
    assert!(dom.contains("<svg"));
}

/// Checks one exposition line against the text format's grammar; returns the sample's
/// (name, labels, value), or None for comments.
type Labels = Vec<(String, String)>;

fn parse_sample(line: &str) -> Option<(String, Labels, f64)> {
    let is_name = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if let Some(rest) = line.strip_prefix("# ") {
        let mut parts = rest.splitn(3, ' ');
        let kw = parts.next().unwrap();
        let name = parts.next().unwrap();
        assert!(is_name(name), "{line}");
        let tail = parts.next().unwrap();
        match kw {
            "TYPE" => assert!(["counter", "gauge", "histogram"].contains(&tail), "{line}"),
            "HELP" => assert!(!tail.contains('\n')),
            _ => panic!("unknown comment {line}"),
        }
        return None;
    }
    let (name_end, mut labels) = (line.find(['{', ' ']).unwrap(), Vec::new());
    let name = &line[..name_end];
    assert!(is_name(name), "{line}");
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices().peekable();
        loop {
            let (start, c) = chars.next().unwrap();
            if c == '}' {
                rest = &r[start + 1..];
                break;
            }
            let eq = r[start..].find('=').unwrap() + start;
            let key = &r[start..eq];
            assert!(is_name(key) && !key.contains(':'), "label {key} in {line}");
            while chars.peek().unwrap().0 <= eq {
                chars.next();
            }
            assert_eq!(chars.next().unwrap().1, '"', "{line}");
            let mut value = String::new();
            loop {
                match chars.next().unwrap().1 {
                    '\\' => match chars.next().unwrap().1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c} in {line}"),
                    },
                    '"' => break,
                    '\n' => panic!("raw newline"),
                    c => value.push(c),
                }
            }
            labels.push((key.to_owned(), value));
            if chars.peek().unwrap().1 == ',' {
                chars.next();
            }
        }
    }
    let value = rest.strip_prefix(' ').unwrap();
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    Some((name.to_owned(), labels, v))
}

#[test]
fn prometheus_exposition_follows_the_text_format() {
    let seconds = fixture_seconds(6);
    let totals = totals_of(&seconds);
    let text = prometheus::render(&totals, Some(&seconds[5].1));
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut current_family = String::new();
    // (family, labels without le) -> [(le, count)], and -> _count
    let mut buckets: BTreeMap<(String, Labels), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, Labels), f64> = BTreeMap::new();
    let mut samples: BTreeMap<String, f64> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {name}"
            );
            current_family = name.to_owned();
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        assert!(
            name.starts_with(&current_family),
            "{name} outside its family {current_family}"
        );
        let kind = &types[&current_family];
        if kind == "histogram" {
            let suffix = &name[current_family.len()..];
            let (le, rest): (Vec<_>, Vec<_>) = labels.into_iter().partition(|(k, _)| k == "le");
            let key = (current_family.clone(), rest);
            match suffix {
                "_bucket" => {
                    let le = match le[0].1.as_str() {
                        "+Inf" => f64::INFINITY,
                        v => v.parse().unwrap(),
                    };
                    buckets.entry(key).or_default().push((le, value));
                }
                "_count" => {
                    counts.insert(key, value);
                }
                "_sum" => assert!(value >= 0.0),
                s => panic!("bad histogram suffix {s}"),
            }
        } else {
            assert_eq!(name, current_family);
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            let label_text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            samples.insert(format!("{name}{{{}}}", label_text.join(",")), value);
        }
    }
    assert!(!buckets.is_empty());
    for (key, bs) in &buckets {
        assert!(
            bs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{key:?} not cumulative: {bs:?}"
        );
        let last = bs.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{key:?}");
        assert_eq!(Some(&last.1), counts.get(key), "{key:?} +Inf != count");
    }
    assert_eq!(types["punisher_http_req_duration_seconds"], "histogram");
    assert_eq!(types["punisher_http_reqs_total"], "counter");
    assert_eq!(types["punisher_data_sent_bytes_total"], "counter");
    assert_eq!(types["punisher_http_req_failed_true_total"], "counter");
    assert_eq!(types["punisher_vus"], "gauge");
    assert_eq!(samples["punisher_vus{}"], 50.0);
    assert_eq!(samples["punisher_open_connections{}"], 100.0);
    // Seconds, not milliseconds: iteration_duration is 1.0-1.5 s, all under 2.5 s and over 1 s.
    let it = &buckets[&(
        "punisher_iteration_duration_seconds".to_owned(),
        vec![("scenario".to_owned(), "default".to_owned())],
    )];
    let at = |le: f64| it.iter().find(|b| b.0 == le).unwrap().1;
    assert_eq!(at(0.5), 0.0);
    assert_eq!(at(2.5), 6.0);
    // Label values with quotes, commas and markup are escaped, and read back the same.
    let weird_total: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("punisher_http_reqs_total{") && k.contains(WEIRD_NAME))
        .map(|(_, v)| v)
        .sum();
    let expected = match totals.aggregate("http_reqs", &Tags::new([("name", WEIRD_NAME)])) {
        Some(SeriesData::Counter { sum }) => sum,
        other => panic!("{other:?}"),
    };
    assert_eq!(weird_total, expected);
}

#[test]
fn compare_two_runs_from_their_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let a = complete_run(tmp.path(), "run-a", 6);
    let b = complete_run(tmp.path(), "run-b", 6);
    let fa = RunFigures::from_summary_json("run-a", &a.read_summary_json().unwrap()).unwrap();
    let fb = RunFigures::from_summary_json("run-b", &b.read_summary_json().unwrap()).unwrap();
    let same = compare(&fa, &fb, &Tolerance::percent(5.0));
    assert!(!same.regressed, "{}", same.render_text());
    assert!(
        same.rows
            .iter()
            .any(|r| r.name == "http_req_duration{name:vote}" && r.stat == "p99")
    );

    // B with every latency doubled regresses.
    let mut slow = fb.clone();
    for f in slow.entries.values_mut() {
        if f.kind == "trend" && f.contains == "time" {
            for v in f.values.values_mut() {
                *v *= 2.0;
            }
        }
    }
    let c = compare(&fa, &slow, &Tolerance::percent(5.0));
    assert!(c.regressed);
    let text = c.render_text();
    assert!(
        text.contains("http_req_duration{name:vote}") && text.contains("+100.0%"),
        "{text}"
    );
}

/// Timing, by hand: `cargo test --release -p punisher-results --test integration
/// journal_timing -- --ignored --nocapture`. 540 trend series, 50,000 samples a second.
#[test]
#[ignore = "timing, run by hand"]
fn journal_timing() {
    use punisher_metrics::{MetricKind, Recorder, ValueType};
    let tmp = tempfile::tempdir().unwrap();
    let dir = ResultsDir::create(tmp.path(), "perf").unwrap();
    let mut journal = dir.journal().unwrap();
    let mut r = Recorder::new();
    let mut rng = util::Lcg(1);
    let mut ids = Vec::new();
    for n in 0..30 {
        for st in ["200", "404", "503"] {
            let tags = Tags::new([("name", format!("req{n}")), ("status", st.to_owned())]);
            for m in [
                "http_req_duration",
                "http_req_waiting",
                "http_req_sending",
                "http_req_receiving",
                "http_req_blocked",
                "http_req_connecting",
            ] {
                ids.push(
                    r.series(MetricKind::Trend, ValueType::Time, m, &tags)
                        .unwrap(),
                );
            }
        }
    }
    let mut total = std::time::Duration::ZERO;
    for s in 0..20u64 {
        for _ in 0..50_000 {
            let id = ids[rng.below(ids.len() as u64) as usize];
            r.add_trend(id, rng.latency_ms());
        }
        let snap = r.take_snapshot(s * 1000, s * 1000 + 1000);
        let t = std::time::Instant::now();
        journal.append(&snap, &LiveNumbers::default()).unwrap();
        total += t.elapsed();
    }
    eprintln!("series {} append avg {:?}", ids.len(), total / 20);
    let t = std::time::Instant::now();
    let rep = Journal::replay(dir.path()).unwrap();
    eprintln!(
        "replay {:?} {} bytes jsonl",
        t.elapsed(),
        fs::metadata(dir.file(TIMESERIES_JSONL)).unwrap().len()
    );
    assert_eq!(rep.seconds, 20);
}
