//! punisher-results: what a run leaves on disk, and what is rebuilt from it.
//!
//! Every run writes `<results-dir>/<run-id>/`:
//! - `run.json` ([`RunInfo`]): the SHA-256 of the whole bundle (entry, imported modules,
//!   `open()`ed files) and of each file, the entry's text, options, command line, agents,
//!   start and end times;
//! - `timeseries.jsonl` and one HdrHistogram interval log per trend (`<metric>.hlog`), written
//!   one merged second at a time by the [`Journal`], so that a run whose controller died can
//!   still be reported ([`Journal::replay`]);
//! - `summary.json`, `junit.xml` ([`junit`]) and `report.html` ([`html`]).
//!
//! It also renders the merged metrics in Prometheus text format ([`prometheus`]) and compares
//! two runs ([`compare()`](compare::compare)).
//!
//! # Layout
//! - [`dir`]: the run folder, its file names and `run.json`.
//! - [`live`]: the few live numbers (users, connections) journalled beside the metrics.
//! - [`journal`]: the per-second writer and its replay; [`hlog`] the interval-log details.
//! - [`timeline`]: per-second points for charts, built while journalling or when replaying.
//! - [`junit`], [`html`], [`prometheus`], [`mod@compare`]: renderers, pure functions to `String`.
//!
//! This crate is synchronous and does file I/O only: no threads, no sockets, no clocks
//! (callers pass times in). Serving Prometheus over HTTP is the caller's job.

mod chart;
pub mod compare;
pub mod dir;
mod escape;
mod format;
pub mod hlog;
pub mod html;
pub mod journal;
pub mod junit;
pub mod live;
pub mod prometheus;
pub mod timeline;

pub use compare::{Comparison, RunFigures, Tolerance, compare};
pub use dir::{
    AgentInfo, AgentLossWindow, BundleFile, ResultsDir, RunInfo, bundle_sha256, rfc3339, sha256_hex,
};
pub use html::{ReportInput, render_html};
pub use journal::{Journal, Replayed};
pub use live::LiveNumbers;
pub use timeline::{Point, Timeline};

use std::path::PathBuf;

/// Errors of writing and reading a run's results.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultsError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid run id {0:?}: use letters, digits, `-`, `_` and `.`, not only dots")]
    InvalidRunId(String),
    #[error("results folder {0} already exists and is not empty")]
    Exists(PathBuf),
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("journal: {0}")]
    Journal(String),
    #[error("{0}")]
    Metrics(#[from] punisher_metrics::MetricsError),
}

pub type Result<T, E = ResultsError> = std::result::Result<T, E>;

impl ResultsError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ResultsError {
        let path = path.into();
        move |source| ResultsError::Io {
            action,
            path,
            source,
        }
    }
}
