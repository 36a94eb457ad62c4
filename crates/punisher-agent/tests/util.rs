//! Test helpers: a tiny HTTP/1.1 target on 127.0.0.1:0 that records every request with its
//! arrival time, a controller and agents as tasks of the test process, a TCP proxy that can
//! cut an agent's connection, and submitting and following a run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use punisher_agent::{AgentConfig, AgentError, AgentExit, AgentLabels};
use punisher_controller::{
    ClientConfig, ClusterClient, Controller, ControllerConfig, RunState, RunSubmission, RunView,
    ServerSecurity,
};
use punisher_core::{Overrides, Plan};
use punisher_proto::{ClientSecurity, Fingerprint, ScenarioBundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) const TOKEN: &str = "test-token";

/// One request as the target saw it.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) path: String,
    pub(crate) at: Instant,
}

#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Target {
    pub(crate) fn hits(&self, prefix: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub(crate) fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }
}

/// Query parameter `key` of a path.
pub(crate) fn query(path: &str, key: &str) -> Option<String> {
    path.split_once('?').and_then(|(_, q)| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_owned))
    })
}

/// Answers `ok` to everything (keep-alive), recording each request.
pub(crate) async fn target() -> Target {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(Vec::new()));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(sock, h.clone()));
        }
    });
    Target { url, hits }
}

async fn serve(mut sock: TcpStream, hits: Arc<Mutex<Vec<Hit>>>) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let content_length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + content_length);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        hits.lock().unwrap().push(Hit {
            path,
            at: Instant::now(),
        });
        let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
        if sock.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A controller serving on 127.0.0.1:0 as a task of the test.
pub(crate) struct TestController {
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: Option<Fingerprint>,
    pub(crate) cancel: CancellationToken,
    pub(crate) task: JoinHandle<()>,
    pub(crate) dirs: tempfile::TempDir,
}

