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
    ClientConfig, ClientError, ClusterClient, Controller, ControllerConfig, RunCommand,
    ServerSecurity,
};
use punisher_core::parse_duration;
use punisher_proto::{ClientSecurity, Fingerprint};
use tokio_util::sync::CancellationToken;

use crate::args::RunArgs;
use crate::exit::{self, Failure};
use crate::follow::Interrupts;

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
    /// When an agent leaves mid-run (spot interruption) or is lost: `reassign` its users
    /// that had not started to the other agents, `continue` without them, or `abort`.
    #[arg(long, default_value = "reassign", value_name = "POLICY", value_parser = parse_loss_policy)]
    pub on_agent_loss: punisher_controller::AgentLossPolicy,
}

fn parse_loss_policy(text: &str) -> Result<punisher_controller::AgentLossPolicy, String> {
    punisher_controller::AgentLossPolicy::parse(text)
        .ok_or_else(|| format!("{text:?}: expected reassign, continue or abort"))
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
    /// Each run writes DIR/RUN_ID/ (run.json, timeseries.jsonl, one .hlog per trend,
    /// summary.json, junit.xml, report.html).
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub results_dir: PathBuf,
    /// Write no results folder.
    #[arg(long, conflicts_with = "results_dir")]
    pub no_results: bool,
    /// Serve the current run's merged metrics in Prometheus text format at
    /// http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<SocketAddr>,
    /// An agent silent this long during a run is reported lost.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub lost_after: String,
    /// Serve agent binaries over plain HTTP here: GET /agent/`<target-triple>` and
    /// /agent/`<target-triple>`.sha256, what `punisher cluster up` instances download. By
    /// convention the --listen port + 1 (e.g. 0.0.0.0:7071), where `cluster up` looks unless
    /// given --agent-url.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// A directory of agent binaries, one file per target triple named after it (e.g.
    /// DIR/aarch64-unknown-linux-gnu); this binary is served for its own triple anyway.
    #[arg(long, value_name = "DIR", requires = "http_listen")]
    pub agent_binaries: Option<PathBuf>,
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
    /// Watch the EC2 instance metadata for a spot interruption notice, and on one leave
    /// cleanly: stop arrivals, final report, Goodbye (the controller reassigns the users
    /// that had not started). On by default when --instance-id is known (EC2).
    #[arg(long, env = "PUNISHER_SPOT")]
    pub spot: bool,
    /// The instance metadata service to watch (tests; implies --spot).
    #[arg(long, hide = true, value_name = "URL")]
    pub imds_url: Option<String>,
    /// How often to look for a spot notice.
    #[arg(long, hide = true, default_value = "5s", value_name = "DURATION")]
    pub imds_interval: String,
    /// After a spot notice or the first SIGTERM, running users get this long to finish
    /// (EC2 gives two minutes, Kubernetes 30 s by default); a second SIGTERM stops at once.
    #[arg(
        long = "drain",
        alias = "spot-drain",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub drain: String,
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
    /// Follow the current (or given) run until it ends: the live dashboard on a terminal
    /// (`q` detaches, the run goes on), status lines otherwise.
    Watch {
        run_id: Option<String>,
        /// Status lines even on a terminal.
        #[arg(long)]
        no_tui: bool,
    },
    /// Start a run submitted with --wait-for-start.
    Start,
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
    pub(crate) fn client_config(&self) -> Result<ClientConfig, Failure> {
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
        results_dir: (!args.no_results).then_some(args.results_dir),
        prometheus: args.prometheus,
        lost_after,
        agent_binaries: args.agent_binaries,
        http_listen: args.http_listen,
    })
    .await
    .map_err(|e| match e {
        punisher_controller::ControllerError::Config(_)
        | punisher_controller::ControllerError::NotLoopback(_) => Failure::invalid(e),
        e => Failure::run(e),
    })?;
    let addr = controller.local_addr();
    eprintln!("controller listening on {addr}");
    if let Some(http) = controller.http_addr() {
        eprintln!(
            "agent binaries at http://{http}/agent/<target-triple> (this one: {})",
            punisher_controller::BUILD_TARGET
        );
    }
    if let Some(prometheus) = controller.prometheus_addr() {
        eprintln!("serving Prometheus metrics on http://{prometheus}/metrics");
    }
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
/// `punisher agent`: leaves cleanly once `leave` is cancelled, stops at once on `cancel`.
pub async fn agent(
    args: AgentArgs,
    leave: CancellationToken,
    cancel: CancellationToken,
) -> Result<u8, Failure> {
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
    let drain = duration_flag("--drain", &args.drain)?;
    let spot = spot_watch(&args, drain)?;
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
        spot,
        labels: AgentLabels {
            region: args.region,
            zone: args.zone,
            instance_id: args.instance_id,
        },
    };
    let leave = punisher_agent::LeaveRequest {
        requested: leave,
        drain,
    };
    match punisher_agent::run_until_asked_to_leave(cfg, leave, cancel).await {
        Ok(exit) => {
            eprintln!("agent exiting: {exit:?}");
            Ok(exit::PASSED)
        }
        Err(e @ (AgentError::Refused(_) | AgentError::Config(_))) => Err(Failure::invalid(e)),
        Err(e) => Err(Failure::run(e)),
    }
}

