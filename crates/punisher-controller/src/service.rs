//! The gRPC services: the agents' `Session` stream and the admin API. Both check the
//! cluster token, validate what they receive, and hand it to the hub; neither decides
//! anything about agents or runs itself.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use punisher_metrics::Threshold;
use punisher_proto::transport::{PeerInfo, token_from_metadata};
use punisher_proto::v1::admin_service_server::AdminService;
use punisher_proto::v1::agent_message::Kind as Msg;
use punisher_proto::v1::agent_service_server::AgentService;
use punisher_proto::{ScenarioBundle, ServiceError, convert, error::tokens_equal, v1};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use crate::RunCommand;
use crate::hub::{HubEvent, RunSpec};
use crate::registry::AGENT_OUTBOX;

/// An agent must say Hello this soon after opening its stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Agent ids are chosen by agents: bounded.
const MAX_AGENT_ID_BYTES: usize = 128;
/// Runs start this long after every agent loaded, unless the submission says otherwise:
/// enough for the Start command to reach agents on other continents.
const DEFAULT_START_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) token: Arc<str>,
    pub(crate) hub: mpsc::Sender<HubEvent>,
}

impl Shared {
    fn check_token(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match token_from_metadata(metadata) {
            Some(t) if tokens_equal(t, &self.token) => Ok(()),
            _ => Err(ServiceError::WrongToken.into()),
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> HubEvent) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.hub
            .send(make(tx))
            .await
            .map_err(|_| ServiceError::ShuttingDown.into_status())?;
        rx.await
            .map_err(|_| ServiceError::ShuttingDown.into_status())
    }
}

pub(crate) struct AgentSvc(pub(crate) Shared);