impl TestController {
    pub(crate) async fn start(tls: bool) -> TestController {
        let dirs = tempfile::tempdir().unwrap();
        let security = if tls {
            ServerSecurity::Tls {
                state_dir: dirs.path().join("state"),
            }
        } else {
            ServerSecurity::InsecureLoopback
        };
        let controller = Controller::bind(ControllerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: TOKEN.into(),
            security,
            results_dir: Some(dirs.path().join("results")),
            prometheus: None,
            agent_binaries: None,
            http_listen: None,
            lost_after: Duration::from_secs(3),
        })
        .await
        .unwrap();
        let cancel = CancellationToken::new();
        let addr = controller.local_addr();
        let fingerprint = controller.fingerprint();
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            controller.serve(c).await.unwrap();
        });
        TestController {
            addr,
            fingerprint,
            cancel,
            task,
            dirs,
        }
    }

    pub(crate) fn security(&self) -> ClientSecurity {
        match self.fingerprint {
            Some(fp) => ClientSecurity::Pinned(fp),
            None => ClientSecurity::InsecureLoopback,
        }
    }

    pub(crate) async fn client(&self) -> ClusterClient {
        ClusterClient::connect(&ClientConfig {
            controller: self.addr.to_string(),
            token: TOKEN.into(),
            security: self.security(),
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap()
    }

    pub(crate) fn agent_config(&self, id: &str) -> AgentConfig {
        agent_config(&self.addr.to_string(), self.security(), id)
    }
}

/// A controller on a runtime of its own, so that it can die at once like a killed process:
/// every task and socket of it goes, with no goodbye to anyone.
pub(crate) struct KillableController {
    pub(crate) addr: SocketAddr,
    pub(crate) fingerprint: Option<Fingerprint>,
    runtime: Option<tokio::runtime::Runtime>,
    _dirs: tempfile::TempDir,
}

impl KillableController {
    pub(crate) async fn start() -> KillableController {
        let dirs = tempfile::tempdir().unwrap();
        let cfg = ControllerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: TOKEN.into(),
            security: ServerSecurity::Tls {
                state_dir: dirs.path().join("state"),
            },
            results_dir: Some(dirs.path().join("results")),
            prometheus: None,
            agent_binaries: None,
            http_listen: None,
            lost_after: Duration::from_secs(3),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(async move {
            let controller = Controller::bind(cfg).await.unwrap();
            let _ = tx.send((controller.local_addr(), controller.fingerprint()));
            let _ = controller.serve(CancellationToken::new()).await;
        });
        let (addr, fingerprint) = rx.await.unwrap();
        KillableController {
            addr,
            fingerprint,
            runtime: Some(runtime),
            _dirs: dirs,
        }
    }

    pub(crate) fn security(&self) -> ClientSecurity {
        ClientSecurity::Pinned(self.fingerprint.unwrap())
    }

    /// kill -9.
    pub(crate) fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for KillableController {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn agent_config(addr: &str, security: ClientSecurity, id: &str) -> AgentConfig {
    AgentConfig {
        controller: addr.to_owned(),
        token: TOKEN.into(),
        security,
        agent_id: Some(id.to_owned()),
        workers: Some(1),
        controller_timeout: Duration::from_secs(15),
        ttl: None,
        source_pool: None,
        memory_limit_bytes: 128 << 20,
        labels: AgentLabels::default(),
        spot: None,
    }
}

pub(crate) type AgentTask = JoinHandle<Result<AgentExit, AgentError>>;

pub(crate) fn spawn_agent(cfg: AgentConfig, cancel: &CancellationToken) -> AgentTask {
    let cancel = cancel.child_token();
    tokio::spawn(punisher_agent::run(cfg, cancel))
}

/// Polls `check` every 50 ms until it holds, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < end, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A submission of a one-file script (inspected here, as the CLI does).
pub(crate) fn submission(
    src: &str,
    env: BTreeMap<String, String>,
    wait_agents: u32,
) -> RunSubmission {
    let bundle = punisher_engine::Bundle::from_source("main.js", src);
    let scenario = punisher_engine::inspect(bundle, &env).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::from_options(&scenario.options, &Overrides::default()).unwrap();
    RunSubmission {
        bundle: ScenarioBundle {
            entry: scenario.bundle.entry,
            sources: scenario.bundle.sources,
            files: scenario.bundle.files,
        },
        plan,
        env,
        setup_data: serde_json::Value::Null,
        wait_agents,
        scenario_name: "main.js".into(),
        workers_per_agent: 1,
        start_delay: Duration::from_millis(300),
        run_id: None,
        command_line: Vec::new(),
        wait_for_start: false,
        on_agent_loss: Default::default(),
    }
}

pub(crate) fn api_env(target: &Target) -> BTreeMap<String, String> {
    BTreeMap::from([("API".to_owned(), target.url.clone())])
}

/// Follows a run until it is over; returns every view seen (the last is the final one).
pub(crate) async fn follow(
    client: &mut ClusterClient,
    run_id: &str,
    limit: Duration,
) -> Vec<RunView> {
    let mut stream = client.watch(run_id).await.unwrap();
    let mut views = Vec::new();
    tokio::time::timeout(limit, async {
        while let Some(view) = stream.next().await {
            let view = view.unwrap();
            let over = view.state.is_over();
            views.push(view);
            if over {
                break;
            }
        }
    })
    .await
    .expect("the run did not end in time");
    let last = views.last().expect("no view");
    assert!(
        last.state.is_over(),
        "stream ended before the run: {:?}",
        last.state
    );
    views
}

/// The merged count of a counter metric.
pub(crate) fn counter(view: &RunView, metric: &str) -> f64 {
    match view
        .totals
        .aggregate(metric, &punisher_metrics::Tags::empty())
    {
        Some(punisher_metrics::SeriesData::Counter { sum }) => sum,
        None => 0.0,
        other => panic!("{metric} is not a counter: {other:?}"),
    }
}

pub(crate) fn is_running(view: &RunView) -> bool {
    view.state == RunState::Running
}

/// A TCP proxy in front of the controller whose connections can be cut (a network blip).
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    cut: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(crate) connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    pub(crate) async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, n) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let task = tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
                c.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            cut,
            connections,
        }
    }

    /// Drops every open connection (both directions at once, like a cable pulled).
    pub(crate) fn cut(&self) {
        for task in self.cut.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
