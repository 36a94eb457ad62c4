//! `punisher report` and `punisher compare`: work on the results a run left on disk.

use std::path::{Path, PathBuf};

use anyhow::Context;
use punisher_results::{ResultsDir, RunFigures, Tolerance, compare};

use crate::args::{CompareArgs, ReportArgs};
use crate::exit::Failure;

/// Rebuilds summary.json, junit.xml and report.html from the journal; returns the text summary.
pub fn report(args: &ReportArgs) -> Result<String, Failure> {
    let dir = ResultsDir::open(&args.run_dir)
        .with_context(|| format!("{} is not a run's results folder", args.run_dir.display()))
        .map_err(Failure::invalid)?;
    let replayed = punisher_results::Journal::replay(dir.path())
        .context("cannot read the run's journal")
        .map_err(Failure::run)?;
    for warning in &replayed.warnings {
        eprintln!("warning: {warning}");
    }
    let summary = replayed.summary(None);
    dir.write_outputs(replayed.info.as_ref(), &summary, &replayed.timeline)
        .context("cannot write the report files")
        .map_err(Failure::run)?;
    eprintln!(
        "rebuilt {} from {} journalled seconds",
        dir.file(punisher_results::dir::REPORT_HTML).display(),
        replayed.seconds
    );
    Ok(summary.render_text())
}

/// Compares two runs; Ok(true) when B regressed beyond the tolerance.
pub fn compare_runs(args: &CompareArgs) -> Result<(String, bool), Failure> {
    if !(args.tolerance.is_finite() && args.tolerance >= 0.0) {
        return Err(Failure::invalid(anyhow::anyhow!(
            "--tolerance must be a number of percent >= 0"
        )));
    }
    let a = figures("A", &args.a)?;
    let b = figures("B", &args.b)?;
    let comparison = compare(&a, &b, &Tolerance::percent(args.tolerance));
    Ok((comparison.render_text(), comparison.regressed))
}

fn figures(label: &str, path: &Path) -> Result<RunFigures, Failure> {
    let file: PathBuf = if path.is_dir() {
        path.join(punisher_results::dir::SUMMARY_JSON)
    } else {
        path.to_owned()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| {
            format!(
                "cannot read {}: give a run folder or its summary.json",
                file.display()
            )
        })
        .map_err(Failure::invalid)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", file.display()))
        .map_err(Failure::invalid)?;
    RunFigures::from_summary_json(label, &json)
        .map_err(|e| Failure::invalid(anyhow::anyhow!("{}: {e}", file.display())))
}
