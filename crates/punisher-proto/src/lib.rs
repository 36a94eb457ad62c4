//! punisher-proto: the controller <-> agent protocol (`proto/punisher/v1/*.proto`), compiled
//! by protox + tonic-prost-build in `build.rs` (no system `protoc`).
//!
//! # Layout
//! - [`v1`]: the generated prost messages and tonic clients/servers.
//! - [`error`]: [`ServiceError`], the one place where domain errors become `tonic::Status`,
//!   and [`Refusal`], how a client reads a refusal back (which check failed, what to do).
//! - [`convert`]: conversions between wire messages and core types ([`ScenarioBundle`],
//!   `Segment`, `Plan` as JSON).
//! - [`plain_http`]: a tiny HTTP/1.1 client for the instance-metadata service and the
//!   controller's agent-binary endpoint.
//! - [`transport`]: the cluster's connections: TLS with a pinned SHA-256 certificate
//!   fingerprint, plaintext only on loopback, the cluster token, message size limits.
//!
//! This is the only crate exposing prost and tonic types; the controller and the agent
//! speak them, nothing else does.

pub mod convert;
pub mod error;
pub mod plain_http;
pub mod transport;

pub mod v1 {
    //! Generated from `proto/punisher/v1/agent.proto` and `admin.proto`.
    #![allow(clippy::all, clippy::pedantic, unreachable_pub, missing_docs)]
    tonic::include_proto!("punisher.v1");
}

pub use convert::{ConvertError, ScenarioBundle};
pub use error::{Refusal, ServiceError};
pub use transport::{ClientSecurity, ConnectError, Fingerprint};

/// The protocol version. An agent and a controller of different versions refuse each other
/// (their messages would be misread), with a message that says to upgrade one of them.
pub const PROTOCOL_VERSION: u32 = 1;

/// The software version both sides print in their logs.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The largest gRPC message either side accepts. A `LoadScenario` carries the bundle
/// (scripts and data files), so this is the bundle limit plus headroom.
pub const MAX_MESSAGE_BYTES: usize = MAX_BUNDLE_BYTES + (1 << 20);

/// The largest bundle (scripts plus data files) a run may ship to agents.
pub const MAX_BUNDLE_BYTES: usize = 64 << 20;

/// The largest encoded snapshot in one agent report. A second of a busy agent with a few
/// hundred trend series is well below 1 MiB.
pub const MAX_REPORT_SNAPSHOT_BYTES: usize = 8 << 20;

/// The most series one report may carry; more is a broken or hostile agent.
pub const MAX_SERIES_PER_REPORT: u64 = 20_000;

/// Barrier names are user strings from the script: bounded so that a hostile agent cannot
/// make the controller hold arbitrary data.
pub const MAX_BARRIER_NAME_BYTES: usize = 256;

/// Distinct barriers one run may use.
pub const MAX_BARRIERS_PER_RUN: usize = 1_000;
