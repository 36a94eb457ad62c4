//! A local run with child agent processes (3 of them, chosen from a lowered open-file
//! budget or forced with `--agents 3`): the merged summary counts what the target counted,
//! and the children are gone after the run, after a Ctrl-C, and after their parent was
//! killed with SIGKILL.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, scenario, start_target, stats};

/// The processes whose parent is `pid`, with their command lines.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: comm may hold spaces, so parse after its `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            let cmdline = std::fs::read(format!("/proc/{child}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            out.push((child, cmdline));
        }
    }
    out
}

/// Whether `pid` still runs `punisher agent` (not gone, not a zombie, not reused).
fn agent_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    state != "Z" && String::from_utf8_lossy(&cmdline).contains("agent")
}

/// Waits (bounded) until none of `pids` runs an agent any more.
fn assert_agents_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|p| agent_alive(*p)).collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "child agents still running after {within:?}: {alive:?}"
        );
        // No event tells us about a grandchild's exit: poll /proc, bounded by `within`.
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// A running `punisher run` whose stderr is read up to its first status line.
struct Running {
    child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    seen: String,
    agents: Vec<u32>,
}

fn start_run(args: &[&str]) -> Running {
    let mut child = util::command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn punisher");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("req/s") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("req/s"), "no status line: {seen}");
    assert!(seen.contains("agents 3"), "not 3 agents: {seen}");
    let agents: Vec<u32> = children_of(child.id())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(" agent "))
        .map(|(pid, _)| pid)
        .collect();
    assert_eq!(agents.len(), 3, "child agents: {agents:?}\n{seen}");
    Running {
        child,
        stderr,
        seen,
        agents,
    }
}

impl Running {
    fn finish(mut self) -> (util::Output, Vec<u32>) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        self.seen.push_str(&rest);
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = self.child.wait().unwrap();
        (
            util::Output {
                code: status.code().unwrap_or(-1),
                stdout,
                stderr: self.seen,
                elapsed: Duration::ZERO,
            },
            self.agents,
        )
    }
}

const SESSIONS: &str = r#"
import http from 'punisher/http';
import { check, sleep } from 'punisher';
export const options = { users: 600, rampUp: '3s', thresholds: { checks: ['rate==1'] } };
export default async function () {
  const res = await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
  check(res, { 'logged in': (r) => r.status === 200 });
  await sleep(0.5);
  await http.get(`${__ENV.API}/api/info`, { name: 'info' });
}
"#;

#[test]
fn child_agents_count_what_the_target_counted_and_exit_with_the_run() {
    let target = start_target();
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(&dir, "sessions.js", SESSIONS);
    let json = dir.path().join("summary.json");
    let api = format!("API=http://{}", target.addr);
    let run = start_run(&[
        "run",
        script.to_str().unwrap(),
        // 600 users x 3 files over 700 files per process: 3 agents, chosen by the rule.
        "--fd-budget",
        "700",
        "-e",
        &api,
        "--summary-json",
        json.to_str().unwrap(),
    ]);
    let (out, agents) = run.finish();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_agents_gone(&agents, Duration::from_secs(5));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let count = |metric: &str| {
        summary["metrics"][metric]["values"]["count"]
            .as_f64()
            .unwrap_or_else(|| panic!("no {metric} in {summary}")) as u64
    };
    let s = stats(&target.addr);
    let logins = s["logins"]["guest"].as_u64().unwrap() + s["logins"]["sns"].as_u64().unwrap();
    let info = s["info_calls"].as_u64().unwrap();
    assert_eq!(logins, 600, "{s}");
    assert_eq!(info, 600, "{s}");
    assert_eq!(count("http_reqs"), logins + info, "{s}\n{summary}");
    assert_eq!(count("iterations"), 600, "{summary}");
}

#[test]
fn ctrl_c_stops_a_run_with_child_agents_and_they_exit() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "long.js",
        r#"
        import http from 'punisher/http';
        import { sleep } from 'punisher';
        export const options = { vus: 6, duration: '60s', gracefulStop: '5s' };
        export default async function () {
          await http.get(`${__ENV.API}/api/info`, { name: 'info' });
          await sleep(0.05);
        }
        "#,
    );
    let start = Instant::now();
    let run = start_run(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "--agents",
        "3",
    ]);
    let pid = nix::unistd::Pid::from_raw(run.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let (out, agents) = run.finish();
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("stopping gracefully"), "{}", out.stderr);
    assert!(out.stdout.contains("interrupted"), "{}", out.stdout);
    assert!(out.stdout.contains("http_reqs"), "{}", out.stdout);
    assert_agents_gone(&agents, Duration::from_secs(5));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn child_agents_exit_when_their_parent_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let script = scenario(
        &dir,
        "long.js",
        r#"
        import http from 'punisher/http';
        import { sleep } from 'punisher';
        export const options = { vus: 6, duration: '60s' };
        export default async function () {
          await http.get(`${__ENV.API}/api/info`, { name: 'info' });
          await sleep(0.05);
        }
        "#,
    );
    let mut run = start_run(&[
        "run",
        script.to_str().unwrap(),
        "--demo-target",
        "--agents",
        "3",
    ]);
    run.child.kill().unwrap();
    let _ = run.child.wait();
    // The kernel closed their stdin pipe: they stop as on SIGTERM.
    assert_agents_gone(&run.agents, Duration::from_secs(10));
}
