//! Network plumbing shared by every client: the source-address pool, TCP connect from a
//! chosen source address, a small per-worker DNS cache, and the gauge of open connections.
//!
//! One machine can hold at most ~28k outgoing connections to one `ip:port` from one source
//! address (the ephemeral port range). Spreading connections over many loopback (or
//! secondary) source addresses lifts that limit; `IP_BIND_ADDRESS_NO_PORT` defers the port
//! choice to `connect`, so the same port can be reused for different destinations.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

/// The most addresses a [`SourcePool`] may hold: a /16 is already far more than needed.
pub const MAX_SOURCE_ADDRS: usize = 65_536;

/// Why a source pool specification or a host could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetError {
    /// The specification was empty.
    #[error("empty source address list")]
    Empty,
    /// One element is not an IPv4 address.
    #[error("invalid IPv4 address {0:?} in source address list")]
    InvalidAddr(String),
    /// A range's end is before its start.
    #[error("source address range {0:?} ends before it starts")]
    BackwardsRange(String),
    /// The pool would hold more than [`MAX_SOURCE_ADDRS`] addresses.
    #[error("source address list holds more than {MAX_SOURCE_ADDRS} addresses")]
    TooMany,
}

/// A round-robin pool of local source addresses, e.g. `127.0.0.2-127.0.0.60`.
#[derive(Debug)]
pub struct SourcePool {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl SourcePool {
    /// Parses a comma-separated list of IPv4 addresses and inclusive `a-b` ranges,
    /// e.g. `"127.0.0.2,127.0.0.5-127.0.0.9"`.
    pub fn parse(spec: &str) -> Result<SourcePool, NetError> {
        let mut addrs = Vec::new();
        for part in spec.split(',').map(str::trim) {
            if part.is_empty() {
                if spec.trim().is_empty() {
                    return Err(NetError::Empty);
                }
                return Err(NetError::InvalidAddr(String::new()));
            }
            let (start, end) = match part.split_once('-') {
                Some((a, b)) => (parse_v4(a)?, parse_v4(b)?),
                None => {
                    let a = parse_v4(part)?;
                    (a, a)
                }
            };
            let (start, end) = (u32::from(start), u32::from(end));
            if end < start {
                return Err(NetError::BackwardsRange(part.to_owned()));
            }
            let count = (end - start) as usize + 1;
            if addrs.len() + count > MAX_SOURCE_ADDRS {
                return Err(NetError::TooMany);
            }
            addrs.extend((start..=end).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
        }
        Ok(SourcePool {
            addrs,
            next: AtomicUsize::new(0),
        })
    }

    /// The next address, round-robin.
    pub fn next(&self) -> IpAddr {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.addrs[i % self.addrs.len()]
    }

    /// How many addresses the pool holds (at least one).
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Always false: a parsed pool holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

fn parse_v4(s: &str) -> Result<Ipv4Addr, NetError> {
    s.trim()
        .parse()
        .map_err(|_| NetError::InvalidAddr(s.trim().to_owned()))
}

/// How many TCP connections a worker's clients hold open right now (HTTP keep-alive and
/// in-flight connections, WebSocket and Engine.IO streams). One per worker, shared by its
/// clients through their options; a connection counts from its TCP connect until its
/// stream is dropped (an [`OpenGuard`] lives inside it). An uncontended relaxed atomic:
/// the worker's own thread is the only one that touches it on the hot path.
#[derive(Debug, Clone, Default)]
pub struct OpenGauge(Arc<AtomicU64>);

impl OpenGauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections open now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more open connection until the returned guard is dropped.
    pub fn open(&self) -> OpenGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.0.clone())
    }
}

