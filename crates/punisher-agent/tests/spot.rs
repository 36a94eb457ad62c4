//! Spot interruption end to end, and the controller's agent-binary endpoint. A fake IMDSv2 on
//! 127.0.0.1 (never 169.254.169.254) announces a reclaim to one of three agents mid-run: that
//! agent stops its arrivals, sends its final report with what it did not start, says
//! Goodbye and exits; the controller gives those users to the two others. The target's
//! count of `vu.idInTest` proves that no user was lost or doubled.

use std::collections::BTreeMap;
use std::time::Duration;

use punisher_agent::{AgentExit, LeaveRequest, SpotWatch};
use punisher_controller::{
    AgentLoss, AgentLossPolicy, AgentState, Controller, ControllerConfig, RunState, ServerSecurity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::imds;
use crate::util::*;

/// Each user hits the target once, at its start, with its test-wide number, then stays a
/// while: the departing agent has users running (interrupted) and users not yet started
/// (reassigned) when the notice comes.
const SESSION_SCRIPT: &str = r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { users: 60, rampUp: '6s' };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await sleep(1.5);
}
"#;

const USERS: u64 = 60;

fn spot_watch(url: &str) -> SpotWatch {
    SpotWatch {
        imds_url: url.to_owned(),
        interval: Duration::from_millis(100),
        drain: Duration::from_millis(300),
    }
}

/// What an interrupted run left behind.
struct Interrupted {
    last: punisher_controller::RunView,
    /// `vu.idInTest` of every user that hit the target.
    ids: Vec<u64>,
    /// How agent-2 ended.
    exit: AgentExit,
    /// The results folder's `run.json` and `report.html`.
    info: punisher_results::RunInfo,
    report: String,
}

/// How agent-2 is told to go.
#[derive(Clone, Copy, PartialEq)]
enum Interruption {
    /// EC2's spot notice, through the fake instance metadata service.
    SpotNotice,
    /// A [`LeaveRequest`], as `punisher agent` makes on SIGTERM.
    AskedToLeave,
}

/// Runs the session script on three agents, agent-2 of which gets a spot notice once
/// `notice_after` users hit the target.
async fn interrupted_run(policy: AgentLossPolicy, notice_after: usize) -> Interrupted {
    interrupted_run_by(Interruption::SpotNotice, policy, notice_after).await
}

/// [`interrupted_run`], with agent-2 told to go `how`.
async fn interrupted_run_by(
    how: Interruption,
    policy: AgentLossPolicy,
    notice_after: usize,
) -> Interrupted {
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let fake = imds::start().await;
    let leave = LeaveRequest {
        requested: CancellationToken::new(),
        drain: Duration::from_millis(300),
    };
    let mut agents = Vec::new();
    for i in 1..=3 {
        let mut cfg = controller.agent_config(&format!("agent-{i}"));
        if i == 2 && how == Interruption::SpotNotice {
            cfg.spot = Some(spot_watch(&fake.url));
        }
        if i == 2 && how == Interruption::AskedToLeave {
            let run =
                punisher_agent::run_until_asked_to_leave(cfg, leave.clone(), cancel.child_token());
            agents.push(tokio::spawn(run));
        } else {
            agents.push(spawn_agent(cfg, &cancel));
        }
    }
    let mut client = controller.client().await;
    let mut submission = submission(SESSION_SCRIPT, api_env(&target), 3);
    submission.on_agent_loss = policy;
    let run_id = client.submit_run(submission).await.unwrap();

    // Mid-ramp: EC2 announces the reclaim of agent-2's instance.
    eventually(Duration::from_secs(30), || {
        let n = target.hits("/hit").len();
        async move { n >= notice_after }
    })
    .await;
    match how {
        Interruption::SpotNotice => fake.state.lock().unwrap().notice = Some(imds::NOTICE.into()),
        Interruption::AskedToLeave => leave.requested.cancel(),
    }

    let views = follow(&mut client, &run_id, Duration::from_secs(60)).await;
    let last = views.last().unwrap().clone();
    // The folder is complete once the view says the run ended (and gone with the controller).
    let dir = std::path::PathBuf::from(last.results_dir.clone().expect("a results folder"));
    let info = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let report = std::fs::read_to_string(dir.join("report.html")).unwrap();
    let leaver = agents.remove(1);
    let exit = tokio::time::timeout(Duration::from_secs(30), leaver)
        .await
        .expect("the interrupted agent did not exit")
        .unwrap()
        .unwrap();
    cancel.cancel();
    for a in agents {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    controller.cancel.cancel();
    let ids = target
        .hits("/hit")
        .iter()
        .map(|h| query(&h.path, "vu").unwrap().parse().unwrap())
        .collect();
    Interrupted {
        last,
        ids,
        exit,
        info,
        report,
    }
}

/// The run passed, and every user 1..=USERS hit the target exactly once: none lost, none
/// doubled.
fn assert_passed_with_every_user_once(last: &punisher_controller::RunView, ids: &[u64]) {
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert_eq!(last.exit_code, Some(0), "{:?}", last.messages);
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for id in ids {
        *counts.entry(*id).or_default() += 1;
    }
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "users that ran twice: {doubled:?}");
    let missing: Vec<u64> = (1..=USERS).filter(|k| !counts.contains_key(k)).collect();
    assert!(missing.is_empty(), "users that never ran: {missing:?}");
    assert_eq!(ids.len() as u64, USERS);
}

