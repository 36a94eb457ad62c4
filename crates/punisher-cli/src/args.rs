//! The command line, as clap sees it. Nothing outside this crate sees these types: they
//! become validated configs in [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// punisher: load tests written in JavaScript, from one machine to a cluster.
#[derive(Debug, Parser)]
#[command(name = "punisher", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `punisher_engine=debug`.
    #[arg(long, global = true, env = "PUNISHER_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario and print its summary; exit 0 when thresholds pass, 99 when not.
    Run(RunArgs),
    /// Compile a scenario, validate its options and print the plan, without running it.
    Check(CheckArgs),
    /// Serve the demo TV-show backend (HTTP API + Socket.IO).
    Target(TargetArgs),
    /// Rebuild summary.json, junit.xml and report.html of a run from its journal.
    Report(ReportArgs),
    /// Compare two runs' percentiles, rates and thresholds; exit 1 when B regresses beyond
    /// --tolerance or a threshold flipped from pass to fail.
    Compare(CompareArgs),
    /// Wait for agents and run scenarios submitted with `punisher run --controller`.
    Controller(crate::cluster::ControllerArgs),
    /// Join a controller and run its share of each run (dials out; never listens).
    Agent(crate::cluster::AgentArgs),
    /// Control a running controller: status, watch, scale, pause, resume, stop, abort.
    Ctl(crate::cluster::CtlArgs),
    /// Agents on EC2 spot in every region: up, status, down, ls.
    #[command(subcommand)]
    Cluster(crate::cluster_aws::ClusterCommand),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's results folder (RESULTS/RUN-ID).
    pub run_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The baseline: a run folder or its summary.json.
    pub a: PathBuf,
    /// The candidate: a run folder or its summary.json.
    pub b: PathBuf,
    /// Allowed regression: latency higher by this many percent, error rates by this many
    /// points, throughput (requests, iterations, messages per second) lower by this many
    /// percent. A threshold that passed in A and fails in B is always a regression.
    #[arg(long, default_value_t = 10.0, value_name = "PERCENT")]
    pub tolerance: f64,
}

/// Flags that change a scenario's options (they override `export const options`).
#[derive(Debug, Args, Clone, Default)]
pub struct OptionFlags {
    /// Session users: each runs the default function once (with --ramp-up).
    #[arg(long)]
    pub users: Option<u64>,
    /// How long session users take to arrive, evenly spread (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    pub ramp_up: Option<String>,
    /// Test duration (constant VUs, arrival rate) or a cap for session users.
    #[arg(long, short = 'd', value_name = "DURATION")]
    pub duration: Option<String>,
    /// Looping virtual users (constant VUs with --duration).
    #[arg(long)]
    pub vus: Option<u64>,
    /// Iterations per second (constant arrival rate, with --duration).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Ramping looping users, e.g. `30s:100,1m:100,10s:0`.
    #[arg(long, value_name = "DURATION:TARGET,...")]
    pub stages: Option<String>,
    /// Skip TLS certificate verification.
    #[arg(long)]
    pub insecure: bool,
    /// Environment for the scenario (`__ENV.KEY`); repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario script (an ES module).
    pub script: PathBuf,
    #[command(flatten)]
    pub options: OptionFlags,
    /// Worker threads, each with one JavaScript context (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Start the demo target in-process on a free loopback port and pass its URL as __ENV.API.
    #[arg(long)]
    pub demo_target: bool,
    /// Write every metric of the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    /// Local source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.60.
    #[arg(long, value_name = "RANGES")]
    pub source_ips: Option<String>,
    /// Memory limit of each worker's JavaScript runtime, in MiB.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    pub js_memory_limit: usize,
    /// Print no status line each second.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Where each run writes its results folder (`DIR/<run-id>/`): run.json, the journal
    /// (timeseries.jsonl and one .hlog per trend), summary.json, junit.xml, report.html.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "results",
        env = "PUNISHER_RESULTS_DIR"
    )]
    pub results_dir: PathBuf,
    /// Write no results folder.
    #[arg(long, env = "PUNISHER_NO_RESULTS")]
    pub no_results: bool,
    /// The run id, i.e. the results folder's name (default: run-SECONDS-XXXX, unix seconds and 4 hex digits).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Serve the running totals in Prometheus text format on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<std::net::SocketAddr>,
    /// Status lines instead of the dashboard, even on a terminal.
    #[arg(long)]
    pub no_tui: bool,
    /// Load the scenario on every agent, then wait for `s` in the dashboard (or `punisher
    /// ctl start`) before the common start instant.
    #[arg(long)]
    pub wait_for_start: bool,
    /// Local runs: the number of agent processes (default: as many as the open-file limit
    /// needs, see --fds-per-user; one runs in this process).
    #[arg(long, value_name = "N")]
    pub agents: Option<u32>,
    /// Local runs: open files one virtual user needs, to choose the number of agent
    /// processes (default 3: an HTTP keep-alive connection, a Socket.IO connection, slack).
    #[arg(long, value_name = "N")]
    pub fds_per_user: Option<u32>,
    /// Local runs: the open files one agent process may use (default: its RLIMIT_NOFILE
    /// minus a reserve); lower it to test child agents with few users.
    #[arg(long, hide = true, value_name = "N")]
    pub fd_budget: Option<u64>,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterRunFlags,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The scenario script (an ES module).
    pub script: PathBuf,
    #[command(flatten)]
    pub options: OptionFlags,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Delay added to every login and API response (e.g. 10ms).
    #[arg(long, value_name = "DURATION")]
    pub latency: Option<String>,
    /// Fraction of API requests answered with 500 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Serve from N processes on consecutive ports from --listen (one process holds at
    /// most ~20,000 sockets here); a broadcast and /admin/stats cover all of them.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub processes: usize,
    /// Close an HTTP connection that has waited this long for a request (e.g. 15s; websockets
    /// are not concerned) [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub keep_alive_timeout: Option<String>,
    /// Send the Engine.IO pings of all sockets on multiples of this period of the wall
    /// clock, so that the target and the clients wake once per period instead of once per
    /// ping (0 = each socket on its own phase, as socketioxide and node do) [default: 100ms].
    #[arg(long, value_name = "DURATION")]
    pub heartbeat_grid: Option<String>,
    /// Engine.IO ping interval: how often the server pings each socket [default: 25s, as
    /// node's socket.io].
    #[arg(long, value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// How long a socket may take to answer a ping before the server drops it [default:
    /// 20s, as node's socket.io]. Longer keeps the sockets of a lagging generator alive,
    /// which a node backend would not do.
    #[arg(long, value_name = "DURATION")]
    pub ping_timeout: Option<String>,
    /// The other processes of a multi-process target (set by --processes).
    #[arg(long, hide = true, value_delimiter = ',')]
    pub peers: Vec<std::net::SocketAddr>,
}
