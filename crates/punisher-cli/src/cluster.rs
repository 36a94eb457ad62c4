//! The cluster commands: `punisher controller`, `punisher agent`, `punisher run
//! --controller` and `punisher ctl`. Flags become the configs of punisher-controller and
//! punisher-agent; this module prints, and maps outcomes to exit codes (0 passed, 99
//! thresholds failed, 1 the run could not complete, 2 bad usage or a refused agent).
//!
//! Wiring (in args.rs / main.rs):
//! - `Command::Controller(ControllerArgs)` -> [`controller`]
//! - `Command::Agent(AgentArgs)` -> [`agent`]
//! - `Command::Ctl(CtlArgs)` -> [`ctl`]
//! - `#[command(flatten)] pub cluster: ClusterRunFlags` in `RunArgs`; when
//!   `cluster.controller` is set, `Command::Run` calls [`run_on_controller`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use punisher_agent::{AgentConfig, AgentError, AgentLabels};
use punisher_clients::net::SourcePool;
use punisher_controller::{
    ClientConfig, ClientError, ClusterClient, Controller, ControllerConfig, RunCommand, RunState,
    RunSubmission, RunView, ServerSecurity,
};
use punisher_core::{Plan, Segment, parse_duration};
use punisher_engine::{Bundle, EngineConfig, LocalBarrierHub, WorkerReport};
use punisher_metrics::{Snapshot, Threshold};
use punisher_proto::{ClientSecurity, Fingerprint, ScenarioBundle};
use tokio_util::sync::CancellationToken;

use crate::args::RunArgs;
use crate::exit::{self, Failure};
use crate::run::Interrupts;
use crate::status::StatusView;

/// How to reach and trust the controller (agents, `run --controller`, `ctl`).
#[derive(Debug, Args, Clone)]
pub struct ControllerConnArgs {
    /// The controller's address, HOST:PORT.
    #[arg(long, env = "PUNISHER_CONTROLLER", value_name = "ADDR")]
    pub controller: Option<String>,
    /// The cluster token.
    #[arg(long, env = "PUNISHER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The SHA-256 of the controller's certificate, as it printed at start.
    #[arg(
        long,
        env = "PUNISHER_CONTROLLER_FINGERPRINT",
        value_name = "SHA256",
        conflicts_with = "insecure_loopback"
    )]
    pub controller_fingerprint: Option<String>,
    /// Plaintext, only to a controller on a loopback address (tests, local runs).
    #[arg(long)]
    pub insecure_loopback: bool,
}

/// `punisher run --controller ADDR ...`: the flags a local run does not have.
#[derive(Debug, Args, Clone)]
pub struct ClusterRunFlags {
    #[command(flatten)]
    pub conn: ControllerConnArgs,
    /// Start the run when this many agents have joined.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub wait_agents: u32,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Address to listen on for agents and admin clients.
    #[arg(long, default_value = "0.0.0.0:7070")]
    pub listen: SocketAddr,
    /// The cluster token agents and clients must present.
    #[arg(long, env = "PUNISHER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Serve plaintext; only on a loopback address.
    #[arg(long)]
    pub insecure_loopback: bool,
    /// Where the TLS certificate is kept (default: $XDG_STATE_HOME/punisher or
    /// ~/.local/state/punisher).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Each run writes RESULTS/RUN_ID/ (metrics.jsonl, summary.json, summary.txt).
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results_dir: PathBuf,
    /// An agent silent this long during a run is reported lost.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub lost_after: String,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    #[command(flatten)]
    pub conn: ControllerConnArgs,
    /// Stop generating load when the controller has been silent this long.
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    pub controller_timeout: String,
    /// Exit after this long (e.g. 2h).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Local source addresses to spread connections over, e.g. 10.0.0.10-10.0.0.20.
    #[arg(long, value_name = "RANGES")]
    pub source_ips: Option<String>,
    /// Memory limit of each worker's JavaScript runtime, in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    pub js_memory_limit: usize,
    /// A stable agent id (default: host name, process id and a random suffix).
    #[arg(long)]
    pub agent_id: Option<String>,
    #[arg(long, env = "PUNISHER_REGION", default_value = "")]
    pub region: String,
    #[arg(long, env = "PUNISHER_ZONE", default_value = "")]
    pub zone: String,
    #[arg(long, env = "PUNISHER_INSTANCE_ID", default_value = "")]
    pub instance_id: String,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    pub conn: ControllerConnArgs,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Agents and the current run.
    Status,
    /// Follow the current (or given) run until it ends.
    Watch { run_id: Option<String> },
    /// Change the test-wide number of users.
    Scale { users: u64 },
    /// Pause arrivals of new users.
    Pause,
    /// Resume arrivals.
    Resume,
    /// Stop arrivals; running iterations get the grace period.
    Stop {
        #[arg(long, default_value = "30s", value_name = "DURATION")]
        grace: String,
    },
    /// Interrupt everything now.
    Abort {
        #[arg(long, default_value = "aborted with punisher ctl")]
        reason: String,
    },
}

