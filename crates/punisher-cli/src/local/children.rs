//! The child processes of a local run (agents, the demo target): started with a pipe as
//! stdin and [`super::EXIT_WITH_PARENT_ENV`] so that they die with this process, their
//! stderr forwarded line by line with their name in front (through
//! [`crate::dashboard::child_line`], which holds it while the dashboard is up), stopped by
//! closing that pipe.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinHandle;

use super::EXIT_WITH_PARENT_ENV;

/// How long a child gets to exit after its stdin closed, before it is killed.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(10);
/// The last lines of a child's stderr kept to explain its early death.
const STDERR_TAIL: usize = 20;

/// A child process of this one: its stdin (closing it asks the child to exit), and the task
/// that forwards its stderr, prefixed.
pub(super) struct ChildProcess {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<()>>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ChildProcess {
    /// Starts `punisher ARGS` with the exit-with-parent pipe and a forwarded stderr.
    pub(super) fn spawn(
        name: String,
        mut cmd: Command,
        skip_line: Option<&'static str>,
    ) -> anyhow::Result<Self> {
        // Its own process group: a Ctrl-C in the terminal goes to this process alone, which
        // stops the run gracefully; the children must not stop on their own meanwhile.
        cmd.env(EXIT_WITH_PARENT_ENV, "1")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name} process"))?;
        let stdin = child.stdin.take();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().map(|stderr| {
            let (name, tail) = (name.clone(), tail.clone());
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if skip_line.is_some_and(|s| line.starts_with(s)) {
                        continue;
                    }
                    // Held while the dashboard has the terminal (it would draw over the
                    // line); its warnings and errors show in the dashboard's log pane.
                    crate::dashboard::child_line(&name, &line);
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == STDERR_TAIL {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            })
        });
        Ok(ChildProcess {
            name,
            child,
            stdin,
            stderr,
            tail,
        })
    }

    /// `Some(error)` when the child has exited.
    pub(super) fn exited(&mut self) -> Option<anyhow::Error> {
        let status = self.child.try_wait().ok().flatten()?;
        let tail = self
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join("\n  "))
            .unwrap_or_default();
        Some(anyhow!(
            "the {} process exited ({status}) before the run started{}",
            self.name,
            if tail.is_empty() {
                String::new()
            } else {
                format!(":\n  {tail}")
            }
        ))
    }

    /// Closes its stdin (the child stops), waits a while, then kills it.
    pub(super) async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(CHILD_EXIT_GRACE, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(process = %self.name, "did not exit in time; killing it");
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        if let Some(stderr) = self.stderr.take() {
            let _ = stderr.await;
        }
    }
}

pub(super) fn punisher_command() -> anyhow::Result<Command> {
    let exe = std::env::current_exe()
        .context("cannot find the punisher executable to start child processes")?;
    let mut cmd = Command::new(exe);
    // A user's cluster settings must not leak into the local children.
    for var in [
        "PUNISHER_CONTROLLER",
        "PUNISHER_CONTROLLER_FINGERPRINT",
        "PUNISHER_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    Ok(cmd)
}

/// Waits for every future (children stop in parallel: each may take its grace period).
pub(super) async fn join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// A base port on 127.0.0.1 such that `n` consecutive ports are free now (the target binds
/// them right after; a port taken meanwhile is a clear error from the target).
pub(super) fn free_consecutive_ports(n: usize) -> anyhow::Result<SocketAddr> {
    for _ in 0..50 {
        let first = StdListener::bind(("127.0.0.1", 0))?;
        let base = first.local_addr()?;
        let addrs = punisher_target::consecutive_addrs(base, n);
        if addrs.len() < n {
            continue;
        }
        let held: Result<Vec<_>, _> = addrs[1..].iter().map(StdListener::bind).collect();
        if held.is_ok() {
            return Ok(base);
        }
    }
    Err(anyhow!("tried 50 times"))
}
