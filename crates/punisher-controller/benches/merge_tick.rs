//! Controller CPU per merge tick: 1,000 simulated agents x 100 series each.
//!
//! One tick is what the hub does every second: decode and merge every agent's report
//! (`Merger::add_report`, as reports arrive), then close the interval (add it to the run's
//! totals, encode it once), encode the totals for the live view and evaluate thresholds.
//! The hub hands the closed second to the results writer's thread without waiting; what
//! that thread spends on it (`punisher_results::Journal::append`) is timed apart.
//! Plain timing (no harness): prints min / median / max over ticks.
//!
//! Run: `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
//!       cargo bench -p punisher-controller --bench merge_tick`

use std::time::{Duration, Instant};

use punisher_controller::merge::Merger;
use punisher_metrics::{MetricKind, Recorder, Tags, Threshold, ValueType};

const AGENTS: usize = 1_000;
const TICKS: usize = 12;
const NAMES: [&str; 8] = [
    "login", "info", "timeline", "vote", "poll", "results", "profile", "logout",
];
const TRENDS: [&str; 5] = [
    "http_req_duration",
    "http_req_waiting",
    "http_req_connecting",
    "http_req_receiving",
    "http_req_sending",
];

/// One agent's second: 8 request names x (5 trends + 5 counters + 2 rates + status
/// counters...) = 100 series, ~50 requests per name with spread latencies.
fn agent_report(agent: usize, tick: usize) -> Vec<u8> {
    let mut r = Recorder::new();
    let mut seed = ((agent as u64 + 1) * 0x9e37_79b9_7f4a_7c15) ^ tick as u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut series = 0;
    for name in NAMES {
        let tags = Tags::new([("name", name), ("method", "GET"), ("status", "200")]);
        let trends: Vec<_> = TRENDS
            .iter()
            .map(|m| {
                r.series(MetricKind::Trend, ValueType::Time, m, &tags)
                    .unwrap()
            })
            .collect();
        let reqs = r
            .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
            .unwrap();
        let sent = r
            .series(MetricKind::Counter, ValueType::Data, "data_sent", &tags)
            .unwrap();
        let received = r
            .series(MetricKind::Counter, ValueType::Data, "data_received", &tags)
            .unwrap();
        let iterations = r
            .series(MetricKind::Counter, ValueType::Default, "iterations", &tags)
            .unwrap();
        let errors = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "iteration_errors",
                &tags,
            )
            .unwrap();
        let failed = r
            .series(
                MetricKind::Rate,
                ValueType::Default,
                "http_req_failed",
                &tags,
            )
            .unwrap();
        let checks = r
            .series(MetricKind::Rate, ValueType::Default, "checks", &tags)
            .unwrap();
        series += 12;
        for _ in 0..50 {
            let base = (rand() % 400) as f64 + 1.0;
            for (i, t) in trends.iter().enumerate() {
                r.add_trend(
                    *t,
                    base / (i as f64 + 1.0) + (rand() % 1000) as f64 / 1000.0,
                );
            }
            r.add_counter(reqs, 1.0);
            r.add_counter(sent, 200.0);
            r.add_counter(received, 1500.0);
            r.add_counter(iterations, 1.0);
            r.add_counter(errors, 0.0);
            r.add_rate(failed, rand() % 100 == 0);
            r.add_rate(checks, rand() % 50 != 0);
        }
    }
    // Four more series to reach 100 per agent.
    for extra in [
        "ws_sessions",
        "ws_msgs_sent",
        "ws_msgs_received",
        "socketio_events",
    ] {
        let id = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                extra,
                &Tags::empty(),
            )
            .unwrap();
        r.add_counter(id, (rand() % 10) as f64);
        series += 1;
    }
    assert_eq!(series, 100);
    let snapshot = r.take_snapshot(tick as u64 * 1000, tick as u64 * 1000 + 1000);
    snapshot.encode()
}

