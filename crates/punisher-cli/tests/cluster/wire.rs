//! Fake agents that misbehave on the wire: garbage bytes on the controller's port, gRPC
//! sessions over a raw HTTP/2 client (a message that is not protobuf, an oversized one, no
//! Hello), and a well-behaved session that joins a run and then reports garbage.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use punisher_proto::v1;
use punisher_proto::v1::agent_message::Kind as Msg;
use punisher_proto::v1::controller_message::Kind as Cmd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::harness::TOKEN;

const ANSWER: Duration = Duration::from_secs(15);

/// 64 KiB of bytes that are not HTTP/2: the controller closes the connection.
pub(crate) async fn garbage_bytes(addr: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut x: u32 = 0x1234_5678;
    let garbage: Vec<u8> = (0..65_536)
        .map(|_| {
            // xorshift: noise without a dependency.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    // The server may close before it read everything: a write error is an answer too.
    let _ = s.write_all(&garbage).await;
    let closed = timeout(ANSWER, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the controller kept a garbage connection open"
    );
}

/// What the raw gRPC client sends as its first message.
pub(crate) enum Body {
    /// A gRPC frame whose 16 bytes are not a valid protobuf message.
    NotProtobuf,
    /// A frame header announcing 2 GiB.
    Oversized,
    /// A valid message that is not a Hello.
    NoHello,
}

fn frame(payload: &[u8]) -> Bytes {
    let mut f = vec![0u8];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.into()
}

/// Opens `AgentService/Session` with the right token and sends `body`; returns the
/// grpc-status the controller answered with.
pub(crate) async fn grpc_session(addr: &str, body: Body) -> u32 {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/punisher.v1.AgentService/Session"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(req, false).unwrap();
    let data = match body {
        Body::NotProtobuf => frame(&[0xff; 16]),
        Body::Oversized => {
            let mut f = vec![0u8, 0x7f, 0xff, 0xff, 0xff];
            f.extend_from_slice(&[0u8; 1024]);
            f.into()
        }
        Body::NoHello => frame(
            &v1::AgentMessage {
                kind: Some(Msg::Pong(v1::Pong {
                    nonce: 1,
                    ping_sent_unix_us: 2,
                    agent_unix_us: 3,
                })),
            }
            .encode_to_vec(),
        ),
    };
    send.send_data(data, false).unwrap();
    let status = timeout(ANSWER, async {
        let response = response.await.expect("an HTTP/2 answer");
        if let Some(s) = response.headers().get("grpc-status") {
            return s.to_str().unwrap().parse::<u32>().unwrap();
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
        trailers
            .get("grpc-status")
            .map_or(u32::MAX, |s| s.to_str().unwrap().parse().unwrap())
    })
    .await
    .expect("the controller did not answer the session");
    drop(send);
    status
}

/// A fake agent that says a proper Hello, loads the run it is given, starts it, and then
/// sends a report whose histogram bytes are garbage. The controller must end its session
/// with InvalidArgument. Returns the run id it was given.
pub(crate) struct FakeAgent {
    out: mpsc::Sender<v1::AgentMessage>,
    inbound: tonic_stream::Inbound,
}

/// The few tonic types the fake agent touches, named once.
mod tonic_stream {
    pub(crate) type Inbound = tonic::codec::Streaming<punisher_proto::v1::ControllerMessage>;
}

impl FakeAgent {
    pub(crate) async fn join(addr: &str, id: &str) -> FakeAgent {
        let channel = punisher_proto::transport::connect(
            addr,
            &punisher_proto::ClientSecurity::InsecureLoopback,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let token = punisher_proto::transport::TokenInterceptor::new(TOKEN).unwrap();
        let mut client = punisher_proto::transport::agent_client(channel, token);
        let (out, rx) = mpsc::channel(64);
        out.send(v1::AgentMessage {
            kind: Some(Msg::Hello(v1::Hello {
                agent_id: id.to_owned(),
                version: punisher_proto::SOFTWARE_VERSION.to_owned(),
                protocol: punisher_proto::PROTOCOL_VERSION,
                capacity: Some(v1::Capacity {
                    cores: 1,
                    open_files: 1024,
                    memory_bytes: 1 << 30,
                    workers: 1,
                }),
                hostname: "fake".into(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let inbound = timeout(
            ANSWER,
            client.session(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        .unwrap()
        .unwrap()
        .into_inner();
        FakeAgent { out, inbound }
    }

    async fn send(&self, kind: Msg) {
        let _ = self.out.send(v1::AgentMessage { kind: Some(kind) }).await;
    }

    /// The next command that is not a Ping or an Ack.
    async fn next(&mut self) -> Result<Option<Cmd>, tonic::Status> {
        loop {
            let msg = timeout(ANSWER, self.inbound.message())
                .await
                .expect("the controller went silent")?;
            match msg.and_then(|m| m.kind) {
                Some(Cmd::Ping(p)) => {
                    self.send(Msg::Pong(v1::Pong {
                        nonce: p.nonce,
                        ping_sent_unix_us: p.sent_unix_us,
                        agent_unix_us: p.sent_unix_us,
                    }))
                    .await;
                }
                Some(Cmd::Ack(_)) => {}
                None => return Ok(None),
                other => return Ok(other),
            }
        }
    }

    /// Loads and starts the run it is given, reports garbage; returns the status that
    /// ended the session.
    pub(crate) async fn report_garbage(mut self) -> tonic::Status {
        let run_id = loop {
            match self.next().await.expect("a Load") {
                Some(Cmd::Load(load)) => break load.run_id,
                Some(_) => {}
                None => panic!("the controller closed the session before Load"),
            }
        };
        self.send(Msg::Loaded(v1::Loaded {
            run_id: run_id.clone(),
            error: String::new(),
        }))
        .await;
        loop {
            match self.next().await.expect("a Start") {
                Some(Cmd::Start(_)) => break,
                Some(_) => {}
                None => panic!("the controller closed the session before Start"),
            }
        }
        self.send(Msg::Report(v1::Report {
            run_id,
            seq: 1,
            snapshot: vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5].into(),
            ..Default::default()
        }))
        .await;
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the session ended without an error status"),
                Err(status) => return status,
            }
        }
    }
}
