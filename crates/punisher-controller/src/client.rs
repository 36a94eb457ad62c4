//! The admin client: what `punisher run --controller` uses to submit a run and follow it,
//! and what `punisher ctl status|watch|scale|pause|resume|stop|abort` uses.

use std::collections::BTreeMap;
use std::time::Duration;

use punisher_core::Plan;
use punisher_proto::transport::{AdminClient, TokenInterceptor};
use punisher_proto::{ClientSecurity, ConnectError, Refusal, ScenarioBundle, convert, v1};
use tonic::Streaming;

use crate::RunCommand;
use crate::view::{AgentView, RunView, ViewError};

/// Where the controller is and how to trust it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `HOST:PORT`.
    pub controller: String,
    pub token: String,
    pub security: ClientSecurity,
    pub connect_timeout: Duration,
}

/// Errors of admin calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Refused(Refusal),
    #[error("the controller answered: {message}")]
    Rejected { code: tonic::Code, message: String },
    #[error(transparent)]
    View(#[from] ViewError),
    #[error("invalid submission: {0}")]
    Submission(String),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> ClientError {
        match Refusal::from_status(&status, punisher_proto::PROTOCOL_VERSION) {
            Some(r) => ClientError::Refused(r),
            None => ClientError::Rejected {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }
}

/// A run to submit: the scenario's bundle and plan (inspected by the submitter, which runs
/// JavaScript; the controller does not), its environment and `setup()` data.
#[derive(Debug, Clone)]
pub struct RunSubmission {
    pub bundle: ScenarioBundle,
    pub plan: Plan,
    pub env: BTreeMap<String, String>,
    pub setup_data: serde_json::Value,
    /// The run starts when this many agents have joined.
    pub wait_agents: u32,
    /// The scenario as named on the command line.
    pub scenario_name: String,
    /// Worker threads per agent; 0: each agent uses its cores.
    pub workers_per_agent: u32,
    /// How long after every agent loaded the common start is; zero: the controller's default.
    pub start_delay: Duration,
    /// The run's id, also its results folder's name (`--run-id`); `None`: the controller
    /// makes one up.
    pub run_id: Option<String>,
    /// The submitter's command line, one argument per element, for `run.json`.
    pub command_line: Vec<String>,
    /// Load the scenario on the agents, then hold until a [`RunCommand::Start`].
    pub wait_for_start: bool,
    /// What happens when an agent leaves or is lost during the run.
    pub on_agent_loss: crate::AgentLossPolicy,
}

/// The controller's registry and its current or last run.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub controller_version: String,
    pub agents: Vec<AgentView>,
    /// Joined agents' EC2 instance ids (agent id -> instance id), when their Hello said
    /// (`punisher cluster status` matches them against the cluster's instances).
    pub instances: BTreeMap<String, String>,
    pub run: Option<RunView>,
}

/// A connection to the controller's admin API.
pub struct ClusterClient {
    admin: AdminClient,
}

/// Live views of one run, until it is over.
pub struct ViewStream {
    inner: Streaming<v1::RunView>,
}

impl ViewStream {
    /// The next view; `None` after the last one (the run is over, or the controller went away:
    /// check the last view's state).
    pub async fn next(&mut self) -> Option<Result<RunView, ClientError>> {
        match self.inner.message().await {
            Ok(Some(view)) => Some(RunView::try_from(&view).map_err(ClientError::from)),
            Ok(None) => None,
            Err(status) => Some(Err(status.into())),
        }
    }
}

impl ClusterClient {
    pub async fn connect(cfg: &ClientConfig) -> Result<ClusterClient, ClientError> {
        let token = TokenInterceptor::new(&cfg.token)?;
        let channel =
            punisher_proto::transport::connect(&cfg.controller, &cfg.security, cfg.connect_timeout)
                .await?;
        Ok(ClusterClient {
            admin: punisher_proto::transport::admin_client(channel, token),
        })
    }

    /// Submits a run; returns its id. The run starts when enough agents joined.
    pub async fn submit_run(&mut self, run: RunSubmission) -> Result<String, ClientError> {
        run.bundle
            .validate()
            .map_err(|e| ClientError::Submission(e.to_string()))?;
        let request = v1::SubmitRunRequest {
            bundle: Some(run.bundle.into()),
            plan_json: convert::plan_to_json(&run.plan),
            env: run.env,
            setup_data_json: run.setup_data.to_string(),
            wait_agents: run.wait_agents,
            scenario_name: run.scenario_name,
            workers_per_agent: run.workers_per_agent,
            start_delay_ms: run.start_delay.as_millis() as u64,
            run_id: run.run_id.unwrap_or_default(),
            command_line: run.command_line,
            wait_for_start: run.wait_for_start,
            on_agent_loss: run.on_agent_loss.to_wire(),
        };
        Ok(self.admin.submit_run(request).await?.into_inner().run_id)
    }

    /// Follows a run (empty id: the current or last one).
    pub async fn watch(&mut self, run_id: &str) -> Result<ViewStream, ClientError> {
        let inner = self
            .admin
            .watch(v1::WatchRequest {
                run_id: run_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(ViewStream { inner })
    }

    pub async fn status(&mut self) -> Result<ClusterStatus, ClientError> {
        let s = self.admin.status(v1::StatusRequest {}).await?.into_inner();
        let run = match (&s.run, s.has_run) {
            (Some(run), true) => Some(RunView::try_from(run)?),
            _ => None,
        };
        Ok(ClusterStatus {
            controller_version: s.controller_version,
            agents: s.agents.iter().map(AgentView::from).collect(),
            instances: s
                .agents
                .iter()
                .filter(|a| !a.instance_id.is_empty())
                .map(|a| (a.agent_id.clone(), a.instance_id.clone()))
                .collect(),
            run,
        })
    }

    /// Sends a live command to the current run; returns the controller's answer.
    pub async fn command(&mut self, cmd: RunCommand) -> Result<String, ClientError> {
        use v1::command_request::Kind;
        let kind = match cmd {
            RunCommand::Start => Kind::Start(true),
            RunCommand::Scale(n) => Kind::ScaleUsers(n),
            RunCommand::Pause => Kind::Pause(true),
            RunCommand::Resume => Kind::Resume(true),
            RunCommand::Stop { grace } => Kind::StopGraceMs(grace.as_millis() as u64),
            RunCommand::Abort { reason } => Kind::AbortReason(reason),
        };
        let r = self
            .admin
            .command(v1::CommandRequest { kind: Some(kind) })
            .await?
            .into_inner();
        Ok(format!("{}: {}", r.run_id, r.message))
    }
}
