//! `--prometheus ADDR`: serves `GET /metrics` with the running totals of a local run in
//! Prometheus text format ([`punisher_results::prometheus::render`]).
//!
//! The run loop publishes a copy of its totals once per second through a `watch` channel
//! (cloning them costs a memcpy of the histograms; sharing them behind a lock would make
//! a scrape stall the loop). A scrape renders the latest copy on a blocking thread, since
//! rendering every series' buckets can take milliseconds.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use punisher_metrics::Totals;
use punisher_results::LiveNumbers;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a scrape shows: the totals and live numbers as of the last second.
#[derive(Debug, Default)]
pub struct Exposition {
    pub totals: Totals,
    pub live: Option<LiveNumbers>,
}

/// The running server.
pub struct PrometheusServer {
    /// The bound address (useful when ADDR had port 0).
    pub addr: SocketAddr,
    publish: watch::Sender<Arc<Exposition>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl PrometheusServer {
    /// Binds `addr` and serves until [`PrometheusServer::shutdown`].
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<PrometheusServer> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--prometheus: cannot listen on {addr}"))?;
        let addr = listener.local_addr().context("--prometheus")?;
        let (publish, latest) = watch::channel(Arc::new(Exposition::default()));
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(latest);
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(error = %e, "the Prometheus endpoint stopped");
            }
        });
        Ok(PrometheusServer {
            addr,
            publish,
            stop,
            task,
        })
    }

    /// Replaces what scrapes see.
    pub fn publish(&self, exposition: Exposition) {
        self.publish.send_replace(Arc::new(exposition));
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn metrics(State(latest): State<watch::Receiver<Arc<Exposition>>>) -> Response {
    let exposition = latest.borrow().clone();
    let rendered = tokio::task::spawn_blocking(move || {
        punisher_results::prometheus::render(&exposition.totals, exposition.live.as_ref())
    })
    .await;
    match rendered {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
