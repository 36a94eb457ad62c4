//! Errors on the wire: [`ServiceError`] is what the controller's services return, mapped to
//! `tonic::Status` in one place ([`ServiceError::into_status`]); [`Refusal`] is what a client
//! reads back from such a status when the controller refused it for good (retrying the same
//! way cannot succeed).

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The metadata key naming which admission check failed.
const REFUSAL_KEY: &str = "punisher-refusal";

/// A check that failed and that no retry can fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error(
        "the controller refused the cluster token: pass the token the controller was started with \
         (--token or PUNISHER_TOKEN)"
    )]
    Token,
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the other side {theirs}; \
         run the same punisher release on the controller and the agents"
    )]
    Version { ours: u32, theirs: u32 },
    #[error(
        "the controller's certificate fingerprint is {actual}, not the pinned {expected}: check \
         --controller-fingerprint against the one the controller printed at start (it changes \
         when the controller's state directory is lost), or you are not talking to your controller"
    )]
    Fingerprint { expected: String, actual: String },
    #[error(
        "plaintext is only allowed to a loopback address, and {0} is not one: drop \
         --insecure-loopback and pin the controller's certificate with --controller-fingerprint"
    )]
    NotLoopback(String),
}

/// Errors of the controller's services.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("missing or wrong cluster token")]
    WrongToken,
    #[error("protocol version mismatch: controller speaks {controller}, agent {agent}")]
    Version { controller: u32, agent: u32 },
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the controller is shutting down")]
    ShuttingDown,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// The one mapping from domain errors to gRPC statuses.
    pub fn into_status(self) -> Status {
        let message = self.to_string();
        match self {
            ServiceError::WrongToken => {
                refusal_status(Code::Unauthenticated, message, "token", None)
            }
            ServiceError::Version { controller, .. } => refusal_status(
                Code::FailedPrecondition,
                message,
                "version",
                Some(controller),
            ),
            ServiceError::Invalid(_) => Status::invalid_argument(message),
            ServiceError::TooLarge(_) => Status::resource_exhausted(message),
            ServiceError::NotFound(_) => Status::not_found(message),
            ServiceError::Conflict(_) => Status::failed_precondition(message),
            ServiceError::ShuttingDown => Status::unavailable(message),
            ServiceError::Internal(_) => Status::internal(message),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        e.into_status()
    }
}

fn refusal_status(code: Code, message: String, kind: &'static str, version: Option<u32>) -> Status {
    let mut status = Status::new(code, message);
    status
        .metadata_mut()
        .insert(REFUSAL_KEY, MetadataValue::from_static(kind));
    if let Some(v) = version {
        status
            .metadata_mut()
            .insert("punisher-protocol", MetadataValue::from(v));
    }
    status
}

impl Refusal {
    /// Reads a refusal from a status the controller returned; `None` for every other
    /// status (those are worth a retry, or are plain errors).
    pub fn from_status(status: &Status, our_protocol: u32) -> Option<Refusal> {
        let kind = status.metadata().get(REFUSAL_KEY)?.to_str().ok()?;
        match kind {
            "token" => Some(Refusal::Token),
            "version" => {
                let theirs = status
                    .metadata()
                    .get("punisher-protocol")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Some(Refusal::Version {
                    ours: our_protocol,
                    theirs,
                })
            }
            _ => None,
        }
        .or_else(|| (status.code() == Code::Unauthenticated).then_some(Refusal::Token))
    }
}

/// Compares two tokens in time that depends on their lengths only.
pub fn tokens_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_survive_the_status_round_trip() {
        let s = ServiceError::WrongToken.into_status();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(Refusal::from_status(&s, 1), Some(Refusal::Token));
        let s = ServiceError::Version {
            controller: 7,
            agent: 1,
        }
        .into_status();
        assert_eq!(
            Refusal::from_status(&s, 1),
            Some(Refusal::Version { ours: 1, theirs: 7 })
        );
        let s = ServiceError::Invalid("x".into()).into_status();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(Refusal::from_status(&s, 1), None);
        assert!(Refusal::Token.to_string().contains("--token"));
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal("abc", "abc"));
        assert!(!tokens_equal("abc", "abd"));
        assert!(!tokens_equal("abc", "abcd"));
        assert!(tokens_equal("", ""));
    }
}
