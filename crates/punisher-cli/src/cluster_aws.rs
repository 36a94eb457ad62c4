//! `punisher cluster up | status | down | ls`: agents as EC2 spot instances in every region.
//! Flags become a validated [`UpConfig`] / [`DownConfig`]; the work is done by
//! punisher-launcher. This module owns the terminal side: progress lines on stderr, the cost
//! table and results on stdout, the confirmation prompt, and the exit codes (0 done, 1 fewer
//! agents than asked / teardown not verified / not confirmed, 2 bad flags).

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use punisher_launcher::AwsEc2;
use punisher_launcher::ami;
use punisher_launcher::down::{self, DownConfig};
use punisher_launcher::pricing::MaxPrice;
use punisher_launcher::regions::RegionChoice;
use punisher_launcher::status;
use punisher_launcher::tags;
use punisher_launcher::up::{self, DEFAULT_INSTANCE_TYPES, UpConfig};

use crate::exit::{self, Failure};

/// `punisher cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Launch N agents as spot instances across regions (shows the cost, asks first).
    Up(Box<UpArgs>),
    /// A cluster's instances by region and state, and (with --controller) which joined.
    Status(StatusArgs),
    /// Terminate everything tagged for a cluster in every region and verify none is left.
    Down(DownArgs),
    /// Clusters found by tag across regions, with age and expiry.
    Ls(LsArgs),
}

/// Where EC2 is: the standard AWS chain (env, profile, SSO, instance role) picks
/// credentials, profile and default region.
#[derive(Debug, Args, Clone)]
pub struct AwsArgs {
    /// An EC2-compatible endpoint instead of AWS (moto, LocalStack).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct UpArgs {
    /// The cluster's name: every resource is tagged punisher:cluster=NAME.
    #[arg(long)]
    pub name: String,
    /// Agents in total, spread evenly over the regions.
    #[arg(long)]
    pub agents: Option<u32>,
    /// Agents per region (with --agents: at most this many per region).
    #[arg(long, value_name = "M")]
    pub per_region: Option<u32>,
    /// The controller the agents dial, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: String,
    /// The controller's agent token.
    #[arg(long, env = "PUNISHER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The controller's certificate fingerprint (printed by the controller at start).
    #[arg(long, value_name = "SHA256")]
    pub controller_fingerprint: String,
    /// `all` (the account's enabled regions) or r1,r2,...
    #[arg(long, default_value = "all")]
    pub regions: String,
    /// Candidate instance types, tried cheapest first.
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_INSTANCE_TYPES.iter().map(|s| s.to_string()))]
    pub instance_types: Vec<String>,
    /// `auto` (spot +30%, capped by on-demand) or dollars per instance-hour.
    #[arg(long, default_value = "auto")]
    pub max_price: String,
    /// Instances terminate by themselves after this long (10m..24h).
    #[arg(long, default_value = "2h")]
    pub ttl: String,
    /// Plan and show the cost; make no mutating call.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// An image for a region instead of the latest Amazon Linux 2023 (repeatable).
    #[arg(long, value_name = "REGION=AMI")]
    pub ami: Vec<String>,
    /// Where agents download their binary (`/<target-triple>` is appended); default
    /// http://HOST:PORT+1/agent, where `punisher controller --http-listen` serves by
    /// convention (its gRPC port is TLS).
    #[arg(long, value_name = "URL")]
    pub agent_url: Option<String>,
    /// Pin an agent binary's SHA-256 (repeatable): TRIPLE=HEX.
    #[arg(long, value_name = "TRIPLE=HEX")]
    pub agent_sha256: Vec<String>,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    #[arg(long)]
    pub name: String,
    /// `all` or r1,r2,...
    #[arg(long, default_value = "all")]
    pub regions: String,
    #[command(flatten)]
    pub aws: AwsArgs,
    /// With --controller and --token: which instances joined (agents say their instance id
    /// in their Hello).
    #[command(flatten)]
    pub conn: crate::cluster::ControllerConnArgs,
}

#[derive(Debug, Args, Clone)]
pub struct DownArgs {
    #[arg(long)]
    pub name: String,
    /// `all` or r1,r2,... (default all: a cluster may span every region).
    #[arg(long, default_value = "all")]
    pub regions: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args, Clone)]
pub struct LsArgs {
    /// `all` or r1,r2,...
    #[arg(long, default_value = "all")]
    pub regions: String,
    #[command(flatten)]
    pub aws: AwsArgs,
}

impl UpArgs {
    /// Raw flags into a validated config (no AWS call).
    pub fn to_config(&self) -> Result<UpConfig, Failure> {
        let mut sha = HashMap::new();
        for s in &self.agent_sha256 {
            let (triple, hex) = s.split_once('=').ok_or_else(|| {
                Failure::invalid(anyhow::anyhow!(
                    "invalid --agent-sha256 {s:?}: write TRIPLE=HEX, e.g. \
                     aarch64-unknown-linux-gnu=9f86d0..."
                ))
            })?;
            sha.insert(triple.to_owned(), hex.to_ascii_lowercase());
        }
        let config = UpConfig {
            name: self.name.clone(),
            agents: self.agents,
            per_region: self.per_region,
            controller: self.controller.clone(),
            token: self.token.clone(),
            controller_fingerprint: self.controller_fingerprint.clone(),
            regions: RegionChoice::parse(&self.regions).map_err(Failure::invalid)?,
            instance_types: self.instance_types.clone(),
            max_price: MaxPrice::parse(&self.max_price).map_err(Failure::invalid)?,
            ttl: tags::parse_ttl(&self.ttl).map_err(Failure::invalid)?,
            ami_overrides: ami::parse_overrides(&self.ami).map_err(Failure::invalid)?,
            agent_url: self.agent_url.clone(),
            agent_sha256: sha,
        };
        config.validate().map_err(Failure::invalid)?;
        Ok(config)
    }
}