#[allow(clippy::print_stdout)] // the measurements are the bench's output
fn main() {
    eprintln!("preparing {AGENTS} agent reports x 100 series...");
    let reports: Vec<Vec<u8>> = (0..AGENTS).map(|a| agent_report(a, 1)).collect();
    let bytes: usize = reports.iter().map(Vec::len).sum();
    eprintln!(
        "report size: {:.1} KiB per agent on average ({:.1} MiB per tick)",
        bytes as f64 / AGENTS as f64 / 1024.0,
        bytes as f64 / (1 << 20) as f64
    );
    let thresholds: Vec<Threshold> = [
        ("http_req_duration{name:vote}", "p(99)<500"),
        ("http_req_duration", "p(95)<300"),
        ("http_req_failed", "rate<0.01"),
        ("checks", "rate>0.95"),
    ]
    .iter()
    .map(|(s, e)| Threshold::parse_str(s, e).unwrap())
    .collect();

    let mut merger = Merger::new();
    let journal_dir = tempfile::tempdir().unwrap();
    let mut journal = punisher_results::Journal::create(journal_dir.path()).unwrap();
    let mut journal_times = Vec::new();
    let mut merge_times = Vec::new();
    let mut close_times = Vec::new();
    let mut tick_times = Vec::new();
    let mut cpu_times = Vec::new();
    for tick in 0..TICKS {
        let cpu_start = thread_cpu();
        let start = Instant::now();
        for r in &reports {
            merger.add_report(r).unwrap();
        }
        let merged = start.elapsed();
        let closing = Instant::now();
        let closed = merger
            .close_interval(tick as u64 * 1000, tick as u64 * 1000 + 1000)
            .unwrap();
        let t_close = closing.elapsed();
        let totals = merger.encode_totals();
        let t_totals = closing.elapsed();
        let outcomes: Vec<_> = thresholds
            .iter()
            .map(|t| t.evaluate(merger.totals()))
            .collect();
        let t_thresholds = closing.elapsed();
        let closed_in = closing.elapsed();
        if tick == TICKS - 1 {
            eprintln!(
                "last tick: close+encode {t_close:.2?}, totals encode {:.2?}, thresholds {:.2?}",
                t_totals - t_close,
                t_thresholds - t_totals,
            );
        }
        std::hint::black_box((&totals, &outcomes));
        let cpu_end = thread_cpu();
        let end = start.elapsed();
        let journaling = Instant::now();
        journal
            .append(&closed.snapshot, &punisher_results::LiveNumbers::default())
            .unwrap();
        journal_times.push(journaling.elapsed());
        merge_times.push(merged);
        close_times.push(closed_in);
        tick_times.push(end);
        cpu_times.push(cpu_end.saturating_sub(cpu_start));
    }
    // The first tick warms allocations up; report the rest.
    let stats = |v: &mut Vec<Duration>| {
        let mut v: Vec<Duration> = v.drain(1..).collect();
        v.sort();
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (min, median, max) = stats(&mut merge_times);
    println!(
        "merge {AGENTS} reports:        min {min:>10.2?}  median {median:>10.2?}  max {max:>10.2?}"
    );
    let (min, median, max) = stats(&mut close_times);
    println!(
        "close + totals + view:        min {min:>10.2?}  median {median:>10.2?}  max {max:>10.2?}"
    );
    let (min, median, max) = stats(&mut journal_times);
    println!(
        "journal (writer thread):      min {min:>10.2?}  median {median:>10.2?}  max {max:>10.2?}"
    );
    let (min, median, max) = stats(&mut tick_times);
    println!(
        "whole tick:                   min {min:>10.2?}  median {median:>10.2?}  max {max:>10.2?}"
    );
    let (min, median, max) = stats(&mut cpu_times);
    println!(
        "whole tick, thread CPU time:  min {min:>10.2?}  median {median:>10.2?}  max {max:>10.2?}"
    );
    println!("goal: under 50 ms per tick");
}

/// CPU time of this thread: what the tick costs, whatever else the machine is doing.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}
