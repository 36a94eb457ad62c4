//! punisher-controller: the cluster's controller. Agents dial in and join its registry; a
//! submitted run is allocated to them by capacity, started at a common wall-clock instant,
//! merged exactly every second (journal first, then the live view), judged by its
//! thresholds live and at the end, and controlled live (scale, pause, resume, stop, abort).
//!
//! # Layout
//! - [`Controller`] / [`serve`]: binding, TLS identity, the gRPC server.
//! - `hub`: the one task that owns the registry and the current run.
//! - `registry`: agent records, assignments, clock offsets.
//! - [`merge`]: the per-second merge path (benchmarked in `benches/merge_tick.rs`).
//! - `journal`: the run's results folder (punisher-results), written by a thread of its own.
//! - `prometheus`: `GET /metrics`, the merged totals in Prometheus text format.
//! - `service`: the `Session` and admin gRPC services (token check, validation).
//! - [`client`]: the admin client behind `punisher run --controller` and `punisher ctl`.
//! - [`view`]: the live view as clients see it.
//!
//! The controller never runs user JavaScript: scenarios pass through it as bundles.

mod binaries;
pub mod client;
mod hub;
pub mod identity;
mod journal;
mod loss;
pub mod merge;
mod prometheus;
mod registry;
mod service;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use punisher_proto::Fingerprint;
use punisher_proto::v1::admin_service_server::AdminServiceServer;
use punisher_proto::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use binaries::BUILD_TARGET;
pub use client::{ClientConfig, ClientError, ClusterClient, ClusterStatus, RunSubmission};
pub use loss::{AgentLoss, AgentLossPolicy};
pub use view::{AgentState, AgentView, BarrierView, RunState, RunView, ThresholdView};

/// How the controller secures its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSecurity {
    /// TLS with a self-signed certificate kept in `state_dir` (created on first start).
    Tls { state_dir: PathBuf },
    /// Plaintext; the listen address must be a loopback one.
    InsecureLoopback,
}

/// Everything the controller needs; no defaults (the CLI chooses them).
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub listen: SocketAddr,
    /// The cluster token agents and admin clients must present.
    pub token: String,
    pub security: ServerSecurity,
    /// Each run writes `results_dir/RUN_ID/` (punisher-results' folder: `run.json`,
    /// `timeseries.jsonl`, one `.hlog` per trend, `summary.json`, `junit.xml`,
    /// `report.html`); `None`: no results folder (`--no-results`).
    pub results_dir: Option<PathBuf>,
    /// Serve the merged running totals of the current run in Prometheus text format at
    /// `http://ADDR/metrics`.
    pub prometheus: Option<SocketAddr>,
    /// An agent silent for this long during a run is reported lost (3 s).
    pub lost_after: Duration,
    /// Agent binaries served at `GET /agent/<target-triple>` (and `.sha256`) on
    /// `http_listen`, one file per triple named after it; the running binary is served for
    /// its own triple ([`BUILD_TARGET`]) when the directory lacks it or is not given.
    pub agent_binaries: Option<PathBuf>,
    /// Where the agent-binary HTTP endpoint listens (plain HTTP); `None`: not served.
    pub http_listen: Option<SocketAddr>,
}

/// A live run command (`punisher ctl ...`).
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// Start a run submitted with `wait_for_start` (`punisher ctl start`, `s` in the dashboard).
    Start,
    /// A new test-wide user target.
    Scale(u64),
    Pause,
    Resume,
    Stop {
        grace: Duration,
    },
    Abort {
        reason: String,
    },
}

/// Why the controller cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(
        "--insecure-loopback serves plaintext, so it only listens on a loopback address, and \
         {0} is not one: listen on 127.0.0.1, or drop --insecure-loopback to use TLS"
    )]
    NotLoopback(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state directory {path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("the gRPC server failed: {0}")]
    Serve(String),
}

/// A bound controller, not yet serving: its address and fingerprint are known (print them,
/// hand them to agents), then [`Controller::serve`].
pub struct Controller {
    cfg: ControllerConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<punisher_proto::transport::ServerTls>,
    fingerprint: Option<Fingerprint>,
    identity_created: bool,
    /// The agent-binary endpoint's listener (`http_listen`).
    http: Option<(TcpListener, SocketAddr)>,
    /// The Prometheus endpoint's listener (`prometheus`).
    prometheus: Option<prometheus::Bound>,
}