/// Spot notices are watched with `--imds-url` (tests), `--spot`, or on EC2 (an instance id
/// is known: the bootstrap read it from the same metadata service); never otherwise, so
/// that an agent on a laptop does not poll 169.254.169.254.
fn spot_watch(
    args: &AgentArgs,
    drain: Duration,
) -> Result<Option<punisher_agent::SpotWatch>, Failure> {
    let imds_url = match &args.imds_url {
        Some(url) => url.clone(),
        None if args.spot || !args.instance_id.is_empty() => {
            punisher_agent::imds::DEFAULT_BASE_URL.to_owned()
        }
        None => return Ok(None),
    };
    Ok(Some(punisher_agent::SpotWatch {
        imds_url,
        interval: duration_flag("--imds-interval", &args.imds_interval)?,
        drain,
    }))
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

/// `punisher run SCRIPT --controller ADDR ...`: the scenario is checked and `setup()` runs
/// here, then `crate::follow` submits the run and follows it to its exit code, as it does
/// for a local run.
pub async fn run_on_controller(
    args: &RunArgs,
    flags: &ClusterRunFlags,
    interrupts: Interrupts,
) -> Result<u8, Failure> {
    let conn = flags.conn.client_config()?;
    let (overrides, _) = crate::config::option_flags(&args.options).map_err(Failure::invalid)?;
    let env = explicit_env(args)?;
    let prepared =
        crate::follow::prepare(&args.script, &overrides, env, args.js_memory_limit << 20)?;
    let submit = crate::follow::Submit {
        wait_agents: flags.wait_agents,
        workers_per_agent: args.workers.unwrap_or(0) as u32,
        run_id: args.run_id.clone(),
        command_line: crate::config::command_line(),
        wait_for_start: args.wait_for_start,
        on_agent_loss: flags.on_agent_loss,
    };
    let opts = crate::follow::FollowOptions {
        quiet: args.quiet,
        no_tui: args.no_tui,
        summary_json: args.summary_json.clone(),
        remote: Some(conn.controller.clone()),
    };
    crate::follow::submit_and_follow(&conn, &prepared, submit, &opts, interrupts).await
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
                // What the merge holds from each agent (a lost agent's: what it reported
                // before it was lost).
                for a in &run.agents {
                    out.push_str(&format!(
                        "  agent {} {:?}: {} requests merged from {} reports{}\n",
                        a.agent_id,
                        a.state,
                        a.requests,
                        a.reports,
                        if a.suspect { ", OVERLOADED" } else { "" }
                    ));
                }
                for m in &run.messages {
                    out.push_str(&format!("  {m}\n"));
                }
            }
            out
        }
        CtlCommand::Watch { run_id, no_tui } => {
            return crate::dashboard::ctl_watch(
                &conn,
                client,
                run_id.as_deref().unwrap_or(""),
                no_tui,
            )
            .await;
        }
        CtlCommand::Start => client
            .command(RunCommand::Start)
            .await
            .map_err(client_failure)?,
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