fn duration_flag(flag: &str, value: &str) -> Result<Duration, Failure> {
    parse_duration(value).map_err(|e| Failure::invalid(anyhow!("{flag} {value:?}: {e}")))
}

impl ControllerConnArgs {
    fn client_config(&self) -> Result<ClientConfig, Failure> {
        let controller = self
            .controller
            .clone()
            .ok_or_else(|| Failure::invalid(anyhow!("--controller ADDR is required")))?;
        let token = self
            .token
            .clone()
            .ok_or_else(|| Failure::invalid(anyhow!("--token (or PUNISHER_TOKEN) is required")))?;
        let security = match (&self.controller_fingerprint, self.insecure_loopback) {
            (Some(fp), false) => {
                ClientSecurity::Pinned(Fingerprint::parse(fp).map_err(Failure::invalid)?)
            }
            (None, true) => ClientSecurity::InsecureLoopback,
            _ => {
                return Err(Failure::invalid(anyhow!(
                    "pass --controller-fingerprint (printed by the controller at start), or \
                     --insecure-loopback for a controller on this machine"
                )));
            }
        };
        Ok(ClientConfig {
            controller,
            token,
            security,
            connect_timeout: Duration::from_secs(10),
        })
    }
}

fn client_failure(e: ClientError) -> Failure {
    match e {
        // Wrong token, fingerprint or version: retrying the same way cannot help.
        ClientError::Refused(_)
        | ClientError::Connect(punisher_proto::ConnectError::Refused(_)) => Failure::invalid(e),
        e => Failure::run(e),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(dir).join("punisher");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/punisher"),
        None => PathBuf::from(".punisher-state"),
    }
}

/// `punisher controller`: serves until `shutdown`.
pub async fn controller(args: ControllerArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let lost_after = duration_flag("--lost-after", &args.lost_after)?;
    let security = if args.insecure_loopback {
        ServerSecurity::InsecureLoopback
    } else {
        ServerSecurity::Tls {
            state_dir: args.state_dir.clone().unwrap_or_else(default_state_dir),
        }
    };
    let controller = Controller::bind(ControllerConfig {
        listen: args.listen,
        token: args.token,
        security,
        results_dir: args.results_dir,
        lost_after,
    })
    .await
    .map_err(|e| match e {
        punisher_controller::ControllerError::Config(_)
        | punisher_controller::ControllerError::NotLoopback(_) => Failure::invalid(e),
        e => Failure::run(e),
    })?;
    let addr = controller.local_addr();
    eprintln!("controller listening on {addr}");
    match controller.fingerprint() {
        Some(fp) => {
            if controller.identity_created() {
                eprintln!("created a new TLS certificate");
            }
            eprintln!("certificate fingerprint: {fp}");
            eprintln!(
                "start agents with: punisher agent --controller HOST:{} --token TOKEN --controller-fingerprint {fp}",
                addr.port()
            );
        }
        None => eprintln!("plaintext on loopback (--insecure-loopback)"),
    }
    controller.serve(shutdown).await.map_err(Failure::run)?;
    Ok(exit::PASSED)
}

