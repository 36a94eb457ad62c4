//! Test helpers: a moto EC2 server per test (skipped with a reason when moto_server is not
//! installed) and the fake EC2.

pub(crate) mod fake;

use std::process::Stdio;
use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::{Credentials, Region};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Dummy credentials: the tests assert that neither ends up in user data.
pub(crate) const ACCESS_KEY: &str = "AKIAPUNISHERTESTKEY";
pub(crate) const SECRET_KEY: &str = "punisher-dummy-secret-never-in-user-data";

/// A moto_server on 127.0.0.1, killed when dropped.
pub(crate) struct Moto {
    _child: Child,
    pub(crate) url: String,
    pub(crate) addr: String,
}

impl Moto {
    /// Starts moto on a free port and waits until it answers; `None` (with the reason
    /// printed) when moto_server is not installed.
    pub(crate) async fn start() -> Option<Moto> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spawned = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "SKIPPED: moto_server not available ({e}); install it with \
                     pip install \"moto[server]\""
                );
                return None;
            }
        };
        let addr = format!("127.0.0.1:{port}");
        // Bounded wait for the server to listen (moto starts in about a second).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto_server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let moto = Moto {
            _child: child,
            url: format!("http://{addr}"),
            addr,
        };
        moto.reset().await;
        Some(moto)
    }

    /// POST /moto-api/reset: forget every resource.
    pub(crate) async fn reset(&self) {
        let mut s = TcpStream::connect(&self.addr).await.unwrap();
        s.write_all(
            b"POST /moto-api/reset HTTP/1.1\r\nHost: moto\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }

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
