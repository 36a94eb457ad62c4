//! The `punisher` binary: parses flags, sets up logging and signals, runs the command and
//! maps its outcome to the exit code.

use std::process::ExitCode;

use clap::Parser;
use punisher_cli::args::{Cli, Command};
use punisher_cli::exit::{self, Failure};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

// jemalloc instead of glibc's malloc, for Rust and for QuickJS alike (the unprefixed
// build replaces `malloc` itself): an agent allocates and frees small objects for every
// message, and glibc spent ~16% of an agent's CPU in a vote storm consolidating and
// unlinking free chunks. With jemalloc a 30,000-viewer TV show costs ~5-9% less CPU in
// the generator and ~14-17% less in the demo target (benches/RESULTS.md, "Allocator").
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let mut builder = if one_thread(&cli.command) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    };
    let runtime = match builder.enable_all().build() {
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

/// A target process among several (`punisher target --processes N`) runs on one thread:
/// the N processes already spread over the cores, and with two workers (or one worker
/// plus the `block_on` thread, where the accept loop runs) each process spent a third of
/// its CPU on threads waking each other (perf: context switches; strace: futex).
fn one_thread(command: &Command) -> bool {
    matches!(command, Command::Target(t) if t.processes > 1 || !t.peers.is_empty())
}

async fn dispatch(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Run(args) if args.cluster.conn.controller.is_some() => {
            punisher_cli::cluster::run_on_controller(&args, &args.cluster, count_interrupts()).await
        }
        Command::Run(args) => punisher_cli::local::run(args, count_interrupts()).await,
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
        Command::Agent(args) => {
            let (leave, cancel) = agent_shutdown();
            punisher_cli::cluster::agent(args, leave, cancel).await
        }
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

/// `punisher agent`'s two tokens: leave cleanly, then stop at once. A standalone agent
/// leaves on its first SIGTERM or Ctrl-C as on a spot notice (drain, final report, Goodbye:
/// the controller hands its unstarted users to the other agents; an instance shutting down
/// at its TTL or an evicted pod gets SIGTERM) and stops at once on the second. A local run's
/// child agent stops at once: its parent, and the controller with it, is ending.
fn agent_shutdown() -> (CancellationToken, CancellationToken) {
    if std::env::var_os(punisher_cli::local::EXIT_WITH_PARENT_ENV).is_some() {
        return (CancellationToken::new(), ctrl_c_token());
    }
    let (leave, cancel) = (CancellationToken::new(), CancellationToken::new());
    let mut interrupts = count_interrupts();
    let (first, second) = (leave.clone(), cancel.clone());
    tokio::spawn(async move {
        while interrupts.changed().await.is_ok() {
            let n = *interrupts.borrow_and_update();
            first.cancel();
            if n >= 2 {
                second.cancel();
                return;
            }
        }
    });
    (leave, cancel)
}

/// Counts SIGINT/SIGTERM: the run stops gracefully on the first and aborts on the second.
/// A child process of a local run (agents, the demo target) also counts the end of its
/// stdin, a pipe from its parent: the parent is gone, however it ended.
fn count_interrupts() -> watch::Receiver<u32> {
    let (tx, rx) = watch::channel(0u32);
    let mut parent_gone = parent_gone();
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
                Some(()) = parent_gone.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
        }
    });
    rx
}

/// With [`punisher_cli::local::EXIT_WITH_PARENT_ENV`] set, a message when stdin reaches its
/// end. A plain thread reads it: a blocking read in the runtime's pool would hold up its
/// shutdown, while this thread just dies with the process.
fn parent_gone() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if std::env::var_os(punisher_cli::local::EXIT_WITH_PARENT_ENV).is_some() {
        let spawned = std::thread::Builder::new()
            .name("parent-watch".into())
            .spawn(move || {
                let mut sink = [0u8; 256];
                let mut stdin = std::io::stdin().lock();
                while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
                let _ = tx.blocking_send(());
            });
        if let Err(e) = spawned {
            eprintln!("warning: cannot watch the parent process: {e}");
        }
    }
    rx
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, held back while the dashboard has the terminal.
        .with_writer(punisher_cli::LogWriter)
        .with_target(false)
        .init();
}