#[tonic::async_trait]
impl AgentService for AgentSvc {
    type SessionStream = ReceiverStream<Result<v1::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request.extensions().get::<PeerInfo>().and_then(|p| p.0);
        if let Err(status) = self.0.check_token(request.metadata()) {
            tracing::warn!(?peer, "agent refused: wrong cluster token");
            return Err(status);
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| ServiceError::Invalid("no Hello within 10 s".into()).into_status())??
            .ok_or_else(|| {
                ServiceError::Invalid("stream closed before Hello".into()).into_status()
            })?;
        let Some(Msg::Hello(hello)) = first.kind else {
            return Err(ServiceError::Invalid("the first message must be a Hello".into()).into());
        };
        if hello.protocol != punisher_proto::PROTOCOL_VERSION {
            tracing::warn!(?peer, agent_id = %hello.agent_id, protocol = hello.protocol, "agent refused: protocol version");
            return Err(ServiceError::Version {
                controller: punisher_proto::PROTOCOL_VERSION,
                agent: hello.protocol,
            }
            .into());
        }
        if hello.agent_id.is_empty() || hello.agent_id.len() > MAX_AGENT_ID_BYTES {
            return Err(ServiceError::Invalid("agent id empty or too long".into()).into());
        }
        let (tx, rx) = mpsc::channel(AGENT_OUTBOX);
        let tx_for_errors = tx.clone();
        let cancel = CancellationToken::new();
        let conn = self
            .0
            .ask(|reply| HubEvent::Join {
                hello,
                peer,
                tx,
                cancel: cancel.clone(),
                reply,
            })
            .await?
            .map_err(ServiceError::into_status)?;
        let hub = self.0.hub.clone();
        let errors = tx_for_errors;
        tokio::spawn(async move {
            // An agent that said Goodbye may exit before its stream is closed cleanly: the
            // broken stream that follows is its exit, not a failure.
            let mut said_goodbye = false;
            let reason = loop {
                let message = tokio::select! {
                    _ = cancel.cancelled() => break "closed by the controller".to_owned(),
                    m = inbound.message() => m,
                };
                match message {
                    Ok(Some(msg)) => {
                        said_goodbye = matches!(msg.kind, Some(Msg::Goodbye(_)));
                        if hub.send(HubEvent::FromAgent { conn, msg }).await.is_err() {
                            break "controller shutting down".to_owned();
                        }
                    }
                    Ok(None) => break "stream closed by the agent".to_owned(),
                    // Undecodable or oversized messages end the stream here (tonic refuses
                    // them without allocating their declared size); the agent is told why.
                    Err(status) => {
                        let reason = format!("stream error: {}", status.message());
                        let _ = errors.try_send(Err(Status::invalid_argument(format!(
                            "malformed message from the agent: {}",
                            status.message()
                        ))));
                        break reason;
                    }
                }
            };
            if reason.starts_with("stream error") && !said_goodbye {
                tracing::warn!(conn, %reason, "agent stream failed");
            }
            let _ = hub.send(HubEvent::Left { conn, reason }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

pub(crate) struct AdminSvc(pub(crate) Shared);

type ViewStream = Pin<Box<dyn Stream<Item = Result<v1::RunView, Status>> + Send>>;

/// Checks a submission and turns it into a run spec.
fn validate(req: v1::SubmitRunRequest) -> Result<RunSpec, ServiceError> {
    let bundle = req
        .bundle
        .ok_or_else(|| ServiceError::Invalid("the submission has no bundle".into()))?;
    ScenarioBundle::try_from(bundle.clone()).map_err(|e| ServiceError::Invalid(e.to_string()))?;
    let plan = convert::plan_from_json(&req.plan_json)
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
    let thresholds = plan
        .thresholds
        .iter()
        .map(Threshold::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServiceError::Invalid(format!("invalid threshold: {e}")))?;
    convert::json_from_wire("setup_data_json", &req.setup_data_json)
        .map_err(|e| ServiceError::Invalid(e.to_string()))?;
    Ok(RunSpec {
        bundle,
        plan,
        thresholds,
        env: req.env,
        setup_data_json: req.setup_data_json,
        wait_agents: req.wait_agents.max(1),
        scenario_name: req.scenario_name,
        workers_per_agent: req.workers_per_agent,
        start_delay: if req.start_delay_ms == 0 {
            DEFAULT_START_DELAY
        } else {
            Duration::from_millis(req.start_delay_ms)
        },
        wait_for_start: req.wait_for_start,
        on_agent_loss: crate::AgentLossPolicy::from_wire(req.on_agent_loss).ok_or_else(|| {
            ServiceError::Invalid(format!(
                "unknown on_agent_loss policy {}",
                req.on_agent_loss
            ))
        })?,
        run_id: if req.run_id.is_empty() {
            None
        } else {
            punisher_results::dir::validate_run_id(&req.run_id)
                .map_err(|e| ServiceError::Invalid(e.to_string()))?;
            Some(req.run_id)
        },
        command_line: req.command_line,
    })
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn submit_run(
        &self,
        request: Request<v1::SubmitRunRequest>,
    ) -> Result<Response<v1::SubmitRunResponse>, Status> {
        self.0.check_token(request.metadata())?;
        let spec = validate(request.into_inner()).map_err(ServiceError::into_status)?;
        let run_id = self
            .0
            .ask(|reply| HubEvent::Submit {
                spec: Box::new(spec),
                reply,
            })
            .await?
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(v1::SubmitRunResponse { run_id }))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        self.0.check_token(request.metadata())?;
        let status = self.0.ask(|reply| HubEvent::Status { reply }).await?;
        Ok(Response::new(status))
    }

    type WatchStream = ViewStream;

    async fn watch(
        &self,
        request: Request<v1::WatchRequest>,
    ) -> Result<Response<ViewStream>, Status> {
        self.0.check_token(request.metadata())?;
        let run_id = request.into_inner().run_id;
        let rx = self
            .0
            .ask(|reply| HubEvent::Watch { run_id, reply })
            .await?
            .map_err(ServiceError::into_status)?;
        // The latest view first, then each change, until the run is over. A slow watcher
        // skips views (a watch channel keeps the latest only) but always gets the last one.
        let stream =
            futures_util::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
                if done {
                    return None;
                }
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let view = rx.borrow_and_update().clone();
                let over = crate::view::RunState::from_wire(view.state).is_over();
                Some((Ok((*view).clone()), (rx, false, over)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn command(
        &self,
        request: Request<v1::CommandRequest>,
    ) -> Result<Response<v1::CommandResponse>, Status> {
        self.0.check_token(request.metadata())?;
        use v1::command_request::Kind;
        let cmd = match request.into_inner().kind {
            Some(Kind::ScaleUsers(n)) => RunCommand::Scale(n),
            Some(Kind::Pause(_)) => RunCommand::Pause,
            Some(Kind::Resume(_)) => RunCommand::Resume,
            Some(Kind::StopGraceMs(ms)) => RunCommand::Stop {
                grace: Duration::from_millis(ms),
            },
            Some(Kind::AbortReason(reason)) => RunCommand::Abort { reason },
            Some(Kind::Start(_)) => RunCommand::Start,
            None => return Err(ServiceError::Invalid("empty command".into()).into()),
        };
        let response = self
            .0
            .ask(|reply| HubEvent::Command { cmd, reply })
            .await?
            .map_err(ServiceError::into_status)?;
        Ok(Response::new(response))
    }
}
