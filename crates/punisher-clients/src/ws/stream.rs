//! The byte stream under a WebSocket or an Engine.IO polling connection: plain TCP or TLS,
//! opened from an optional source address, with the phase timings the callers report.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use url::Url;

use super::WsError;
use crate::net::{OpenGauge, OpenGuard, Resolver, connect_tcp};
use crate::tls;

/// A connected stream, counted by the worker's [`OpenGauge`] while it lives.
#[derive(Debug)]
pub struct NetStream {
    io: Io,
    _open: Option<OpenGuard>,
}

/// Plain TCP or TLS over TCP. TLS state is boxed: it is large, and plain streams should not
/// pay for it in every enum.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl NetStream {
    /// Waits until the stream may have bytes to read, without reading and without a
    /// buffer. For TLS it returns at once: rustls may already hold decrypted bytes.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        match &self.io {
            Io::Plain(s) => s.readable().await,
            Io::Tls(_) => Ok(()),
        }
    }
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Time spent opening a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StreamTimings {
    pub(crate) resolving: Duration,
    pub(crate) connecting: Duration,
    pub(crate) tls_handshaking: Duration,
}

/// Whether a URL scheme means TLS (`wss`, `https`) or not (`ws`, `http`).
pub(crate) fn scheme_is_tls(url: &Url) -> Result<bool, WsError> {
    match url.scheme() {
        "ws" | "http" => Ok(false),
        "wss" | "https" => Ok(true),
        other => Err(WsError::InvalidUrl(format!("unsupported scheme {other:?}"))),
    }
}

/// Resolves the URL's host, connects (from `source` when given) and runs the TLS handshake
/// for `wss`/`https`. No timeout here: callers bound the whole connect.
pub(crate) async fn open(
    url: &Url,
    source: Option<IpAddr>,
    insecure: bool,
    resolver: Option<&Resolver>,
    gauge: Option<&OpenGauge>,
) -> Result<(NetStream, StreamTimings), WsError> {
    let start = Instant::now();
    let (addr, host, tls) = resolve(url, resolver).await?;
    let resolving = start.elapsed();
    let (stream, mut t) = open_addr(addr, host, tls, source, insecure, gauge).await?;
    t.resolving = resolving;
    Ok((stream, t))
}

/// The address, host name and TLS flag of a `ws`/`wss`/`http`/`https` URL.
pub(crate) async fn resolve<'u>(
    url: &'u Url,
    resolver: Option<&Resolver>,
) -> Result<(SocketAddr, &'u str, bool), WsError> {
    let tls = scheme_is_tls(url)?;
    let host = url
        .host_str()
        .ok_or_else(|| WsError::InvalidUrl("missing host".into()))?;
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let addr = match resolver {
        Some(r) => r.resolve(host, port).await,
        None => Resolver::new().resolve(host, port).await,
    }
    .map_err(WsError::Dns)?;
    Ok((addr, host, tls))
}

/// Connects to a resolved address, then runs the TLS handshake (SNI `host`) when `tls`.
pub(crate) async fn open_addr(
    addr: SocketAddr,
    host: &str,
    tls: bool,
    source: Option<IpAddr>,
    insecure: bool,
    gauge: Option<&OpenGauge>,
) -> Result<(NetStream, StreamTimings), WsError> {
    let mut t = StreamTimings::default();
    let start = Instant::now();
    let tcp = connect_tcp(addr, source).await.map_err(WsError::Connect)?;
    // Counted from here: a failed TLS handshake drops the guard with the stream.
    let open = gauge.map(OpenGauge::open);
    t.connecting = start.elapsed();
    if !tls {
        return Ok((
            NetStream {
                io: Io::Plain(tcp),
                _open: open,
            },
            t,
        ));
    }
    let start = Instant::now();
    let connector = tls::connector(insecure).map_err(|e| WsError::Tls(io::Error::other(e)))?;
    let name = tls::server_name(host)
        .map_err(|_| WsError::InvalidUrl(format!("invalid tls server name {host:?}")))?;
    let stream = connector.connect(name, tcp).await.map_err(WsError::Tls)?;
    t.tls_handshaking = start.elapsed();
    Ok((
        NetStream {
            io: Io::Tls(Box::new(stream)),
            _open: open,
        },
        t,
    ))
}

/// The `http`/`https` URL a cookie jar should see for a `ws`/`wss` URL: cookies are scoped
/// to HTTP origins, and `Secure` cookies must follow `wss` as they follow `https`.
pub(crate) fn cookie_url(url: &Url) -> Url {
    let mut u = url.clone();
    let scheme = match url.scheme() {
        "ws" => "http",
        "wss" => "https",
        _ => return u,
    };
    // Switching between these special schemes always succeeds.
    let _ = u.set_scheme(scheme);
    u
}
