//! `punisher run` without `--controller`: the same path as a cluster run, on this machine.
//! An in-process controller on 127.0.0.1 (plaintext, a random token) takes the run; local
//! agents join it over the same protocol; `crate::follow` submits and follows the run
//! exactly as it follows a run on a standing controller.
//!
//! # How many agents
//! One connection is one open file, and one process may hold RLIMIT_NOFILE of them (20,000
//! here). A virtual user is counted as `--fds-per-user` files (3 by default: an HTTP
//! keep-alive connection, a Socket.IO connection, and slack for polling requests and
//! reconnects). When `users x fds-per-user` fits in one process's budget (its limit minus
//! `FD_RESERVE`), the agent runs in this process; beyond it, `ceil(need / budget)` child
//! agent processes (`punisher agent`) do, each its own share (the controller splits users
//! by capacity) and, against a loopback target, its own source addresses over 127.0.0.0/8
//! so that no pair of addresses runs out of ports. `--agents N` overrides the count (N > 1
//! means child processes). `--demo-target` is sized by the same rule with half the files
//! per user (at least one): a target process holds the server side of the long-lived
//! sockets, while the client's slack (polling POSTs, reconnects, connections the server
//! already closed) is not there; measured at 100,000 viewers of the TV show: 1.3 per viewer
//! at the target. A large run gets `punisher target --processes N` and the scenario gets
//! their URLs, comma-separated, as `__ENV.API`.
//!
//! # Child processes die with this one
//! Each child's stdin is a pipe from this process, and [`EXIT_WITH_PARENT_ENV`] tells it to
//! stop (as on SIGTERM) at end of file: the kernel closes the pipe when this process ends,
//! however it ends (even SIGKILL). Dropping a child's handle kills it too, and an agent that
//! loses its controller stops generating load after `--controller-timeout` anyway.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use punisher_agent::{AgentConfig, AgentLabels};
use punisher_controller::ServerSecurity;
use punisher_controller::{ClientConfig, ClusterClient, Controller, ControllerConfig};
use punisher_proto::ClientSecurity;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::args::RunArgs;
use crate::config::RunConfig;
use crate::exit::Failure;
use crate::follow::{self, FollowOptions, Interrupts, Submit};

mod children;

use children::{ChildProcess, free_consecutive_ports, join_all, punisher_command};

/// Set on child processes whose stdin is a pipe from their parent: end of file on stdin
/// means the parent is gone, and the child stops as on SIGTERM (see `main.rs`).
pub const EXIT_WITH_PARENT_ENV: &str = "PUNISHER_EXIT_WITH_PARENT";

/// Open files a process keeps for itself (the runtime, the controller's connections, log
/// files, the results folder): not available to virtual users.
const FD_RESERVE: u64 = 1024;
/// Open files of one virtual user unless `--fds-per-user` says otherwise.
const DEFAULT_FDS_PER_USER: u64 = 3;
/// Child agents on one machine at most: each gets 127.0.N.1-127.0.N.254 as its sources.
const MAX_LOCAL_AGENTS: u32 = 250;
/// `punisher target --processes` accepts at most this many.
const MAX_TARGET_PROCESSES: u64 = 64;
/// How long agents may take to join the local controller.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// An agent silent this long is reported lost (as `punisher controller`'s default).
const LOST_AFTER: Duration = Duration::from_secs(3);
/// The agents' dead-man switch (as `punisher agent`'s default).
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the processes of a local run go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizing {
    /// Agents; 1 runs in this process, more are child processes.
    pub(crate) agents: u32,
    /// Demo target processes; `None`: no demo target.
    pub(crate) target_processes: Option<u64>,
    /// The demo target runs in this process (else `punisher target` children).
    pub(crate) target_in_process: bool,
}

/// The rule of the module documentation: `users x fds_per_user` open files, at most
/// `budget` in one process; this process holds the in-process agent and target together.
pub(crate) fn size(
    users: u64,
    fds_per_user: u64,
    budget: u64,
    demo_target: bool,
    agents_flag: Option<u32>,
) -> Sizing {
    let need = users.saturating_mul(fds_per_user.max(1));
    let budget = budget.max(1);
    let processes = need.div_ceil(budget).max(1);
    let agents = agents_flag.unwrap_or_else(|| {
        u32::try_from(processes)
            .unwrap_or(u32::MAX)
            .min(MAX_LOCAL_AGENTS)
    });
    let target_need = users.saturating_mul(fds_per_user.max(2)).div_ceil(2);
    let target_processes =
        demo_target.then(|| target_need.div_ceil(budget).clamp(1, MAX_TARGET_PROCESSES));
    // One process holds the target's side of the sockets and, with one agent, the
    // client side too.
    let here = if agents == 1 {
        need + target_need
    } else {
        need
    };
    let target_in_process = target_processes == Some(1) && here <= budget;
    Sizing {
        agents,
        target_processes,
        target_in_process,
    }
}

