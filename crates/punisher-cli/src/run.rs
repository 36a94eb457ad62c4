//! `punisher run` on this machine: load and check the scenario, start the engine, merge
//! the workers' interval snapshots every second, evaluate thresholds live and at the end,
//! print the summary and choose the exit code. Each merged second, aligned on wall-clock
//! seconds, goes to the run's results folder (the `recorder` module) and to the Prometheus
//! endpoint ([`crate::prometheus`]) when they are on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use punisher_core::{Plan, Segment};
use punisher_engine::{Bundle, EngineCommand, EngineConfig, LocalBarrierHub, WorkerReport};
use punisher_metrics::{
    SeriesData, SeriesKey, Snapshot, Summary, SummaryMeta, Tags, Threshold, Totals,
};
use punisher_results::{AgentInfo, LiveNumbers, RunInfo};
use tokio::sync::watch;

use crate::config::RunConfig;
use crate::exit::{self, Failure};
use crate::prometheus::{Exposition, PrometheusServer};
use crate::recorder::Recorder;
use crate::status::StatusLine;

/// Workers report on unix-second boundaries; a report ending this long after a boundary
/// still belongs to the second before it (a busy worker's timer fires late). The run loop
/// closes a second this long after its end.
const REPORT_LATENESS_MS: u64 = 250;

/// Empty seconds are journalled for gaps up to this long (a stalled loop); a longer gap
/// is a wall-clock jump, not a minute of silence.
const MAX_GAP_FILL_SECS: u64 = 60;

/// How a finished run went.
#[derive(Debug)]
pub struct RunReport {
    pub summary: Summary,
    /// Every threshold passed (true when none was set).
    pub thresholds_passed: bool,
    /// A threshold with `abortOnFail` ended the run early.
    pub aborted_by_threshold: bool,
    /// The user interrupted the run (Ctrl-C).
    pub interrupted: bool,
    /// The results folder written (`None` with `--no-results`).
    pub results_dir: Option<PathBuf>,
    /// What went wrong while writing it: the run itself still counts.
    pub results_problems: Vec<String>,
}

impl RunReport {
    /// 0 when thresholds passed, 99 when not.
    pub fn exit_code(&self) -> u8 {
        if self.thresholds_passed {
            exit::PASSED
        } else {
            exit::THRESHOLDS_FAILED
        }
    }
}

/// Ctrl-C presses seen so far: the first stops gracefully, the second aborts.
pub type Interrupts = watch::Receiver<u32>;

/// The parts of a run that are fixed before the first user starts.
struct Prepared {
    scenario: Arc<punisher_engine::Scenario>,
    plan: Plan,
    thresholds: Vec<Threshold>,
    engine: EngineConfig,
}

fn prepare(cfg: &RunConfig, env: BTreeMap<String, String>) -> Result<Prepared, Failure> {
    let bundle = Bundle::from_path(&cfg.script).map_err(Failure::invalid)?;
    let scenario = punisher_engine::inspect(bundle, &env).map_err(Failure::invalid)?;
    let plan = Plan::from_options(&scenario.options, &cfg.overrides).map_err(|e| {
        Failure::invalid(anyhow::Error::new(e).context(cfg.script.display().to_string()))
    })?;
    for unknown in &plan.unknown_options {
        tracing::warn!(option = %unknown, "unknown option ignored");
    }
    let thresholds = plan
        .thresholds
        .iter()
        .map(Threshold::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure::invalid(anyhow::Error::new(e).context("invalid threshold")))?;
    let test_users = plan.executor.max_users();
    let engine = EngineConfig {
        workers: cfg.workers,
        plan: plan.clone(),
        segment: Segment::FULL,
        env,
        source_pool: cfg.source_pool.clone(),
        memory_limit_bytes: cfg.js_memory_limit_bytes,
        barriers: Arc::new(LocalBarrierHub::new(test_users)),
        test_users,
    };
    Ok(Prepared {
        scenario: Arc::new(scenario),
        plan,
        thresholds,
        engine,
    })
}

