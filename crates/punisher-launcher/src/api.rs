//! The EC2 calls the launcher makes, as one small trait over plain domain types, so that the
//! planning, launch and teardown logic is testable with a fake (for what moto lacks) and the
//! aws-sdk types stay inside [`crate::aws`].

use std::future::Future;
use std::time::SystemTime;

/// An Amazon Machine Image found by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// ISO 8601 as EC2 returns it; sorts chronologically as a string.
    pub creation_date: String,
}

/// A spot price observed in one zone for one instance type.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotQuote {
    pub instance_type: String,
    pub zone: String,
    /// US dollars per instance-hour.
    pub price: f64,
    pub at: Option<SystemTime>,
}

/// One RunInstances call: `count` spot instances of one type in one zone.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub image_id: String,
    pub instance_type: String,
    pub zone: String,
    /// Launch at most this many.
    pub count: u32,
    /// And at least this many, or none (EC2 fails the call with a capacity error).
    pub min_count: u32,
    /// The spot price cap in dollars per hour; `None` lets EC2 cap at the on-demand price.
    pub max_price: Option<String>,
    /// Already base64-encoded, as RunInstances wants it.
    pub user_data_base64: String,
    pub security_group_id: Option<String>,
    /// Put on the instances and on their volumes.
    pub tags: Vec<(String, String)>,
}

/// An instance as the launcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    /// EC2's state name: pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    pub launch_time: Option<SystemTime>,
    /// `Some("spot")` for spot instances.
    pub lifecycle: Option<String>,
    pub private_ip: Option<String>,
    pub tags: Vec<(String, String)>,
}

impl Instance {
    /// The value of a tag, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        tag_value(&self.tags, key)
    }

    /// Whether the instance still exists or may still cost money (not terminated).
    pub fn is_live(&self) -> bool {
        self.state != "terminated"
    }
}

/// A security group found by the cluster's tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub tags: Vec<(String, String)>,
}

/// Which instances `describe_instances` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceFilter {
    /// Instances tagged `punisher:cluster=NAME`.
    Cluster(String),
    /// Instances carrying a `punisher:cluster` tag, whatever its value.
    AnyCluster,
}

/// The value of `key` in a tag list.
pub fn tag_value<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// What kind of failure an EC2 call had: decides between "try the next type or zone" and
/// "give up on this region".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// No spot capacity for this type in this zone.
    Capacity,
    /// The current spot price is above the cap.
    PriceTooLow,
    /// An account limit (vCPUs, spot instance count).
    Quota,
    /// A type or zone this region does not offer, or a bad parameter.
    Unsupported,
    /// Credentials missing, expired or not allowed to do this.
    Auth,
    /// A resource still in use (a security group with instances).
    DependencyViolation,
    /// The resource is already gone.
    NotFound,
    /// A duplicate name (a security group that exists).
    Duplicate,
    /// Anything else: network, throttling after retries, server errors.
    Other,
}

impl ApiErrorKind {
    /// Whether another instance type or zone might succeed where this failed.
    pub fn try_next_candidate(self) -> bool {
        matches!(
            self,
            ApiErrorKind::Capacity
                | ApiErrorKind::PriceTooLow
                | ApiErrorKind::Quota
                | ApiErrorKind::Unsupported
        )
    }

    /// Classifies an EC2 error code.
    pub fn from_code(code: &str) -> ApiErrorKind {
        match code {
            "SpotMaxPriceTooLow" => ApiErrorKind::PriceTooLow,
            "InsufficientInstanceCapacity"
            | "InsufficientCapacity"
            | "InsufficientHostCapacity"
            | "InsufficientReservedInstanceCapacity" => ApiErrorKind::Capacity,
            "MaxSpotInstanceCountExceeded" | "VcpuLimitExceeded" | "InstanceLimitExceeded" => {
                ApiErrorKind::Quota
            }
            "Unsupported" | "InvalidParameterValue" | "InvalidParameterCombination" => {
                ApiErrorKind::Unsupported
            }
            "AuthFailure"
            | "UnauthorizedOperation"
            | "OptInRequired"
            | "ExpiredToken"
            | "RequestExpired"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException" => ApiErrorKind::Auth,
            "DependencyViolation" => ApiErrorKind::DependencyViolation,
            "InvalidInstanceID.NotFound" | "InvalidGroup.NotFound" => ApiErrorKind::NotFound,
            "InvalidGroup.Duplicate" => ApiErrorKind::Duplicate,
            _ => ApiErrorKind::Other,
        }
    }
}

/// A failed EC2 call, converted from the SDK's error at the crate's edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct ApiError {
    pub operation: &'static str,
    pub kind: ApiErrorKind,
    /// EC2's error code (`InsufficientInstanceCapacity`), when the service answered.
    pub code: Option<String>,
    pub message: String,
}

impl ApiError {
    /// An error with a known EC2 code.
    pub fn coded(operation: &'static str, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            operation,
            kind: ApiErrorKind::from_code(code),
            code: Some(code.to_owned()),
            message: message.into(),
        }
    }

    /// An error without a code (network, timeout, unparsable answer).
    pub fn other(operation: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            operation,
            kind: ApiErrorKind::Other,
            code: None,
            message: message.into(),
        }
    }
}

/// The EC2 calls the launcher needs, each in one named region. Implemented over aws-sdk-ec2
/// by [`crate::aws::AwsEc2`] and by fakes in tests.
pub trait Ec2: Send + Sync {
    /// Regions enabled for the account (opted in or not requiring opt-in).
    fn describe_regions(&self) -> impl Future<Output = Result<Vec<String>, ApiError>> + Send;

    /// Amazon-owned images whose name matches `name_pattern` (EC2 wildcards) for `arch`.
    fn describe_images(
        &self,
        region: &str,
        name_pattern: &str,
        arch: &str,
    ) -> impl Future<Output = Result<Vec<Image>, ApiError>> + Send;

    /// Linux spot prices for these types since `since`, all zones.
    fn spot_prices(
        &self,
        region: &str,
        instance_types: &[String],
        since: SystemTime,
    ) -> impl Future<Output = Result<Vec<SpotQuote>, ApiError>> + Send;

    /// Security groups tagged `punisher:cluster=cluster`.
    fn security_groups(
        &self,
        region: &str,
        cluster: &str,
    ) -> impl Future<Output = Result<Vec<SecurityGroup>, ApiError>> + Send;

    /// Creates a security group in the default VPC, tagged; returns its id. Its only rule is
    /// EC2's default egress: agents dial out and nothing dials in.
    fn create_security_group(
        &self,
        region: &str,
        name: &str,
        description: &str,
        tags: &[(String, String)],
    ) -> impl Future<Output = Result<String, ApiError>> + Send;

    fn delete_security_group(
        &self,
        region: &str,
        id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    /// RunInstances as spot (one-time, terminate on interruption) with
    /// InstanceInitiatedShutdownBehavior=terminate.
    fn run_instances(
        &self,
        region: &str,
        spec: &LaunchSpec,
    ) -> impl Future<Output = Result<Vec<Instance>, ApiError>> + Send;

    /// All instances matching `filter`, terminated ones included (EC2 shows them for a while).
    fn describe_instances(
        &self,
        region: &str,
        filter: &InstanceFilter,
    ) -> impl Future<Output = Result<Vec<Instance>, ApiError>> + Send;

    fn terminate_instances(
        &self,
        region: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<(), ApiError>> + Send;
}
