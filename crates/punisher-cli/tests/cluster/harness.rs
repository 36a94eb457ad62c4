//! The processes of a test cluster: `punisher controller`, `punisher agent`, `punisher
//! target` and `punisher run` as real child processes on 127.0.0.1, each with its output
//! collected line by line so that tests wait on what a process says (never on a fixed
//! sleep), and killed when dropped, also when a test fails (then its output is printed).
//! Plus a tiny HTTP recorder that notes who sent what, when.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

pub(crate) const TOKEN: &str = "cluster-test-token";

/// A child process whose stdout and stderr lines are kept.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Bumped on every line; closed when both streams ended.
    seen: watch::Receiver<usize>,
}

/// `punisher ARGS` with a log filter, no results folder, and nothing inherited that would
/// change what the flags say.
pub(crate) fn punisher(args: &[&str], log: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    configure(&mut cmd, log);
    cmd
}

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_punisher");

/// The environment and pipes of every punisher process of these tests.
pub(crate) fn configure(cmd: &mut Command, log: &str) {
    cmd.env("PUNISHER_LOG", log)
        .env("NO_COLOR", "1")
        .env("PUNISHER_NO_RESULTS", "true")
        .env_remove("PUNISHER_TOKEN")
        .env_remove("PUNISHER_CONTROLLER")
        .env_remove("PUNISHER_CONTROLLER_FINGERPRINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    lines: Arc<Mutex<Vec<String>>>,
    tx: Arc<watch::Sender<usize>>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            lines.lock().unwrap().push(strip_ansi(&line));
            tx.send_modify(|n| *n += 1);
        }
    });
}

/// The line without terminal colour codes (`ESC [ ... m`), which logs may carry.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> Proc {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seen) = watch::channel(0usize);
        let tx = Arc::new(tx);
        if let Some(out) = child.stdout.take() {
            collect(out, lines.clone(), tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, lines.clone(), tx);
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
            seen,
        }
    }

    pub(crate) fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line satisfies `pred` (lines already seen count) and returns it.
    pub(crate) async fn wait_line(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_lines(what, 1, within, pred).await.pop().unwrap()
    }

    /// Waits until `count` lines satisfy `pred`; returns them.
    pub(crate) async fn wait_lines(
        &mut self,
        what: &str,
        count: usize,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<String> = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| pred(l))
                .cloned()
                .collect();
            if found.len() >= count {
                return found;
            }
            match timeout_at(deadline, self.seen.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Both streams ended: one last look, then give up.
                    if self
                        .lines
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|l| pred(l))
                        .count()
                        >= count
                    {
                        continue;
                    }
                    panic!("{}: ended before {what}:\n{}", self.name, self.log());
                }
                Err(_) => panic!(
                    "{}: no {what} within {within:?}:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// Waits for the process to exit; panics after `within`.
    pub(crate) async fn exit(&mut self, within: Duration) -> ExitStatus {
        match timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Let the readers drain what the process wrote last.
                let mut seen = self.seen.clone();
                let _ = timeout(Duration::from_secs(5), async {
                    while seen.changed().await.is_ok() {}
                })
                .await;
                status
            }
            Ok(Err(e)) => panic!("{}: cannot wait: {e}", self.name),
            Err(_) => panic!(
                "{}: still running after {within:?}:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// SIGKILL (`kill -9`), and reaps it.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// SIGTERM, as systemd or Kubernetes stop a process; does not wait.
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().expect("the process was already reaped");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }

    /// `Some(status)` once it exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            let lines = self.lines.lock().map(|l| l.clone()).unwrap_or_default();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!("----- {} (last {} lines) -----", self.name, tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

/// A free port on 127.0.0.1 (free when we look; the caller binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The text after `marker` up to the next white space, in `line`.
pub(crate) fn word_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap_or("")
}

const START: Duration = Duration::from_secs(30);

/// A controller on 127.0.0.1 and its agents.
pub(crate) struct Cluster {
    pub(crate) controller: Proc,
    pub(crate) addr: String,
    pub(crate) agents: Vec<Proc>,
    pub(crate) dir: tempfile::TempDir,
    /// `--insecure-loopback`, or `--controller-fingerprint F` for a TLS controller.
    pub(crate) trust: Vec<String>,
}

impl Cluster {
    /// A plaintext loopback controller on a port of its choosing.
    pub(crate) async fn start() -> Cluster {
        Cluster::start_on("127.0.0.1:0").await
    }

    pub(crate) async fn start_on(listen: &str) -> Cluster {
        Cluster::start_with(listen, false, &[]).await
    }

    /// A plaintext loopback controller with more flags.
    pub(crate) async fn start_flags(extra: &[&str]) -> Cluster {
        Cluster::start_with("127.0.0.1:0", false, extra).await
    }

