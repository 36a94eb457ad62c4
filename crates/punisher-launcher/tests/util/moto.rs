//! A moto EC2 server on 127.0.0.1 for one test, and what can be read from it without the
//! AWS SDK: raw `Describe*` answers, and moto's recording of every request it received.
//!
//! Shared as source by the launcher's tests and the CLI's tests (which include this file
//! with `#[path]`): only std, tokio, serde_json and base64, no AWS SDK, so that the CLI
//! crate's tests stay free of SDK types. Whether a missing moto_server skips or fails the
//! test is the caller's choice (its crate's `skip` helper).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The EC2 query API version the SDK speaks.
const EC2_VERSION: &str = "2016-11-15";

/// The `Describe*` answers that make up a region's state for [`Moto::census`]: everything
/// `cluster up` could create (instances, their volumes, security groups, tags, spot
/// requests).
const CENSUS_ACTIONS: &[&str] = &[
    "DescribeInstances",
    "DescribeVolumes",
    "DescribeSecurityGroups",
    "DescribeTags",
    "DescribeSpotInstanceRequests",
];

/// moto_server with its request recorder made thread-safe. moto serves requests on threads
/// and appends each one to the recording with separate `write`s; a request bigger than
/// Python's 8 KiB write buffer (a RunInstances with its user data) goes out in several
/// chunks, so concurrent requests (the launcher works on its regions in parallel)
/// interleaved and broke the JSON lines. Exits 3 when moto is not installed.
const MOTO_SERVER: &str = r#"
import sys, threading
try:
    from moto.moto_api._internal.recorder.models import Recorder
    from moto.server import main
except ImportError as e:
    print(e, file=sys.stderr)
    sys.exit(3)
record, lock = Recorder._record_request, threading.Lock()
def record_one_at_a_time(self, *args, **kwargs):
    with lock:
        return record(self, *args, **kwargs)
Recorder._record_request = record_one_at_a_time
sys.exit(main(sys.argv[1:]))
"#;

/// A moto_server on 127.0.0.1 that records every request, killed when dropped.
pub(crate) struct Moto {
    _child: Child,
    /// `http://127.0.0.1:PORT`, for `--endpoint-url`.
    pub(crate) url: String,
    addr: String,
    recording: PathBuf,
}

/// One EC2 request moto received: its region (from the signature's credential scope), its
/// `Action` and its form parameters.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) region: String,
    pub(crate) action: String,
    pub(crate) params: HashMap<String, String>,
}

impl Call {
    /// A parameter, e.g. `InstanceMarketOptions.SpotOptions.SpotInstanceType`.
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Whether the call only reads: EC2's read-only calls are exactly the `Describe*` ones
    /// (the launcher makes no other kind of read).
    pub(crate) fn is_read_only(&self) -> bool {
        self.action.starts_with("Describe")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.recording);
    }
}

impl Moto {
    /// Starts moto on a free port with its request recorder on, waits until it answers and
    /// resets it. `Err` says why when moto_server cannot be run (not installed).
    pub(crate) async fn start() -> Result<Moto, String> {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let recording =
            std::env::temp_dir().join(format!("punisher-moto-{}-{port}.jsonl", std::process::id()));
        let spawned = Command::new("python3")
            .args([
                "-c",
                MOTO_SERVER,
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            // moto's recorder: every request, appended to this file as a JSON line.
            .env("MOTO_ENABLE_RECORDING", "true")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let not_installed = |why: String| {
            format!(
                "moto_server not available ({why}); install it with pip install \"moto[server]\""
            )
        };
        let mut child = spawned.map_err(|e| not_installed(e.to_string()))?;
        let addr = format!("127.0.0.1:{port}");
        // Bounded wait for the server to listen (moto starts in about a second).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(&addr).await.is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                if status.code() == Some(3) {
                    return Err(not_installed("python3 cannot import moto".to_owned()));
                }
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
            recording,
        };
        let reset = moto.http("POST", "/moto-api/reset", None).await;
        assert!(reset.starts_with("HTTP/1.1 200"), "{reset}");
        Ok(moto)
    }

    /// One request on its own connection; the whole answer, head and body.
    async fn http(&self, method: &str, path: &str, region: Option<&str>) -> String {
        let mut s = TcpStream::connect(&self.addr).await.unwrap();
        // moto's EC2 takes the region from the signature's credential scope and, by default,
        // does not check the signature itself.
        let auth = region
            .map(|r| {
                format!(
                    "Authorization: AWS4-HMAC-SHA256 Credential=testing/20250101/{r}/ec2/\
                     aws4_request, SignedHeaders=host, Signature=0\r\n"
                )
            })
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: moto\r\n{auth}Content-Length: 0\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// What exists in these regions, as moto's raw answers to [`CENSUS_ACTIONS`]: equal
    /// censuses mean that nothing was created, changed or deleted in between. (These reads
    /// are recorded too: [`Moto::calls`] lists them.)
    pub(crate) async fn census(&self, regions: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for region in regions {
            for action in CENSUS_ACTIONS {
                let path = format!("/?Action={action}&Version={EC2_VERSION}");
                let answer = self.http("GET", &path, Some(region)).await;
                assert!(answer.starts_with("HTTP/1.1 200"), "{action}: {answer}");
                out.push(format!("{region} {action}: {}", body_of(&answer)));
            }
        }
        out
    }

    /// Every EC2 call moto received so far, in order (moto's request recorder).
    pub(crate) fn calls(&self) -> Vec<Call> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let entry: serde_json::Value = serde_json::from_str(line).unwrap();
                let body = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"].as_bool() == Some(true) {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .unwrap();
                    String::from_utf8(bytes).unwrap()
                } else {
                    body.to_owned()
                };
                // The SDK POSTs a form; the census GETs with a query string.
                let url = entry["url"].as_str().unwrap_or_default();
                let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
                let params: HashMap<String, String> = [query, body.as_str()]
                    .into_iter()
                    .flat_map(|s| s.split('&'))
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (form_decode(k), form_decode(v)))
                    .collect();
                // moto's own API (reset) has no Action.
                let action = params.get("Action")?.clone();
                let auth = entry["headers"]["Authorization"].as_str().unwrap_or("");
                let region = auth
                    .split("Credential=")
                    .nth(1)
                    .and_then(|c| c.split('/').nth(2))
                    .unwrap_or("")
                    .to_owned();
                Some(Call {
                    region,
                    action,
                    params,
                })
            })
            .collect()
    }
}

/// The body of an HTTP/1.1 answer (moto sends a Content-Length, never chunks).
fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}