/// `punisher agent`: joins the controller and runs what it is given until `shutdown`, its
/// TTL, or a refusal (exit 2: wrong token, fingerprint or version).
pub async fn agent(args: AgentArgs, shutdown: CancellationToken) -> Result<u8, Failure> {
    let conn = args.conn.client_config()?;
    let source_pool = args
        .source_ips
        .as_deref()
        .map(|ranges| SourcePool::parse(ranges).map(Arc::new))
        .transpose()
        .context("--source-ips")
        .map_err(Failure::invalid)?;
    if args.workers == Some(0) {
        return Err(Failure::invalid(anyhow!("--workers must be at least 1")));
    }
    let cfg = AgentConfig {
        controller: conn.controller,
        token: conn.token,
        security: conn.security,
        agent_id: args.agent_id,
        workers: args.workers,
        controller_timeout: duration_flag("--controller-timeout", &args.controller_timeout)?,
        ttl: args
            .ttl
            .as_deref()
            .map(|t| duration_flag("--ttl", t))
            .transpose()?,
        source_pool,
        memory_limit_bytes: args.js_memory_limit << 20,
        labels: AgentLabels {
            region: args.region,
            zone: args.zone,
            instance_id: args.instance_id,
        },
    };
    match punisher_agent::run(cfg, shutdown).await {
        Ok(exit) => {
            eprintln!("agent exiting: {exit:?}");
            Ok(exit::PASSED)
        }
        Err(e @ (AgentError::Refused(_) | AgentError::Config(_))) => Err(Failure::invalid(e)),
        Err(e) => Err(Failure::run(e)),
    }
}

/// `-e KEY=VALUE` flags only: unlike a local run, a cluster run does not ship this
/// machine's whole environment (its secrets) to agents elsewhere.
fn explicit_env(args: &RunArgs) -> Result<BTreeMap<String, String>, Failure> {
    let mut env = BTreeMap::new();
    for pair in &args.options.env {
        let Some((key, value)) = pair.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(Failure::invalid(anyhow!("-e {pair:?}: write KEY=VALUE")));
        };
        env.insert(key.to_owned(), value.to_owned());
    }
    Ok(env)
}