/// The open files one process may use for virtual users. The soft limit is raised to the
/// hard one first (child processes inherit it): the soft limit is often a conservative 1024.
fn fd_budget(flag: Option<u64>) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let mut soft = 1024;
    if let Ok((current, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        soft = current;
        if current < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
            soft = hard;
        }
    }
    flag.unwrap_or_else(|| soft.saturating_sub(FD_RESERVE).max(256))
}

/// `punisher run SCRIPT` on this machine.
pub async fn run(args: RunArgs, interrupts: Interrupts) -> Result<u8, Failure> {
    if args.agents == Some(0) || args.agents.is_some_and(|n| n > MAX_LOCAL_AGENTS) {
        return Err(Failure::invalid(anyhow!(
            "--agents must be between 1 and {MAX_LOCAL_AGENTS}"
        )));
    }
    if args.fds_per_user == Some(0) {
        return Err(Failure::invalid(anyhow!(
            "--fds-per-user must be at least 1"
        )));
    }
    let fds_per_user = args.fds_per_user.map_or(DEFAULT_FDS_PER_USER, u64::from);
    let budget = fd_budget(args.fd_budget);
    let agents_flag = args.agents;
    let (quiet, no_tui) = (args.quiet, args.no_tui);
    let wait_for_start = args.wait_for_start;
    let cfg = RunConfig::from_args(args).map_err(Failure::invalid)?;
    // The plan says how many users there are; with a demo target the scenario is read
    // again once `__ENV.API` is known (its init code may use it).
    let mut prepared = follow::prepare(
        &cfg.script,
        &cfg.overrides,
        cfg.env.clone(),
        cfg.js_memory_limit_bytes,
    )?;
    let users = prepared.plan.executor.max_users();
    let sizing = size(users, fds_per_user, budget, cfg.demo_target, agents_flag);
    tracing::info!(users, fds_per_user, budget, ?sizing, "local run");

    let mut processes = Processes::default();
    let result = async {
        let mut env = cfg.env.clone();
        if let Some(n) = sizing.target_processes {
            let urls = processes.start_target(n, sizing.target_in_process).await?;
            env.insert("API".into(), urls.join(","));
            prepared =
                follow::prepare(&cfg.script, &cfg.overrides, env, cfg.js_memory_limit_bytes)?;
        }
        let loopback_target = targets_loopback(prepared.env.get("API").map(String::as_str));
        let conn = processes.start_controller(&cfg).await?;
        if sizing.agents == 1 {
            processes.start_agent_here(&cfg, &conn);
        } else {
            let workers = (cfg.workers / sizing.agents as usize).max(1);
            for i in 0..sizing.agents {
                let sources = match (&cfg.source_ips, loopback_target) {
                    (Some(ranges), _) => Some(ranges.clone()),
                    (None, true) => Some(loopback_sources(i)),
                    (None, false) => None,
                };
                processes.spawn_agent(&cfg, &conn, i, workers, sources.as_deref())?;
            }
        }
        processes
            .wait_for_agents(&conn, sizing.agents, interrupts.clone())
            .await?;
        let submit = Submit {
            wait_agents: sizing.agents,
            workers_per_agent: 0,
            run_id: cfg.results.as_ref().map(|r| r.run_id.clone()),
            command_line: cfg.command_line.clone(),
            wait_for_start,
            // Local agents are child processes of this one: one that dies is a bug to see,
            // but reassigning keeps the run's user count whole all the same.
            on_agent_loss: punisher_controller::AgentLossPolicy::Reassign,
        };
        let opts = FollowOptions {
            quiet,
            no_tui,
            summary_json: cfg.summary_json.clone(),
            remote: None,
        };
        follow::submit_and_follow(&conn, &prepared, submit, &opts, interrupts).await
    }
    .await;
    processes.shutdown().await;
    result
}

/// Whether every URL of `__ENV.API` is on a loopback address (the only case where spreading
/// source addresses over 127.0.0.0/8 is right).
fn targets_loopback(api: Option<&str>) -> bool {
    let Some(api) = api else { return false };
    let mut any = false;
    for url in api.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let host = rest.split(['/', '?']).next().unwrap_or("");
        let host = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(h, _)| h),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return false;
        }
        any = true;
    }
    any
}

/// The source addresses of child agent `index`: 127.0.(index+1).1-254, so that agents never
/// share a source address (each address has its own ~28,000 ephemeral ports per target).
fn loopback_sources(index: u32) -> String {
    let n = index + 1;
    format!("127.0.{n}.1-127.0.{n}.254")
}

