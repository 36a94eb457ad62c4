//! `punisher check`: compile the scenario, validate its options and print the plan.

use std::fmt::Write;
use std::path::Path;

use punisher_core::{Executor, Plan, format_duration};
use punisher_engine::Bundle;
use punisher_metrics::Threshold;

use crate::args::CheckArgs;
use crate::config::option_flags;
use crate::exit::Failure;

/// Checks the scenario and returns the plan as text; invalid input maps to exit 2.
pub fn check(args: &CheckArgs) -> Result<String, Failure> {
    let (overrides, env) = option_flags(&args.options).map_err(Failure::invalid)?;
    let bundle = Bundle::from_path(&args.script).map_err(Failure::invalid)?;
    let scenario = punisher_engine::inspect(bundle, &env).map_err(Failure::invalid)?;
    let plan = Plan::from_options(&scenario.options, &overrides).map_err(Failure::invalid)?;
    for spec in &plan.thresholds {
        Threshold::parse(spec).map_err(Failure::invalid)?;
    }
    Ok(describe(&args.script, &scenario, &plan))
}

fn describe(script: &Path, scenario: &punisher_engine::Scenario, plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "scenario: {} (ok)", script.display());
    let modules = scenario.bundle.sources.len();
    let files = scenario.bundle.files.len();
    let _ = writeln!(out, "  bundle: {modules} module(s), {files} data file(s)");
    let hooks: Vec<&str> = [
        (scenario.has_setup, "setup"),
        (true, "default"),
        (scenario.has_teardown, "teardown"),
        (scenario.has_handle_summary, "handleSummary"),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();
    let _ = writeln!(out, "  exports: {}", hooks.join(", "));
    let _ = writeln!(out, "executor: {}", plan.executor.kind());
    let line = match &plan.executor {
        Executor::SessionUsers {
            users,
            ramp_up,
            max_duration,
        } => format!(
            "  {users} session users arriving over {}{}",
            format_duration(*ramp_up),
            max_duration
                .map(|d| format!(", capped at {}", format_duration(d)))
                .unwrap_or_default()
        ),
        Executor::ConstantVus { vus, duration } => {
            format!("  {vus} looping users for {}", format_duration(*duration))
        }
        Executor::RampingVus { start_vus, stages } => {
            let stages: Vec<String> = stages
                .iter()
                .map(|s| format!("{}->{}", format_duration(s.duration), s.target))
                .collect();
            format!("  looping users from {start_vus}: {}", stages.join(", "))
        }
        Executor::ConstantArrivalRate {
            rate,
            time_unit,
            duration,
            pre_allocated_vus,
            max_vus,
        } => format!(
            "  {rate} iterations per {} for {} ({pre_allocated_vus} users pre-allocated, at most {max_vus})",
            format_duration(*time_unit),
            format_duration(*duration)
        ),
    };
    let _ = writeln!(out, "{line}");
    let _ = writeln!(
        out,
        "  graceful stop: {}",
        format_duration(plan.graceful_stop)
    );
    if plan.thresholds.is_empty() {
        let _ = writeln!(out, "thresholds: none");
    } else {
        let _ = writeln!(out, "thresholds:");
        for t in &plan.thresholds {
            let abort = if t.abort_on_fail {
                " (abortOnFail)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {}: {}{abort}", t.selector, t.expression);
        }
    }
    for unknown in &plan.unknown_options {
        let _ = writeln!(out, "warning: unknown option `{unknown}` is ignored");
    }
    out
}
