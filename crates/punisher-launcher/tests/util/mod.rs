//! Test helpers: a moto EC2 server per test (skipped, or failed under CI, when moto_server
//! is not installed) with SDK clients on it, and the fake EC2.

pub(crate) mod fake;
mod moto;

use std::io::Write as _;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::{Credentials, Region};

pub(crate) use moto::Moto;

/// Dummy credentials: the tests assert that neither ends up in user data.
pub(crate) const ACCESS_KEY: &str = "AKIAPUNISHERTESTKEY";
pub(crate) const SECRET_KEY: &str = "punisher-dummy-secret-never-in-user-data";

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

/// The SDK side of the shared [`Moto`] (the CLI's tests use it without the SDK).
impl Moto {
    /// SDK configuration with static dummy credentials, pointed at this moto.
    pub(crate) async fn sdk_config(&self) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .load()
            .await
    }

    /// A raw SDK client in one region, to read back what the launcher did.
    pub(crate) async fn client(&self, region: &str) -> aws_sdk_ec2::Client {
        let base = self.sdk_config().await;
        let conf = aws_sdk_ec2::config::Builder::from(&base)
            .region(Region::new(region.to_owned()))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }
}

/// Progress lines collected for assertions.
#[derive(Default)]
pub(crate) struct Lines(pub(crate) std::sync::Mutex<Vec<(String, String)>>);

impl punisher_launcher::progress::Progress for Lines {
    fn line(&self, region: &str, message: &str) {
        self.0
            .lock()
            .unwrap()
            .push((region.to_owned(), message.to_owned()));
    }
}

impl Lines {
    pub(crate) fn for_region(&self, region: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| r == region)
            .map(|(_, m)| m.clone())
            .collect()
    }
}
