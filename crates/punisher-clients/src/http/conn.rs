//! Connections on the wire: plain or TLS streams, idle pools keyed by scheme/host/port, and
//! one request/response exchange with its read buffer.
//!
//! The read buffer is allocated when an exchange starts and dropped when it ends, so an idle
//! keep-alive connection holds its stream and nothing else.

use std::io;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use punisher_core::FailureKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Timings;
use super::parse::{ChunkedDecoder, Framing, Head, parse_head};
use crate::net::OpenGuard;

/// Initial read buffer of an exchange: a typical API response head and body fit in one read.
pub(crate) const READ_BUF: usize = 4096;
/// Largest single read while streaming a big body.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest body capacity reserved up front from a declared Content-Length, so a lying
/// server cannot make us allocate its claim before sending anything.
const MAX_BODY_PREALLOC: u64 = 1024 * 1024;

/// A connected stream. TLS state is boxed: it is large and most tests run plain HTTP.
#[derive(Debug)]
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => s.write_all(data).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(_) => Ok(()),
            Conn::Tls(s) => s.flush().await,
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read_buf(buf).await,
            Conn::Tls(s) => s.read_buf(buf).await,
        }
    }

    /// Whether the server closed (or reset) this idle connection. The reactor's readiness
    /// flag is read first, so a connection with nothing to read costs no syscall; a readable
    /// one is peeked at. Bytes waiting on an idle connection (a TLS alert or session ticket,
    /// a stray response) leave it to the next exchange, which handles them as before.
    fn closed_by_peer(&self) -> bool {
        let tcp = match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        if tcp.poll_read_ready(&mut cx).is_pending() {
            return false;
        }
        let mut byte = [0u8; 1];
        let mut peeked = ReadBuf::new(&mut byte);
        match tcp.poll_peek(&mut cx, &mut peeked) {
            Poll::Ready(Ok(0) | Err(_)) => true,
            Poll::Ready(Ok(_)) | Poll::Pending => false,
        }
    }
}

/// An idle keep-alive connection and where it leads.
#[derive(Debug)]
pub(crate) struct IdleConn {
    pub(crate) https: bool,
    pub(crate) port: u16,
    pub(crate) host: Box<str>,
    pub(crate) conn: Conn,
    /// Counts the connection as open until it is dropped (closed).
    pub(crate) _open: Option<OpenGuard>,
}

/// Idle connections, most recently used last. The lock is held for a scan, never across
/// `.await`.
#[derive(Debug)]
pub(crate) struct Pool {
    conns: Mutex<Vec<IdleConn>>,
    max: usize,
}

impl Pool {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            max,
        }
    }

    /// The most recently used idle connection to `https://host:port` (or `http://`).
    pub(crate) fn take(&self, https: bool, host: &str, port: u16) -> Option<IdleConn> {
        let mut conns = self.conns.lock().ok()?;
        let i = conns
            .iter()
            .rposition(|c| c.https == https && c.port == port && &*c.host == host)?;
        Some(conns.remove(i))
    }

    /// Keeps `conn` for reuse, closing the least recently used one when full.
    pub(crate) fn put(&self, conn: IdleConn) {
        if let Ok(mut conns) = self.conns.lock() {
            if conns.len() >= self.max {
                conns.remove(0);
            }
            conns.push(conn);
        }
    }

    /// Closes the idle connections their server already closed; returns how many. Without
    /// this, a viewer that logged in and then only holds its Socket.IO connection keeps the
    /// login's connection in CLOSE_WAIT (a file, ~4 KB of kernel memory and its own state)
    /// until its next request.
    pub(crate) fn close_dead(&self) -> usize {
        let Ok(mut conns) = self.conns.lock() else {
            return 0;
        };
        let before = conns.len();
        conns.retain(|c| !c.conn.closed_by_peer());
        before - conns.len()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.conns.lock().map(|c| c.len()).unwrap_or(0)
    }
}

/// A per-worker free list of byte buffers, so that the hot path does not go through
/// malloc for every request head and read buffer (4 KB allocations make glibc consolidate
/// its fast bins each time). Buffers live here or in an in-flight request, never in an
/// idle connection.
#[derive(Debug)]
pub(crate) struct BufCache {
    bufs: Mutex<Vec<Vec<u8>>>,
    initial: usize,
    max_capacity: usize,
    max_count: usize,
}

impl BufCache {
    pub(crate) fn new(initial: usize, max_capacity: usize, max_count: usize) -> Self {
        Self {
            bufs: Mutex::new(Vec::new()),
            initial,
            max_capacity,
            max_count,
        }
    }

    pub(crate) fn take(&self) -> Vec<u8> {
        self.bufs
            .lock()
            .ok()
            .and_then(|mut s| s.pop())
            .unwrap_or_else(|| Vec::with_capacity(self.initial))
    }

    /// Keeps `buf` for reuse unless it grew large (a big body) or enough are kept already.
    pub(crate) fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= self.max_capacity
            && let Ok(mut s) = self.bufs.lock()
            && s.len() < self.max_count
        {
            buf.clear();
            s.push(buf);
        }
    }
}

/// Bytes moved on the wire; kept outside the exchange so a timeout does not lose them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: u64,
    pub(crate) received: u64,
}

/// A response read off the wire.
#[derive(Debug)]
pub(crate) struct Exchanged {
    pub(crate) head: Head,
    pub(crate) body: Bytes,
    pub(crate) discarded: u64,
    /// Whether the connection can carry another request.
    pub(crate) reusable: bool,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) struct ExchangeError {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    /// No response byte arrived: on a reused connection this is a stale keep-alive that the
    /// server closed while idle, and the request may be retried on a fresh connection.
    pub(crate) nothing_received: bool,
}

