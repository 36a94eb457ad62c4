//! The accept loop and HTTP/1 connections of a served target.
//!
//! `axum::serve` takes no configuration, and hyper without a timer never closes an idle
//! keep-alive connection. A viewer's HTTP connection idles for minutes between its login
//! and its vote, and each idle hyper connection holds ~17 KiB (its read buffer, its write
//! buffer and its task): at 300,000 viewers that is gigabytes for nothing. So connections
//! are served here with hyper-util's builder and a header read timeout, which hyper arms
//! whenever it waits for a request head, i.e. also between keep-alive requests: a
//! connection idle for `keep_alive` is closed, as node's `keepAliveTimeout` (5 s) and
//! nginx's `keepalive_timeout` (75 s) do. Upgraded websockets leave hyper and are not
//! affected.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the loop pauses after an accept error that is not about one connection
/// (typically EMFILE): the error persists until some socket closes, and retrying at once
/// would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `cancel` fires; then stops accepting, runs
/// `on_cancel` (which closes the Socket.IO sockets), asks every connection to finish its
/// request in flight and waits up to `grace` for them.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    keep_alive: Duration,
    cancel: CancellationToken,
    on_cancel: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(keep_alive)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let tracker = TaskTracker::new();
    let mut accept_errors = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Logged once in a while: at the open-file limit this repeats for as long
                // as the load stays.
                if accept_errors.is_power_of_two() {
                    tracing::warn!(error = %e, count = accept_errors + 1, "accept failed");
                }
                accept_errors += 1;
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Responses are single small writes; Nagle would only add delay to pipelined ones.
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let (builder, cancel) = (builder.clone(), cancel.clone());
        tracker.spawn(async move {
            let mut conn = pin!(builder.serve_connection_with_upgrades(TokioIo::new(tcp), service));
            tokio::select! {
                // Errors are the client's (reset, timeout, malformed request): nothing to do.
                _ = conn.as_mut() => return,
                () = cancel.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    tracker.close();
    on_cancel.await;
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("target connections did not drain in time");
    }
    Ok(())
}

/// Errors that concern one connection only (it died before we accepted it).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