/// A random cluster token: only this process and its children ever see it.
fn random_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut token = String::new();
    for i in 0..2u32 {
        let mut h = std::hash::RandomState::new().build_hasher();
        h.write_u32(i);
        h.write_u32(std::process::id());
        token.push_str(&format!("{:016x}", h.finish()));
    }
    token
}

/// Everything a local run started, stopped in reverse order by [`Processes::shutdown`].
#[derive(Default)]
struct Processes {
    target_here: Option<punisher_target::RunningTarget>,
    target_child: Option<ChildProcess>,
    controller: Option<(CancellationToken, JoinHandle<()>)>,
    agent_here: Option<(CancellationToken, JoinHandle<()>)>,
    agents: Vec<ChildProcess>,
}

impl Processes {
    /// Starts the demo target; returns its URLs.
    async fn start_target(&mut self, n: u64, in_process: bool) -> Result<Vec<String>, Failure> {
        if in_process {
            let target = punisher_target::spawn_local_target(punisher_target::TargetConfig::new())
                .await
                .context("could not start the demo target")
                .map_err(Failure::run)?;
            tracing::info!(url = %target.url, "demo target started");
            let url = target.url.clone();
            self.target_here = Some(target);
            return Ok(vec![url]);
        }
        let base = free_consecutive_ports(n as usize)
            .context("no free consecutive ports for the demo target")
            .map_err(Failure::run)?;
        let addrs = punisher_target::consecutive_addrs(base, n as usize);
        let mut cmd = punisher_command().map_err(Failure::run)?;
        cmd.arg("target")
            .arg("--listen")
            .arg(base.to_string())
            .arg("--processes")
            .arg(n.to_string());
        let mut child = ChildProcess::spawn(
            "demo target".into(),
            cmd,
            Some("punisher target listening on"),
        )
        .map_err(Failure::run)?;
        // Ready when every process accepts connections.
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        for addr in &addrs {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Some(e) = child.exited() {
                    return Err(Failure::run(e));
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Failure::run(anyhow!(
                        "the demo target did not listen on {addr} within {JOIN_TIMEOUT:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tracing::info!(processes = n, %base, "demo target processes started");
        self.target_child = Some(child);
        Ok(addrs.iter().map(|a| format!("http://{a}")).collect())
    }

    /// Binds the in-process controller on 127.0.0.1 and serves it in a task.
    async fn start_controller(&mut self, cfg: &RunConfig) -> Result<ClientConfig, Failure> {
        let token = random_token();
        let controller = Controller::bind(ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.clone(),
            security: ServerSecurity::InsecureLoopback,
            results_dir: cfg.results.as_ref().map(|r| r.base.clone()),
            prometheus: cfg.prometheus,
            lost_after: LOST_AFTER,
            agent_binaries: None,
            http_listen: None,
        })
        .await
        .context("cannot start the local controller")
        .map_err(Failure::run)?;
        if let Some(addr) = controller.prometheus_addr() {
            eprintln!("serving Prometheus metrics on http://{addr}/metrics");
        }
        let addr = controller.local_addr();
        let cancel = CancellationToken::new();
        let serve = controller.serve(cancel.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                eprintln!("error: the local controller failed: {e}");
            }
        });
        self.controller = Some((cancel, task));
        Ok(ClientConfig {
            controller: addr.to_string(),
            token,
            security: ClientSecurity::InsecureLoopback,
            connect_timeout: Duration::from_secs(10),
        })
    }

    /// The one agent of a small run, in this process.
    fn start_agent_here(&mut self, cfg: &RunConfig, conn: &ClientConfig) {
        let agent = AgentConfig {
            controller: conn.controller.clone(),
            token: conn.token.clone(),
            security: conn.security.clone(),
            agent_id: Some("local".into()),
            workers: Some(cfg.workers),
            controller_timeout: CONTROLLER_TIMEOUT,
            ttl: None,
            source_pool: cfg.source_pool.clone(),
            memory_limit_bytes: cfg.js_memory_limit_bytes,
            labels: local_labels(),
            spot: None,
        };
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = punisher_agent::run(agent, token).await {
                eprintln!("error: the local agent failed: {e}");
            }
        });
        self.agent_here = Some((cancel, task));
    }

    /// Child agent `index`.
    fn spawn_agent(
        &mut self,
        cfg: &RunConfig,
        conn: &ClientConfig,
        index: u32,
        workers: usize,
        source_ips: Option<&str>,
    ) -> Result<(), Failure> {
        let id = format!("local-{}", index + 1);
        let mut cmd = punisher_command().map_err(Failure::run)?;
        cmd.arg("agent")
            .arg("--controller")
            .arg(&conn.controller)
            .arg("--insecure-loopback")
            .arg("--agent-id")
            .arg(&id)
            .arg("--region")
            .arg("local")
            .arg("--workers")
            .arg(workers.to_string())
            .arg("--js-memory-limit")
            .arg((cfg.js_memory_limit_bytes >> 20).to_string())
            .env("PUNISHER_TOKEN", &conn.token);
        if let Some(ranges) = source_ips {
            cmd.arg("--source-ips").arg(ranges);
        }
        // "agent exiting: Cancelled" at the end says nothing a local run needs to know.
        let child = ChildProcess::spawn(format!("agent {id}"), cmd, Some("agent exiting"))
            .map_err(Failure::run)?;
        self.agents.push(child);
        Ok(())
    }

    /// Waits until `n` agents have joined the controller; a child that exits first, Ctrl-C
    /// or [`JOIN_TIMEOUT`] end the wait with an error.
    async fn wait_for_agents(
        &mut self,
        conn: &ClientConfig,
        n: u32,
        mut interrupts: Interrupts,
    ) -> Result<(), Failure> {
        let mut client = ClusterClient::connect(conn)
            .await
            .context("cannot reach the local controller")
            .map_err(Failure::run)?;
        let seen = *interrupts.borrow_and_update();
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                changed = interrupts.changed() => {
                    if changed.is_ok() && *interrupts.borrow_and_update() > seen {
                        return Err(Failure::run(anyhow!("interrupted while the agents were starting")));
                    }
                }
                _ = poll.tick() => {}
            }
            for child in &mut self.agents {
                if let Some(e) = child.exited() {
                    return Err(Failure::run(e));
                }
            }
            let status = client
                .status()
                .await
                .context("cannot reach the local controller")
                .map_err(Failure::run)?;
            let joined = status.agents.iter().filter(|a| !a.state.is_gone()).count();
            if joined >= n as usize {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Failure::run(anyhow!(
                    "only {joined} of {n} local agents joined within {JOIN_TIMEOUT:?}"
                )));
            }
        }
    }

    /// Agents first (they stop sending), then the controller, then the target.
    async fn shutdown(self) {
        let Processes {
            target_here,
            target_child,
            controller,
            agent_here,
            agents,
        } = self;
        if let Some((cancel, task)) = agent_here {
            cancel.cancel();
            let _ = task.await;
        }
        join_all(agents.into_iter().map(ChildProcess::stop)).await;
        if let Some((cancel, task)) = controller {
            cancel.cancel();
            let _ = task.await;
        }
        if let Some(child) = target_child {
            child.stop().await;
        }
        if let Some(target) = target_here
            && let Err(e) = target.shutdown().await
        {
            tracing::warn!(error = %e, "demo target did not shut down cleanly");
        }
    }
}

