//! [`HttpShared`] (one per worker thread) and [`HttpClient`] (one per virtual user): the
//! request loop with redirects, cookies, stale-connection retry and the overall timeout.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use punisher_core::FailureKind;
use tokio_rustls::TlsConnector;
use url::Url;

use super::conn::{
    BufCache, Conn, Counters, ExchangeError, Exchanged, IdleConn, Pool, READ_BUF, exchange,
};
use super::head::write_head;
use super::urls::UrlCache;
use super::{HttpConfig, Method, Request, Response, Timings};
use crate::cookies::SharedJar;
use crate::net::{Resolver, connect_tcp};
use crate::tls;

/// Idle keep-alive connections a virtual user keeps (distinct hosts, or overlapping requests).
const MAX_IDLE_PER_USER: usize = 4;
/// Idle connections kept by a worker in `shareConnections` mode.
const MAX_IDLE_SHARED: usize = 4096;
/// Request bodies up to this size are copied behind the head so one write sends both.
const COALESCE_BODY: usize = 4096;
/// Buffers kept for reuse by a worker (at most this many in-flight requests' worth).
const MAX_CACHED_BUFS: usize = 64;
/// Largest request-head buffer worth keeping.
const MAX_HEAD_BUF: usize = 4096;

/// Why a worker's HTTP state could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSetupError {
    #[error("cannot build tls configuration")]
    Tls(#[from] rustls::Error),
}

/// What the clients of one worker share: configuration, TLS, DNS cache, parsed URLs, the
/// idle pool of `shareConnections` mode and reusable request-head buffers.
pub struct HttpShared {
    config: HttpConfig,
    tls: TlsConnector,
    resolver: Resolver,
    urls: UrlCache,
    pool: Pool,
    heads: BufCache,
    reads: BufCache,
}

