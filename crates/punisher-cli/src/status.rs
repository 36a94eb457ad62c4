//! The one-line progress report printed on stderr every second while a run goes on.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use punisher_engine::WorkerReport;
use punisher_metrics::{SeriesData, Snapshot};

/// What a status line shows, computed from one interval of merged worker snapshots.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusView {
    pub elapsed: Duration,
    pub planned: Duration,
    pub active_users: u64,
    pub target_users: u64,
    pub arrived_users: u64,
    pub requests_per_sec: f64,
    pub p99_ms: Option<f64>,
    pub error_rate: Option<f64>,
    pub iterations: f64,
}

impl StatusView {
    pub fn from_interval(
        elapsed: Duration,
        planned: Duration,
        workers: &BTreeMap<usize, WorkerReport>,
        interval: &Snapshot,
    ) -> StatusView {
        let seconds =
            (interval.end_unix_ms.saturating_sub(interval.start_unix_ms) as f64 / 1000.0).max(1.0);
        let mut requests = 0.0;
        let mut failed = (0u64, 0u64);
        let mut durations: Option<hdrhistogram::Histogram<u64>> = None;
        let mut iterations = 0.0;
        for (key, data) in &interval.series {
            match (key.metric.as_ref(), data) {
                ("http_reqs", SeriesData::Counter { sum }) => requests += sum,
                ("iterations", SeriesData::Counter { sum }) => iterations += sum,
                ("http_req_failed", SeriesData::Rate { passes, total }) => {
                    failed.0 += passes;
                    failed.1 += total;
                }
                ("http_req_duration", SeriesData::Trend { hist, .. }) => match &mut durations {
                    Some(h) => {
                        let _ = h.add(hist.as_ref());
                    }
                    None => durations = Some(hist.as_ref().clone()),
                },
                _ => {}
            }
        }
        StatusView {
            elapsed,
            planned,
            active_users: workers.values().map(|w| w.active_users).sum(),
            target_users: workers.values().map(|w| w.target_users).sum(),
            arrived_users: workers.values().map(|w| w.arrived_users).sum(),
            requests_per_sec: requests / seconds,
            p99_ms: durations
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0),
            error_rate: (failed.1 > 0).then(|| failed.0 as f64 / failed.1 as f64),
            iterations,
        }
    }

    /// `[  12s / 1m0s] users 120/300 (250 arrived) | 1234 req/s | p99 12.3ms | errors 0.10%`
    pub fn render(&self) -> String {
        let p99 = self
            .p99_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1}ms"));
        let errors = self
            .error_rate
            .map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0));
        format!(
            "[{:>6} / {}] users {}/{} ({} arrived) | {:.0} req/s | p99 {} | errors {} | {:.0} iter/s",
            punisher_core::format_duration(Duration::from_secs(self.elapsed.as_secs())),
            punisher_core::format_duration(self.planned),
            self.active_users,
            self.target_users,
            self.arrived_users,
            self.requests_per_sec,
            p99,
            errors,
            self.iterations,
        )
    }
}

/// Prints status lines unless disabled.
pub struct StatusLine {
    planned: Duration,
    enabled: bool,
    printed: bool,
}

impl StatusLine {
    pub fn new(planned: Duration, enabled: bool) -> StatusLine {
        StatusLine {
            planned,
            enabled,
            printed: false,
        }
    }

    pub fn print(
        &mut self,
        elapsed: Duration,
        workers: &BTreeMap<usize, WorkerReport>,
        interval: &Snapshot,
    ) {
        if !self.enabled {
            return;
        }
        let line = StatusView::from_interval(elapsed, self.planned, workers, interval).render();
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
        self.printed = true;
    }

    pub fn finish(&mut self) {
        if self.printed {
            let _ = writeln!(std::io::stderr());
        }
    }
}
