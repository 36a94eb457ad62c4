//! Cluster tests: a controller and agents as tasks of this process, over real TCP (TLS with a
//! pinned certificate unless a test says otherwise) on 127.0.0.1, each agent running the real
//! engine against a small local HTTP target.

mod imds;
mod results;
mod spot;
mod util;

use std::collections::BTreeSet;
use std::time::Duration;

use punisher_agent::AgentError;
use punisher_controller::{
    AgentState, ClientConfig, ClientError, ClusterClient, RunCommand, RunState,
};
use punisher_core::Segment;
use punisher_proto::{ClientSecurity, Fingerprint, Refusal};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use util::*;

/// Timing assertions (lost within 3 s, load stops within the dead-man timeout) need the
/// machine to themselves: cluster tests run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const BARRIER_SCRIPT: &str = r#"
import http from 'punisher/http';
import { barrier, vu } from 'punisher';
export const options = { users: 30, rampUp: '1s', thresholds: { http_reqs: ['count>=60'] } };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await barrier('all-in', { timeout: '30s' });
  await http.get(`${__ENV.API}/after?vu=${vu.idInTest}`);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_merge_exactly_with_unique_ids_and_one_barrier() {
    let _serial = serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let agents: Vec<_> = (1..=3)
        .map(|i| spawn_agent(controller.agent_config(&format!("agent-{i}")), &cancel))
        .collect();
    let mut client = controller.client().await;
    let run_id = client
        .submit_run(submission(BARRIER_SCRIPT, api_env(&target), 3))
        .await
        .unwrap();
    let views = follow(&mut client, &run_id, Duration::from_secs(60)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert_eq!(last.exit_code, Some(0), "{:?}", last.messages);

    // Merged counts equal what the target counted.
    assert_eq!(counter(last, "http_reqs") as usize, target.count());
    assert_eq!(target.count(), 60);
    // Every agent ran a share.
    assert_eq!(last.agents.len(), 3);
    for a in &last.agents {
        assert_eq!(a.state, AgentState::Finished, "{a:?}");
        assert!(a.reports > 0, "{a:?}");
    }
    // vu.idInTest is unique cluster-wide: 1..=30, each once.
    let ids: Vec<u64> = target
        .hits("/hit")
        .iter()
        .map(|h| query(&h.path, "vu").unwrap().parse().unwrap())
        .collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 30);
    assert_eq!(unique, (1..=30).collect());
    // Each agent's users are the ones its segment owns.
    for a in &last.agents {
        let segment = Segment {
            start: a.segment.0,
            end: a.segment.1,
        };
        assert!(segment.count_below(30) > 0, "{a:?}");
    }
    // The barrier released everyone together: no user passed before the last arrived, and
    // the releases on the three agents are close together.
    let last_in = target.hits("/hit").iter().map(|h| h.at).max().unwrap();
    let after: Vec<Instant> = target.hits("/after").iter().map(|h| h.at).collect();
    assert_eq!(after.len(), 30);
    let first_out = *after.iter().min().unwrap();
    let last_out = *after.iter().max().unwrap();
    assert!(first_out >= last_in, "a user passed the barrier early");
    assert!(
        last_out - first_out < Duration::from_millis(1000),
        "released over {:?}",
        last_out - first_out
    );
    // The journal holds every merged second (one `live` line each) and the summary.
    let dir = controller.dirs.path().join("results").join(&run_id);
    let lines = std::fs::read_to_string(dir.join("timeseries.jsonl")).unwrap();
    let seconds = lines
        .lines()
        .filter(|l| l.contains(r#""scope":"live""#))
        .count() as u64;
    assert_eq!(seconds, last.tick, "{lines}");
    assert!(dir.join("summary.json").exists());
    assert!(last.summary_text.as_deref().unwrap().contains("http_reqs"));

    cancel.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

const LOOP_SCRIPT: &str = r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 6, duration: '6s' };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await sleep(0.05);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_lost_within_3s_and_totals_keep_what_it_reported() {
    let _serial = serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let mut agents: Vec<_> = (1..=3)
        .map(|i| spawn_agent(controller.agent_config(&format!("agent-{i}")), &cancel))
        .collect();
    let mut client = controller.client().await;
    let run_id = client
        .submit_run(submission(LOOP_SCRIPT, api_env(&target), 3))
        .await
        .unwrap();
    let mut stream = client.watch(&run_id).await.unwrap();
    let mut killed_at = None;
    let mut lost_after = None;
    let mut last = None;
    while let Some(view) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no view")
    {
        let view = view.unwrap();
        if killed_at.is_none() && is_running(&view) && view.tick >= 2 {
            // kill -9 of the agent: its task, its engine and its connection vanish at once.
            agents[2].abort();
            killed_at = Some(Instant::now());
        }
        if let (Some(at), None) = (killed_at, lost_after) {
            let lost = view
                .agents
                .iter()
                .any(|a| a.agent_id == "agent-3" && a.state == AgentState::Lost);
            if lost {
                lost_after = Some(at.elapsed());
            }
        }
        let over = view.state.is_over();
        last = Some(view);
        if over {
            break;
        }
    }
    let last = last.unwrap();
    let lost_after = lost_after.expect("agent-3 was never reported lost");
    eprintln!("agent reported lost {lost_after:?} after it was killed");
    assert!(lost_after <= Duration::from_secs(3), "{lost_after:?}");
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert!(
        last.messages
            .iter()
            .any(|m| m.contains("agent-3") && m.contains("lost"))
    );

    // The survivors' requests are all merged; what the lost agent contributed is what it
    // reported before dying: more than nothing, no more than it sent.
    let owner = |id: u64| {
        last.agents
            .iter()
            .find(|a| {
                Segment {
                    start: a.segment.0,
                    end: a.segment.1,
                }
                .owns(id - 1)
            })
            .unwrap()
            .agent_id
            .clone()
    };
    let (mut survivors, mut lost) = (0usize, 0usize);
    for hit in target.hits("/hit") {
        let id: u64 = query(&hit.path, "vu").unwrap().parse().unwrap();
        if owner(id) == "agent-3" {
            lost += 1;
        } else {
            survivors += 1;
        }
    }
    let merged = counter(&last, "http_reqs") as usize;
    assert!(
        merged >= survivors,
        "merged {merged} < survivors {survivors}"
    );
    let lost_reported = merged - survivors;
    eprintln!("survivors {survivors}, lost agent sent {lost}, of which reported {lost_reported}");
    assert!(
        lost_reported > 0 && lost_reported <= lost,
        "{lost_reported} of {lost}"
    );

    cancel.cancel();
    for a in agents.drain(..2) {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

const SHORT_LOOP: &str = r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 3, duration: '5s' };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await sleep(0.05);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_that_reconnect_are_not_double_counted() {
    let _serial = serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let proxy = Proxy::start(controller.addr).await;
    let cancel = CancellationToken::new();
    let agents: Vec<_> = (1..=3)
        .map(|i| {
            let cfg = agent_config(
                &proxy.addr.to_string(),
                controller.security(),
                &format!("agent-{i}"),
            );
            spawn_agent(cfg, &cancel)
        })
        .collect();
    let mut client = controller.client().await;
    let run_id = client
        .submit_run(submission(SHORT_LOOP, api_env(&target), 3))
        .await
        .unwrap();
    let mut stream = client.watch(&run_id).await.unwrap();
    let mut cuts = 0;
    let mut last = None;
    while let Some(view) = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("no view")
    {
        let view = view.unwrap();
        // Pull the cable twice while the run goes on: reports in flight are resent.
        if is_running(&view) && view.tick >= 2 && cuts < 2 {
            proxy.cut();
            cuts += 1;
        }
        let over = view.state.is_over();
        last = Some(view);
        if over {
            break;
        }
    }
    let last = last.unwrap();
    assert_eq!(cuts, 2);
    let connections = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections >= 6,
        "agents did not reconnect: {connections} connections"
    );
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert_eq!(counter(&last, "http_reqs") as usize, target.count());
    assert!(target.count() > 30);

    cancel.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_fingerprint_and_version_are_refused_with_reasons() {
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();

    let mut cfg = controller.agent_config("bad-token");
    cfg.token = "wrong".into();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        punisher_agent::run(cfg, cancel.clone()),
    )
    .await
    .expect("a refused agent must exit, not retry")
    .unwrap_err();
    assert_eq!(e, AgentError::Refused(Refusal::Token));
    assert!(e.to_string().contains("--token"), "{e}");

    let mut cfg = controller.agent_config("bad-fingerprint");
    cfg.security = ClientSecurity::Pinned(Fingerprint::of(b"some other certificate"));
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        punisher_agent::run(cfg, cancel.clone()),
    )
    .await
    .expect("a refused agent must exit, not retry")
    .unwrap_err();
    let AgentError::Refused(Refusal::Fingerprint { expected, actual }) = &e else {
        panic!("{e}");
    };
    assert_eq!(*actual, controller.fingerprint.unwrap().to_string());
    assert_ne!(expected, actual);
    assert!(e.to_string().contains("--controller-fingerprint"), "{e}");

    // Admin calls check the token too.
    let admin = ClusterClient::connect(&ClientConfig {
        controller: controller.addr.to_string(),
        token: "wrong".into(),
        security: controller.security(),
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
    .status()
    .await;
    assert!(
        matches!(admin, Err(ClientError::Refused(Refusal::Token))),
        "{admin:?}"
    );

    // Another protocol version is refused with both versions named.
    let status = fake::hello_with_protocol(&controller, 99)
        .await
        .unwrap_err();
    let refusal = Refusal::from_status(&status, 99).unwrap();
    assert_eq!(
        refusal,
        Refusal::Version {
            ours: 99,
            theirs: punisher_proto::PROTOCOL_VERSION
        }
    );

    // Plaintext to a TLS controller does not get through either, and is retried (it may be
    // a controller that is restarting), so it is bounded here by a timeout.
    let cfg = punisher_agent::AgentConfig {
        security: ClientSecurity::InsecureLoopback,
        ..controller.agent_config("plaintext")
    };
    let attempt = tokio::time::timeout(
        Duration::from_millis(500),
        punisher_agent::run(cfg, cancel.clone()),
    )
    .await;
    assert!(
        attempt.is_err(),
        "plaintext must not join a TLS controller: {attempt:?}"
    );

    // The controller is unharmed and lists nobody.
    let mut client = controller.client().await;
    assert!(client.status().await.unwrap().agents.is_empty());
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_are_rejected_without_a_crash() {
    let _serial = serial().await;
    let controller = TestController::start(false).await;
    // Bytes that are not an AgentMessage.
    let status = fake::raw_session(&controller, vec![vec![0xff; 64]]).await;
    assert!(status.is_err(), "{status:?}");
    // A message over the size limit: refused by the decoder before it is buffered whole.
    let big = vec![0u8; punisher_proto::MAX_MESSAGE_BYTES + 1];
    let status = fake::raw_session(&controller, vec![big]).await;
    assert!(status.is_err(), "{status:?}");
    // Not even HTTP/2.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(controller.addr)
            .await
            .unwrap();
        s.write_all(b"GET / HTTP/1.0\r\n\r\n\x00\xff garbage")
            .await
            .unwrap();
    }
    // A joined agent whose report is not a snapshot is disconnected; the run goes on
    // without it (and fails: it was the only agent).
    let mut client = controller.client().await;
    let target = target().await;
    let run_id = client
        .submit_run(submission(SHORT_LOOP, api_env(&target), 1))
        .await
        .unwrap();
    let reason = fake::agent_with_garbage_report(&controller).await;
    assert!(reason.contains("report 1"), "{reason}");
    let views = follow(&mut client, &run_id, Duration::from_secs(30)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Failed);
    assert_eq!(last.exit_code, Some(1));
    // Still serving.
    let status = client.status().await.unwrap();
    assert!(status.run.is_some());
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_carry_the_agents_clock_offset() {
    let _serial = serial().await;
    let controller = TestController::start(false).await;
    // An agent 5 s ahead: the Ping after its first Pong tells it so (to within the round
    // trip on loopback).
    let skew_us = 5_000_000;
    let (offset, pings) = tokio::time::timeout(
        Duration::from_secs(15),
        fake::agent_with_skewed_clock(&controller, skew_us),
    )
    .await
    .expect("a ping with the offset within 15 s");
    assert!((offset - skew_us).abs() < 50_000, "{offset}");
    assert!(pings >= 2, "the first ping cannot know the offset: {pings}");
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

const LONG_LOOP: &str = r#"
import http from 'punisher/http';
import { sleep, vu } from 'punisher';
export const options = { vus: 2, duration: '60s' };
export default async function () {
  await http.get(`${__ENV.API}/hit?vu=${vu.idInTest}`);
  await sleep(0.1);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_scales_pauses_and_stops_a_running_run() {
    let _serial = serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let agents: Vec<_> = (1..=2)
        .map(|i| spawn_agent(controller.agent_config(&format!("agent-{i}")), &cancel))
        .collect();
    let mut client = controller.client().await;
    let mut ctl = controller.client().await;
    let run_id = client
        .submit_run(submission(LONG_LOOP, api_env(&target), 2))
        .await
        .unwrap();
    let mut stream = client.watch(&run_id).await.unwrap();
    let mut step = 0;
    let started = Instant::now();
    let mut last = None;
    while let Some(view) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("no view")
    {
        let view = view.unwrap();
        match step {
            0 if is_running(&view) && view.active_users == 2 => {
                ctl.command(RunCommand::Scale(6)).await.unwrap();
                step = 1;
            }
            1 if view.active_users == 6 => {
                assert_eq!(view.target_users, 6);
                let status = ctl.status().await.unwrap();
                assert_eq!(status.agents.len(), 2);
                ctl.command(RunCommand::Stop {
                    grace: Duration::from_secs(2),
                })
                .await
                .unwrap();
                step = 2;
            }
            _ => {}
        }
        let over = view.state.is_over();
        last = Some(view);
        if over {
            break;
        }
    }
    let last = last.unwrap();
    assert_eq!(step, 2, "never saw 6 active users");
    assert_eq!(last.state, RunState::Finished, "{:?}", last.messages);
    assert!(started.elapsed() < Duration::from_secs(30));
    let summary = last.summary_json.as_ref().unwrap();
    assert!(
        summary.to_string().contains("stopped by the operator"),
        "{summary}"
    );
    assert_eq!(counter(&last, "http_reqs") as usize, target.count());
    // A second run on the same controller and agents, without a restart.
    let before = target.count();
    let run_id = client
        .submit_run(submission(SHORT_LOOP, api_env(&target), 2))
        .await
        .unwrap();
    let views = follow(&mut client, &run_id, Duration::from_secs(30)).await;
    let second = views.last().unwrap();
    assert_eq!(second.state, RunState::Finished);
    assert_eq!(
        counter(second, "http_reqs") as usize,
        target.count() - before
    );
    cancel.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stop_the_load_when_the_controller_dies() {
    let _serial = serial().await;
    let target = target().await;
    let mut controller = KillableController::start().await;
    let cancel = CancellationToken::new();
    let timeout = Duration::from_secs(2);
    let agents: Vec<_> = (1..=2)
        .map(|i| {
            let mut cfg = agent_config(
                &controller.addr.to_string(),
                controller.security(),
                &format!("agent-{i}"),
            );
            cfg.controller_timeout = timeout;
            spawn_agent(cfg, &cancel)
        })
        .collect();
    let mut client = ClusterClient::connect(&ClientConfig {
        controller: controller.addr.to_string(),
        token: TOKEN.into(),
        security: controller.security(),
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    let run_id = client
        .submit_run(submission(LONG_LOOP, api_env(&target), 2))
        .await
        .unwrap();
    let mut stream = client.watch(&run_id).await.unwrap();
    while let Some(view) = stream.next().await {
        if is_running(&view.unwrap()) && target.count() > 10 {
            break;
        }
    }
    // kill -9 of the controller: every task and socket of it vanishes at once.
    controller.kill();
    let died = Instant::now();
    // The target's counter stops rising within the dead-man timeout (plus one in-flight
    // iteration and the agents' 250 ms check).
    let mut stable_since: Option<Instant> = None;
    let mut previous = target.count();
    eventually(Duration::from_secs(15), || {
        let now = target.count();
        if now != previous {
            previous = now;
            stable_since = None;
        } else if stable_since.is_none() {
            stable_since = Some(Instant::now());
        }
        let stable = stable_since.is_some_and(|s| s.elapsed() >= Duration::from_millis(1000));
        async move { stable }
    })
    .await;
    let stopped_after = stable_since.unwrap().saturating_duration_since(died);
    eprintln!("load stopped {stopped_after:?} after the controller died (timeout {timeout:?})");
    assert!(
        stopped_after <= timeout + Duration::from_millis(1500),
        "{stopped_after:?}"
    );
    // The agents are still alive, trying to rejoin.
    for a in &agents {
        assert!(!a.is_finished());
    }
    cancel.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_on_fail_thresholds_stop_every_agent() {
    let _serial = serial().await;
    let target = target().await;
    let controller = TestController::start(true).await;
    let cancel = CancellationToken::new();
    let agents: Vec<_> = (1..=2)
        .map(|i| spawn_agent(controller.agent_config(&format!("agent-{i}")), &cancel))
        .collect();
    let mut client = controller.client().await;
    let script = LONG_LOOP.replace(
        "duration: '60s' }",
        "duration: '60s', thresholds: { http_reqs: [{ threshold: 'count<10', abortOnFail: true }] } }",
    );
    let run_id = client
        .submit_run(submission(&script, api_env(&target), 2))
        .await
        .unwrap();
    let views = follow(&mut client, &run_id, Duration::from_secs(30)).await;
    let last = views.last().unwrap();
    assert_eq!(last.state, RunState::Finished);
    assert_eq!(last.exit_code, Some(99));
    assert!(last.elapsed < Duration::from_secs(20), "{:?}", last.elapsed);
    assert!(
        last.messages.iter().any(|m| m.contains("abortOnFail")),
        "{:?}",
        last.messages
    );
    // Abort interrupts requests in flight: the target may have seen one per user that
    // its client never recorded, never the other way round.
    let merged = counter(last, "http_reqs") as usize;
    assert!(
        merged <= target.count() && target.count() - merged <= 2,
        "{merged} vs {}",
        target.count()
    );
    cancel.cancel();
    for a in agents {
        a.await.unwrap().unwrap();
    }
    controller.cancel.cancel();
    controller.task.await.unwrap();
}

/// Fake agents that speak the protocol badly.
mod fake {
    use super::util::{TOKEN, TestController};
    use prost::Message;
    use punisher_proto::transport::{TokenInterceptor, agent_client};
    use punisher_proto::v1;
    use punisher_proto::v1::agent_message::Kind as Msg;
    use punisher_proto::v1::controller_message::Kind as Cmd;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::codegen::Bytes;
    use tonic::codegen::http::uri::PathAndQuery;

    fn hello(protocol: u32, id: &str) -> v1::AgentMessage {
        v1::AgentMessage {
            kind: Some(Msg::Hello(v1::Hello {
                agent_id: id.into(),
                protocol,
                capacity: Some(v1::Capacity {
                    cores: 1,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    async fn channel(c: &TestController) -> tonic::transport::Channel {
        punisher_proto::transport::connect(
            &c.addr.to_string(),
            &c.security(),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap()
    }

    pub(crate) async fn hello_with_protocol(
        c: &TestController,
        protocol: u32,
    ) -> Result<(), tonic::Status> {
        let mut client = agent_client(channel(c).await, TokenInterceptor::new(TOKEN).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(hello(protocol, "old-agent")).await.unwrap();
        client.session(ReceiverStream::new(rx)).await.map(|_| ())
    }

    /// Joins, loads, starts, then reports bytes that are not a snapshot. Returns the
    /// status message the controller ended the stream with.
    pub(crate) async fn agent_with_garbage_report(c: &TestController) -> String {
        let mut client = agent_client(channel(c).await, TokenInterceptor::new(TOKEN).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(hello(punisher_proto::PROTOCOL_VERSION, "garbage"))
            .await
            .unwrap();
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return "closed".into(),
                Err(status) => return status.message().to_owned(),
            };
            match msg.kind {
                Some(Cmd::Load(l)) => {
                    let loaded = v1::Loaded {
                        run_id: l.run_id,
                        error: String::new(),
                    };
                    tx.send(v1::AgentMessage {
                        kind: Some(Msg::Loaded(loaded)),
                    })
                    .await
                    .unwrap();
                }
                Some(Cmd::Start(s)) => {
                    let report = v1::Report {
                        run_id: s.run_id,
                        seq: 1,
                        snapshot: Bytes::from_static(b"PNSM\x01garbage garbage"),
                        ..Default::default()
                    };
                    tx.send(v1::AgentMessage {
                        kind: Some(Msg::Report(report)),
                    })
                    .await
                    .unwrap();
                }
                _ => {}
            }
        }
    }

    /// Joins with a clock `skew_us` ahead of the controller's (its Pongs say so) and
    /// returns the first non-zero `agent_offset_us` a Ping carries and how many Pings came.
    pub(crate) async fn agent_with_skewed_clock(c: &TestController, skew_us: i64) -> (i64, u32) {
        let mut client = agent_client(channel(c).await, TokenInterceptor::new(TOKEN).unwrap());
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(hello(punisher_proto::PROTOCOL_VERSION, "skewed"))
            .await
            .unwrap();
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut pings = 0;
        loop {
            let msg = inbound
                .message()
                .await
                .unwrap()
                .expect("the controller hung up");
            if let Some(Cmd::Ping(p)) = msg.kind {
                pings += 1;
                if p.agent_offset_us != 0 {
                    return (p.agent_offset_us, pings);
                }
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_micros() as i64;
                let pong = v1::Pong {
                    nonce: p.nonce,
                    ping_sent_unix_us: p.sent_unix_us,
                    agent_unix_us: (now_us + skew_us) as u64,
                };
                tx.send(v1::AgentMessage {
                    kind: Some(Msg::Pong(pong)),
                })
                .await
                .unwrap();
            }
        }
    }

    /// Sends a Hello, then each of `frames` as raw gRPC message bytes.
    pub(crate) async fn raw_session(
        c: &TestController,
        frames: Vec<Vec<u8>>,
    ) -> Result<(), tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(channel(c).await)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        grpc.ready().await.unwrap();
        let mut items = vec![Bytes::from(
            hello(punisher_proto::PROTOCOL_VERSION, "raw").encode_to_vec(),
        )];
        items.extend(frames.into_iter().map(Bytes::from));
        let mut request = tonic::Request::new(futures_util::stream::iter(items));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        let path = PathAndQuery::from_static("/punisher.v1.AgentService/Session");
        let mut inbound = grpc.streaming(request, path, RawCodec).await?.into_inner();
        loop {
            match inbound.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }

    struct RawCodec;
    struct RawEncoder;
    struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes_put::BufMut;
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
            use bytes_put::Buf;
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }

    mod bytes_put {
        pub(crate) use prost::bytes::{Buf, BufMut};
    }
}
