//! A bare demo target for memory measurements: the `punisher target` command without the
//! rest of the binary (it builds in seconds and its RSS holds nothing but the target).
//!
//! ```text
//! cargo build --release -p punisher-target --example serve
//! target/release/examples/serve 127.0.0.1:8080
//! ```
#![allow(clippy::print_stderr)]

use std::net::SocketAddr;

use punisher_target::{Target, TargetConfig, bind_listener};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = bind_listener(addr)?;
    eprintln!("serving on http://{}", listener.local_addr()?);
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    Target::new(TargetConfig::new())
        .serve(listener, cancel)
        .await
}
