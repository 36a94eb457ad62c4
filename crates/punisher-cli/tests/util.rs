//! Helpers to run the real `punisher` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) elapsed: Duration,
}

pub(crate) fn scenario(dir: &tempfile::TempDir, name: &str, source: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, source).unwrap();
    path
}

pub(crate) fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_punisher"));
    // Runs write no results folder unless a test asks for one (the results tests remove
    // this variable): the default `results/` would land in the source tree.
    cmd.args(args)
        .env("PUNISHER_LOG", "warn")
        .env("PUNISHER_NO_RESULTS", "true")
        .stdin(Stdio::null());
    cmd
}

/// Runs punisher to its end (each test's scenario is bounded in time).
pub(crate) fn punisher(args: &[&str]) -> Output {
    run(command(args))
}

/// Runs a prepared [`command`] to its end.
pub(crate) fn run(mut command: Command) -> Output {
    let start = Instant::now();
    let out = command.output().expect("run punisher");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Starts punisher, waits for its first status line on stderr, sends SIGINT, and collects
/// the output. The status line is the event that proves users are running.
pub(crate) fn interrupt_after_first_status(args: &[&str]) -> Output {
    let start = Instant::now();
    let mut child = command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn punisher");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("req/s") {
            break;
        }
        line.clear();
    }
    assert!(
        seen.contains("req/s"),
        "no status line before the end: {seen}"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    seen.push_str(&rest);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = child.wait().unwrap();
    Output {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr: seen,
        elapsed: start.elapsed(),
    }
}

/// A `punisher target` child process, killed when dropped.
pub(crate) struct Target {
    child: Child,
    pub(crate) addr: String,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_target() -> Target {
    start_target_with(&[])
}

/// A `punisher target` with extra flags, on a free port whose next port is free too (for
/// `--processes 2`).
pub(crate) fn start_target_with(flags: &[&str]) -> Target {
    // The ports are free when we look; the target binds them right after.
    let port = (0..20)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .find(|p| *p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok())
        .expect("a free pair of consecutive ports");
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_punisher"))
        .args(["target", "--listen", &addr])
        .args(flags)
        .env("PUNISHER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start punisher target");
    let target = Target { child, addr };
    wait_listening(&target.addr);
    target
}

/// Waits (bounded: 20 s) until something accepts connections at `addr`.
pub(crate) fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens at {addr}");
        std::thread::yield_now();
    }
}

/// The body of `GET path` (HTTP/1.0: the server closes after the answer).
pub(crate) fn get_body(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// `GET /admin/stats` as JSON.
pub(crate) fn stats(addr: &str) -> serde_json::Value {
    let body = get_body(addr, "/admin/stats");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {body}"))
}
