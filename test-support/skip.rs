//! Shared by the integration tests of every crate (`#[path]` include): tests that cannot
//! run here because a tool is missing say so, and fail under CI.

use std::io::Write as _;

/// A test that cannot run here because `reason` (a tool is missing). Under CI (`CI` set, as
/// `.ci/run` does) that is a failure: CI installs every tool the tests need, and a skip
/// would look like a pass. Elsewhere it says SKIPPED on the process's stderr, past the
/// harness's capture of the test's output, so that `cargo test` shows it.
pub(crate) fn skip(reason: impl std::fmt::Display) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") {
        panic!("{test} cannot run under CI: {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}
