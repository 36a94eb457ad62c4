//! The `punisher` command line: clap arguments become validated configs, and the
//! commands are composed from the other crates. This is the composition root: it alone
//! sets up tracing, talks to the terminal and chooses exit codes (0 pass, 99 thresholds
//! failed, 1 run error, 2 bad usage or invalid scenario).
//!
//! The commands are library functions ([`local::run`], [`check::check`]) so that tests call
//! them without a subprocess.

pub mod args;
pub mod check;
pub mod cluster;
pub mod cluster_aws;
pub mod config;
mod dashboard;
pub use dashboard::LogWriter;
pub mod exit;
mod follow;
pub use follow::Interrupts;
mod handle_summary;
pub mod local;
pub mod results;
pub mod status;
pub mod target;