fn agent_loss(view: &punisher_controller::RunView) -> AgentLoss {
    let losses: Vec<AgentLoss> = view
        .messages
        .iter()
        .filter_map(|m| AgentLoss::parse(m))
        .collect();
    assert_eq!(losses.len(), 1, "{:?}", view.messages);
    losses[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notice_reassigns_unstarted_users_exactly_once() {
    let _serial = crate::serial().await;
    let Interrupted {
        last,
        ids,
        exit,
        info,
        report,
    } = interrupted_run(AgentLossPolicy::Reassign, 15).await;
    assert_eq!(exit, AgentExit::SpotInterruption);
    assert_passed_with_every_user_once(&last, &ids);

    // The run's messages mark the departure, with the window and who took over.
    let loss = agent_loss(&last);
    assert_eq!(loss.agent, "agent-2");
    assert_eq!(loss.policy, AgentLossPolicy::Reassign);
    assert!(loss.reason.contains("spot interruption"), "{loss:?}");
    assert!(loss.reassigned_users > 0, "{loss:?}");
    assert_eq!(loss.to, vec!["agent-1".to_owned(), "agent-3".to_owned()]);
    assert!(loss.from_unix_ms <= loss.to_unix_ms, "{loss:?}");
    // The results mark the same window: run.json, and the report's charts and agents table.
    assert_eq!(info.agent_losses, [loss.to_window()]);
    assert_eq!(info.messages, last.messages);
    let agent_2 = info.agents.iter().find(|a| a.id == "agent-2").unwrap();
    assert_eq!(agent_2.state, "left");
    assert!(report.contains("<rect class=\"lost\""), "no shaded window");
    assert!(
        report.contains("<title>agent agent-2 gone (spot interruption"),
        "the shaded window is not labelled"
    );
    assert!(report.contains("Agent losses (shaded on the charts)"));
    assert!(report.contains("<td>agent-1, agent-3</td>"));
    let views: BTreeMap<&str, &punisher_controller::AgentView> = last
        .agents
        .iter()
        .map(|a| (a.agent_id.as_str(), a))
        .collect();
    // It said goodbye: shown as left, not as lost.
    assert_eq!(views["agent-2"].state, AgentState::Left);
    assert_eq!(views["agent-1"].state, AgentState::Finished);
    assert_eq!(views["agent-3"].state, AgentState::Finished);
    // Users started by all three: agent-2's before it left, and the others' own and the
    // ones they took over.
    assert_eq!(last.arrived_users, USERS, "{:?}", last.agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_asked_to_leave_hands_over_its_unstarted_users_like_on_a_spot_notice() {
    let _serial = crate::serial().await;
    let Interrupted {
        last,
        ids,
        exit,
        info,
        ..
    } = interrupted_run_by(Interruption::AskedToLeave, AgentLossPolicy::Reassign, 15).await;
    assert_eq!(exit, AgentExit::AskedToLeave);
    assert_passed_with_every_user_once(&last, &ids);
    let loss = agent_loss(&last);
    assert_eq!(loss.agent, "agent-2");
    assert!(loss.reason.contains("asked to leave"), "{loss:?}");
    assert!(loss.reassigned_users > 0, "{loss:?}");
    assert_eq!(info.agent_losses, [loss.to_window()]);
    let agent_2 = last
        .agents
        .iter()
        .find(|a| a.agent_id == "agent-2")
        .unwrap();
    assert_eq!(agent_2.state, AgentState::Left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_policy_goes_on_without_the_departed_users() {
    let _serial = crate::serial().await;
    let Interrupted {
        last,
        ids,
        exit,
        info,
        ..
    } = interrupted_run(AgentLossPolicy::Continue, 15).await;
    assert_eq!(exit, AgentExit::SpotInterruption);
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    let loss = agent_loss(&last);
    assert_eq!(loss.policy, AgentLossPolicy::Continue);
    assert!(loss.to.is_empty());
    assert_eq!(info.agent_losses.len(), 1);
    assert_eq!(info.agent_losses[0].policy, "continue");
    assert_eq!(info.agent_losses[0].reassigned_users, 0);
    // Nobody doubled; agent-2's users that had not started never ran.
    let unique: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len());
    assert!((ids.len() as u64) < USERS, "{} users ran", ids.len());
}

/// `GET url` on a fresh connection; returns status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), sock.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = buf[end + 4..].to_vec();
    // Bodies are sent with a length (no chunking) so that curl and the launcher read them.
    if status == 200 {
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(body.len());
        assert_eq!(len, body.len());
    }
    (status, body)
}

#[tokio::test]
async fn controller_serves_agent_binaries_and_their_checksums() {
    let dirs = tempfile::tempdir().unwrap();
    let bins = dirs.path().join("bin");
    std::fs::create_dir(&bins).unwrap();
    std::fs::write(bins.join("aarch64-unknown-linux-gnu"), b"hello").unwrap();
    let controller = Controller::bind(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        security: ServerSecurity::InsecureLoopback,
        results_dir: None,
        prometheus: None,
        lost_after: Duration::from_secs(3),
        agent_binaries: Some(bins.clone()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
    })
    .await
    .unwrap();
    let http = controller.http_addr().unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(controller.serve(cancel.clone()));

    // A binary from the directory, and its SHA-256 in `sha256sum` format (what the
    // cloud-init script checks with `sha256sum -c`).
    let (status, body) = http_get(http, "/agent/aarch64-unknown-linux-gnu").await;
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    let (status, sum) = http_get(http, "/agent/aarch64-unknown-linux-gnu.sha256").await;
    assert_eq!(status, 200);
    assert_eq!(
        String::from_utf8(sum).unwrap(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824  \
         aarch64-unknown-linux-gnu\n"
    );

    // This very binary for its own triple, byte for byte, with a checksum that matches it.
    let own = punisher_controller::BUILD_TARGET;
    let (status, body) = http_get(http, &format!("/agent/{own}")).await;
    assert_eq!(status, 200);
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(body.len(), exe.len());
    assert!(
        body == exe,
        "the served binary differs from the running one"
    );
    let (status, sum) = http_get(http, &format!("/agent/{own}.sha256")).await;
    assert_eq!(status, 200);
    let sum = String::from_utf8(sum).unwrap();
    let hex = sum.split_whitespace().next().unwrap();
    assert_eq!(hex.len(), 64);
    assert_eq!(sum, format!("{hex}  {own}\n"));
    // The same checksum twice (the cache is keyed by length and modification time).
    assert_eq!(
        http_get(http, &format!("/agent/{own}.sha256")).await.1,
        sum.as_bytes()
    );

    // The list, and refusals: unknown triples, paths that try to leave the directory.
    let (status, list) = http_get(http, "/agent/").await;
    assert_eq!(status, 200);
    let list = String::from_utf8(list).unwrap();
    assert!(
        list.lines().any(|l| l == "aarch64-unknown-linux-gnu"),
        "{list}"
    );
    assert!(list.lines().any(|l| l == own), "{list}");
    for bad in [
        "/agent/riscv64gc-unknown-linux-gnu",
        "/agent/..",
        "/agent/..%2Fbin%2Faarch64-unknown-linux-gnu",
        "/agent/.sha256",
        "/other",
    ] {
        assert_eq!(http_get(http, bad).await.0, 404, "{bad}");
    }

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn agent_binaries_need_an_http_address() {
    let dirs = tempfile::tempdir().unwrap();
    let refused = Controller::bind(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        security: ServerSecurity::InsecureLoopback,
        results_dir: None,
        prometheus: None,
        lost_after: Duration::from_secs(3),
        agent_binaries: Some(dirs.path().to_owned()),
        http_listen: None,
    })
    .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn status_says_which_instances_joined() {
    let controller = TestController::start(false).await;
    let cancel = CancellationToken::new();
    let mut cfg = controller.agent_config("agent-ec2");
    cfg.labels = punisher_agent::AgentLabels {
        region: "eu-west-1".into(),
        zone: "eu-west-1b".into(),
        instance_id: "i-0123456789abcdef0".into(),
    };
    let on_ec2 = spawn_agent(cfg, &cancel);
    let elsewhere = spawn_agent(controller.agent_config("agent-laptop"), &cancel);
    let mut client = controller.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = client.status().await.unwrap();
        if status.agents.len() == 2 {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents did not join"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status.instances,
        BTreeMap::from([("agent-ec2".to_owned(), "i-0123456789abcdef0".to_owned())])
    );
    cancel.cancel();
    for a in [on_ec2, elsewhere] {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
}

/// An agent that dies without a word (kill -9) is lost after ~2 s; its users that had not
/// started go to the others, cut where its last report said its arrivals were: none is
/// lost, and only the few it started after that report (under a second's worth) may run
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agents_unstarted_users_are_reassigned() {
    let _serial = crate::serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let mut agents: Vec<_> = (1..=3)
        .map(|i| spawn_agent(controller.agent_config(&format!("agent-{i}")), &cancel))
        .collect();
    let mut client = controller.client().await;
    let run_id = client
        .submit_run(submission(SESSION_SCRIPT, api_env(&target), 3))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || {
        let n = target.hits("/hit").len();
        async move { n >= 15 }
    })
    .await;
    agents[1].abort();
    let views = follow(&mut client, &run_id, Duration::from_secs(60)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    let loss = agent_loss(last);
    assert_eq!(loss.agent, "agent-2");
    assert!(loss.reassigned_users > 0, "{loss:?}");
    assert_eq!(loss.to, vec!["agent-1".to_owned(), "agent-3".to_owned()]);

    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for h in target.hits("/hit") {
        *counts
            .entry(query(&h.path, "vu").unwrap().parse().unwrap())
            .or_default() += 1;
    }
    let missing: Vec<u64> = (1..=USERS).filter(|k| !counts.contains_key(k)).collect();
    assert!(missing.is_empty(), "users that never ran: {missing:?}");
    let seg = last
        .agents
        .iter()
        .find(|a| a.agent_id == "agent-2")
        .map(|a| punisher_core::Segment {
            start: a.segment.0,
            end: a.segment.1,
        })
        .unwrap();
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| *k)
        .collect();
    assert!(
        doubled.iter().all(|k| seg.owns(k - 1) && counts[k] == 2),
        "only the killed agent's users may run twice: {doubled:?}"
    );
    // It starts about 3.3 users a second and reports every second.
    assert!(doubled.len() <= 5, "{doubled:?}");

    cancel.cancel();
    for a in [agents.remove(2), agents.remove(0)] {
        let _ = tokio::time::timeout(Duration::from_secs(10), a).await;
    }
    controller.cancel.cancel();
}
