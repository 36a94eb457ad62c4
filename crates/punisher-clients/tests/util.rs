//! Shared helpers of the integration tests: the node Socket.IO server (npm `socket.io` 4.x
//! run by node on 127.0.0.1, `tests/js/sio_server.js`) and the bound on every wait.
//!
//! The server needs node and an installed `socket.io`: `PUNISHER_NODE_MODULES` names the
//! `node_modules` directory (default `/tmp/sio-server/node_modules`, made by
//! `mkdir -p /tmp/sio-server && cd /tmp/sio-server && npm init -y && npm install socket.io@4`),
//! `PUNISHER_NODE` the node binary (default `node`). Without them a test that needs the
//! server says why it is SKIPPED and passes, or fails under CI ([`skip`]).

#[path = "../../../test-support/skip.rs"]
mod skip;
pub(crate) use skip::skip;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Bound on every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) struct NodeServer {
    _child: Child,
    port: u16,
}

impl NodeServer {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Starts the node server, or returns `None` (after [`skip`]) when node or socket.io is
/// missing.
pub(crate) async fn start(args: &[&str]) -> Option<NodeServer> {
    let modules = std::env::var("PUNISHER_NODE_MODULES")
        .unwrap_or_else(|_| "/tmp/sio-server/node_modules".to_owned());
    if !PathBuf::from(&modules).join("socket.io").is_dir() {
        skip(format!(
            "socket.io not found in {modules} (set PUNISHER_NODE_MODULES, or run \
             `mkdir -p /tmp/sio-server && cd /tmp/sio-server && npm init -y && npm install socket.io@4`)"
        ));
        return None;
    }
    let node = std::env::var("PUNISHER_NODE").unwrap_or_else(|_| "node".to_owned());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/sio_server.js");
    let child = Command::new(&node)
        .arg(script)
        .args(args)
        .env("NODE_PATH", &modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            skip(format!("cannot run {node}: {e}"));
            return None;
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = timeout(WAIT, lines.next_line())
        .await
        .expect("node server start")
        .unwrap();
    let port = line
        .expect("node server printed its port")
        .trim()
        .parse()
        .expect("a port");
    Some(NodeServer {
        _child: child,
        port,
    })
}

/// The node server started with these arguments, or `return` from the test (skipped).
macro_rules! server {
    ($($arg:expr),*) => {
        match $crate::util::start(&[$($arg),*]).await {
            Some(s) => s,
            None => return,
        }
    };
}
pub(crate) use server;
