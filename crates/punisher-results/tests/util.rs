//! Test fixtures: a deterministic run of a few seconds recorded like the engine records,
//! with awkward names (markup, commas, spaces) on purpose.

#[path = "../../../test-support/skip.rs"]
mod skip;
pub(crate) use skip::skip;

use punisher_metrics::{
    MetricKind, Recorder, Snapshot, Summary, SummaryMeta, Tags, Threshold, Totals, ValueType,
};
use punisher_results::{AgentInfo, LiveNumbers, RunInfo};

/// A small deterministic generator, so that tests need no `rand`.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Mostly 1-50 ms with a long tail.
    pub(crate) fn latency_ms(&mut self) -> f64 {
        let base = 1.0 + self.below(49_000) as f64 / 1000.0;
        if self.below(50) == 0 {
            base * (1 + self.below(40)) as f64
        } else {
            base
        }
    }
}

pub(crate) const START_MS: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
pub(crate) const WEIRD_NAME: &str = "<poll>, & \"more\"";

/// `seconds` merged seconds of a small HTTP + Socket.IO run, with their live numbers.
pub(crate) fn fixture_seconds(seconds: u64) -> Vec<(Snapshot, LiveNumbers)> {
    let mut rng = Lcg(42);
    let mut r = Recorder::new();
    let names = ["login", "vote", WEIRD_NAME];
    let mut http = Vec::new();
    for name in names {
        for status in ["200", "503"] {
            let tags = Tags::new([
                ("name", name),
                ("status", status),
                ("method", "POST"),
                ("scenario", "default"),
            ]);
            let s = |r: &mut Recorder, kind, vt, metric: &str| {
                r.series(kind, vt, metric, &tags).unwrap()
            };
            http.push((
                status == "200",
                s(
                    &mut r,
                    MetricKind::Trend,
                    ValueType::Time,
                    "http_req_duration",
                ),
                s(&mut r, MetricKind::Counter, ValueType::Default, "http_reqs"),
                s(
                    &mut r,
                    MetricKind::Rate,
                    ValueType::Default,
                    "http_req_failed",
                ),
                s(
                    &mut r,
                    MetricKind::Trend,
                    ValueType::Time,
                    "http_req_waiting",
                ),
            ));
        }
    }
    let empty = Tags::empty();
    let base = Tags::new([("scenario", "default")]);
    let check = r
        .series(
            MetricKind::Rate,
            ValueType::Default,
            "checks",
            &Tags::new([("check", "status is 200")]),
        )
        .unwrap();
    let iterations = r
        .series(MetricKind::Counter, ValueType::Default, "iterations", &base)
        .unwrap();
    let iter_dur = r
        .series(
            MetricKind::Trend,
            ValueType::Time,
            "iteration_duration",
            &base,
        )
        .unwrap();
    let vus = r
        .series(MetricKind::Gauge, ValueType::Default, "vus", &empty)
        .unwrap();
    let sent = r
        .series(MetricKind::Counter, ValueType::Data, "data_sent", &empty)
        .unwrap();
    let fraction = r
        .series(MetricKind::Counter, ValueType::Default, "score", &empty)
        .unwrap();
    // A custom trend with no tags at all (its log has untagged lines only), and one with
    // both an untagged and a tagged series.
    let plain = r
        .series(MetricKind::Trend, ValueType::Default, "queue_depth", &empty)
        .unwrap();
    let mixed_a = r
        .series(MetricKind::Trend, ValueType::Time, "mixed", &empty)
        .unwrap();
    let mixed_b = r
        .series(
            MetricKind::Trend,
            ValueType::Time,
            "mixed",
            &Tags::new([("k", "v w")]),
        )
        .unwrap();
    let fanout = r
        .series(
            MetricKind::Trend,
            ValueType::Time,
            "socketio_event_latency",
            &base,
        )
        .unwrap();
    let events = r
        .series(
            MetricKind::Counter,
            ValueType::Default,
            "socketio_events_received",
            &base,
        )
        .unwrap();

    let mut out = Vec::new();
    for s in 0..seconds {
        let users = 10 * (s + 1).min(5);
        for _ in 0..(200 + rng.below(100)) {
            let i = rng.below(http.len() as u64) as usize;
            // Failures only on the 503 series, and only some seconds.
            let (ok, d, reqs, failed, waiting) = http[i];
            if !ok && s % 3 != 0 {
                continue;
            }
            let ms = rng.latency_ms();
            r.add_trend(d, ms);
            r.add_trend(waiting, ms * 0.8);
            r.add_counter(reqs, 1.0);
            r.add_rate(failed, !ok);
            r.add_rate(check, ok);
        }
        r.add_counter(iterations, users as f64);
        r.add_trend(iter_dur, 1000.0 + rng.below(500) as f64);
        r.set_gauge(vus, users as f64);
        r.add_counter(sent, 1234.0 * users as f64);
        r.add_counter(fraction, 0.1);
        r.add_counter(fraction, 0.2);
        r.add_trend(plain, rng.below(1000) as f64);
        if s % 2 == 0 {
            r.add_trend(mixed_a, 5.0);
        }
        r.add_trend(mixed_b, 7.5);
        if s >= seconds / 2 {
            for _ in 0..users {
                r.add_trend(fanout, 20.0 + rng.below(80) as f64);
            }
            r.add_counter(events, users as f64);
        }
        let start = START_MS + s * 1000;
        let snap = r.take_snapshot(start, start + 1000);
        let live = LiveNumbers {
            users_active: users,
            users_target: 50,
            open_connections: Some(users * 2),
            open_sockets: (s >= seconds / 2).then_some(users),
            agents: 2,
        };
        out.push((snap, live));
    }
    out
}

