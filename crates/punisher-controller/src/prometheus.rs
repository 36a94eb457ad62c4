//! `--prometheus ADDR`: serves `GET /metrics` with the merged running totals of the current
//! (or last) run in Prometheus text format ([`punisher_results::prometheus::render`]).
//!
//! The hub publishes each merged second as the encoded totals it already builds for the
//! live view (a reference-counted buffer: publishing costs no copy of the histograms, and
//! the hub never waits for a scrape). A scrape decodes and renders the latest one on a
//! blocking thread, since rendering every series' buckets can take milliseconds.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use punisher_metrics::{Snapshot, Totals};
use punisher_results::LiveNumbers;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Bytes;

/// What a scrape shows: the run's totals (`Snapshot::encode`d; empty before the first
/// merged second) and live numbers as of the last merged second.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    pub(crate) totals: Bytes,
    pub(crate) live: Option<LiveNumbers>,
}

/// The hub's end: replaces what scrapes see.
#[derive(Debug, Clone)]
pub(crate) struct Publisher(watch::Sender<Arc<Exposition>>);

impl Publisher {
    pub(crate) fn publish(&self, exposition: Exposition) {
        self.0.send_replace(Arc::new(exposition));
    }
}

/// A bound listener, served by [`serve`].
pub(crate) struct Bound {
    listener: TcpListener,
    pub(crate) addr: SocketAddr,
}

/// Binds `addr` (before the controller serves anything, so that a taken port is an error
/// at start).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<Bound> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// Serves until `cancel` fires; returns the publisher at once (the server is a task).
pub(crate) fn serve(bound: Bound, cancel: CancellationToken) -> Publisher {
    let (publish, latest) = watch::channel(Arc::new(Exposition::default()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(latest);
    tokio::spawn(async move {
        let shutdown = cancel.cancelled_owned();
        if let Err(e) = axum::serve(bound.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "the Prometheus endpoint stopped");
        }
    });
    Publisher(publish)
}

fn render(exposition: &Exposition) -> Result<String, String> {
    let mut totals = Totals::new();
    if !exposition.totals.is_empty() {
        let snapshot = Snapshot::decode(&exposition.totals).map_err(|e| e.to_string())?;
        totals.add(&snapshot).map_err(|e| e.to_string())?;
    }
    Ok(punisher_results::prometheus::render(
        &totals,
        exposition.live.as_ref(),
    ))
}

async fn metrics(State(latest): State<watch::Receiver<Arc<Exposition>>>) -> Response {
    let exposition = latest.borrow().clone();
    match tokio::task::spawn_blocking(move || render(&exposition)).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                punisher_results::prometheus::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot render the Prometheus page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