impl fmt::Debug for HttpShared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpShared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpShared {
    /// Builds the shared state of one worker.
    pub fn new(config: HttpConfig) -> Result<Self, HttpSetupError> {
        let tls = tls::connector(config.insecure)?;
        Ok(Self {
            config,
            tls,
            resolver: Resolver::new(),
            urls: UrlCache::new(),
            pool: Pool::new(MAX_IDLE_SHARED),
            heads: BufCache::new(512, MAX_HEAD_BUF, MAX_CACHED_BUFS),
            reads: BufCache::new(READ_BUF, 2 * READ_BUF, MAX_CACHED_BUFS),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Closes the worker pool's idle connections that their server closed (see
    /// [`HttpClient::close_dead_idle`]); returns how many.
    pub fn close_dead_idle(&self) -> usize {
        self.pool.close_dead()
    }
}

/// One virtual user's HTTP client: its cookie jar and its keep-alive connections, which are
/// closed when the client is dropped. Requests may overlap (`&self`); an overlapping request
/// opens its own connection.
#[derive(Debug)]
pub struct HttpClient {
    shared: Arc<HttpShared>,
    jar: SharedJar,
    share_connections: bool,
    idle: Pool,
}

/// What a request has done so far; outside the request future so a timeout keeps it.
#[derive(Debug)]
struct Progress {
    /// The URL of the current hop.
    url: Arc<Url>,
    counters: Counters,
    redirects: u32,
    timings: Timings,
}

impl HttpClient {
    /// A client for one user. With `share_connections`, idle connections go to the worker's
    /// pool instead of the user's.
    pub fn new(shared: Arc<HttpShared>, jar: SharedJar, share_connections: bool) -> Self {
        Self {
            shared,
            jar,
            share_connections,
            idle: Pool::new(MAX_IDLE_PER_USER),
        }
    }

    /// Closes this user's idle keep-alive connections that their server already closed
    /// (its keep-alive timeout passed), instead of holding them until the next request;
    /// returns how many. Cheap enough to call every few seconds for every user: a
    /// connection with nothing to read costs no syscall. Sweeping many clients at once,
    /// run it under `tokio::task::unconstrained`: each check spends tokio's cooperative
    /// budget (128 per task poll), after which connections look alive.
    pub fn close_dead_idle(&self) -> usize {
        self.idle.close_dead()
    }

    /// The worker state this client was built with.
    pub fn shared(&self) -> &Arc<HttpShared> {
        &self.shared
    }

    /// The user's cookie jar.
    pub fn jar(&self) -> &SharedJar {
        &self.jar
    }

    /// Performs `req`, following redirects. Never fails: see [`Response::error`].
    pub async fn request(&self, req: Request) -> Response {
        let Request {
            method,
            url: raw_url,
            headers,
            body,
            timeout,
        } = req;
        let timeout = timeout.unwrap_or(self.shared.config.default_timeout);
        let url = match self.shared.urls.get(&raw_url) {
            Ok(url) => url,
            Err(msg) => {
                return Response {
                    url: raw_url,
                    error: Some(FailureKind::InvalidUrl),
                    error_message: Some(msg),
                    ..Response::default()
                };
            }
        };
        let mut p = Progress {
            url,
            counters: Counters::default(),
            redirects: 0,
            timings: Timings::default(),
        };
        let start = Instant::now();
        let run = self.run(method, headers, body, &mut p);
        let mut resp = match tokio::time::timeout(timeout, run).await {
            Ok(resp) => resp,
            Err(_) => {
                let msg = format!("request timed out after {timeout:?}");
                let mut resp = failure(FailureKind::Timeout, msg, &p);
                resp.timings.duration = start.elapsed();
                resp
            }
        };
        // The caller's string is the final URL when it is already in normal form and was not
        // redirected: move it instead of copying the parsed one.
        resp.url = if p.url.as_str() == raw_url {
            raw_url
        } else {
            p.url.as_str().to_owned()
        };
        resp
    }

    /// The request loop; the returned response's `url` is filled in by the caller from
    /// `p.url`.
    async fn run(
        &self,
        mut method: Method,
        mut headers: Vec<(String, String)>,
        mut body: Bytes,
        p: &mut Progress,
    ) -> Response {
        loop {
            let url = p.url.clone();
            let ex = match self.hop(&method, &url, &headers, &body, p).await {
                Ok(ex) => ex,
                Err(e) => return failure(e.kind, e.message, p),
            };
            self.store_cookies(&url, &ex);
            let status = ex.head.status;
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && p.redirects < self.shared.config.max_redirects
                && let Some(next) = redirect_target(&url, &ex)
            {
                p.redirects += 1;
                if status <= 303 && method != Method::Get && method != Method::Head {
                    // As browsers and Go do: the body is not replayed on 301/302/303.
                    method = Method::Get;
                    body = Bytes::new();
                    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("content-type"));
                }
                if next.host_str() != url.host_str() {
                    // Credentials meant for one host do not follow a redirect to another.
                    headers.retain(|(n, _)| {
                        !n.eq_ignore_ascii_case("authorization")
                            && !n.eq_ignore_ascii_case("cookie")
                    });
                }
                // Redirect targets are not cached: they come from the server and may be
                // unique (a session id in the path).
                p.url = Arc::new(next);
                continue;
            }
            return self.response(ex, p);
        }
    }

    fn store_cookies(&self, url: &Url, ex: &Exchanged) {
        let mut set = ex
            .head
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .peekable();
        if set.peek().is_some()
            && let Ok(mut jar) = self.jar.lock()
        {
            jar.store_set_cookie(url, set.map(|(_, v)| v.as_str()));
        }
    }

    fn response(&self, ex: Exchanged, p: &Progress) -> Response {
        let (error, error_message) = if ex.discarded > 0 {
            let msg = format!(
                "response body exceeded {} bytes; {} bytes discarded",
                self.shared.config.max_body_bytes, ex.discarded
            );
            (Some(FailureKind::BodyTooLarge), Some(msg))
        } else {
            (None, None)
        };
        Response {
            status: ex.head.status,
            status_text: ex.head.reason,
            proto: if ex.head.minor == 0 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            headers: ex.head.headers,
            body: ex.body,
            body_discarded: ex.discarded,
            url: String::new(),
            redirects: p.redirects,
            timings: p.timings,
            error,
            error_message,
            bytes_sent: p.counters.sent,
            bytes_received: p.counters.received,
        }
    }

    /// One request/response on one connection, retried once on a fresh connection when a
    /// reused one turns out to have been closed by the server while idle.
    async fn hop(
        &self,
        method: &Method,
        url: &Url,
        headers: &[(String, String)],
        body: &[u8],
        p: &mut Progress,
    ) -> Result<Exchanged, ExchangeError> {
        let mut t0 = Instant::now();
        p.timings = Timings::default();
        let https = url.scheme() == "https";
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(80);
        let cookie = self.jar.lock().ok().and_then(|jar| jar.header_for(url));

        let mut out = self.shared.heads.take();
        let close = match write_head(
            &mut out,
            method,
            url,
            headers,
            cookie.as_deref(),
            body.len(),
            &self.shared.config.user_agent,
        ) {
            Ok(close) => close,
            Err(message) => {
                self.shared.heads.put(out);
                return Err(ExchangeError {
                    kind: FailureKind::Protocol,
                    message,
                    nothing_received: true,
                });
            }
        };
        let extra = if body.len() <= COALESCE_BODY {
            out.extend_from_slice(body);
            &[][..]
        } else {
            body
        };
        let pool = if self.share_connections {
            &self.shared.pool
        } else {
            &self.idle
        };
        let cap = self.shared.config.max_body_bytes;
        let mut fresh_only = false;
        let mut buf = self.shared.reads.take();
        let result = loop {
            let reused = if fresh_only {
                None
            } else {
                pool.take(https, host, port)
            };
            let (mut conn, was_reused) = match reused {
                Some(c) => {
                    p.timings.blocked = t0.elapsed();
                    (c, true)
                }
                None => match self.connect(https, host, port, &mut p.timings, t0).await {
                    Ok(c) => (c, false),
                    Err(e) => break Err(e),
                },
            };
            let is_head = *method == Method::Head;
            match exchange(
                &mut conn.conn,
                &mut buf,
                &out,
                extra,
                is_head,
                cap,
                &mut p.timings,
                &mut p.counters,
            )
            .await
            {
                Ok(ex) => {
                    if ex.reusable && !close {
                        pool.put(conn);
                    }
                    break Ok(ex);
                }
                Err(e) if was_reused && e.nothing_received && !fresh_only => {
                    fresh_only = true;
                    t0 = Instant::now();
                }
                Err(e) => break Err(e),
            }
        };
        self.shared.heads.put(out);
        self.shared.reads.put(buf);
        result
    }

    async fn connect(
        &self,
        https: bool,
        host: &str,
        port: u16,
        timings: &mut Timings,
        t0: Instant,
    ) -> Result<IdleConn, ExchangeError> {
        let addr = self
            .shared
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| ExchangeError {
                kind: FailureKind::Dns,
                message: format!("cannot resolve {host}: {e}"),
                nothing_received: true,
            })?;
        let t1 = Instant::now();
        timings.blocked = t1 - t0;
        let source = self
            .shared
            .config
            .source_pool
            .as_ref()
            .map(|pool| pool.next());
        let io_err = |e: std::io::Error| ExchangeError {
            kind: FailureKind::from_io(&e),
            message: e.to_string(),
            nothing_received: true,
        };
        let tcp = connect_tcp(addr, source).await.map_err(io_err)?;
        // Counted from here: a failed TLS handshake drops the guard with the stream.
        let open = self
            .shared
            .config
            .open_connections
            .as_ref()
            .map(|g| g.open());
        let t2 = Instant::now();
        timings.connecting = t2 - t1;
        let conn = if https {
            let name = tls::server_name(host).map_err(|e| ExchangeError {
                kind: FailureKind::InvalidUrl,
                message: format!("invalid tls server name {host:?}: {e}"),
                nothing_received: true,
            })?;
            let tls = self
                .shared
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| ExchangeError {
                    kind: match e.kind() {
                        std::io::ErrorKind::InvalidData => FailureKind::Tls,
                        _ => FailureKind::from_io(&e),
                    },
                    message: format!("tls handshake failed: {e}"),
                    nothing_received: true,
                })?;
            timings.tls_handshaking = t2.elapsed();
            Conn::Tls(Box::new(tls))
        } else {
            Conn::Plain(tcp)
        };
        Ok(IdleConn {
            https,
            port,
            host: host.into(),
            conn,
            _open: open,
        })
    }

    #[cfg(test)]
    pub(crate) fn idle_len(&self) -> usize {
        self.idle.len()
    }
}

fn redirect_target(url: &Url, ex: &Exchanged) -> Option<Url> {
    let location = ex
        .head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("location"))?;
    let next = url.join(location.1.trim()).ok()?;
    (matches!(next.scheme(), "http" | "https") && next.host_str().is_some()).then_some(next)
}

/// A failed request; the caller fills in `url`.
fn failure(kind: FailureKind, message: String, p: &Progress) -> Response {
    Response {
        redirects: p.redirects,
        timings: p.timings,
        error: Some(kind),
        error_message: Some(message),
        bytes_sent: p.counters.sent,
        bytes_received: p.counters.received,
        ..Response::default()
    }
}
