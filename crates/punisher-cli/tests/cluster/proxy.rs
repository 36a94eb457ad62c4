//! A TCP proxy in the test, between an agent and the controller: it can hold traffic (both
//! directions stop moving, as on a congested or black-holed path) and cut every connection
//! (as when a NAT forgets it), while it keeps accepting new ones.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) struct Proxy {
    pub(crate) addr: String,
    /// true: bytes stop moving (what was read is kept, and lost if the connection is cut).
    hold: Arc<watch::Sender<bool>>,
    /// Bumped to cut every connection open at that time.
    cut: Arc<watch::Sender<u64>>,
    connections: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if hold.wait_for(|h| !*h).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Held while reading: keep the bytes until released (or the connection is cut).
        if hold.wait_for(|h| !*h).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    pub(crate) async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hold = Arc::new(watch::Sender::new(false));
        let cut = Arc::new(watch::Sender::new(0u64));
        let (count_tx, connections) = watch::channel(0u64);
        let (hold2, cut2) = (hold.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                count_tx.send_modify(|n| *n += 1);
                let mut cut_rx = cut2.subscribe();
                cut_rx.mark_unchanged();
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let a = tokio::spawn(pump(dr, uw, hold2.subscribe()));
                let b = tokio::spawn(pump(ur, dw, hold2.subscribe()));
                tokio::spawn(async move {
                    let _ = cut_rx.changed().await;
                    // Dropping the halves closes both sockets.
                    a.abort();
                    b.abort();
                });
            }
        });
        Proxy {
            addr,
            hold,
            cut,
            connections,
            task,
        }
    }

    pub(crate) fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Closes every open connection (and releases a hold, for the next ones).
    pub(crate) fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
        self.hold.send_replace(false);
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        *self.connections.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}
