//! Where agents come from: EC2 spot instances in every region, launched and torn down by
//! tag. The only crate that uses aws-sdk-*; its types stay in [`aws`], behind the small
//! [`api::Ec2`] trait that the logic (and tests, with a fake) use.
//!
//! - [`up`]: plan (images, spot prices, cost table) then launch, region by region in
//!   parallel, with fallback to the next type or zone.
//! - [`down`]: terminate every tagged instance, delete the security groups, verify.
//! - [`status`]: a cluster's instances, and `ls` of all clusters by tag.
//! - [`userdata`]: the cloud-init script from `deploy/cloud-init/` (never any credential).
//!
//! The agent-side spot interruption watcher (IMDSv2) lives in `punisher_agent::imds`: the
//! agent must not link the AWS SDK.
//!
//! Spend cannot run away: every resource carries `punisher:cluster`, `punisher:expires-at`
//! and `punisher:controller`; every instance is spot (one-time, terminate on interruption),
//! schedules its own shutdown at the TTL and terminates on shutdown.

pub mod ami;
pub mod api;
pub mod aws;
pub mod down;
pub mod error;
pub mod pricing;
pub mod progress;
pub mod regions;
pub mod status;
pub mod tags;
pub mod up;
pub mod userdata;

pub use api::{ApiError, ApiErrorKind, Ec2};
pub use aws::AwsEc2;
pub use error::LauncherError;

/// The SDK configuration type, for callers that build their own (tests with dummy
/// credentials); re-exported so they need no direct aws-config dependency.
pub use aws_config::SdkConfig;