/// `punisher run SCRIPT --controller ADDR ...`: checks the scenario here, runs `setup()`
/// here, submits the run, shows the merged live view, runs `teardown()`, prints the summary
/// and returns the exit code. The first Ctrl-C stops the run gracefully, the second aborts it.
pub async fn run_on_controller(
    args: &RunArgs,
    flags: &ClusterRunFlags,
    mut interrupts: Interrupts,
) -> Result<u8, Failure> {
    let conn = flags.conn.client_config()?;
    let (overrides, _) = crate::config::option_flags(&args.options).map_err(Failure::invalid)?;
    let env = explicit_env(args)?;
    let bundle = Bundle::from_path(&args.script).map_err(Failure::invalid)?;
    let scenario = punisher_engine::inspect(bundle, &env).map_err(Failure::invalid)?;
    let plan = Plan::from_options(&scenario.options, &overrides)
        .map_err(|e| Failure::invalid(anyhow!("{}: {e}", args.script.display())))?;
    for t in &plan.thresholds {
        Threshold::parse(t).map_err(|e| Failure::invalid(anyhow!("invalid threshold: {e}")))?;
    }
    let local = EngineConfig {
        workers: 1,
        plan: plan.clone(),
        segment: Segment::FULL,
        env: env.clone(),
        source_pool: None,
        memory_limit_bytes: args.js_memory_limit << 20,
        barriers: Arc::new(LocalBarrierHub::new(1)),
        test_users: plan.executor.max_users(),
    };
    let setup_data = punisher_engine::run_setup(&scenario, &local)
        .await
        .context("setup() failed; no user was started")
        .map_err(Failure::run)?;

    let mut client = ClusterClient::connect(&conn)
        .await
        .map_err(client_failure)?;
    let run_id = client
        .submit_run(RunSubmission {
            bundle: ScenarioBundle {
                entry: scenario.bundle.entry.clone(),
                sources: scenario.bundle.sources.clone(),
                files: scenario.bundle.files.clone(),
            },
            plan: plan.clone(),
            env,
            setup_data: setup_data.clone(),
            wait_agents: flags.wait_agents,
            scenario_name: args.script.display().to_string(),
            workers_per_agent: args.workers.unwrap_or(0) as u32,
            start_delay: Duration::ZERO,
        })
        .await
        .map_err(client_failure)?;
    eprintln!(
        "run {run_id} submitted to {}; it starts when {} agent(s) joined",
        conn.controller, flags.wait_agents
    );
    let mut ctl = ClusterClient::connect(&conn)
        .await
        .map_err(client_failure)?;
    let mut views = client.watch(&run_id).await.map_err(client_failure)?;
    let planned = plan.executor.planned_duration();
    let mut seen = *interrupts.borrow();
    let mut last: Option<RunView> = None;
    let mut last_tick = 0;
    loop {
        tokio::select! {
            changed = interrupts.changed() => {
                if changed.is_err() { continue; }
                let presses = *interrupts.borrow_and_update();
                if presses <= seen { continue; }
                seen = presses;
                let cmd = if presses == 1 {
                    eprintln!("\nstopping gracefully (up to {}); press Ctrl-C again to abort",
                        punisher_core::format_duration(plan.graceful_stop));
                    RunCommand::Stop { grace: plan.graceful_stop }
                } else {
                    eprintln!("\naborting");
                    RunCommand::Abort { reason: "interrupted (Ctrl-C)".into() }
                };
                if let Err(e) = ctl.command(cmd).await {
                    eprintln!("cannot reach the controller: {e}");
                }
            }
            view = views.next() => {
                let Some(view) = view else { break };
                let view = view.map_err(client_failure)?;
                if !args.quiet && view.tick > last_tick && view.state == RunState::Running {
                    last_tick = view.tick;
                    eprintln!("{}", status_line(&view, planned));
                }
                let over = view.state.is_over();
                last = Some(view);
                if over { break; }
            }
        }
    }
    let Some(last) = last.filter(|v| v.state.is_over()) else {
        return Err(Failure::run(anyhow!(
            "lost the controller before run {run_id} ended; it may still be running: see \
             `punisher ctl status`"
        )));
    };
    if scenario.has_teardown
        && let Err(e) = punisher_engine::run_teardown(&scenario, &local, &setup_data).await
    {
        eprintln!("teardown() failed: {e:#}");
    }
    for message in &last.messages {
        eprintln!("  {message}");
    }
    #[allow(clippy::print_stdout)] // the summary is the command's output
    if let Some(text) = &last.summary_text {
        println!("{text}");
    }
    if let (Some(path), Some(json)) = (&args.summary_json, &last.summary_json) {
        let bytes = serde_json::to_vec_pretty(json).map_err(Failure::run)?;
        std::fs::write(path, bytes)
            .map_err(|e| Failure::run(anyhow!("cannot write {}: {e}", path.display())))?;
    }
    match last.exit_code {
        Some(code) if last.state == RunState::Finished => Ok(code),
        _ => Err(Failure::run(anyhow!(
            "run {run_id} could not complete: {}",
            last.messages
                .last()
                .map_or("no reason given", String::as_str)
        ))),
    }
}

