//! The vocabulary every punisher crate shares: durations as users write them, the
//! [`Plan`] a scenario's options become, executors and their segments, failure kinds.
//!
//! This crate does no I/O and depends on nothing heavy, so that every other crate can
//! use it without rebuilding much.

pub mod duration;
pub mod failure;
pub mod plan;

pub use duration::{DurationError, format_duration, parse_duration, parse_duration_value};
pub use failure::FailureKind;
pub use plan::{Executor, HttpOptions, Overrides, Plan, PlanError, Segment, Stage, ThresholdSpec};
pub mod view;

pub use view::{RunCommand, RunState, RunView};
