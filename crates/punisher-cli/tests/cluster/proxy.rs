//! A TCP proxy in the test, between an agent and the controller: it can hold traffic (both
//! directions stop moving, as on a congested or black-holed path) and cut every connection
//! (as when a NAT forgets it), while it keeps accepting new ones.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

pub(crate) struct Proxy {
    pub(crate) addr: String,
    /// true: bytes stop moving (what was read is kept, and lost if the connection is cut).
    hold: Arc<watch::Sender<bool>>,
    /// The pumps of every connection open now, aborted by `cut`.
    pumps: Arc<Mutex<Vec<AbortHandle>>>,
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
        let pumps = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, connections) = watch::channel(0u64);
        let (hold2, pumps2) = (hold.clone(), pumps.clone());
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                count_tx.send_modify(|n| *n += 1);
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                let a = tokio::spawn(pump(dr, uw, hold2.subscribe()));
                let b = tokio::spawn(pump(ur, dw, hold2.subscribe()));
                let mut open = pumps2.lock().unwrap();
                open.retain(|p: &AbortHandle| !p.is_finished());
                open.extend([a.abort_handle(), b.abort_handle()]);
            }
        });
        Proxy {
            addr,
            hold,
            pumps,
            connections,
            task,
        }
    }

    pub(crate) fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }

    /// Closes every open connection (and releases a hold, for the next ones). The pumps are
    /// aborted before the hold is released, so that what was held is lost, never delivered:
    /// an aborted task that sits on the hold is dropped, not polled, when the hold wakes it.
    pub(crate) fn cut(&self) {
        // Dropping the halves closes both sockets.
        for pump in self.pumps.lock().unwrap().drain(..) {
            pump.abort();
        }
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