pub(crate) fn totals_of(seconds: &[(Snapshot, LiveNumbers)]) -> Totals {
    let mut totals = Totals::new();
    for (s, _) in seconds {
        totals.add(s).unwrap();
    }
    totals
}

pub(crate) fn thresholds() -> Vec<punisher_core::ThresholdSpec> {
    [
        ("http_req_duration{name:vote}", "p(99)<500"),
        ("http_req_duration", "p(95)<1"),
        ("http_req_failed", "rate<0.5"),
        ("checks", "rate>0.99"),
        ("http_reqs", "count>0"),
    ]
    .into_iter()
    .map(|(selector, expression)| punisher_core::ThresholdSpec {
        selector: selector.into(),
        expression: expression.into(),
        abort_on_fail: false,
        delay_abort_eval: None,
    })
    .collect()
}

pub(crate) fn summary_of(totals: &Totals) -> Summary {
    let evaluated: Vec<_> = thresholds()
        .iter()
        .map(|spec| {
            let t = Threshold::parse(spec).unwrap();
            let o = t.evaluate(totals);
            (t, o)
        })
        .collect();
    let mut meta = SummaryMeta::new("scenarios/<tv>.js", "ramping-vus", totals.elapsed(), 50);
    meta.started_unix_ms = START_MS;
    Summary::build(totals, &evaluated, meta)
}

pub(crate) fn run_info(run_id: &str) -> RunInfo {
    let mut info = RunInfo::new(
        run_id,
        "0.1.0",
        "scenarios/<tv>.js",
        "export default function () { if (a < b && c > d) {} }\n",
        serde_json::json!({"users": 50, "rampUp": "5s", "note": "</pre><script>alert(1)</script>"}),
        vec![
            "punisher".into(),
            "run".into(),
            "scenarios/<tv>.js".into(),
            "--users".into(),
            "50".into(),
        ],
        START_MS,
    );
    info.executor = "ramping-vus".into();
    info.thresholds = thresholds();
    info.agents = vec![
        AgentInfo {
            id: "agent-eu-1".into(),
            hostname: "ip-10-0-0-1".into(),
            region: "eu-west-1".into(),
            clock_offset_ms: -1.25,
            cores: 2,
            peak_users: 25,
            state: "finished".into(),
        },
        AgentInfo {
            id: "agent-us-1".into(),
            hostname: "ip-10-1-0-1".into(),
            region: "us-east-1".into(),
            clock_offset_ms: 3.5,
            cores: 2,
            peak_users: 25,
            state: "lost".into(),
        },
    ];
    info
}