fn local_labels() -> AgentLabels {
    AgentLabels {
        region: "local".into(),
        zone: String::new(),
        instance_id: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_stay_in_this_process() {
        let s = size(1_000, 3, 18_976, true, None);
        assert_eq!(
            s,
            Sizing {
                agents: 1,
                target_processes: Some(1),
                target_in_process: true
            }
        );
        assert_eq!(size(10, 3, 18_976, false, None).target_processes, None);
    }

    #[test]
    fn big_runs_get_child_agents_and_target_processes() {
        // 300,000 users x 3 files over 18,976 per process.
        let s = size(300_000, 3, 18_976, true, None);
        assert_eq!(s.agents, 48);
        // The target holds 1.5 files per user: 450,000 over 18,976.
        assert_eq!(s.target_processes, Some(24));
        assert!(!s.target_in_process);
        // One agent's worth, but this process cannot also hold the target's side.
        let s = size(6_000, 3, 18_976, true, None);
        assert_eq!(s.agents, 1);
        assert!(!s.target_in_process);
        // --agents wins; a single target process can then stay here.
        let s = size(100, 3, 18_976, true, Some(3));
        assert_eq!((s.agents, s.target_in_process), (3, true));
    }

    #[test]
    fn loopback_targets_are_recognised() {
        assert!(targets_loopback(Some("http://127.0.0.1:8080")));
        assert!(targets_loopback(Some(
            "http://127.0.0.1:1,http://localhost:2/x"
        )));
        assert!(targets_loopback(Some("http://[::1]:80")));
        assert!(!targets_loopback(Some(
            "http://127.0.0.1:1,https://show.example"
        )));
        assert!(!targets_loopback(Some("")));
        assert!(!targets_loopback(None));
    }

    #[test]
    fn child_agents_get_disjoint_sources() {
        assert_eq!(loopback_sources(0), "127.0.1.1-127.0.1.254");
        assert_eq!(loopback_sources(1), "127.0.2.1-127.0.2.254");
        // What an agent's --source-ips accepts.
        for i in [0, 1, MAX_LOCAL_AGENTS - 1] {
            punisher_clients::net::SourcePool::parse(&loopback_sources(i)).unwrap();
        }
    }
}
