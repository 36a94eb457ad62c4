//! Several target processes acting as one (`punisher target --processes N`).
//!
//! One process holds at most ~20,000 open files here, so 300,000 sockets need several
//! processes. They are symmetric peers: each knows the others' addresses
//! ([`crate::TargetConfig::peers`]). An admin call to any of them (`/admin/broadcast`,
//! `/admin/stats`, `/admin/reset`) acts locally, then repeats itself to every peer with
//! `?local=true` so that it does not travel further, and adds up the answers. A broadcast
//! carries the originator's id and timestamp, so every socket of every process receives
//! the same `{id, ts}` and the fan-out delay measured by viewers is honest.
//!
//! The peer calls are plain HTTP/1.1 over loopback with `Connection: close`: a few calls
//! per test do not justify an HTTP client dependency in the demo server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::stats::StatsSnapshot;

/// A peer that does not answer within this is left out of the sum (and logged).
const PEER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin answers are small JSON documents.
const MAX_RESPONSE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    #[error("peer i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer did not answer within {0:?}")]
    Timeout(Duration),
    #[error("peer sent a malformed response")]
    Malformed,
    #[error("peer answered status {0}")]
    Status(u16),
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, RelayError> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, RelayError>(response)
    };
    let response = tokio::time::timeout(PEER_TIMEOUT, exchange)
        .await
        .map_err(|_| RelayError::Timeout(PEER_TIMEOUT))??;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) =
        parsed.parse(&response).map_err(|_| RelayError::Malformed)?
    else {
        return Err(RelayError::Malformed);
    };
    match parsed.code {
        Some(200) => Ok(response[head_len..].to_vec()),
        Some(code) => Err(RelayError::Status(code)),
        None => Err(RelayError::Malformed),
    }
}

/// Calls every peer concurrently and returns the bodies of those that answered 200.
async fn call_all(
    peers: &[SocketAddr],
    method: &'static str,
    path: String,
    body: &[u8],
) -> Vec<Vec<u8>> {
    let mut set = JoinSet::new();
    for &peer in peers {
        let (path, body) = (path.clone(), body.to_vec());
        set.spawn(async move { (peer, call(peer, method, &path, &body).await) });
    }
    let mut bodies = Vec::with_capacity(peers.len());
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((_, Ok(body))) => bodies.push(body),
            Ok((peer, Err(e))) => tracing::warn!(%peer, error = %e, "peer target did not answer"),
            Err(e) => tracing::warn!(error = %e, "peer call task failed"),
        }
    }
    bodies
}

/// Relays a broadcast; returns the number of sockets the peers delivered it to.
pub(crate) async fn broadcast_to_peers(peers: &[SocketAddr], id: u64, ts: u64, body: &[u8]) -> u64 {
    let path = format!("/admin/broadcast?local=true&id={id}&ts={ts}");
    call_all(peers, "POST", path, body)
        .await
        .iter()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|v| v.get("sockets").and_then(serde_json::Value::as_u64))
        .sum()
}

/// Adds the peers' local stats into `into`.
pub(crate) async fn merge_peer_stats(peers: &[SocketAddr], into: &mut StatsSnapshot) {
    for body in call_all(peers, "GET", "/admin/stats?local=true".into(), b"").await {
        match serde_json::from_slice::<StatsSnapshot>(&body) {
            Ok(s) => into.merge(&s),
            Err(e) => tracing::warn!(error = %e, "peer target sent unreadable stats"),
        }
    }
}

pub(crate) async fn reset_peers(peers: &[SocketAddr]) {
    call_all(peers, "POST", "/admin/reset?local=true".into(), b"").await;
}
