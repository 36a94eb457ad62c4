//! Exit codes and the error type that carries one.

use std::process::ExitCode;

/// Thresholds passed (or none were set) and the run completed.
pub const PASSED: u8 = 0;
/// The run could not complete.
pub const RUN_ERROR: u8 = 1;
/// Bad usage or an invalid scenario: nothing was started.
pub const INVALID: u8 = 2;
/// One or more thresholds failed (k6's code, so CI scripts written for k6 keep working).
pub const THRESHOLDS_FAILED: u8 = 99;

/// An error that ends the command, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// The scenario or the flags are wrong: exit 2.
    pub fn invalid(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: INVALID,
            error: error.into(),
        }
    }

    /// The run itself failed: exit 1.
    pub fn run(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: RUN_ERROR,
            error: error.into(),
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.error)
    }
}