impl Controller {
    /// Validates the configuration, loads or creates the TLS identity, and binds.
    pub async fn bind(cfg: ControllerConfig) -> Result<Controller, ControllerError> {
        punisher_proto::transport::TokenInterceptor::new(&cfg.token)
            .map_err(|e| ControllerError::Config(e.to_string()))?;
        let (tls, fingerprint, identity_created) = match &cfg.security {
            ServerSecurity::InsecureLoopback => {
                if !cfg.listen.ip().is_loopback() {
                    return Err(ControllerError::NotLoopback(cfg.listen));
                }
                (None, None, false)
            }
            ServerSecurity::Tls { state_dir } => {
                let identity = identity::load_or_create(state_dir)?;
                let config = punisher_proto::transport::server_tls_config(
                    &identity.cert_der,
                    &identity.key_der,
                )
                .map_err(|e| ControllerError::Tls(e.to_string()))?;
                (Some(config), Some(identity.fingerprint), identity.created)
            }
        };
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| ControllerError::Bind {
                    addr: cfg.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let http = match cfg.http_listen {
            Some(addr) => Some(binaries::bind(addr).await?),
            None if cfg.agent_binaries.is_some() => {
                return Err(ControllerError::Config(
                    "agent binaries are served over HTTP: give --http-listen ADDR too".into(),
                ));
            }
            None => None,
        };
        let prometheus = match cfg.prometheus {
            Some(addr) => Some(
                prometheus::bind(addr)
                    .await
                    .map_err(|source| ControllerError::Bind { addr, source })?,
            ),
            None => None,
        };
        Ok(Controller {
            cfg,
            listener,
            local_addr,
            tls,
            fingerprint,
            identity_created,
            http,
            prometheus,
        })
    }

    /// Where `GET /agent/<target-triple>` is served, when it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr)| *addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` (Prometheus) is served, when it is.
    pub fn prometheus_addr(&self) -> Option<SocketAddr> {
        self.prometheus.as_ref().map(|b| b.addr)
    }

    /// The SHA-256 of the TLS certificate agents must pin (`None` in plaintext mode).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// Whether this start created the certificate (agents need the new fingerprint).
    pub fn identity_created(&self) -> bool {
        self.identity_created
    }

    /// Serves agents and admin clients until `cancel` fires.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), ControllerError> {
        let (hub_tx, hub_rx) = mpsc::channel(hub::EVENT_QUEUE);
        let prometheus = self.prometheus.map(|bound| {
            tracing::info!(addr = %bound.addr, "serving Prometheus metrics at http://{}/metrics", bound.addr);
            prometheus::serve(bound, cancel.child_token())
        });
        let hub = hub::Hub::new(
            self.cfg.results_dir.clone(),
            self.cfg.lost_after,
            prometheus,
        );
        let hub_task = tokio::spawn(hub::run_hub(hub, hub_rx, cancel.child_token()));
        let shared = service::Shared {
            token: Arc::from(self.cfg.token.as_str()),
            hub: hub_tx,
        };
        let agents = AgentServiceServer::new(service::AgentSvc(shared.clone()))
            .max_decoding_message_size(punisher_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(punisher_proto::MAX_MESSAGE_BYTES);
        let admin = AdminServiceServer::new(service::AdminSvc(shared))
            .max_decoding_message_size(punisher_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(punisher_proto::MAX_MESSAGE_BYTES);
        let http_task = self.http.map(|(listener, addr)| {
            let b = Arc::new(binaries::Binaries::new(self.cfg.agent_binaries.clone()));
            tracing::info!(%addr, "serving agent binaries at http://{addr}/agent/<target-triple>");
            tokio::spawn(binaries::serve(listener, b, cancel.child_token()))
        });
        let incoming = punisher_proto::transport::serve_incoming(self.listener, self.tls);
        tracing::info!(addr = %self.local_addr, fingerprint = ?self.fingerprint, "controller listening");
        let result = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(agents)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, cancel.cancelled())
            .await;
        cancel.cancel();
        let _ = hub_task.await;
        if let Some(t) = http_task {
            let _ = t.await;
        }
        result.map_err(|e| ControllerError::Serve(e.to_string()))
    }
}

/// Binds and serves until `cancel` fires (`punisher controller`).
pub async fn serve(
    cfg: ControllerConfig,
    cancel: CancellationToken,
) -> Result<(), ControllerError> {
    Controller::bind(cfg).await?.serve(cancel).await
}
