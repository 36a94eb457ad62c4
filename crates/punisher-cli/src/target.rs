//! `punisher target`: the demo TV-show backend as a standalone server, in one process or
//! in several on consecutive ports that act as one.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::args::TargetArgs;
use crate::exit::Failure;

/// The most target processes one command starts.
const MAX_PROCESSES: usize = 64;

/// Serves until `shutdown` is cancelled (Ctrl-C).
pub async fn serve(args: TargetArgs, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut cfg = punisher_target::TargetConfig::new();
    for (flag, value, field) in [
        ("--latency", &args.latency, &mut cfg.latency),
        (
            "--keep-alive-timeout",
            &args.keep_alive_timeout,
            &mut cfg.keep_alive_timeout,
        ),
        (
            "--heartbeat-grid",
            &args.heartbeat_grid,
            &mut cfg.heartbeat_grid,
        ),
        (
            "--ping-interval",
            &args.ping_interval,
            &mut cfg.ping_interval,
        ),
        ("--ping-timeout", &args.ping_timeout, &mut cfg.ping_timeout),
    ] {
        if let Some(value) = value {
            *field = punisher_core::parse_duration(value)
                .context(flag)
                .map_err(Failure::invalid)?;
        }
    }
    cfg.error_rate = args.error_rate;
    cfg.validate().map_err(Failure::invalid)?;
    if args.processes == 0 || args.processes > MAX_PROCESSES {
        return Err(Failure::invalid(anyhow::anyhow!(
            "--processes must be between 1 and {MAX_PROCESSES}"
        )));
    }
    let listen: SocketAddr = args
        .listen
        .parse()
        .with_context(|| {
            format!(
                "--listen {:?}: write IP:PORT, e.g. 127.0.0.1:8080",
                args.listen
            )
        })
        .map_err(Failure::invalid)?;
    let mut children = Vec::new();
    if args.processes > 1 {
        if listen.port() == 0 {
            return Err(Failure::invalid(anyhow::anyhow!(
                "--processes needs a fixed --listen port: the processes use consecutive ports"
            )));
        }
        let addrs = punisher_target::consecutive_addrs(listen, args.processes);
        for (index, addr) in addrs.iter().enumerate().skip(1) {
            children.push(
                spawn_child(&args, *addr, &punisher_target::peers_of(&addrs, index))
                    .map_err(Failure::run)?,
            );
        }
        cfg.peers = punisher_target::peers_of(&addrs, 0);
    } else {
        cfg.peers = args.peers.clone();
    }
    let listener = punisher_target::bind_listener(listen)
        .with_context(|| format!("cannot listen on {listen}"))
        .map_err(Failure::run)?;
    let addr = listener.local_addr().map_err(Failure::run)?;
    let processes = if args.processes > 1 {
        format!(
            " and {} more processes on the next ports",
            args.processes - 1
        )
    } else {
        String::new()
    };
    eprintln!(
        "punisher target listening on http://{addr}{processes} (Socket.IO at /socket.io, stats at /admin/stats)"
    );
    let served = punisher_target::Target::new(cfg)
        .serve(listener, shutdown)
        .await
        .context("target server failed")
        .map_err(Failure::run);
    for mut child in children {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    served
}

fn spawn_child(
    args: &TargetArgs,
    addr: SocketAddr,
    peers: &[SocketAddr],
) -> anyhow::Result<tokio::process::Child> {
    let exe = std::env::current_exe()
        .context("cannot find the punisher executable to start target processes")?;
    if peers.is_empty() {
        bail!("a target process without peers");
    }
    let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("target")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--error-rate")
        .arg(args.error_rate.to_string())
        .arg("--peers")
        .arg(peers.join(","))
        // Dies with this process however it ends, SIGKILL included (see `local`).
        .env(crate::local::EXIT_WITH_PARENT_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (flag, value) in [
        ("--latency", &args.latency),
        ("--keep-alive-timeout", &args.keep_alive_timeout),
        ("--heartbeat-grid", &args.heartbeat_grid),
        ("--ping-interval", &args.ping_interval),
        ("--ping-timeout", &args.ping_timeout),
    ] {
        if let Some(value) = value {
            cmd.arg(flag).arg(value);
        }
    }
    cmd.spawn()
        .with_context(|| format!("cannot start the target process for {addr}"))
}
