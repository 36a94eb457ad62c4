//! Raw flags become a validated [`RunConfig`]; nothing downstream sees clap.

use std::collections::BTreeMap;
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
    pub js_memory_limit_bytes: usize,
    /// Print a status line on stderr every second.
    pub status_lines: bool,
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
            js_memory_limit_bytes: args.js_memory_limit << 20,
            status_lines: !args.quiet,
        })
    }
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
