//! `punisher target`: the demo TV-show backend as a standalone server.

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::args::TargetArgs;
use crate::exit::Failure;

/// Serves until Ctrl-C.
pub async fn serve(args: TargetArgs, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut cfg = punisher_target::TargetConfig::new();
    if let Some(latency) = &args.latency {
        cfg.latency = punisher_core::parse_duration(latency)
            .context("--latency")
            .map_err(Failure::invalid)?;
    }
    cfg.error_rate = args.error_rate;
    cfg.validate().map_err(Failure::invalid)?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))
        .map_err(Failure::run)?;
    let addr = listener.local_addr().map_err(Failure::run)?;
    eprintln!(
        "punisher target listening on http://{addr} (Socket.IO at /socket.io, stats at /admin/stats)"
    );
    punisher_target::Target::new(cfg)
        .serve(listener, shutdown)
        .await
        .context("target server failed")
        .map_err(Failure::run)
}
