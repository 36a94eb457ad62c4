//! Client tests against small hand-written servers on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use punisher_core::FailureKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;
use crate::cookies::CookieJar;
use crate::net::SourcePool;

/// What the test server does with one request.
enum Reply {
    /// Send these bytes and keep the connection.
    Send(Vec<u8>),
    /// Send these pieces with a flush between them (to split reads on the client).
    Pieces(Vec<Vec<u8>>),
    /// Send these bytes, then close the connection.
    SendClose(Vec<u8>),
    /// Never answer.
    Hang,
}

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    head: String,
    body: Vec<u8>,
    peer: SocketAddr,
}

impl Seen {
    fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    fn path(&self) -> &str {
        self.line().split(' ').nth(1).unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

struct Server {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Notified after the server closed a connection.
    closed: Arc<Notify>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

async fn serve(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server {
        addr,
        conns: Arc::default(),
        seen: Arc::default(),
        closed: Arc::new(Notify::new()),
    };
    let (conns, seen, closed) = (
        server.conns.clone(),
        server.seen.clone(),
        server.closed.clone(),
    );
    let handler: Handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            conns.fetch_add(1, Ordering::SeqCst);
            let (seen, closed, handler) = (seen.clone(), closed.clone(), handler.clone());
            tokio::spawn(async move {
                serve_conn(stream, peer, &seen, &*handler).await;
                closed.notify_one();
            });
        }
    });
    server
}

/// Serves requests on one connection until the client leaves or a reply closes it.
async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    seen: &Mutex<Vec<Seen>>,
    handler: &(dyn Fn(&Seen) -> Reply + Send + Sync),
) {
    let mut buf = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut req = Seen {
            head,
            body: Vec::new(),
            peer,
        };
        let len: usize = req
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        req.body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        seen.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::Pieces(pieces) => {
                for p in pieces {
                    stream.write_all(&p).await.unwrap();
                    stream.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            Reply::SendClose(bytes) => {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Reply::Hang => std::future::pending::<()>().await,
        }
    }
}

fn ok(body: &str) -> Reply {
    Reply::Send(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn config() -> HttpConfig {
    HttpConfig::new_defaults()
}

fn client_with(cfg: HttpConfig) -> HttpClient {
    HttpClient::new(
        Arc::new(HttpShared::new(cfg).unwrap()),
        CookieJar::shared(),
        false,
    )
}

fn client() -> HttpClient {
    client_with(config())
}

fn body(r: &Response) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = serve(|_| ok("ok")).await;
    let c = client();
    for _ in 0..20 {
        let r = c.request(Request::get(server.url("/"))).await;
        assert_eq!((r.status, body(&r), r.error), (200, "ok", None));
        assert_eq!(r.proto, "HTTP/1.1");
    }
    assert_eq!(server.conns(), 1);
    assert_eq!(c.idle_len(), 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 20);
    assert_eq!(seen[0].line(), "GET / HTTP/1.1");
    assert_eq!(
        seen[0].header("host"),
        Some(server.addr.to_string().as_str())
    );
    assert!(
        seen[0]
            .header("user-agent")
            .unwrap()
            .starts_with("punisher/")
    );
}

#[tokio::test]
async fn url_forms_request_line_host_and_final_url() {
    let server = serve(|_| ok("ok")).await;
    let c = client();
    let port = server.addr.port();
    // Twice each: the second request of a URL takes the worker's cached parse.
    for _ in 0..2 {
        let bare = format!("http://127.0.0.1:{port}");
        let r = c.request(Request::get(bare.clone())).await;
        assert_eq!(r.url, format!("{bare}/"), "normalised like the wire target");
        let r = c
            .request(Request::get(format!(
                "HTTP://LocalHost:{port}/a/../b?q=1#frag"
            )))
            .await;
        assert_eq!(r.url, format!("http://localhost:{port}/b?q=1#frag"));
        let exact = server.url("/c?d=e");
        assert_eq!(c.request(Request::get(exact.clone())).await.url, exact);
    }
    let seen = server.seen();
    let lines: Vec<_> = seen.iter().map(|s| s.line()).collect();
    assert_eq!(
        lines[..3],
        [
            "GET / HTTP/1.1",
            "GET /b?q=1 HTTP/1.1",
            "GET /c?d=e HTTP/1.1"
        ]
    );
    assert_eq!(lines[..3], lines[3..]);
    let hosts: Vec<_> = seen.iter().map(|s| s.header("host").unwrap()).collect();
    let (ip, name) = (format!("127.0.0.1:{port}"), format!("localhost:{port}"));
    assert_eq!(hosts[..3], [&ip, &name, &ip]);
}

#[tokio::test]
async fn content_length_body_in_pieces_and_timings() {
    let big = "x".repeat(200_000);
    let payload = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Test: yes\r\n\r\n{big}",
        big.len()
    );
    let (a, b) = payload.as_bytes().split_at(30);
    let pieces = vec![a.to_vec(), b.to_vec()];
    let server = serve(move |_| Reply::Pieces(pieces.clone())).await;
    let r = client().request(Request::get(server.url("/big?q=1"))).await;
    assert_eq!((r.status, r.body.len(), r.error), (200, big.len(), None));
    assert_eq!(r.header("x-test"), Some("yes"));
    assert_eq!(server.seen()[0].path(), "/big?q=1");
    let t = r.timings;
    assert_eq!(t.duration, t.sending + t.waiting + t.receiving);
    assert!(r.bytes_received >= payload.len() as u64);
    assert!(r.bytes_sent > 0);
}

#[tokio::test]
async fn chunked_body() {
    let server = serve(|_| {
        Reply::Pieces(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel".to_vec(),
            b"lo\r\n".to_vec(),
            format!("{:x}\r\n{}\r\n", 70_000, "y".repeat(70_000)).into_bytes(),
            b"0\r\nX-Trailer: t\r\n\r\n".to_vec(),
        ])
    })
    .await;
    let c = client();
    for _ in 0..2 {
        let r = c.request(Request::get(server.url("/"))).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 70_005);
        assert!(r.body.starts_with(b"helloyyy"));
    }
    assert_eq!(server.conns(), 1);
}

