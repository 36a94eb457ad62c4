//! The launcher's error type: every message says what went wrong and what to do about it.

use crate::api::ApiError;

/// Why a launcher command could not start or complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LauncherError {
    /// A flag or value is wrong; nothing was called on AWS.
    #[error("{0}")]
    Invalid(String),
    /// Listing the account's regions failed.
    #[error(
        "cannot list the enabled regions ({0}); check the credentials and the region of the \
         AWS profile, or pass --regions r1,r2"
    )]
    Regions(#[source] ApiError),
    /// A read-only call failed in a region during planning.
    #[error("{region}: {what} failed ({source})")]
    Region {
        region: String,
        what: &'static str,
        #[source]
        source: ApiError,
    },
    /// No region could be planned: nothing to launch.
    #[error("no region can launch agents: {0}")]
    NothingToLaunch(String),
    /// Teardown left instances or security groups behind.
    #[error(
        "teardown incomplete: {0}; run `punisher cluster down` again, or look for the tag \
         punisher:cluster in the EC2 console"
    )]
    Leftovers(String),
    /// Waiting for instances to terminate took too long.
    #[error("timed out after {0:?} waiting for instances to terminate; run `cluster down` again")]
    Timeout(std::time::Duration),
}