/// Runs the scenario to its end and returns the report; errors carry their exit code.
pub async fn run(cfg: RunConfig, mut interrupts: Interrupts) -> Result<RunReport, Failure> {
    let mut env = cfg.env.clone();
    let demo = if cfg.demo_target {
        let target = punisher_target::spawn_local_target(punisher_target::TargetConfig::new())
            .await
            .context("could not start the demo target")
            .map_err(Failure::run)?;
        env.insert("API".into(), target.url.clone());
        tracing::info!(url = %target.url, "demo target started");
        Some(target)
    } else {
        None
    };
    let prepared = prepare(&cfg, env)?;
    let result = execute(&cfg, prepared, &mut interrupts).await;
    if let Some(target) = demo
        && let Err(e) = target.shutdown().await
    {
        tracing::warn!(error = %e, "demo target did not shut down cleanly");
    }
    result
}

async fn execute(
    cfg: &RunConfig,
    prepared: Prepared,
    interrupts: &mut Interrupts,
) -> Result<RunReport, Failure> {
    let Prepared {
        scenario,
        plan,
        thresholds,
        engine,
    } = prepared;
    let mut info = run_info(cfg, &scenario, &plan);
    // Both fail before any user starts: a run whose results cannot be kept is not started.
    let mut recorder = match &cfg.results {
        Some(target) => {
            Some(Recorder::start(&target.base, &target.run_id, &info).map_err(Failure::run)?)
        }
        None => None,
    };
    let prometheus = match cfg.prometheus {
        Some(addr) => {
            let server = PrometheusServer::bind(addr).await.map_err(Failure::run)?;
            eprintln!(
                "serving Prometheus metrics on http://{}/metrics",
                server.addr
            );
            Some(server)
        }
        None => None,
    };
    let setup_data = if scenario.has_setup {
        punisher_engine::run_setup(&scenario, &engine)
            .await
            .context("setup() failed; no user was started")
            .map_err(Failure::run)?
    } else {
        serde_json::Value::Null
    };
    let started = Instant::now();
    let started_unix_ms = unix_ms();
    info.started_unix_ms = started_unix_ms;
    info.started = punisher_results::rfc3339(started_unix_ms);
    let mut handle = punisher_engine::start(scenario.clone(), engine.clone(), setup_data.clone())
        .context("could not start the engine")
        .map_err(Failure::run)?;

    let mut totals = Totals::new();
    let mut workers: BTreeMap<usize, WorkerReport> = BTreeMap::new();
    let mut seconds = Seconds::new(started_unix_ms);
    let mut status = StatusLine::new(plan.executor.planned_duration(), cfg.status_lines);
    let tick = tokio::time::sleep(until_next_close(unix_ms()));
    tokio::pin!(tick);
    let mut vus_max = 0u64;
    let mut interrupted = false;
    let mut aborted_by_threshold = false;
    let mut seen_interrupts = *interrupts.borrow();
    loop {
        tokio::select! {
            biased;
            changed = interrupts.changed() => {
                if changed.is_err() { continue; }
                let presses = *interrupts.borrow_and_update();
                if presses > seen_interrupts {
                    seen_interrupts = presses;
                    interrupted = true;
                    if presses == 1 {
                        eprintln!("\nstopping gracefully (up to {}); press Ctrl-C again to abort", punisher_core::format_duration(plan.graceful_stop));
                        handle.command(EngineCommand::Stop { grace: plan.graceful_stop });
                    } else {
                        eprintln!("\naborting");
                        handle.command(EngineCommand::Abort);
                    }
                }
            }
            report = handle.next_report() => {
                let Some(report) = report else { break };
                totals.add(&report.snapshot).map_err(Failure::run)?;
                seconds.add(&report.snapshot).map_err(Failure::run)?;
                workers.insert(report.worker, report_without_snapshot(report));
            }
            () = &mut tick => {
                let now = unix_ms();
                tick.as_mut().reset(tokio::time::Instant::now() + until_next_close(now));
                let active: u64 = workers.values().map(|w| w.active_users).sum();
                vus_max = vus_max.max(active);
                let gauges = user_gauges(active, vus_max);
                totals.add(&gauges).map_err(Failure::run)?;
                let live = live_numbers(&workers);
                // Scrapes see this second before the status line shows it.
                if let Some(server) = &prometheus {
                    server.publish(Exposition { totals: totals.clone(), live: Some(live.clone()) });
                }
                let mut closed = seconds.close_due(now);
                if let Some(last) = closed.last_mut() {
                    // The users gauges belong to the second just closed.
                    let gauges = aligned(gauges, last);
                    let _ = last.merge(&gauges);
                    status.print(started.elapsed(), &workers, last);
                }
                for second in closed {
                    if let Some(recorder) = &mut recorder {
                        recorder.append(second, live.clone());
                    }
                }
                if !aborted_by_threshold
                    && let Some(failed) = abort_threshold(&thresholds, &totals, started.elapsed())
                {
                    eprintln!("\nthreshold {failed} crossed and has abortOnFail: aborting the run");
                    aborted_by_threshold = true;
                    handle.command(EngineCommand::Abort);
                }
            }
        }
    }
    let duration = started.elapsed();
    let ended_unix_ms = unix_ms();
    status.finish();
    // The last partial seconds (the workers' final reports).
    let live = live_numbers(&workers);
    for second in seconds.close_all() {
        if let Some(recorder) = &mut recorder {
            recorder.append(second, live.clone());
        }
    }
    if scenario.has_teardown
        && let Err(e) = punisher_engine::run_teardown(&scenario, &engine, &setup_data).await
    {
        tracing::warn!(error = %format!("{e:#}"), "teardown() failed");
        eprintln!("teardown() failed: {e:#}");
    }
    let outcomes: Vec<_> = thresholds
        .iter()
        .map(|t| (t.clone(), t.evaluate(&totals)))
        .collect();
    let thresholds_passed = outcomes.iter().all(|(_, o)| o.passed);
    let meta = SummaryMeta {
        duration,
        vus_max,
        executor: plan.executor.kind().to_owned(),
        scenario: cfg.script.display().to_string(),
        started_unix_ms,
        interrupted: if aborted_by_threshold {
            Some("a threshold with abortOnFail failed".to_owned())
        } else if interrupted {
            Some("interrupted by the user".to_owned())
        } else {
            None
        },
    };
    let summary = Summary::build(&totals, &outcomes, meta);
    if let Some(server) = prometheus {
        server.publish(Exposition {
            totals,
            live: Some(live),
        });
        server.shutdown().await;
    }
    let (results_dir, results_problems) = match recorder {
        Some(recorder) => {
            info.finish(ended_unix_ms);
            if let Some(agent) = info.agents.first_mut() {
                agent.peak_users = vus_max;
                agent.state = if interrupted || aborted_by_threshold {
                    "stopped".into()
                } else {
                    "finished".into()
                };
            }
            let (path, problems) = recorder.finish(info, summary.clone()).await;
            (Some(path), problems)
        }
        None => (None, Vec::new()),
    };
    Ok(RunReport {
        summary,
        thresholds_passed,
        aborted_by_threshold,
        interrupted,
        results_dir,
        results_problems,
    })
}

