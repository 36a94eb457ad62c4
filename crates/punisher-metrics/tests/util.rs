//! Test helpers: a deterministic generator and a recorder filled like an HTTP run.

use punisher_metrics::{MetricKind, Recorder, SeriesId, Tags, ValueType};

/// A small deterministic generator (PCG-like LCG), so that tests need no `rand`.
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

    /// A latency-like value in ms: mostly 1-50 ms with a long tail.
    pub(crate) fn latency_ms(&mut self) -> f64 {
        let base = 1.0 + self.below(49_000) as f64 / 1000.0;
        if self.below(100) == 0 {
            base * (1 + self.below(200)) as f64
        } else {
            base
        }
    }
}

pub(crate) struct Http {
    pub(crate) duration: SeriesId,
    pub(crate) reqs: SeriesId,
    pub(crate) failed: SeriesId,
    pub(crate) check: SeriesId,
    pub(crate) vus: SeriesId,
    pub(crate) sent: SeriesId,
}

pub(crate) fn http_series(r: &mut Recorder, name: &str, status: &str) -> Http {
    let tags = Tags::new([("name", name), ("status", status), ("method", "GET")]);
    Http {
        duration: r
            .series(
                MetricKind::Trend,
                ValueType::Time,
                "http_req_duration",
                &tags,
            )
            .unwrap(),
        reqs: r
            .series(MetricKind::Counter, ValueType::Default, "http_reqs", &tags)
            .unwrap(),
        failed: r
            .series(
                MetricKind::Rate,
                ValueType::Default,
                "http_req_failed",
                &tags,
            )
            .unwrap(),
        check: r
            .series(
                MetricKind::Rate,
                ValueType::Default,
                "checks",
                &Tags::new([("check", "status is 200")]),
            )
            .unwrap(),
        vus: r
            .series(MetricKind::Gauge, ValueType::Default, "vus", &Tags::empty())
            .unwrap(),
        sent: r
            .series(
                MetricKind::Counter,
                ValueType::Data,
                "data_sent",
                &Tags::empty(),
            )
            .unwrap(),
    }
}

/// Records `n` requests with latencies from `rng`.
pub(crate) fn record_requests(r: &mut Recorder, h: &Http, rng: &mut Lcg, n: usize) {
    for _ in 0..n {
        let ok = rng.below(50) != 0;
        r.add_trend(h.duration, rng.latency_ms());
        r.add_counter(h.reqs, 1.0);
        r.add_rate(h.failed, !ok);
        r.add_rate(h.check, ok);
        r.add_counter(h.sent, 120.0);
    }
    r.set_gauge(h.vus, rng.below(100) as f64);
}