    /// A TLS controller on `listen` (its certificate in the test's temporary folder).
    pub(crate) async fn start_tls(listen: &str) -> Cluster {
        Cluster::start_with(listen, true, &[]).await
    }

    async fn start_with(listen: &str, tls: bool, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        let state = dir.path().join("state");
        let controller = controller_proc(listen, &results, tls.then_some(state.as_path()), extra);
        let mut cluster = Cluster {
            controller,
            addr: String::new(),
            agents: Vec::new(),
            dir,
            trust: vec!["--insecure-loopback".into()],
        };
        let line = cluster
            .controller
            .wait_line("\"controller listening on\"", START, |l| {
                l.contains("controller listening on ")
            })
            .await;
        cluster.addr = word_after(&line, "controller listening on ").to_owned();
        if tls {
            let line = cluster
                .controller
                .wait_line("fingerprint", START, |l| {
                    l.contains("certificate fingerprint: ")
                })
                .await;
            let fp = word_after(&line, "certificate fingerprint: ").to_owned();
            cluster.trust = vec!["--controller-fingerprint".into(), fp];
        }
        cluster
    }

    /// The arguments of `punisher agent` joining `controller` as `id`.
    pub(crate) fn agent_args(&self, id: &str, controller: &str, source_ip: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "agent",
            "--controller",
            controller,
            "--token",
            TOKEN,
            "--agent-id",
            id,
            "--workers",
            "1",
            "--source-ips",
            source_ip,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.trust.iter().cloned());
        args
    }

    /// Starts agent `id` dialing `controller` (this cluster's address unless given), with
    /// its HTTP connections from `source_ip`, and waits until it joined.
    pub(crate) async fn add_agent(
        &mut self,
        id: &str,
        source_ip: &str,
        controller: Option<&str>,
        extra: &[&str],
    ) -> usize {
        let controller = controller.unwrap_or(&self.addr).to_owned();
        let mut args = self.agent_args(id, &controller, source_ip);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.join(Proc::spawn(id, punisher(&args, "info"))).await
    }

    /// Keeps `agent` (started by the caller) once it joined.
    pub(crate) async fn join(&mut self, mut agent: Proc) -> usize {
        agent
            .wait_line("join", START, |l| l.contains("joined the controller"))
            .await;
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// Agents a1..=aN with source addresses 127.0.0.2, 127.0.0.3, ...
    pub(crate) async fn with_agents(n: usize) -> Cluster {
        let mut cluster = Cluster::start().await;
        for i in 1..=n {
            cluster
                .add_agent(&format!("a{i}"), &format!("127.0.0.{}", i + 1), None, &[])
                .await;
        }
        cluster
    }

    /// `punisher run SCRIPT --controller ... --wait-agents N -q --summary-json ...`, started.
    pub(crate) fn submit(&self, script: &Path, wait_agents: usize, extra: &[&str]) -> RunProc {
        self.submit_with(script, wait_agents, extra, true)
    }

    /// As [`Cluster::submit`], without `-q`: a status line per merged second on stderr (no
    /// dashboard: stdin is not a terminal).
    pub(crate) fn submit_live(&self, script: &Path, wait_agents: usize, extra: &[&str]) -> RunProc {
        self.submit_with(script, wait_agents, extra, false)
    }

    fn submit_with(
        &self,
        script: &Path,
        wait_agents: usize,
        extra: &[&str],
        quiet: bool,
    ) -> RunProc {
        let summary = self
            .dir
            .path()
            .join(format!("summary-{}.json", rand_suffix()));
        let wait = wait_agents.to_string();
        let mut args = vec![
            "run",
            script.to_str().unwrap(),
            "--controller",
            &self.addr,
            "--token",
            TOKEN,
            "--wait-agents",
            &wait,
            "--no-tui",
            "--summary-json",
            summary.to_str().unwrap(),
        ];
        if quiet {
            args.push("-q");
        }
        args.extend(self.trust.iter().map(String::as_str));
        args.extend_from_slice(extra);
        RunProc {
            proc: Proc::spawn("run", punisher(&args, "warn")),
            summary,
        }
    }

    /// `punisher ctl ARGS` against this controller: (exit code, output).
    pub(crate) async fn ctl(&self, args: &[&str]) -> (i32, String) {
        let mut all = vec!["ctl", "--controller", &self.addr, "--token", TOKEN];
        all.extend(self.trust.iter().map(String::as_str));
        all.extend_from_slice(args);
        let mut ctl = Proc::spawn("ctl", punisher(&all, "warn"));
        let status = ctl.exit(Duration::from_secs(20)).await;
        (status.code().unwrap_or(-1), ctl.log())
    }

    pub(crate) async fn status(&self) -> String {
        let (code, out) = self.ctl(&["status"]).await;
        assert_eq!(code, 0, "ctl status failed: {out}");
        out
    }

    /// Polls `ctl status` until `pred` holds; returns the output and when it held.
    pub(crate) async fn status_until(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (String, Instant) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.status().await;
            if pred(&out) {
                return (out, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {within:?}; last status:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await; // a poll interval
        }
    }
}

fn controller_proc(listen: &str, results: &Path, tls_state: Option<&Path>, extra: &[&str]) -> Proc {
    let mut args = vec![
        "controller",
        "--listen",
        listen,
        "--token",
        TOKEN,
        "--results-dir",
        results.to_str().unwrap(),
    ];
    match tls_state {
        Some(state) => args.extend(["--state-dir", state.to_str().unwrap()]),
        None => args.push("--insecure-loopback"),
    }
    args.extend_from_slice(extra);
    Proc::spawn("controller", punisher(&args, "info"))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A `punisher run --controller` process.
pub(crate) struct RunProc {
    pub(crate) proc: Proc,
    pub(crate) summary: PathBuf,
}

/// How a run ended.
pub(crate) struct RunOutput {
    pub(crate) code: i32,
    pub(crate) log: String,
    pub(crate) summary: serde_json::Value,
}

impl RunOutput {
    /// A counter's merged count from the summary: `metric` or `metric{tag:value}`.
    pub(crate) fn count(&self, series: &str) -> u64 {
        let m = if series.contains('{') {
            &self.summary["series"][series]
        } else {
            &self.summary["metrics"][series]
        };
        m["values"]["count"].as_f64().unwrap_or(0.0) as u64
    }
}

impl RunProc {
    pub(crate) async fn finish(&mut self, within: Duration) -> RunOutput {
        let status = self.proc.exit(within).await;
        let summary = std::fs::read(&self.summary)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        RunOutput {
            code: status.code().unwrap_or(-1),
            log: self.proc.log(),
            summary,
        }
    }
}

/// A `punisher target` process.
pub(crate) struct Target {
    /// Kept for its Drop: the target dies with the test.
    _proc: Proc,
    pub(crate) addr: String,
}

impl Target {
    pub(crate) async fn start() -> Target {
        let mut proc = Proc::spawn(
            "target",
            punisher(&["target", "--listen", "127.0.0.1:0"], "warn"),
        );
        let line = proc
            .wait_line("\"listening\"", START, |l| {
                l.contains("listening on http://")
            })
            .await;
        let addr = word_after(&line, "listening on http://").to_owned();
        Target { _proc: proc, addr }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /admin/stats`.
    pub(crate) async fn stats(&self) -> serde_json::Value {
        let body = http10(&self.addr, "GET", "/admin/stats").await;
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {body}"))
    }

    /// `POST /admin/reset`.
    pub(crate) async fn reset(&self) {
        http10(&self.addr, "POST", "/admin/reset").await;
    }
}

/// One HTTP/1.0 request (the server closes after the answer); the body of the answer.
async fn http10(addr: &str, method: &str, path: &str) -> String {
    timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    })
    .await
    .unwrap_or_else(|_| panic!("{method} {path} on {addr} did not answer"))
}

pub(crate) fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// One request the recorder saw.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) ip: IpAddr,
    pub(crate) path: String,
    pub(crate) vu: Option<u64>,
    /// The query string (without `?`).
    pub(crate) query: String,
    pub(crate) at: Instant,
}

impl Hit {
    /// The value of `key=` in the query string.
    pub(crate) fn param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

type Hits = Arc<Mutex<Vec<Hit>>>;

/// An HTTP server in the test that answers `{}` to everything and notes each request's
/// source address (agents use distinct ones), path, `vu=` query value and arrival time.
pub(crate) struct Recorder {
    pub(crate) url: String,
    hits: Hits,
    task: JoinHandle<()>,
}

async fn record(
    State(hits): State<Hits>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
) -> &'static str {
    let vu = uri.query().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("vu="))
            .and_then(|v| v.parse().ok())
    });
    hits.lock().unwrap().push(Hit {
        ip: peer.ip(),
        path: uri.path().to_owned(),
        vu,
        query: uri.query().unwrap_or_default().to_owned(),
        at: Instant::now(),
    });
    "{}"
}

impl Recorder {
    pub(crate) async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits: Hits = Arc::default();
        let app = Router::new().fallback(record).with_state(hits.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        Recorder { url, hits, task }
    }

    pub(crate) fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until `pred(hits)` holds (polled every 50 ms).
    pub(crate) async fn until(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Hit]) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.hits.lock().unwrap()) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "recorder: no {what} within {within:?}; {} hits",
                self.hits.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await; // a poll interval
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Writes a scenario into `dir`.
pub(crate) fn scenario(dir: &Path, name: &str, source: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, source).unwrap();
    path
}
