//! The `punisher` binary: parses flags, sets up logging and signals, runs the command and
//! maps its outcome to the exit code.

use std::process::ExitCode;

use clap::Parser;
use punisher_cli::args::{Cli, Command};
use punisher_cli::config::RunConfig;
use punisher_cli::exit::{self, Failure};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::RUN_ERROR);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

async fn dispatch(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Run(args) if args.cluster.conn.controller.is_some() => {
            punisher_cli::cluster::run_on_controller(&args, &args.cluster, count_interrupts()).await
        }
        Command::Run(args) => {
            let summary_json = args.summary_json.clone();
            let cfg = RunConfig::from_args(args).map_err(Failure::invalid)?;
            let interrupts = count_interrupts();
            let report = punisher_cli::run::run(cfg, interrupts).await?;
            let text = report.summary.render_text();
            #[allow(clippy::print_stdout)] // the summary is the command's output
            {
                println!("{text}");
            }
            if let Some(path) = summary_json {
                let json =
                    serde_json::to_vec_pretty(&report.summary.to_json()).map_err(Failure::run)?;
                std::fs::write(&path, json).map_err(|e| {
                    Failure::run(anyhow::anyhow!("cannot write {}: {e}", path.display()))
                })?;
            }
            if report.aborted_by_threshold {
                eprintln!("the run was aborted by a threshold with abortOnFail");
            }
            for problem in &report.results_problems {
                eprintln!("warning: results: {problem}");
            }
            if let Some(dir) = &report.results_dir {
                eprintln!("results: {}", dir.display());
            }
            Ok(report.exit_code())
        }
        Command::Check(args) => {
            let plan = punisher_cli::check::check(&args)?;
            #[allow(clippy::print_stdout)] // the plan is the command's output
            {
                print!("{plan}");
            }
            Ok(exit::PASSED)
        }
        Command::Report(args) => {
            let text = punisher_cli::results::report(&args)?;
            #[allow(clippy::print_stdout)] // the summary is the command's output
            {
                println!("{text}");
            }
            Ok(exit::PASSED)
        }
        Command::Compare(args) => {
            let (text, regressed) = punisher_cli::results::compare_runs(&args)?;
            #[allow(clippy::print_stdout)] // the comparison is the command's output
            {
                println!("{text}");
            }
            Ok(if regressed {
                exit::RUN_ERROR
            } else {
                exit::PASSED
            })
        }
        Command::Controller(args) => punisher_cli::cluster::controller(args, ctrl_c_token()).await,
        Command::Agent(args) => punisher_cli::cluster::agent(args, ctrl_c_token()).await,
        Command::Ctl(args) => punisher_cli::cluster::ctl(args).await,
        Command::Cluster(command) => punisher_cli::cluster_aws::cluster(command).await,
        Command::Target(args) => {
            punisher_cli::target::serve(args, ctrl_c_token()).await?;
            Ok(exit::PASSED)
        }
    }
}

/// A token cancelled on the first Ctrl-C or SIGTERM.
fn ctrl_c_token() -> CancellationToken {
    let token = CancellationToken::new();
    let mut interrupts = count_interrupts();
    let cancel = token.clone();
    tokio::spawn(async move {
        if interrupts.changed().await.is_ok() {
            cancel.cancel();
        }
    });
    token
}

/// Counts SIGINT/SIGTERM: the run stops gracefully on the first and aborts on the second.
fn count_interrupts() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        loop {
            #[cfg(unix)]
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let terminated = std::future::pending::<()>();
            tokio::select! {
                r = tokio::signal::ctrl_c() => if r.is_err() { return },
                () = terminated => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