/// Runs a cluster command; the result is the exit code.
pub async fn cluster(command: ClusterCommand) -> Result<u8, Failure> {
    match command {
        ClusterCommand::Up(args) => cluster_up(*args).await,
        ClusterCommand::Status(args) => cluster_status(args).await,
        ClusterCommand::Down(args) => cluster_down(args).await,
        ClusterCommand::Ls(args) => cluster_ls(args).await,
    }
}

/// One progress line per event, prefixed by its region, on stderr.
fn progress(region: &str, message: &str) {
    eprintln!("{region:<16} {message}");
}

#[allow(clippy::print_stdout)] // tables and results are the commands' output
fn output(text: &str) {
    print!("{text}");
}

pub async fn cluster_up(args: UpArgs) -> Result<u8, Failure> {
    let config = args.to_config()?;
    let ec2 = AwsEc2::from_env(args.aws.endpoint_url.as_deref()).await;
    let plan = up::plan(&ec2, config, &progress)
        .await
        .map_err(Failure::run)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    output(&plan.cost_table());
    if plan.regions.is_empty() {
        return Err(Failure::run(anyhow::anyhow!(
            "no region can launch agents (see the table above)"
        )));
    }
    if args.dry_run {
        eprintln!("dry run: nothing was launched");
        return Ok(exit::PASSED);
    }
    if !args.yes {
        let question = format!(
            "launch {} spot instances for about ${:.2}/h? [y/N] ",
            plan.regions.iter().map(|r| r.agents).sum::<u32>(),
            plan.hourly_cost()
        );
        if !confirm(&question).await? {
            eprintln!("not confirmed: nothing was launched");
            return Ok(exit::RUN_ERROR);
        }
    }
    let report = up::execute(&ec2, &plan, &progress).await;
    output(&report.render());
    if report.is_complete() {
        Ok(exit::PASSED)
    } else {
        eprintln!(
            "fewer agents than asked: {} of {}; `punisher cluster down --name {}` removes \
             what was launched",
            report.launched(),
            report.wanted(),
            args.name
        );
        Ok(exit::RUN_ERROR)
    }
}

pub async fn cluster_status(args: StatusArgs) -> Result<u8, Failure> {
    let regions = RegionChoice::parse(&args.regions).map_err(Failure::invalid)?;
    let ec2 = AwsEc2::from_env(args.aws.endpoint_url.as_deref()).await;
    let st = status::status(&ec2, &args.name, &regions)
        .await
        .map_err(Failure::run)?;
    let joined = match &args.conn.controller {
        Some(_) => joined_instances(&args.conn).await?,
        None => None,
    };
    output(&st.render(joined.as_ref()));
    Ok(exit::PASSED)
}

/// The instance ids of the agents the controller has (their Hello carries it); `None`
/// with a warning when the controller cannot be asked: the instances are listed anyway.
async fn joined_instances(
    conn: &crate::cluster::ControllerConnArgs,
) -> Result<Option<HashSet<String>>, Failure> {
    let cfg = conn.client_config()?;
    let asked = async {
        let mut client = punisher_controller::ClusterClient::connect(&cfg).await?;
        client.status().await
    };
    match asked.await {
        Ok(status) => Ok(Some(status.instances.into_values().collect())),
        Err(e) => {
            eprintln!(
                "warning: cannot ask the controller {} which agents joined: {e}",
                cfg.controller
            );
            Ok(None)
        }
    }
}

pub async fn cluster_down(args: DownArgs) -> Result<u8, Failure> {
    let regions = RegionChoice::parse(&args.regions).map_err(Failure::invalid)?;
    tags::validate_cluster_name(&args.name).map_err(Failure::invalid)?;
    let ec2 = AwsEc2::from_env(args.aws.endpoint_url.as_deref()).await;
    if !args.yes {
        let st = status::status(&ec2, &args.name, &regions)
            .await
            .map_err(Failure::run)?;
        output(&st.render(None));
        let question = format!(
            "terminate every instance of cluster {} and delete its security groups? [y/N] ",
            args.name
        );
        if !confirm(&question).await? {
            eprintln!("not confirmed: nothing was terminated");
            return Ok(exit::RUN_ERROR);
        }
    }
    let report = down::down(&ec2, &DownConfig::new(&args.name, regions), &progress)
        .await
        .map_err(Failure::run)?;
    output(&report.render());
    Ok(if report.is_clean() {
        exit::PASSED
    } else {
        exit::RUN_ERROR
    })
}

pub async fn cluster_ls(args: LsArgs) -> Result<u8, Failure> {
    let regions = RegionChoice::parse(&args.regions).map_err(Failure::invalid)?;
    let ec2 = AwsEc2::from_env(args.aws.endpoint_url.as_deref()).await;
    let list = status::list_clusters(&ec2, &regions)
        .await
        .map_err(Failure::run)?;
    output(&list.render(SystemTime::now()));
    Ok(if list.errors.is_empty() {
        exit::PASSED
    } else {
        exit::RUN_ERROR
    })
}

/// Asks on stderr and reads one line from stdin. Without a terminal there is nobody to
/// ask: refuse rather than spend money unattended (pass --yes in scripts).
async fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::invalid(anyhow::anyhow!(
            "refusing to continue without confirmation: stdin is not a terminal; pass --yes"
        )));
    }
    eprint!("{question}");
    // Reading stdin blocks: keep it off the async workers.
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .map_err(Failure::run)?
    .map_err(Failure::run)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
