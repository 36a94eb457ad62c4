//! The controller's protocol rules, exercised by scripted fake agents over real TCP on
//! 127.0.0.1 (plaintext loopback): exactly-once report accounting, cluster-wide barriers,
//! lost agents. The full cluster with the real engine is tested in punisher-agent.

use std::collections::BTreeMap;
use std::time::Duration;

use punisher_controller::{
    ClientConfig, ClusterClient, Controller, ControllerConfig, RunState, RunSubmission, RunView,
    ServerSecurity,
};
use punisher_core::{Overrides, Plan};
use punisher_metrics::{MetricKind, Recorder, SeriesData, Tags, ValueType};
use punisher_proto::transport::{TokenInterceptor, agent_client};
use punisher_proto::v1::agent_message::Kind as Msg;
use punisher_proto::v1::controller_message::Kind as Cmd;
use punisher_proto::{ClientSecurity, ScenarioBundle, v1};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

const TOKEN: &str = "t0ken";

struct Setup {
    addr: String,
    cancel: CancellationToken,
    _dirs: tempfile::TempDir,
}

async fn controller() -> Setup {
    let dirs = tempfile::tempdir().unwrap();
    let c = Controller::bind(ControllerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        security: ServerSecurity::InsecureLoopback,
        results_dir: Some(dirs.path().to_path_buf()),
        prometheus: None,
        agent_binaries: None,
        http_listen: None,
        lost_after: Duration::from_secs(3),
    })
    .await
    .unwrap();
    let addr = c.local_addr().to_string();
    let cancel = CancellationToken::new();
    tokio::spawn(c.serve(cancel.clone()));
    Setup {
        addr,
        cancel,
        _dirs: dirs,
    }
}

