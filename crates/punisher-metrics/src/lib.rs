//! punisher-metrics: per-worker recorders, interval snapshots, their exact merge and binary
//! codec, run totals, k6-style thresholds, and the end-of-run summary (model, text, JSON).
//!
//! # Layout
//! - [`series`]: metric kinds, value types, tags, series keys.
//! - [`recorder`]: the per-worker hot path (`Vec` indexing, no lock, no allocation).
//! - [`snapshot`]: one interval's deltas and their exact merge.
//! - [`codec`]: the versioned binary form (trends as HDR V2 counts), hostile-input safe.
//! - [`merge`]: the controller's bulk merge of encoded snapshots, optionally on threads.
//! - [`totals`]: accumulated snapshots queried by metric and tag filter.
//! - [`threshold`]: parsing and evaluating `p(95)<200` on `metric{tag:value}`.
//! - [`summary`]: the end-of-run model and its text and JSON renderers.
//!
//! This crate is pure: no I/O, no clocks (callers pass times in), and no threads except
//! the scoped ones [`merge_many`] is asked for. Its one piece of process-wide state is the
//! small pool of spare trend histograms behind [`Snapshot::recycle`].

pub mod codec;
pub mod merge;
pub mod recorder;
pub mod series;
pub mod snapshot;
pub mod summary;
pub mod threshold;
pub mod totals;

pub use codec::{SnapshotDecoder, SnapshotEncoder};
pub use merge::{Accumulator, Merged, merge_many};
pub use recorder::{Recorder, SeriesId};
pub use series::{MetricKind, SeriesKey, Tags, ValueType};
pub use snapshot::{SeriesData, Snapshot, new_trend_histogram};
pub use summary::{CheckSummary, MetricSummary, Summary, SummaryMeta, ThresholdSummary};
pub use threshold::{Aggregation, Operator, Threshold, ThresholdError, ThresholdOutcome};
pub use totals::Totals;

/// Errors of recording, merging and decoding metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("metric `{metric}` is already a {existing}; it cannot also be a {new}")]
    KindMismatch {
        metric: String,
        existing: MetricKind,
        new: MetricKind,
    },
    #[error("invalid metric name {0:?}")]
    InvalidName(String),
    #[error("too many series in one recorder")]
    TooManySeries,
    #[error("snapshot truncated while reading {0}")]
    Truncated(&'static str),
    #[error("malformed snapshot: {0}")]
    Malformed(String),
    #[error("histogram merge failed: {0}")]
    Histogram(String),
}