/// `run.json` as known before the start: the scenario, the plan after overrides, this machine.
fn run_info(cfg: &RunConfig, scenario: &punisher_engine::Scenario, plan: &Plan) -> RunInfo {
    let bundle = &scenario.bundle;
    let text = bundle.sources.get(&bundle.entry).map_or("", String::as_str);
    let options = serde_json::to_value(plan).unwrap_or(serde_json::Value::Null);
    let run_id = cfg
        .results
        .as_ref()
        .map_or_else(String::new, |r| r.run_id.clone());
    let mut info = RunInfo::new(
        &run_id,
        env!("CARGO_PKG_VERSION"),
        &cfg.script.display().to_string(),
        text,
        options,
        cfg.command_line.clone(),
        unix_ms(),
    );
    info.executor = plan.executor.kind().to_owned();
    info.thresholds = plan.thresholds.clone();
    info.agents = vec![AgentInfo {
        id: "local".into(),
        hostname: hostname(),
        region: "local".into(),
        clock_offset_ms: 0.0,
        cores: cfg.workers as u32,
        peak_users: 0,
        state: "running".into(),
    }];
    info
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn live_numbers(workers: &BTreeMap<usize, WorkerReport>) -> LiveNumbers {
    LiveNumbers {
        users_active: workers.values().map(|w| w.active_users).sum(),
        users_target: workers.values().map(|w| w.target_users).sum(),
        open_connections: None,
        open_sockets: None,
        agents: 1,
    }
}

/// How long until the next second can be closed: `REPORT_LATENESS_MS` after a boundary.
fn until_next_close(now_ms: u64) -> Duration {
    let next = (now_ms.saturating_sub(REPORT_LATENESS_MS) / 1000 + 1) * 1000 + REPORT_LATENESS_MS;
    Duration::from_millis(next - now_ms)
}

/// `snapshot` with the bounds of `second`, so that merging it keeps the second aligned.
fn aligned(mut snapshot: Snapshot, second: &Snapshot) -> Snapshot {
    snapshot.start_unix_ms = second.start_unix_ms;
    snapshot.end_unix_ms = second.end_unix_ms;
    snapshot
}

/// Worker reports grouped by the wall-clock second they cover, so that each journalled
/// second is `[N s, N+1 s)` of Unix time and holds every worker's share of it.
struct Seconds {
    /// Open seconds by their end (in Unix seconds).
    pending: BTreeMap<u64, Snapshot>,
    /// Seconds ending at or before this are closed; a late report goes to the next one.
    closed_up_to: u64,
}

impl Seconds {
    fn new(start_unix_ms: u64) -> Seconds {
        Seconds {
            pending: BTreeMap::new(),
            closed_up_to: start_unix_ms / 1000,
        }
    }

    /// The second a report belongs to, by its end: a report ending shortly after a
    /// boundary is the (late) report of the second before it.
    fn second_of(end_unix_ms: u64) -> u64 {
        let s = end_unix_ms / 1000;
        if end_unix_ms % 1000 <= REPORT_LATENESS_MS {
            s
        } else {
            s + 1
        }
    }

    fn add(&mut self, snapshot: &Snapshot) -> Result<(), punisher_metrics::MetricsError> {
        let end = Self::second_of(snapshot.end_unix_ms).max(self.closed_up_to + 1);
        let second = self
            .pending
            .entry(end)
            .or_insert_with(|| Snapshot::empty((end - 1) * 1000, end * 1000));
        second.merge(snapshot)?;
        second.start_unix_ms = (end - 1) * 1000;
        second.end_unix_ms = end * 1000;
        Ok(())
    }

    /// Closes the seconds that ended at least `REPORT_LATENESS_MS` before `now_ms`, oldest
    /// first; the newest of them is the most recent complete second.
    fn close_due(&mut self, now_ms: u64) -> Vec<Snapshot> {
        let due = now_ms.saturating_sub(REPORT_LATENESS_MS) / 1000;
        if due <= self.closed_up_to {
            return Vec::new();
        }
        let fill = due - self.closed_up_to <= MAX_GAP_FILL_SECS;
        let mut closed = Vec::new();
        if fill {
            for end in self.closed_up_to + 1..=due {
                closed.push(
                    self.pending
                        .remove(&end)
                        .unwrap_or_else(|| Snapshot::empty((end - 1) * 1000, end * 1000)),
                );
            }
        } else {
            let later = self.pending.split_off(&(due + 1));
            closed.extend(std::mem::replace(&mut self.pending, later).into_values());
        }
        self.closed_up_to = due;
        closed
    }

    /// Every open second, oldest first (the end of the run).
    fn close_all(&mut self) -> Vec<Snapshot> {
        if let Some(&last) = self.pending.keys().next_back() {
            self.closed_up_to = self.closed_up_to.max(last);
        }
        std::mem::take(&mut self.pending).into_values().collect()
    }
}

/// The first `abortOnFail` threshold that fails now (past its `delayAbortEval`).
fn abort_threshold(thresholds: &[Threshold], totals: &Totals, elapsed: Duration) -> Option<String> {
    thresholds
        .iter()
        .filter(|t| t.spec.abort_on_fail)
        .filter(|t| t.spec.delay_abort_eval.is_none_or(|delay| elapsed >= delay))
        .find(|t| !t.evaluate(totals).passed)
        .map(|t| format!("{}: {}", t.spec.selector, t.spec.expression))
}

/// `vus` and `vus_max` are run-level gauges: workers report their active users, the run sums them.
fn user_gauges(active: u64, vus_max: u64) -> Snapshot {
    let now = unix_ms();
    let mut snapshot = Snapshot::empty(now, now);
    for (name, value) in [("vus", active), ("vus_max", vus_max)] {
        let value = value as f64;
        snapshot.series.insert(
            SeriesKey {
                metric: name.into(),
                tags: Tags::empty(),
            },
            SeriesData::Gauge {
                last: value,
                min: value,
                max: value,
                at_unix_ms: now,
            },
        );
    }
    snapshot
}

fn report_without_snapshot(mut report: WorkerReport) -> WorkerReport {
    report.snapshot = Snapshot::empty(report.snapshot.start_unix_ms, report.snapshot.end_unix_ms);
    report
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(start: u64, end: u64, n: f64) -> Snapshot {
        let mut s = Snapshot::empty(start, end);
        s.series.insert(
            SeriesKey {
                metric: "http_reqs".into(),
                tags: Tags::empty(),
            },
            SeriesData::Counter { sum: n },
        );
        s
    }

    fn sum(s: &Snapshot) -> f64 {
        match s.series.values().next() {
            Some(SeriesData::Counter { sum }) => *sum,
            _ => 0.0,
        }
    }

    #[test]
    fn reports_are_grouped_by_wall_clock_second() {
        // The run starts at 10.4 s; two workers report at 11.003 s and 11.180 s (late).
        let mut seconds = Seconds::new(10_400);
        seconds.add(&counter(10_400, 11_003, 1.0)).unwrap();
        seconds.add(&counter(10_400, 11_180, 2.0)).unwrap();
        assert!(seconds.close_due(11_100).is_empty(), "closed too early");
        seconds.add(&counter(11_003, 12_001, 4.0)).unwrap();
        let closed = seconds.close_due(11_251);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].start_unix_ms, closed[0].end_unix_ms),
            (10_000, 11_000)
        );
        assert_eq!(sum(&closed[0]), 3.0);
        // A report later than the lateness allowance goes to the next open second.
        seconds.add(&counter(10_400, 11_050, 8.0)).unwrap();
        // The final partial report, mid-second.
        seconds.add(&counter(12_001, 12_600, 16.0)).unwrap();
        let closed = seconds.close_due(12_300);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].start_unix_ms, closed[0].end_unix_ms),
            (11_000, 12_000)
        );
        assert_eq!(sum(&closed[0]), 12.0);
        let rest = seconds.close_all();
        assert_eq!(rest.len(), 1);
        assert_eq!(
            (rest[0].start_unix_ms, rest[0].end_unix_ms),
            (12_000, 13_000)
        );
        assert_eq!(sum(&rest[0]), 16.0);
    }

    #[test]
    fn gaps_become_empty_seconds_but_clock_jumps_do_not() {
        let mut seconds = Seconds::new(0);
        seconds.add(&counter(0, 1_000, 1.0)).unwrap();
        let closed = seconds.close_due(3_300);
        assert_eq!(closed.len(), 3);
        assert!(closed[1].is_empty() && closed[2].is_empty());
        seconds.add(&counter(3_000, 4_000, 1.0)).unwrap();
        let closed = seconds.close_due(1_000_000);
        assert_eq!(closed.len(), 1);
    }

    #[test]
    fn the_tick_waits_for_late_reports() {
        assert_eq!(until_next_close(10_000), Duration::from_millis(250));
        assert_eq!(until_next_close(10_250), Duration::from_millis(1000));
        assert_eq!(until_next_close(10_251), Duration::from_millis(999));
        assert_eq!(until_next_close(10_100), Duration::from_millis(150));
    }
}
