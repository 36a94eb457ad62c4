//! Marginal memory of idle connected Socket.IO clients: connects N1 clients, reads VmRSS,
//! connects up to N2, reads VmRSS again, and prints the growth per client. Each client is
//! one task running its driver (`next_event`), as the engine runs it.
//!
//! ```text
//! cargo run --release -p punisher-clients --example sio_idle -- \
//!     http://127.0.0.1:PORT/ websocket 4000 12000 127.0.0.2-127.0.0.60
//! ```
//! Arguments: server URL, `websocket` | `polling` | `polling,websocket`, N1, N2, source
//! address pool (optional); `SIO_READ_BUF=n` overrides the websocket read buffer. Run a
//! server first, e.g. `node tests/js/sio_server.js` with
//! `NODE_PATH` set to a `node_modules` holding socket.io 4.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use punisher_clients::engineio::Transport;
use punisher_clients::net::SourcePool;
use punisher_clients::socketio::{self, ClientEvent, SocketIoOptions};
use tokio::sync::Semaphore;

/// Connects in flight at once.
const CONCURRENCY: usize = 256;

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Counters {
    connected: AtomicUsize,
    failed: AtomicUsize,
    disconnected: AtomicUsize,
}

async fn connect_many(
    url: &str,
    transports: &[Transport],
    pool: Option<&Arc<SourcePool>>,
    count: usize,
    counters: &Arc<Counters>,
) {
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let target = counters.connected.load(Ordering::Relaxed) + count;
    for _ in 0..count {
        let permit = gate.clone().acquire_owned().await.expect("open semaphore");
        let mut o = SocketIoOptions::new();
        o.transports = transports.to_vec();
        o.timeout = Duration::from_secs(30);
        o.source = pool.map(|p| p.next());
        if let Some(n) = std::env::var("SIO_READ_BUF")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            o.ws_read_buffer = n;
        }
        let url = url.to_owned();
        let counters = counters.clone();
        tokio::spawn(async move {
            let (mut client, _handle, _info) = match socketio::connect(&url, o).await {
                Ok(c) => c,
                Err(e) => {
                    if counters.failed.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("connect failed: {e}");
                    }
                    return;
                }
            };
            drop(permit);
            counters.connected.fetch_add(1, Ordering::Relaxed);
            // The engine's receive loop: one task per connection, idle until the server
            // pings or sends.
            while let Some(ev) = client.next_event().await {
                if let ClientEvent::Disconnected { .. } = ev {
                    counters.disconnected.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while counters.connected.load(Ordering::Relaxed) + counters.failed.load(Ordering::Relaxed)
        < target
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: sio_idle URL websocket|polling|polling,websocket N1 N2 [SOURCE_POOL]");
        return;
    }
    let url = &args[0];
    let transports: Vec<Transport> = args[1]
        .split(',')
        .map(|t| Transport::parse(t).expect("a transport name"))
        .collect();
    let n1: usize = args[2].parse().expect("N1");
    let n2: usize = args[3].parse().expect("N2");
    let pool = args
        .get(4)
        .map(|s| Arc::new(SourcePool::parse(s).expect("a source pool")));
    let counters = Arc::new(Counters {
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
    });

    let base = rss_kb();
    let start = Instant::now();
    connect_many(url, &transports, pool.as_ref(), n1, &counters).await;
    let rate = n1 as f64 / start.elapsed().as_secs_f64();
    // Let connects settle (upgrades, first pings) before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = rss_kb();
    connect_many(url, &transports, pool.as_ref(), n2 - n1, &counters).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss2 = rss_kb();
    let connected = counters.connected.load(Ordering::Relaxed);
    let per = (rss2 as f64 - rss1 as f64) * 1024.0 / (n2 - n1) as f64;
    println!(
        "transport={} base_rss={base}kB rss@{n1}={rss1}kB rss@{n2}={rss2}kB connected={connected} \
         failed={} disconnected={} connect_rate={rate:.0}/s marginal={per:.0} bytes/client",
        args[1],
        counters.failed.load(Ordering::Relaxed),
        counters.disconnected.load(Ordering::Relaxed),
    );
}