/// One connection counted by an [`OpenGauge`]; dropping it uncounts it.
#[derive(Debug)]
pub struct OpenGuard(Arc<AtomicU64>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens a TCP connection to `addr`, from `source` when given, with `TCP_NODELAY` set.
///
/// With a source address the socket gets `IP_BIND_ADDRESS_NO_PORT` before `bind(source:0)`,
/// so the kernel picks the port at connect time and the port space is per destination.
pub async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(src) => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if src.is_ipv4() && addr.is_ipv4() {
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )
                .map_err(std::io::Error::from)?;
            }
            socket.bind(SocketAddr::new(src, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How long a resolved name is reused before it is looked up again.
const DNS_TTL: Duration = Duration::from_secs(30);
/// Bound on cached names, so that a scenario hitting random host names cannot grow it.
const DNS_CACHE_MAX: usize = 1024;

/// A small DNS cache, one per worker: load tests hit the same few hosts millions of times.
#[derive(Debug, Default)]
pub struct Resolver {
    cache: Mutex<HashMap<String, (IpAddr, Instant)>>,
}

impl Resolver {
    /// An empty resolver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves `host` (an IP literal, `localhost`, or a name) and pairs it with `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<SocketAddr> {
        // `Url::host_str` keeps the brackets of IPv6 literals.
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if bare.eq_ignore_ascii_case("localhost") {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((ip, at)) = cache.get(bare)
            && now.duration_since(*at) < DNS_TTL
        {
            return Ok(SocketAddr::new(*ip, port));
        }
        let mut addrs = tokio::net::lookup_host((bare, port)).await?;
        let first = addrs.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host name resolved to no address",
            )
        })?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= DNS_CACHE_MAX {
                cache.clear();
            }
            cache.insert(bare.to_owned(), (first.ip(), now));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: &str, expect: Result<Vec<&str>, NetError>) {
        let got = SourcePool::parse(spec).map(|p| p.addrs);
        let expect = expect.map(|v| {
            v.into_iter()
                .map(|s| s.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(got, expect, "spec {spec:?}");
    }

    #[test]
    fn gauge_counts_guards() {
        let g = OpenGauge::new();
        let a = g.open();
        let b = g.clone().open();
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn parses_pools() {
        check("127.0.0.2", Ok(vec!["127.0.0.2"]));
        check(
            "127.0.0.2-127.0.0.4",
            Ok(vec!["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
        );
        check(
            "127.0.0.2, 127.0.0.5-127.0.0.6",
            Ok(vec!["127.0.0.2", "127.0.0.5", "127.0.0.6"]),
        );
        check(
            "127.0.0.255-127.0.1.0",
            Ok(vec!["127.0.0.255", "127.0.1.0"]),
        );
        check("", Err(NetError::Empty));
        check("  ", Err(NetError::Empty));
        check("127.0.0.1,", Err(NetError::InvalidAddr(String::new())));
        check(
            "127.0.0.300",
            Err(NetError::InvalidAddr("127.0.0.300".into())),
        );
        check("::1", Err(NetError::InvalidAddr("::1".into())));
        check(
            "127.0.0.9-127.0.0.2",
            Err(NetError::BackwardsRange("127.0.0.9-127.0.0.2".into())),
        );
        check("10.0.0.0-10.1.0.0", Err(NetError::TooMany));
        assert_eq!(
            SourcePool::parse("10.0.0.0-10.0.255.255").unwrap().len(),
            MAX_SOURCE_ADDRS
        );
    }

    #[test]
    fn round_robin() {
        let pool = SourcePool::parse("127.0.0.2-127.0.0.3").unwrap();
        let got: Vec<_> = (0..4).map(|_| pool.next().to_string()).collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    }

    #[tokio::test]
    async fn connects_from_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = SourcePool::parse("127.0.0.2").unwrap();
        let (client, accepted) =
            tokio::join!(connect_tcp(addr, Some(pool.next())), listener.accept());
        let client = client.unwrap();
        let (_server, peer) = accepted.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
        assert!(client.nodelay().unwrap());
    }

    #[tokio::test]
    async fn resolves_literals_and_localhost() {
        let r = Resolver::new();
        assert_eq!(
            r.resolve("127.0.0.9", 80).await.unwrap().to_string(),
            "127.0.0.9:80"
        );
        assert_eq!(
            r.resolve("[::1]", 81).await.unwrap().to_string(),
            "[::1]:81"
        );
        assert_eq!(
            r.resolve("LocalHost", 82).await.unwrap().to_string(),
            "127.0.0.1:82"
        );
    }
}
