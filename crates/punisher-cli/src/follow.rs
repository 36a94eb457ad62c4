//! The one path of `punisher run`, wherever the run goes: a local run (an in-process
//! controller, see [`crate::local`]) and `punisher run --controller` (a standing one) both
//! check the scenario here ([`prepare`]), run `setup()` here once and ship its data, submit
//! the run, and follow it ([`submit_and_follow`]): merged views -> status lines (or the
//! dashboard) -> Ctrl-C (the first a graceful Stop, the second an Abort) -> `teardown()`
//! -> `handleSummary()` -> the summary on stdout and `--summary-json` -> the exit code
//! (0 passed, 99 thresholds failed, 1 the run could not complete, 2 bad usage).
//!
//! Nothing here knows whether the controller is in this process: the numbers a user sees
//! locally are the numbers a cluster merges.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use punisher_controller::{
    AgentState, ClientConfig, ClientError, ClusterClient, RunCommand, RunState, RunSubmission,
    RunView,
};
use punisher_core::{Overrides, Plan, Segment};
use punisher_engine::{Bundle, EngineConfig, LocalBarrierHub, Scenario, WorkerReport};
use punisher_metrics::{Snapshot, Threshold};
use punisher_proto::ScenarioBundle;
use tokio::sync::watch;

use crate::dashboard::{Dashboard, DashboardAction, DashboardOptions, next_action};
use crate::exit::Failure;
use crate::status::StatusView;

/// Ctrl-C presses (and SIGTERMs) seen so far: the first stops gracefully, the second aborts.
pub type Interrupts = watch::Receiver<u32>;

/// A scenario checked on this machine, before anything starts.
pub(crate) struct Prepared {
    /// The script as named on the command line (the summary's `scenario`).
    pub(crate) name: String,
    pub(crate) scenario: Scenario,
    /// The plan after the command line's overrides.
    pub(crate) plan: Plan,
    /// `__ENV` as shipped to every agent.
    pub(crate) env: BTreeMap<String, String>,
    /// One worker on this machine: `setup()`, `teardown()` and `handleSummary()` run here,
    /// once per run, whatever the number of agents.
    pub(crate) here: EngineConfig,
}

/// Reads the script, runs its init code once (options, imports, `open()`ed files) and
/// builds the plan; every error is a usage error (exit 2) and comes before any user starts.
pub(crate) fn prepare(
    script: &Path,
    overrides: &Overrides,
    env: BTreeMap<String, String>,
    memory_limit_bytes: usize,
) -> Result<Prepared, Failure> {
    let bundle = Bundle::from_path(script).map_err(Failure::invalid)?;
    let scenario = punisher_engine::inspect(bundle, &env).map_err(Failure::invalid)?;
    let plan = Plan::from_options(&scenario.options, overrides).map_err(|e| {
        Failure::invalid(anyhow::Error::new(e).context(script.display().to_string()))
    })?;
    for unknown in &plan.unknown_options {
        tracing::warn!(option = %unknown, "unknown option ignored");
    }
    for t in &plan.thresholds {
        Threshold::parse(t)
            .map_err(|e| Failure::invalid(anyhow::Error::new(e).context("invalid threshold")))?;
    }
    let here = EngineConfig {
        workers: 1,
        plan: plan.clone(),
        segment: Segment::FULL,
        env: env.clone(),
        source_pool: None,
        memory_limit_bytes,
        barriers: Arc::new(LocalBarrierHub::new(1)),
        test_users: plan.executor.max_users(),
    };
    Ok(Prepared {
        name: script.display().to_string(),
        scenario,
        plan,
        env,
        here,
    })
}

/// What the submission says beyond the scenario.
pub(crate) struct Submit {
    /// The run starts when this many agents have joined.
    pub(crate) wait_agents: u32,
    /// Worker threads per agent; 0: each agent uses its cores.
    pub(crate) workers_per_agent: u32,
    /// `--run-id` (the results folder's name); `None`: the controller chooses.
    pub(crate) run_id: Option<String>,
    /// The command line as given, for `run.json`.
    pub(crate) command_line: Vec<String>,
    /// `--wait-for-start`: load everywhere, then hold until `s` or `punisher ctl start`.
    pub(crate) wait_for_start: bool,
    /// `--on-agent-loss`: what an agent leaving or lost mid-run means.
    pub(crate) on_agent_loss: punisher_controller::AgentLossPolicy,
}

/// How to show the run and where its outputs go.
pub(crate) struct FollowOptions {
    /// `--quiet`: no status line each second.
    pub(crate) quiet: bool,
    /// `--no-tui`: status lines even on a terminal (the dashboard is not wanted).
    pub(crate) no_tui: bool,
    pub(crate) summary_json: Option<PathBuf>,
    /// The standing controller's address (`--controller`); `None` for a local run, whose
    /// controller lives and dies with this process.
    pub(crate) remote: Option<String>,
}

