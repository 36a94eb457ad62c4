//! `punisher run` on this machine: load and check the scenario, start the engine, merge
//! the workers' interval snapshots every second, evaluate thresholds live and at the end,
//! print the summary and choose the exit code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use punisher_core::{Plan, Segment};
use punisher_engine::{Bundle, EngineCommand, EngineConfig, LocalBarrierHub, WorkerReport};
use punisher_metrics::{
    SeriesData, SeriesKey, Snapshot, Summary, SummaryMeta, Tags, Threshold, Totals,
};
use tokio::sync::watch;

use crate::config::RunConfig;
use crate::exit::{self, Failure};
use crate::status::StatusLine;

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
    if let Some(target) = demo {
        if let Err(e) = target.shutdown().await {
            tracing::warn!(error = %e, "demo target did not shut down cleanly");
        }
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
    let mut handle = punisher_engine::start(scenario.clone(), engine.clone(), setup_data.clone())
        .context("could not start the engine")
        .map_err(Failure::run)?;

    let mut totals = Totals::new();
    let mut workers: BTreeMap<usize, WorkerReport> = BTreeMap::new();
    let mut interval = Snapshot::empty(unix_ms(), unix_ms());
    let mut status = StatusLine::new(plan.executor.planned_duration(), cfg.status_lines);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
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
                interval.merge(&report.snapshot).map_err(Failure::run)?;
                workers.insert(report.worker, report_without_snapshot(report));
            }
            _ = tick.tick() => {
                let active: u64 = workers.values().map(|w| w.active_users).sum();
                vus_max = vus_max.max(active);
                let gauges = user_gauges(active, vus_max);
                totals.add(&gauges).map_err(Failure::run)?;
                status.print(started.elapsed(), &workers, &interval);
                interval = Snapshot::empty(unix_ms(), unix_ms());
                if !aborted_by_threshold {
                    if let Some(failed) = abort_threshold(&thresholds, &totals, started.elapsed()) {
                        eprintln!("\nthreshold {failed} crossed and has abortOnFail: aborting the run");
                        aborted_by_threshold = true;
                        handle.command(EngineCommand::Abort);
                    }
                }
            }
        }
    }
    let duration = started.elapsed();
    status.finish();
    if scenario.has_teardown {
        if let Err(e) = punisher_engine::run_teardown(&scenario, &engine, &setup_data).await {
            tracing::warn!(error = %format!("{e:#}"), "teardown() failed");
            eprintln!("teardown() failed: {e:#}");
        }
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
    Ok(RunReport {
        summary,
        thresholds_passed,
        aborted_by_threshold,
        interrupted,
    })
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
