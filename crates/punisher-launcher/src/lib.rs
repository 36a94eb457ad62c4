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
//!
//! # What moto cannot show
//!
//! The tests run against moto's EC2 server (never real AWS). Every call the launcher makes
//! is implemented by moto: DescribeRegions, DescribeImages, DescribeSpotPriceHistory,
//! DescribeSecurityGroups, CreateSecurityGroup, DeleteSecurityGroup, RunInstances,
//! DescribeInstances and TerminateInstances. What moto lacks is behaviour, and those paths
//! are tested against the fake EC2 of the integration tests (`tests/util/fake.rs`):
//!
//! - RunInstances keeps only `InstanceMarketOptions.MarketType` (the instance's lifecycle
//!   becomes `spot`) and drops the SpotOptions (one-time, terminate on interruption, max
//!   price): no spot request exists and nothing reads them back. The test reads them from
//!   moto's request recording instead.
//! - RunInstances never fails for capacity (`InsufficientInstanceCapacity`), price
//!   (`SpotMaxPriceTooLow`), quota (`VcpuLimitExceeded`, `MaxSpotInstanceCountExceeded`) or
//!   permissions (`UnauthorizedOperation`), and launches exactly `MinCount` instances: the
//!   fallback to the next zone or type, "take what the zone has" and giving up on a region
//!   are fake-only.
//! - DescribeSpotPriceHistory quotes every offered type at $0.00001/h with a fixed 2006
//!   timestamp, whatever the time window: the choice between types and zones by price, and
//!   the on-demand cap of `--max-price auto`, are tested in [`pricing`] and with the fake.
//! - TerminateInstances is immediate (no `shutting-down` phase) and DeleteSecurityGroup never
//!   answers `DependencyViolation` for a group still used by instances: `down`'s waits are
//!   fake-only.
//! - An unknown region name gets HTTP 500 from moto rather than a connection error: that is
//!   how the moto tests make one region fail.
//! - No instance ever runs, so the user data (agent download, checksum, TTL shutdown) is only
//!   decoded and read, and the spot-interruption notice is tested in `punisher-agent` with a
//!   fake instance-metadata server.

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