pub(crate) fn client_failure(e: ClientError) -> Failure {
    match e {
        // Wrong token, fingerprint or version: retrying the same way cannot help.
        ClientError::Refused(_)
        | ClientError::Connect(punisher_proto::ConnectError::Refused(_)) => Failure::invalid(e),
        e => Failure::run(e),
    }
}

/// Runs `setup()` here, submits the run to the controller at `conn`, follows it to its
/// end, runs `teardown()` and `handleSummary()`, prints the summary and returns the exit
/// code. The first Ctrl-C stops the run gracefully, the second aborts it.
pub(crate) async fn submit_and_follow(
    conn: &ClientConfig,
    prepared: &Prepared,
    submit: Submit,
    opts: &FollowOptions,
    mut interrupts: Interrupts,
) -> Result<u8, Failure> {
    let Prepared {
        name,
        scenario,
        plan,
        env,
        here,
    } = prepared;
    let tui = crate::dashboard::wanted(opts.no_tui || opts.quiet);
    if submit.wait_for_start && !tui && opts.remote.is_none() {
        // Nobody could send the start: the local controller's port is private to this run.
        return Err(Failure::invalid(anyhow!(
            "--wait-for-start on a local run needs the dashboard (a terminal, without --no-tui \
             or --quiet) to press s; with --controller, `punisher ctl start` starts it"
        )));
    }
    let setup_data = punisher_engine::run_setup(scenario, here)
        .await
        .context("setup() failed; no user was started")
        .map_err(Failure::run)?;

    let mut client = ClusterClient::connect(conn).await.map_err(client_failure)?;
    let run_id = client
        .submit_run(RunSubmission {
            bundle: ScenarioBundle {
                entry: scenario.bundle.entry.clone(),
                sources: scenario.bundle.sources.clone(),
                files: scenario.bundle.files.clone(),
            },
            plan: plan.clone(),
            env: env.clone(),
            setup_data: setup_data.clone(),
            wait_agents: submit.wait_agents,
            scenario_name: name.clone(),
            workers_per_agent: submit.workers_per_agent,
            start_delay: Duration::ZERO,
            wait_for_start: submit.wait_for_start,
            run_id: submit.run_id.clone(),
            command_line: submit.command_line.clone(),
            on_agent_loss: submit.on_agent_loss,
        })
        .await
        .map_err(client_failure)?;
    if let Some(controller) = &opts.remote {
        eprintln!(
            "run {run_id} submitted to {controller}; it starts when {} agent(s) joined",
            submit.wait_agents
        );
    }
    // Commands go on a connection of their own: the watch stream keeps the first busy.
    let mut ctl = ClusterClient::connect(conn).await.map_err(client_failure)?;
    let mut views = client.watch(&run_id).await.map_err(client_failure)?;
    // On a terminal the dashboard replaces the status lines; its keys become the same
    // commands as `punisher ctl`. `--quiet` asks for no live output at all.
    let mut dashboard = if tui {
        Some(
            Dashboard::start(DashboardOptions {
                title: name.clone(),
                planned: plan.executor.planned_duration(),
                attached: false,
                wait_for_start: submit.wait_for_start,
            })
            .map_err(Failure::run)?,
        )
    } else {
        if submit.wait_for_start {
            eprintln!("run {run_id} loads, then waits for `punisher ctl start`");
        }
        None
    };
    let mut lines = StatusLines::new(plan.executor.planned_duration(), !opts.quiet);
    let mut seen = *interrupts.borrow();
    let mut last: Option<RunView> = None;
    loop {
        tokio::select! {
            changed = interrupts.changed() => {
                if changed.is_err() {
                    // No more signals can come; keep following.
                    interrupts = watch::channel(seen).1;
                    continue;
                }
                let presses = *interrupts.borrow_and_update();
                if presses <= seen { continue; }
                seen = presses;
                // A signal (Ctrl-C is a key while the dashboard is up, so this is SIGTERM or
                // a Ctrl-C after it left): the messages below need the normal terminal.
                if let Some(d) = dashboard.take() {
                    d.close().await;
                }
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
                match dashboard.as_mut() {
                    Some(d) => d.show(&view),
                    None => lines.show(&view),
                }
                let over = view.state.is_over();
                last = Some(view);
                if over { break; }
            }
            action = next_action(&mut dashboard) => match action {
                Some(DashboardAction::Command(cmd)) => {
                    let answer = ctl.command(cmd).await;
                    match (dashboard.as_mut(), answer) {
                        (Some(d), Ok(answer)) => d.note(answer, false),
                        (Some(d), Err(e)) => d.note(format!("the controller refused: {e}"), true),
                        (None, Ok(answer)) => eprintln!("{answer}"),
                        (None, Err(e)) => eprintln!("the controller refused: {e}"),
                    }
                }
                // Our own run: detaching is not offered, but if it comes, follow on with
                // status lines rather than leave the run without teardown and summary.
                Some(DashboardAction::Detach) | None => {
                    if let Some(d) = dashboard.take() {
                        d.close().await;
                    }
                }
            },
        }
    }
    // The terminal back before anything is printed.
    if let Some(d) = dashboard.take() {
        d.close().await;
    }
    lines.finish();
    let Some(last) = last.filter(|v| v.state.is_over()) else {
        return Err(Failure::run(match &opts.remote {
            Some(_) => anyhow!(
                "lost the controller before run {run_id} ended; it may still be running: see \
                 `punisher ctl status`"
            ),
            None => anyhow!("the local controller stopped before run {run_id} ended"),
        }));
    };
    if scenario.has_teardown
        && let Err(e) = punisher_engine::run_teardown(scenario, here, &setup_data).await
    {
        tracing::warn!(error = %format!("{e:#}"), "teardown() failed");
        eprintln!("teardown() failed: {e:#}");
    }
    for message in &last.messages {
        eprintln!("  {message}");
    }
    let results_dir = last.results_dir.as_deref().map(Path::new);
    let mut print_default_summary = true;
    if scenario.has_handle_summary
        && let Some(json) = &last.summary_json
    {
        // As in k6, the outputs of handleSummary() replace the summary printed on stdout;
        // summary.json in the results folder and --summary-json stay.
        let data = crate::handle_summary::k6_data(json, &setup_data);
        match punisher_engine::run_handle_summary(scenario, here, &data).await {
            Ok(Some(files)) => {
                print_default_summary = false;
                if let Err(e) = crate::handle_summary::write_outputs(&files, results_dir) {
                    eprintln!("handleSummary(): {e:#}");
                }
            }
            Ok(None) => {}
            Err(e) => eprintln!("handleSummary() failed: {e:#}"),
        }
    }
    if print_default_summary && let Some(text) = &last.summary_text {
        #[allow(clippy::print_stdout)] // the summary is the command's output
        {
            println!("{text}");
        }
    }
    if let (Some(path), Some(json)) = (&opts.summary_json, &last.summary_json) {
        let bytes = serde_json::to_vec_pretty(json).map_err(Failure::run)?;
        std::fs::write(path, bytes)
            .map_err(|e| Failure::run(anyhow!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(dir) = results_dir {
        eprintln!("results: {}", dir.display());
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

/// One status line on stderr per merged second while the run goes on.
struct StatusLines {
    planned: Duration,
    enabled: bool,
    last_tick: u64,
    printed: bool,
}

impl StatusLines {
    fn new(planned: Duration, enabled: bool) -> StatusLines {
        StatusLines {
            planned,
            enabled,
            last_tick: 0,
            printed: false,
        }
    }

    fn show(&mut self, view: &RunView) {
        let live = matches!(view.state, RunState::Running | RunState::Stopping);
        // A tick at the start instant has nothing to show yet.
        if !self.enabled || !live || view.tick <= self.last_tick || view.elapsed.is_zero() {
            return;
        }
        self.last_tick = view.tick;
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{}", status_line(view, self.planned));
        self.printed = true;
    }

    /// A blank line between the last status line and what follows.
    fn finish(&mut self) {
        if self.printed {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// A status line from a merged view (the whole cluster as one "worker").
pub(crate) fn status_line(view: &RunView, planned: Duration) -> String {
    let cluster = BTreeMap::from([(
        0usize,
        WorkerReport {
            worker: 0,
            snapshot: Snapshot::empty(0, 0),
            active_users: view.active_users,
            peak_users: view.active_users,
            target_users: view.target_users,
            arrived_users: view.arrived_users,
            finished: false,
            event_loop_lag: Duration::ZERO,
            cpu_busy: 0.0,
            open_connections: 0,
            open_sockets: 0,
        },
    )]);
    let line = StatusView::from_interval(view.elapsed, planned, &cluster, &view.interval).render();
    let lost = view
        .agents
        .iter()
        .filter(|a| a.state == AgentState::Lost)
        .count();
    let left = view
        .agents
        .iter()
        .filter(|a| a.state == AgentState::Left)
        .count();
    let suspect = view.agents.iter().filter(|a| a.suspect).count();
    let mut agents = format!("agents {}", view.agents.len());
    if lost > 0 {
        agents.push_str(&format!(" ({lost} lost)"));
    }
    if left > 0 {
        agents.push_str(&format!(" ({left} left)"));
    }
    if suspect > 0 {
        agents.push_str(&format!(" ({suspect} overloaded)"));
    }
    format!("{line} | {agents}")
}
