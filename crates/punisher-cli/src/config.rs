//! Raw flags become a validated [`RunConfig`]; nothing downstream sees clap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use punisher_clients::net::SourcePool;
use punisher_core::Overrides;

use crate::args::{OptionFlags, RunArgs};

/// Everything `punisher run` needs, checked before anything starts.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub script: PathBuf,
    pub overrides: Overrides,
    /// `__ENV`: the process environment, then `-e KEY=VALUE` flags on top.
    pub env: BTreeMap<String, String>,
    pub workers: usize,
    pub demo_target: bool,
    pub summary_json: Option<PathBuf>,
    pub source_pool: Option<Arc<SourcePool>>,
    /// `--source-ips` as written (child agents parse it again).
    pub source_ips: Option<String>,
    pub js_memory_limit_bytes: usize,
    /// Print a status line on stderr every second.
    pub status_lines: bool,
    /// Where to write the run's results folder; `None` with `--no-results`.
    pub results: Option<ResultsTarget>,
    /// Serve the running totals in Prometheus text format here.
    pub prometheus: Option<SocketAddr>,
    /// The command line as given, for `run.json`.
    pub command_line: Vec<String>,
}

/// The results folder of a run: `base/run_id/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultsTarget {
    pub base: PathBuf,
    pub run_id: String,
}

/// `run-<unix-seconds>-<4 hex>`: sorts by start time, and two runs started in the same
/// second (CI matrix jobs) still get different folders.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // RandomState is seeded from the OS per process; mixing in the pid and the nanoseconds
    // keeps two ids from one process apart too.
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("run-{secs}-{:04x}", h.finish() & 0xffff)
}

impl RunConfig {
    pub fn from_args(args: RunArgs) -> anyhow::Result<RunConfig> {
        let (overrides, env) = option_flags(&args.options)?;
        let workers = match args.workers {
            Some(0) => bail!("--workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let source_pool = args
            .source_ips
            .as_deref()
            .map(|ranges| SourcePool::parse(ranges).map(Arc::new))
            .transpose()
            .context("--source-ips")?;
        if args.js_memory_limit < 16 {
            bail!("--js-memory-limit must be at least 16 (MiB)");
        }
        Ok(RunConfig {
            script: args.script,
            overrides,
            env,
            workers,
            demo_target: args.demo_target,
            summary_json: args.summary_json,
            source_pool,
            source_ips: args.source_ips,
            js_memory_limit_bytes: args.js_memory_limit << 20,
            status_lines: !args.quiet,
            results: (!args.no_results).then(|| ResultsTarget {
                base: args.results_dir,
                run_id: args.run_id.unwrap_or_else(new_run_id),
            }),
            prometheus: args.prometheus,
            command_line: command_line(),
        })
    }
}

/// The command line as given, for `run.json`.
pub fn command_line() -> Vec<String> {
    std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// The option overrides and `__ENV` shared by `run` and `check`.
pub fn option_flags(flags: &OptionFlags) -> anyhow::Result<(Overrides, BTreeMap<String, String>)> {
    let overrides = Overrides {
        users: flags.users,
        ramp_up: flags.ramp_up.clone(),
        duration: flags.duration.clone(),
        vus: flags.vus,
        rate: flags.rate,
        stages: flags.stages.clone(),
        insecure: flags.insecure,
    };
    let mut env: BTreeMap<String, String> = std::env::vars().collect();
    for pair in &flags.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("-e {pair:?}: write KEY=VALUE");
        };
        if key.is_empty() {
            bail!("-e {pair:?}: the key is empty; write KEY=VALUE");
        }
        env.insert(key.to_owned(), value.to_owned());
    }
    Ok((overrides, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_have_the_documented_shape() {
        let id = new_run_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert_eq!(parts[0], "run");
        assert!(parts[1].parse::<u64>().unwrap() > 1_600_000_000, "{id}");
        assert_eq!(parts[2].len(), 4, "{id}");
        assert!(parts[2].chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    }

    #[test]
    fn env_flags_override_and_reject_garbage() {
        let flags = OptionFlags {
            env: vec!["API=http://x".into(), "EMPTY=".into()],
            ..Default::default()
        };
        let (_, env) = option_flags(&flags).unwrap();
        assert_eq!(env["API"], "http://x");
        assert_eq!(env["EMPTY"], "");
        let bad = OptionFlags {
            env: vec!["NOEQUALS".into()],
            ..Default::default()
        };
        assert!(
            option_flags(&bad)
                .unwrap_err()
                .to_string()
                .contains("KEY=VALUE")
        );
    }
}