#[tokio::test]
async fn body_cap_discards_and_keeps_connection() {
    let server = serve(|s| {
        if s.path() == "/big" {
            ok(&"z".repeat(100))
        } else {
            ok("small")
        }
    })
    .await;
    let mut cfg = config();
    cfg.max_body_bytes = 10;
    let c = client_with(cfg);
    let r = c.request(Request::get(server.url("/big"))).await;
    assert_eq!((r.status, r.body.len(), r.body_discarded), (200, 10, 90));
    assert_eq!(r.error, Some(FailureKind::BodyTooLarge));
    let r = c.request(Request::get(server.url("/small"))).await;
    assert_eq!((r.status, body(&r), r.error), (200, "small", None));
    assert_eq!(server.conns(), 1);
}

#[tokio::test]
async fn head_204_304_have_no_body() {
    let server = serve(|s| match s.path() {
        "/204" => Reply::Send(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
        "/304" => Reply::Send(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n".to_vec()),
        _ => Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec()),
    })
    .await;
    let c = client();
    let r = c.request(Request::new(Method::Head, server.url("/"))).await;
    assert_eq!(
        (r.status, r.body.len(), r.header("content-length")),
        (200, 0, Some("1000"))
    );
    assert_eq!(
        c.request(Request::get(server.url("/204"))).await.status,
        204
    );
    assert_eq!(
        c.request(Request::get(server.url("/304"))).await.status,
        304
    );
    assert_eq!(server.conns(), 1);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let server = serve(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(c.request(Request::get(server.url("/"))).await.status, 200);
    }
    assert_eq!(server.conns(), 3);
    assert_eq!(c.idle_len(), 0);
}

#[tokio::test]
async fn until_close_body() {
    let server = serve(|_| Reply::SendClose(b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec())).await;
    let r = client().request(Request::get(server.url("/"))).await;
    assert_eq!(
        (r.status, body(&r), r.proto),
        (200, "all of it", "HTTP/1.0")
    );
}

#[tokio::test]
async fn post_body_and_headers() {
    let server = serve(|s| ok(&String::from_utf8_lossy(&s.body))).await;
    let mut req = Request::new(Method::Post, server.url("/echo"));
    req.body = bytes::Bytes::from_static(b"{\"guest\":true}");
    req.headers = vec![("Content-Type".into(), "application/json".into())];
    let r = client().request(req).await;
    assert_eq!(body(&r), "{\"guest\":true}");
    let seen = &server.seen()[0];
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(seen.header("content-length"), Some("14"));
    // A large body is written after the head instead of being copied behind it.
    let mut req = Request::new(Method::Put, server.url("/echo"));
    req.body = bytes::Bytes::from(vec![b'a'; 100_000]);
    assert_eq!(client().request(req).await.body.len(), 100_000);
    // Header injection is refused without touching the network.
    let mut req = Request::get(server.url("/"));
    req.headers = vec![("X-Evil".into(), "a\r\nHost: b".into())];
    let r = client().request(req).await;
    assert_eq!((r.status, r.error), (0, Some(FailureKind::Protocol)));
}

#[tokio::test]
async fn cookies_round_trip_with_path_and_expiry() {
    let server = serve(|s| match s.path() {
        "/login" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc; Path=/api\r\nSet-Cookie: site=1\r\n\
              Set-Cookie: old=1; Expires=Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        "/api/logout" => Reply::Send(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=; Path=/api; Max-Age=0\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        _ => ok(s.header("cookie").unwrap_or("-")),
    })
    .await;
    let c = client();
    c.request(Request::new(Method::Post, server.url("/login")))
        .await;
    let r = c.request(Request::get(server.url("/api/info"))).await;
    let mut got: Vec<_> = body(&r).split("; ").collect();
    got.sort_unstable();
    assert_eq!(got, ["sid=abc", "site=1"]);
    assert_eq!(
        body(&c.request(Request::get(server.url("/other"))).await),
        "site=1"
    );
    // A user Cookie header is merged with the jar's.
    let mut req = Request::get(server.url("/other"));
    req.headers = vec![("Cookie".into(), "mine=2".into())];
    assert_eq!(body(&c.request(req).await), "mine=2; site=1");
    c.request(Request::get(server.url("/api/logout"))).await;
    assert_eq!(
        body(&c.request(Request::get(server.url("/api/info"))).await),
        "site=1"
    );
    // Another user has its own jar.
    let other = HttpClient::new(c.shared().clone(), CookieJar::shared(), false);
    assert_eq!(
        body(&other.request(Request::get(server.url("/api/info"))).await),
        "-"
    );
}

#[tokio::test]
async fn redirects_carry_cookies_and_switch_to_get() {
    let server = serve(|s| match s.path() {
        "/start" => Reply::Send(
            b"HTTP/1.1 302 Found\r\nLocation: /mid\r\nSet-Cookie: a=1\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        ),
        "/mid" => Reply::Send(
            b"HTTP/1.1 307 Temporary\r\nLocation: end?x=1\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        "/loop" => Reply::Send(
            b"HTTP/1.1 301 Moved\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        _ => ok(&format!(
            "{} {}",
            s.line(),
            s.header("cookie").unwrap_or("-")
        )),
    })
    .await;
    let c = client();
    let mut req = Request::new(Method::Post, server.url("/start"));
    req.body = bytes::Bytes::from_static(b"data");
    let r = c.request(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(body(&r), "GET /end?x=1 HTTP/1.1 a=1");
    assert_eq!(r.url, server.url("/end?x=1"));
    assert_eq!(r.redirects, 2);
    assert_eq!(server.conns(), 1);
    // Past the limit the 3xx itself is returned.
    let r = c.request(Request::get(server.url("/loop"))).await;
    assert_eq!(
        (r.status, r.redirects, r.error),
        (301, DEFAULT_MAX_REDIRECTS, None)
    );
}

#[tokio::test]
async fn stale_keep_alive_is_retried_once() {
    // The server answers one request per connection but does not say it will close.
    let server = serve(|s| Reply::SendClose(ok_bytes(s.path()))).await;
    let c = client();
    assert_eq!(
        body(&c.request(Request::get(server.url("/one"))).await),
        "/one"
    );
    server.closed.notified().await;
    assert_eq!(c.idle_len(), 1);
    let r = c
        .request(Request::new(Method::Post, server.url("/two")))
        .await;
    assert_eq!((r.status, body(&r), r.error), (200, "/two", None));
    assert_eq!(server.conns(), 2);
    // The request reached the server once, not twice.
    assert_eq!(
        server.seen().iter().filter(|s| s.path() == "/two").count(),
        1
    );
}

fn ok_bytes(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn timeout_covers_the_exchange() {
    let server = serve(|_| Reply::Hang).await;
    let mut req = Request::get(server.url("/"));
    req.timeout = Some(Duration::from_millis(200));
    let r = client().request(req).await;
    assert_eq!((r.status, r.error), (0, Some(FailureKind::Timeout)));
    assert!(r.timings.duration >= Duration::from_millis(200));
    assert!(r.bytes_sent > 0, "the request was sent before the timeout");
    assert_eq!(r.url, server.url("/"));
}

#[tokio::test]
async fn refused_and_invalid() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = client();
    let r = c.request(Request::get(format!("http://{addr}/"))).await;
    assert_eq!(
        (r.status, r.error),
        (0, Some(FailureKind::ConnectionRefused))
    );
    assert!(r.error_message.is_some());
    for bad in ["not a url", "ftp://127.0.0.1/", "http://"] {
        let r = c.request(Request::get(bad)).await;
        assert_eq!(
            (r.status, r.error),
            (0, Some(FailureKind::InvalidUrl)),
            "{bad}"
        );
    }
    let r = c.request(Request::get("http://nonexistent.invalid/")).await;
    assert_eq!((r.status, r.error), (0, Some(FailureKind::Dns)));
}

#[tokio::test]
async fn garbage_response_is_a_protocol_failure() {
    let server = serve(|_| Reply::SendClose(b"SSH-2.0-OpenSSH_9\r\n\r\n".to_vec())).await;
    let r = client().request(Request::get(server.url("/"))).await;
    assert_eq!((r.status, r.error), (0, Some(FailureKind::Protocol)));
}

#[test]
fn request_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let c = client();
    let fut = c.request(Request::get("http://127.0.0.1:1/"));
    assert_send(&fut);
}

#[tokio::test]
async fn overlapping_requests_of_one_user() {
    let server = serve(|_| ok("ok")).await;
    let c = client();
    let (a, b) = tokio::join!(
        c.request(Request::get(server.url("/a"))),
        c.request(Request::get(server.url("/b")))
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(server.conns(), 2);
    assert_eq!(c.idle_len(), 2);
    drop(c);
}

#[tokio::test]
async fn open_connections_are_counted_until_closed() {
    let server = serve(|_| ok("ok")).await;
    let gauge = crate::net::OpenGauge::new();
    let mut cfg = config();
    cfg.open_connections = Some(gauge.clone());
    let c = client_with(cfg);
    let (a, b) = tokio::join!(
        c.request(Request::get(server.url("/a"))),
        c.request(Request::get(server.url("/b")))
    );
    assert_eq!((a.status, b.status), (200, 200));
    // Two keep-alive connections idle in the user's pool.
    assert_eq!(gauge.get(), 2);
    drop(c);
    assert_eq!(gauge.get(), 0);
    let closing = serve(|_| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec())
    })
    .await;
    let mut cfg = config();
    cfg.open_connections = Some(gauge.clone());
    let c = client_with(cfg);
    assert_eq!(c.request(Request::get(closing.url("/"))).await.status, 200);
    assert_eq!(gauge.get(), 0, "a closed connection is not counted");
}

#[tokio::test]
async fn idle_connections_the_server_closed_are_closed_by_a_sweep() {
    // One server keeps its connections; the other closes each after answering (as a
    // keep-alive timeout would, later), without saying so.
    let keeps = serve(|_| ok("ok")).await;
    let closes = serve(|s| Reply::SendClose(ok_bytes(s.path()))).await;
    let gauge = crate::net::OpenGauge::new();
    let mut cfg = config();
    cfg.open_connections = Some(gauge.clone());
    let c = client_with(cfg);
    assert_eq!(c.request(Request::get(keeps.url("/"))).await.status, 200);
    assert_eq!(c.request(Request::get(closes.url("/"))).await.status, 200);
    closes.closed.notified().await;
    assert_eq!(c.idle_len(), 2);
    assert_eq!(gauge.get(), 2);
    // The server's FIN reaches the reactor on one of its next turns: sweep until then.
    let mut closed = 0;
    for _ in 0..500 {
        closed = c.close_dead_idle();
        if closed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        closed, 1,
        "the connection the server closed is still pooled"
    );
    assert_eq!(c.idle_len(), 1);
    assert_eq!(gauge.get(), 1, "the closed connection still counts as open");
    // The live one survives sweeps and is reused.
    for _ in 0..3 {
        assert_eq!(c.close_dead_idle(), 0);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        c.request(Request::get(keeps.url("/again"))).await.status,
        200
    );
    assert_eq!(keeps.conns(), 1);
}

#[tokio::test]
async fn one_unconstrained_sweep_closes_every_dead_connection() {
    // More users than tokio's cooperative budget (128 checks per task poll).
    let closes = serve(|s| Reply::SendClose(ok_bytes(s.path()))).await;
    let shared = Arc::new(HttpShared::new(config()).unwrap());
    let users: Vec<HttpClient> = (0..300)
        .map(|_| HttpClient::new(shared.clone(), CookieJar::shared(), false))
        .collect();
    for u in &users {
        assert_eq!(u.request(Request::get(closes.url("/"))).await.status, 200);
    }
    let sweep = || users.iter().map(HttpClient::close_dead_idle).sum::<usize>();
    // The server shut each connection right after its answer; a pause lets the reactor
    // take in every FIN. Then one sweep closes all of them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = tokio::task::unconstrained(async { sweep() }).await;
    let later = tokio::task::unconstrained(async { sweep() }).await;
    assert_eq!(closed, 300, "one sweep closed {closed}, the next {later}");
    let left: usize = users.iter().map(HttpClient::idle_len).sum();
    assert_eq!(left, 0, "{left} dead connections still pooled");
}

#[tokio::test]
async fn shared_connections_and_source_pool() {
    let server = serve(|s| ok(&s.peer.ip().to_string())).await;
    let mut cfg = config();
    cfg.source_pool = Some(Arc::new(SourcePool::parse("127.0.0.2").unwrap()));
    let shared = Arc::new(HttpShared::new(cfg).unwrap());
    for _ in 0..3 {
        let user = HttpClient::new(shared.clone(), CookieJar::shared(), true);
        let r = user.request(Request::get(server.url("/"))).await;
        assert_eq!(body(&r), "127.0.0.2");
    }
    assert_eq!(server.conns(), 1);
}

mod tls_tests {
    use super::*;

    async fn serve_tls() -> SocketAddr {
        let acceptor = crate::tls::test_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let seen = Mutex::new(Vec::new());
                        serve_conn(tls, peer, &seen, &|s: &Seen| ok(s.path())).await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn https_insecure_and_verified() {
        let addr = serve_tls().await;
        let url = format!("https://localhost:{}/secure", addr.port());
        let mut cfg = config();
        cfg.insecure = true;
        let c = client_with(cfg);
        for _ in 0..3 {
            let r = c.request(Request::get(&url)).await;
            assert_eq!((r.status, body(&r), r.error), (200, "/secure", None));
        }
        assert_eq!(c.idle_len(), 1);
        let r = client().request(Request::get(&url)).await;
        assert_eq!(
            (r.status, r.error),
            (0, Some(FailureKind::Tls)),
            "{:?}",
            r.error_message
        );
    }
}