async fn client(s: &Setup) -> ClusterClient {
    ClusterClient::connect(&ClientConfig {
        controller: s.addr.clone(),
        token: TOKEN.into(),
        security: ClientSecurity::InsecureLoopback,
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap()
}

fn submission(options: serde_json::Value, wait_agents: u32) -> RunSubmission {
    RunSubmission {
        bundle: ScenarioBundle {
            entry: "x.js".into(),
            sources: BTreeMap::from([("x.js".into(), "export default function () {}".into())]),
            files: BTreeMap::new(),
        },
        plan: Plan::from_options(&options, &Overrides::default()).unwrap(),
        env: BTreeMap::new(),
        setup_data: serde_json::Value::Null,
        wait_agents,
        scenario_name: "x.js".into(),
        workers_per_agent: 1,
        start_delay: Duration::from_millis(50),
        run_id: None,
        command_line: Vec::new(),
        wait_for_start: false,
        on_agent_loss: Default::default(),
    }
}

/// An agent played by the test.
struct Fake {
    tx: mpsc::Sender<v1::AgentMessage>,
    rx: Streaming<v1::ControllerMessage>,
    run_id: String,
}

impl Fake {
    async fn join(s: &Setup, id: &str) -> Fake {
        let channel = punisher_proto::transport::connect(
            &s.addr,
            &ClientSecurity::InsecureLoopback,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut client = agent_client(channel, TokenInterceptor::new(TOKEN).unwrap());
        let (tx, out) = mpsc::channel(64);
        tx.send(v1::AgentMessage {
            kind: Some(Msg::Hello(v1::Hello {
                agent_id: id.into(),
                protocol: punisher_proto::PROTOCOL_VERSION,
                capacity: Some(v1::Capacity {
                    cores: 1,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let rx = client
            .session(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        let mut fake = Fake {
            tx,
            rx,
            run_id: String::new(),
        };
        assert!(matches!(fake.next().await, Cmd::Welcome(_)));
        fake
    }

    /// The next command, answering pings on the way.
    async fn next(&mut self) -> Cmd {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("no message from the controller")
                .expect("stream failed")
                .expect("stream ended");
            match msg.kind.unwrap() {
                Cmd::Ping(p) => {
                    self.send(Msg::Pong(v1::Pong {
                        nonce: p.nonce,
                        ping_sent_unix_us: p.sent_unix_us,
                        agent_unix_us: p.sent_unix_us,
                    }))
                    .await
                }
                other => return other,
            }
        }
    }

    async fn send(&self, kind: Msg) {
        self.tx
            .send(v1::AgentMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    /// Waits for Load and answers Loaded.
    async fn load(&mut self) -> v1::LoadScenario {
        let Cmd::Load(load) = self.next().await else {
            panic!("expected Load")
        };
        self.run_id = load.run_id.clone();
        self.send(Msg::Loaded(v1::Loaded {
            run_id: load.run_id.clone(),
            error: String::new(),
        }))
        .await;
        load
    }

    /// Waits for Start (sent once every agent of the run loaded).
    async fn started(&mut self) {
        while !matches!(self.next().await, Cmd::Start(_)) {}
    }

    async fn load_and_start(&mut self) -> v1::LoadScenario {
        let load = self.load().await;
        self.started().await;
        load
    }

    async fn report(&self, seq: u64, requests: u64, finished: bool) {
        let mut r = Recorder::new();
        let id = r
            .series(
                MetricKind::Counter,
                ValueType::Default,
                "http_reqs",
                &Tags::empty(),
            )
            .unwrap();
        r.add_counter(id, requests as f64);
        self.send(Msg::Report(v1::Report {
            run_id: self.run_id.clone(),
            seq,
            snapshot: r.take_snapshot(0, 1000).encode().into(),
            finished,
            ..Default::default()
        }))
        .await;
    }

    /// An empty report with the agent's open connections and sockets.
    async fn report_open(&self, seq: u64, connections: u64, sockets: u64, finished: bool) {
        self.send(Msg::Report(v1::Report {
            run_id: self.run_id.clone(),
            seq,
            snapshot: Recorder::new().take_snapshot(0, 1000).encode().into(),
            open_connections: connections,
            open_sockets: sockets,
            finished,
            ..Default::default()
        }))
        .await;
    }

    async fn arrive(&self, name: &str, arrived: u64) {
        self.send(Msg::BarrierArrive(v1::BarrierArrive {
            run_id: self.run_id.clone(),
            name: name.into(),
            arrived,
        }))
        .await;
    }
}

async fn last_view(client: &mut ClusterClient, run_id: &str) -> RunView {
    let mut stream = client.watch(run_id).await.unwrap();
    let mut last = None;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(v) = stream.next().await {
            let v = v.unwrap();
            let over = v.state.is_over();
            last = Some(v);
            if over {
                break;
            }
        }
    })
    .await
    .expect("run did not end");
    last.unwrap()
}

fn requests(view: &RunView) -> f64 {
    match view.totals.aggregate("http_reqs", &Tags::empty()) {
        Some(SeriesData::Counter { sum }) => sum,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn reports_count_exactly_once_in_sequence() {
    let s = controller().await;
    let mut client = client(&s).await;
    let run_id = client
        .submit_run(submission(
            serde_json::json!({"vus": 2, "duration": "1s"}),
            1,
        ))
        .await
        .unwrap();
    let mut a = Fake::join(&s, "a").await;
    a.load_and_start().await;
    a.report(1, 5, false).await;
    a.report(1, 5, false).await; // a resend: acknowledged, not counted
    a.report(2, 7, true).await;
    let view = last_view(&mut client, &run_id).await;
    assert_eq!(view.state, RunState::Finished);
    assert_eq!(requests(&view), 12.0);
    // Both acks arrive (the duplicate's at once, the merged ones after the journal write).
    let mut acked = 0;
    while acked < 2 {
        if let Cmd::Ack(ack) = a.next().await {
            acked = acked.max(ack.seq);
        }
    }
    s.cancel.cancel();
}

#[tokio::test]
async fn a_gap_in_report_numbers_disconnects_the_agent() {
    let s = controller().await;
    let mut client = client(&s).await;
    client
        .submit_run(submission(
            serde_json::json!({"vus": 1, "duration": "1s"}),
            1,
        ))
        .await
        .unwrap();
    let mut a = Fake::join(&s, "a").await;
    a.load_and_start().await;
    a.report(2, 5, false).await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), a.rx.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a reason"),
            Err(status) => break status,
        }
    };
    assert!(status.message().contains("without gaps"), "{status:?}");
    s.cancel.cancel();
}

#[tokio::test]
async fn barriers_release_every_agent_when_all_users_arrived() {
    let s = controller().await;
    let mut client = client(&s).await;
    client
        .submit_run(submission(
            serde_json::json!({"users": 4, "rampUp": "1s"}),
            2,
        ))
        .await
        .unwrap();
    let mut a = Fake::join(&s, "a").await;
    let mut b = Fake::join(&s, "b").await;
    let load_a = a.load().await;
    let load_b = b.load().await;
    a.started().await;
    b.started().await;
    assert_eq!(load_a.test_users, 4);
    assert_eq!(load_a.agent_count, 2);
    assert_ne!(load_a.agent_index, load_b.agent_index);
    a.arrive("ready", 2).await;
    a.arrive("ready", 2).await; // resent counts are not added up
    b.arrive("ready", 1).await;
    // Not yet: 3 of 4. The next arrival releases both agents.
    b.arrive("ready", 2).await;
    for fake in [&mut a, &mut b] {
        loop {
            if let Cmd::BarrierRelease(r) = fake.next().await {
                assert_eq!(r.name, "ready");
                break;
            }
        }
    }
    s.cancel.cancel();
}

#[tokio::test]
async fn a_lost_agent_does_not_hold_a_barrier() {
    let s = controller().await;
    let mut client = client(&s).await;
    let mut run = submission(serde_json::json!({"users": 4, "rampUp": "1s"}), 2);
    // Nobody takes over b's users (with the default, `reassign`, a would run them).
    run.on_agent_loss = punisher_controller::AgentLossPolicy::Continue;
    client.submit_run(run).await.unwrap();
    let mut a = Fake::join(&s, "a").await;
    let mut b = Fake::join(&s, "b").await;
    let load_a = a.load().await;
    b.load().await;
    a.started().await;
    b.started().await;
    let segment = punisher_proto::convert::segment_from_wire(load_a.segment).unwrap();
    let own = segment.count_below(4);
    a.arrive("ready", own).await;
    drop(b); // b dies: its users never arrive
    let started = tokio::time::Instant::now();
    loop {
        if let Cmd::BarrierRelease(r) = a.next().await {
            assert_eq!(r.name, "ready");
            break;
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let status = client.status().await.unwrap();
    let run = status.run.unwrap();
    assert!(
        run.messages
            .iter()
            .any(|m| m.contains("agent b") && m.contains("lost")),
        "{:?}",
        run.messages
    );
    s.cancel.cancel();
}

/// With `reassign` (the default), a lost agent's users that had not started go to the
/// agents left: they are told with an Adopt, and barriers wait for those users too.
#[tokio::test]
async fn a_lost_agents_users_are_adopted_and_awaited_at_barriers() {
    let s = controller().await;
    let mut client = client(&s).await;
    client
        .submit_run(submission(
            serde_json::json!({"users": 4, "rampUp": "1s"}),
            2,
        ))
        .await
        .unwrap();
    let mut a = Fake::join(&s, "a").await;
    let mut b = Fake::join(&s, "b").await;
    let load_a = a.load().await;
    let load_b = b.load().await;
    a.started().await;
    b.started().await;
    let own = punisher_proto::convert::segment_from_wire(load_a.segment)
        .unwrap()
        .count_below(4);
    let theirs = punisher_proto::convert::segment_from_wire(load_b.segment).unwrap();
    a.arrive("ready", own).await;
    drop(b); // b dies before any of its users started
    let adopt = loop {
        match a.next().await {
            Cmd::Adopt(adopt) => break adopt,
            Cmd::BarrierRelease(r) => panic!("released {} before b's users arrived", r.name),
            _ => {}
        }
    };
    // All of b's share, from its first user: it reported none started.
    assert_eq!(adopt.shares.len(), 1, "{adopt:?}");
    let share = &adopt.shares[0];
    assert_eq!(share.from_user, 0);
    assert_eq!(
        punisher_proto::convert::segment_from_wire(share.segment).unwrap(),
        theirs
    );
    // a runs them: once they arrive too, the barrier opens.
    a.arrive("ready", 4).await;
    loop {
        if let Cmd::BarrierRelease(r) = a.next().await {
            assert_eq!(r.name, "ready");
            break;
        }
    }
    let run = client.status().await.unwrap().run.unwrap();
    let loss = run
        .messages
        .iter()
        .find_map(|m| punisher_controller::AgentLoss::parse(m))
        .expect("no agent_loss message");
    assert_eq!(loss.agent, "b");
    assert_eq!(loss.to, vec!["a".to_owned()]);
    assert_eq!(loss.reassigned_users, theirs.count_below(4));
    s.cancel.cancel();
}

#[tokio::test]
async fn run_ids_name_results_folders_that_are_complete_when_the_run_is_shown_over() {
    let s = controller().await;
    let mut client = client(&s).await;
    let options = serde_json::json!({"vus": 1, "duration": "1s"});
    let mut bad = submission(options.clone(), 1);
    bad.run_id = Some("../escape".into());
    let err = client.submit_run(bad).await.unwrap_err().to_string();
    assert!(err.contains("invalid run id"), "{err}");

    let mut run = submission(options.clone(), 1);
    run.run_id = Some("night-1".into());
    run.command_line = vec!["punisher".into(), "run".into(), "x.js".into()];
    let run_id = client.submit_run(run).await.unwrap();
    assert_eq!(run_id, "night-1");
    let dir = s._dirs.path().join("night-1");
    // The folder is known (and shown) from the submission on, before any agent joined.
    let status = client.status().await.unwrap();
    assert_eq!(
        status.run.unwrap().results_dir.as_deref(),
        Some(dir.to_str().unwrap())
    );
    let mut a = Fake::join(&s, "a").await;
    a.load_and_start().await;
    a.report(1, 5, false).await;
    a.report(2, 7, true).await;
    let view = last_view(&mut client, &run_id).await;
    assert_eq!(view.state, RunState::Finished, "{:?}", view.messages);
    assert_eq!(view.results_dir.as_deref(), Some(dir.to_str().unwrap()));
    // Every end-of-run file is there as soon as the run is shown over.
    for file in [
        "run.json",
        "timeseries.jsonl",
        "summary.json",
        "junit.xml",
        "report.html",
    ] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["metrics"]["http_reqs"]["values"]["count"], 12.0);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(
        info["command_line"],
        serde_json::json!(["punisher", "run", "x.js"])
    );
    assert_eq!(info["agents"][0]["id"], "a");
    assert_eq!(info["agents"][0]["state"], "finished");
    assert!(info["ended"].is_string());
    // The same id again: its folder exists.
    let mut again = submission(options, 1);
    again.run_id = Some("night-1".into());
    let err = client.submit_run(again).await.unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    s.cancel.cancel();
}

#[tokio::test]
async fn a_run_submitted_with_wait_for_start_loads_then_holds_until_start() {
    let s = controller().await;
    let mut admin = client(&s).await;
    let mut run = submission(serde_json::json!({"vus": 1, "duration": "1s"}), 1);
    run.wait_for_start = true;
    admin.submit_run(run).await.unwrap();
    let mut views = admin.watch("").await.unwrap();
    let mut a = Fake::join(&s, "a").await;
    a.load().await;
    // Loaded everywhere, and held: the views say so, and no start instant is set.
    loop {
        let v = views.next().await.unwrap().unwrap();
        assert!(v.waiting_for_start, "{:?}", v.state);
        assert_eq!(v.started_unix_ms, 0);
        if v.messages
            .iter()
            .any(|m| m.contains("waiting for a start signal"))
        {
            break;
        }
    }
    let mut ctl = client(&s).await;
    let answer = ctl
        .command(punisher_controller::RunCommand::Start)
        .await
        .unwrap();
    assert!(answer.contains("starting"), "{answer}");
    a.started().await;
    // Started once; a second start is refused.
    let err = ctl
        .command(punisher_controller::RunCommand::Start)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not waiting for a start signal"),
        "{err}"
    );
    s.cancel.cancel();
}

#[tokio::test]
async fn open_connections_and_sockets_are_summed_over_agents_in_the_journal() {
    let s = controller().await;
    let mut client = client(&s).await;
    let run_id = client
        .submit_run(submission(
            serde_json::json!({"vus": 2, "duration": "1s"}),
            2,
        ))
        .await
        .unwrap();
    let mut views = client.watch(&run_id).await.unwrap();
    let mut a = Fake::join(&s, "a").await;
    let mut b = Fake::join(&s, "b").await;
    tokio::join!(a.load_and_start(), b.load_and_start());
    a.report_open(1, 3, 2, false).await;
    b.report_open(1, 4, 1, false).await;
    // Both reports are in once the agents show them; one more merged second journals them.
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen_at = None;
        while let Some(v) = views.next().await {
            let v = v.unwrap();
            let sum: u64 = v.agents.iter().map(|a| a.open_connections).sum();
            match seen_at {
                None if sum == 7 => seen_at = Some(v.tick),
                Some(t) if v.tick > t => break,
                _ => {}
            }
        }
    })
    .await
    .expect("the agents' connections never showed");
    a.report_open(2, 0, 0, true).await;
    b.report_open(2, 0, 0, true).await;
    let view = last_view(&mut client, &run_id).await;
    let dir = view.results_dir.expect("a results folder");
    let journal =
        std::fs::read_to_string(std::path::Path::new(&dir).join("timeseries.jsonl")).unwrap();
    assert!(
        journal.contains(r#""open_connections":7,"open_sockets":3"#),
        "{journal}"
    );
    s.cancel.cancel();
}