/// The local status line, from a merged view (the whole cluster as one "worker").
fn status_line(view: &RunView, planned: Duration) -> String {
    let cluster = BTreeMap::from([(
        0usize,
        WorkerReport {
            worker: 0,
            snapshot: Snapshot::empty(0, 0),
            active_users: view.active_users,
            target_users: view.target_users,
            arrived_users: view.arrived_users,
            finished: false,
            event_loop_lag: Duration::ZERO,
            cpu_busy: 0.0,
        },
    )]);
    let line = StatusView::from_interval(view.elapsed, planned, &cluster, &view.interval).render();
    let lost = view
        .agents
        .iter()
        .filter(|a| a.state == punisher_controller::AgentState::Lost)
        .count();
    let suspect = view.agents.iter().filter(|a| a.suspect).count();
    let mut agents = format!("agents {}", view.agents.len());
    if lost > 0 {
        agents.push_str(&format!(" ({lost} lost)"));
    }
    if suspect > 0 {
        agents.push_str(&format!(" ({suspect} overloaded)"));
    }
    format!("{line} | {agents}")
}

/// `punisher ctl ...`.
pub async fn ctl(args: CtlArgs) -> Result<u8, Failure> {
    let conn = args.conn.client_config()?;
    let mut client = ClusterClient::connect(&conn)
        .await
        .map_err(client_failure)?;
    let answer = match args.command {
        CtlCommand::Status => {
            let status = client.status().await.map_err(client_failure)?;
            let mut out = format!(
                "controller {} at {}: {} agent(s)\n",
                status.controller_version,
                conn.controller,
                status.agents.len()
            );
            for a in &status.agents {
                out.push_str(&format!(
                    "  {:<32} {:<10?} {:>3} cores  {:>7} users  rtt {:.1} ms  clock {:+.1} ms{}\n",
                    a.agent_id,
                    a.state,
                    a.cores,
                    a.active_users,
                    a.rtt_ms,
                    a.clock_offset_ms,
                    if a.suspect { "  OVERLOADED" } else { "" }
                ));
            }
            if let Some(run) = &status.run {
                out.push_str(&format!(
                    "run {} {:?}: {} / {} users, {} merged seconds\n",
                    run.run_id, run.state, run.active_users, run.target_users, run.tick
                ));
                for m in &run.messages {
                    out.push_str(&format!("  {m}\n"));
                }
            }
            out
        }
        CtlCommand::Watch { run_id } => {
            let mut views = client
                .watch(run_id.as_deref().unwrap_or(""))
                .await
                .map_err(client_failure)?;
            let mut last = None;
            while let Some(view) = views.next().await {
                let view = view.map_err(client_failure)?;
                if view.state == RunState::Running {
                    eprintln!("{}", status_line(&view, Duration::ZERO));
                }
                last = Some(view);
            }
            match last {
                Some(v) if v.state.is_over() => {
                    let code = v.exit_code.unwrap_or(exit::RUN_ERROR);
                    #[allow(clippy::print_stdout)]
                    if let Some(text) = &v.summary_text {
                        println!("{text}");
                    }
                    return Ok(code);
                }
                _ => bail_run("the controller ended the watch before the run ended")?,
            }
        }
        CtlCommand::Scale { users } => client
            .command(RunCommand::Scale(users))
            .await
            .map_err(client_failure)?,
        CtlCommand::Pause => client
            .command(RunCommand::Pause)
            .await
            .map_err(client_failure)?,
        CtlCommand::Resume => client
            .command(RunCommand::Resume)
            .await
            .map_err(client_failure)?,
        CtlCommand::Stop { grace } => {
            let grace = duration_flag("--grace", &grace)?;
            client
                .command(RunCommand::Stop { grace })
                .await
                .map_err(client_failure)?
        }
        CtlCommand::Abort { reason } => client
            .command(RunCommand::Abort { reason })
            .await
            .map_err(client_failure)?,
    };
    #[allow(clippy::print_stdout)] // the answer is the command's output
    {
        println!("{}", answer.trim_end());
    }
    Ok(exit::PASSED)
}

fn bail_run(message: &str) -> Result<String, Failure> {
    Err(Failure::run(anyhow!("{message}")))
}
