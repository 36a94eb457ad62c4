//! Test helpers: a moto EC2 server per test (skipped, or failed under CI, when moto_server
//! is not installed) with SDK clients on it, and the fake EC2.

pub(crate) mod fake;
mod moto;

#[path = "../../../../test-support/skip.rs"]
mod skip;
pub(crate) use skip::skip;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::{Credentials, Region};

pub(crate) use moto::Moto;

/// Dummy credentials: the tests assert that neither ends up in user data.
pub(crate) const ACCESS_KEY: &str = "AKIAPUNISHERTESTKEY";
pub(crate) const SECRET_KEY: &str = "punisher-dummy-secret-never-in-user-data";

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