impl ExchangeError {
    fn io(err: &io::Error, nothing_received: bool) -> Self {
        Self {
            kind: FailureKind::from_io(err),
            message: err.to_string(),
            nothing_received,
        }
    }

    fn closed(what: &str, nothing_received: bool) -> Self {
        Self {
            kind: FailureKind::ConnectionReset,
            message: format!("connection closed by peer {what}"),
            nothing_received,
        }
    }

    fn protocol(message: String) -> Self {
        Self {
            kind: FailureKind::Protocol,
            message,
            nothing_received: false,
        }
    }
}

/// Collects the body up to the cap and counts the rest.
struct BodySink {
    body: Vec<u8>,
    cap: u64,
    discarded: u64,
}

impl BodySink {
    fn push(&mut self, data: &[u8]) {
        let room = self
            .cap
            .saturating_sub(self.body.len() as u64)
            .min(data.len() as u64) as usize;
        self.body.extend_from_slice(&data[..room]);
        self.discarded += (data.len() - room) as u64;
    }
}

/// Reads more bytes into `buf`, growing it towards `want` (bounded), and counts them.
async fn fill(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    want: usize,
    c: &mut Counters,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < READ_BUF / 4 || buf.capacity() < want.min(MAX_READ_CHUNK) {
        buf.reserve(want.clamp(READ_BUF, MAX_READ_CHUNK));
    }
    let n = conn.read_buf(buf).await?;
    c.received += n as u64;
    Ok(n)
}

/// Writes a request (`head`, then `body` unless empty) and reads its response through
/// `buf`. Phases go into `timings` (sending, waiting, receiving, duration).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    conn: &mut Conn,
    buf: &mut Vec<u8>,
    head: &[u8],
    body: &[u8],
    head_request: bool,
    cap: u64,
    timings: &mut Timings,
    c: &mut Counters,
) -> Result<Exchanged, ExchangeError> {
    let start = Instant::now();
    let written = async {
        conn.write_all(head).await?;
        if !body.is_empty() {
            conn.write_all(body).await?;
        }
        conn.flush().await
    };
    written.await.map_err(|e| ExchangeError::io(&e, true))?;
    c.sent += (head.len() + body.len()) as u64;
    let sent = Instant::now();
    timings.sending = sent - start;

    buf.clear();
    let mut first_byte = None;
    let (head, mut pos) = loop {
        if !buf.is_empty() {
            match parse_head(buf, head_request) {
                Ok(Some((h, len))) if (100..200).contains(&h.status) && h.status != 101 => {
                    // An interim response (100 Continue, 103 Early Hints): the real one follows.
                    buf.drain(..len);
                    continue;
                }
                Ok(Some(done)) => break done,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return Err(ExchangeError::protocol("response head too long".into()));
                }
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::protocol(e.to_string())),
            }
        }
        let nothing = first_byte.is_none();
        let n = fill(conn, buf, READ_BUF, c)
            .await
            .map_err(|e| ExchangeError::io(&e, nothing))?;
        if n == 0 {
            return Err(ExchangeError::closed("before the response", nothing));
        }
        first_byte.get_or_insert_with(Instant::now);
    };
    let first_byte = first_byte.unwrap_or(sent);
    timings.waiting = first_byte - sent;

    let mut sink = BodySink {
        body: Vec::new(),
        cap,
        discarded: 0,
    };
    let mut reusable = head.keep_alive;
    match head.framing {
        Framing::Empty => {}
        Framing::Length(len) => {
            // Exact, not amortised: a body whose length equals its capacity becomes `Bytes`
            // without a separate shared header allocation.
            sink.body
                .reserve_exact(len.min(cap).min(MAX_BODY_PREALLOC) as usize);
            let mut left = len;
            loop {
                let n = left.min((buf.len() - pos) as u64) as usize;
                sink.push(&buf[pos..pos + n]);
                pos += n;
                left -= n as u64;
                if left == 0 {
                    break;
                }
                buf.clear();
                pos = 0;
                let want = left.min(MAX_READ_CHUNK as u64) as usize;
                let n = fill(conn, buf, want, c)
                    .await
                    .map_err(|e| ExchangeError::io(&e, false))?;
                if n == 0 {
                    return Err(ExchangeError::closed("before the end of the body", false));
                }
            }
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::new();
            loop {
                let used = dec
                    .decode(&buf[pos..], &mut |d| sink.push(d))
                    .map_err(|e| ExchangeError::protocol(e.to_string()))?;
                pos += used;
                if dec.is_done() {
                    break;
                }
                buf.drain(..pos);
                pos = 0;
                let n = fill(conn, buf, MAX_READ_CHUNK, c)
                    .await
                    .map_err(|e| ExchangeError::io(&e, false))?;
                if n == 0 {
                    return Err(ExchangeError::closed(
                        "before the end of the chunked body",
                        false,
                    ));
                }
            }
        }
        Framing::UntilClose => {
            sink.push(&buf[pos..]);
            loop {
                buf.clear();
                let n = fill(conn, buf, MAX_READ_CHUNK, c)
                    .await
                    .map_err(|e| ExchangeError::io(&e, false))?;
                if n == 0 {
                    break;
                }
                sink.push(buf);
            }
            pos = buf.len();
            reusable = false;
        }
    }
    // Bytes after the response were never asked for: the connection is out of step.
    if pos != buf.len() {
        reusable = false;
    }
    let end = Instant::now();
    timings.receiving = end - first_byte;
    timings.duration = end - start;
    Ok(Exchanged {
        head,
        body: Bytes::from(sink.body),
        discarded: sink.discarded,
        reusable,
    })
}
