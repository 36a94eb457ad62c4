//! The cluster's connections. Agents (and `punisher ctl`) dial the controller over TLS and
//! pin its self-signed certificate by the SHA-256 of its DER bytes; plaintext is allowed only
//! to and on loopback addresses. One [`Io`] type carries every kind of connection so that the
//! same tonic server and client code serve TLS, plaintext loopback and in-memory pipes.
//!
//! The cluster token travels in the `authorization` metadata of every call
//! ([`TokenInterceptor`], [`token_from_metadata`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::Refusal;
use crate::v1::admin_service_client::AdminServiceClient;
use crate::v1::agent_service_client::AgentServiceClient;

/// The name the controller's certificate is issued for. Agents pin the certificate itself,
/// so the name they dial (an IP, a load balancer) does not have to match it.
pub const CERT_NAME: &str = "punisher-controller";

/// TLS handshakes slower than this are dropped: a client that opens a TCP connection and
/// sends nothing must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for the gRPC server; the accept loop waits when it is full.
const ACCEPT_QUEUE: usize = 64;

/// HTTP/2 pings keep idle sessions alive through NATs and find dead peers.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(cert_der: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Fingerprint(out)
    }

    /// Parses 64 hex digits, optionally after `sha256:` and with `:` between bytes (as
    /// `openssl x509 -fingerprint` prints them), in any case.
    pub fn parse(text: &str) -> Result<Fingerprint, FingerprintError> {
        let trimmed = text.trim();
        let body = trimmed
            .strip_prefix("sha256:")
            .or_else(|| trimmed.strip_prefix("SHA256:"))
            .unwrap_or(trimmed);
        let digits: Vec<u8> = body.bytes().filter(|b| *b != b':').collect();
        if digits.len() != 64 {
            return Err(FingerprintError(text.to_owned()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or_else(|| FingerprintError(text.to_owned()))?;
            let lo = hex_value(pair[1]).ok_or_else(|| FingerprintError(text.to_owned()))?;
            out[i] = hi << 4 | lo;
        }
        Ok(Fingerprint(out))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not a SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a SHA-256 fingerprint: pass the 64 hex digits the controller printed at start \
     (e.g. sha256:3f5a...)"
)]
pub struct FingerprintError(pub String);

/// How a client authenticates the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientSecurity {
    /// TLS; the controller's certificate must have this fingerprint.
    Pinned(Fingerprint),
    /// Plaintext, allowed only when every address the name resolves to is a loopback one.
    InsecureLoopback,
}

/// Why a connection to the controller could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("invalid controller address {addr:?}: {message}")]
    Address { addr: String, message: String },
    #[error("invalid cluster token: {0}")]
    Token(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The controller is not reachable now (down, restarting, network): worth a retry.
    #[error("cannot reach the controller at {addr}: {message}")]
    Unreachable { addr: String, message: String },
}

impl ConnectError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable { .. })
    }
}

/// Splits `host:port` (optionally `http(s)://host:port`, `[v6]:port`) and resolves it.
pub async fn resolve(addr: &str) -> Result<(String, Vec<SocketAddr>), ConnectError> {
    let bad = |message: &str| ConnectError::Address {
        addr: addr.to_owned(),
        message: message.to_owned(),
    };
    let authority = addr
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if authority.is_empty() {
        return Err(bad("write HOST:PORT, e.g. 10.0.0.5:7070"));
    }
    let (_, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| bad("missing port: write HOST:PORT, e.g. 10.0.0.5:7070"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|e| ConnectError::Unreachable {
            addr: addr.to_owned(),
            message: format!("cannot resolve: {e}"),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(ConnectError::Unreachable {
            addr: addr.to_owned(),
            message: "the name resolves to no address".into(),
        });
    }
    Ok((authority.to_owned(), addrs))
}

/// Opens a gRPC channel to the controller at `addr`. The connection is made (and the
/// certificate checked) before this returns.
pub async fn connect(
    addr: &str,
    security: &ClientSecurity,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let (authority, addrs) = resolve(addr).await?;
    let tls = match security {
        ClientSecurity::InsecureLoopback => {
            if let Some(not_loopback) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Refusal::NotLoopback(not_loopback.to_string()).into());
            }
            None
        }
        ClientSecurity::Pinned(fp) => Some(PinnedTls::new(*fp)),
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| ConnectError::Address {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let connector_tls = tls.clone();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let addrs = addrs.clone();
        let tls = connector_tls.clone();
        async move {
            let tcp = connect_any(&addrs).await?;
            let io = match tls {
                None => Io::Tcp(tcp),
                Some(tls) => {
                    let name = ServerName::try_from(CERT_NAME)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let stream = TlsConnector::from(tls.config.clone())
                        .connect(name, tcp)
                        .await?;
                    Io::ClientTls(Box::new(stream))
                }
            };
            Ok::<_, io::Error>(TokioIo::new(io))
        }
    });
    match endpoint.connect_with_connector(connector).await {
        Ok(channel) => Ok(channel),
        Err(e) => {
            if let Some(tls) = &tls
                && let Some(actual) = tls.mismatch()
            {
                return Err(Refusal::Fingerprint {
                    expected: tls.expected.to_string(),
                    actual: actual.to_string(),
                }
                .into());
            }
            Err(ConnectError::Unreachable {
                addr: addr.to_owned(),
                message: error_chain(&e),
            })
        }
    }
}

/// An in-memory channel to a server fed by [`DuplexListener`]: the in-process agent of a
/// local run speaks the same protocol without a socket.
pub async fn connect_in_memory(listener: DuplexListener) -> Result<Channel, ConnectError> {
    let endpoint = Endpoint::from_static("http://in-memory");
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tx = listener.tx.clone();
        async move {
            let (client, server) = tokio::io::duplex(1 << 16);
            tx.send(Io::Duplex(server))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::ConnectionRefused, "server gone"))?;
            Ok::<_, io::Error>(TokioIo::new(Io::Duplex(client)))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Unreachable {
            addr: "in-memory".into(),
            message: error_chain(&e),
        })
}

/// The client half of an in-memory transport; cloneable, one per agent.
#[derive(Clone)]
pub struct DuplexListener {
    tx: mpsc::Sender<Io>,
}

/// A pair: the listener clients dial, and the incoming stream the server serves.
pub fn in_memory() -> (DuplexListener, Incoming) {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    (DuplexListener { tx }, Incoming { rx })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

async fn connect_any(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// TLS client state that pins one certificate and remembers a mismatch for the error message.
#[derive(Clone)]
struct PinnedTls {
    expected: Fingerprint,
    config: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Option<Fingerprint>>>,
}

impl PinnedTls {
    fn new(expected: Fingerprint) -> PinnedTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let seen = Arc::new(Mutex::new(None));
        let verifier = Arc::new(PinVerifier {
            expected,
            algorithms: provider.signature_verification_algorithms,
            seen: seen.clone(),
        });
        // The ring provider supports the safe default versions: this cannot fail.
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"));
        let mut config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        PinnedTls {
            expected,
            config: Arc::new(config),
            seen,
        }
    }

    fn mismatch(&self) -> Option<Fingerprint> {
        self.seen.lock().ok().and_then(|s| *s)
    }
}

/// Accepts exactly one end-entity certificate, by its SHA-256; still verifies the handshake
/// signatures, so the peer must hold the certificate's private key.
#[derive(Debug)]
struct PinVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
    seen: Arc<Mutex<Option<Fingerprint>>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = Fingerprint::of(end_entity.as_ref());
        if actual == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(actual);
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The server side's TLS configuration (opaque: rustls stays inside this crate).
#[derive(Clone)]
pub struct ServerTls(Arc<rustls::ServerConfig>);

/// A certificate and key that cannot serve TLS.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid certificate or key: {0}")]
pub struct TlsConfigError(pub String);

/// The server's TLS configuration from a DER certificate and its PKCS#8 key.
pub fn server_tls_config(
    cert_der: &[u8],
    key_pkcs8_der: &[u8],
) -> Result<ServerTls, TlsConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8_der.to_vec())),
        )
        .map_err(|e| TlsConfigError(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls(Arc::new(config)))
}

/// Connections accepted by [`serve_incoming`] or [`in_memory`], for
/// `tonic::transport::Server::serve_with_incoming`.
pub struct Incoming {
    rx: mpsc::Receiver<Io>,
}

impl futures_util::Stream for Incoming {
    type Item = Result<Io, io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// Accepts TCP connections on `listener` and, with `tls`, completes each TLS handshake on
/// its own task (a slow or silent client delays nobody). Failed handshakes are logged and
/// dropped. The accept loop ends when the returned stream is dropped.
pub fn serve_incoming(listener: TcpListener, tls: Option<ServerTls>) -> Incoming {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        let acceptor = tls.map(|t| TlsAcceptor::from(t.0));
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            match &acceptor {
                None => {
                    if tx.send(Io::Tcp(tcp)).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Io::ServerTls(Box::new(stream))).await;
                            }
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    Incoming { rx }
}

/// Any connection of the cluster: plain TCP (loopback only), TLS either side, or an
/// in-memory pipe.
pub enum Io {
    Tcp(TcpStream),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Duplex(DuplexStream),
}

impl Io {
    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Io::Tcp(s) => s.peer_addr().ok(),
            Io::ClientTls(s) => s.get_ref().0.peer_addr().ok(),
            Io::ServerTls(s) => s.get_ref().0.peer_addr().ok(),
            Io::Duplex(_) => None,
        }
    }
}

/// What the server knows about a connection: the peer's address (none in memory).
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo(pub Option<SocketAddr>);

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        PeerInfo(self.peer())
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::ClientTls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::ServerTls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::Duplex($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::ClientTls(s) => s.is_write_vectored(),
            Io::ServerTls(s) => s.is_write_vectored(),
            Io::Duplex(s) => s.is_write_vectored(),
        }
    }
}

/// Adds `authorization: Bearer TOKEN` to every call.
#[derive(Clone)]
pub struct TokenInterceptor(MetadataValue<Ascii>);

impl TokenInterceptor {
    pub fn new(token: &str) -> Result<TokenInterceptor, ConnectError> {
        if token.is_empty() {
            return Err(ConnectError::Token(
                "the token is empty: pass --token or set PUNISHER_TOKEN".into(),
            ));
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(TokenInterceptor)
            .map_err(|_| ConnectError::Token("the token must be printable ASCII".into()))
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// The token of a call, from `authorization: Bearer TOKEN`.
pub fn token_from_metadata(metadata: &MetadataMap) -> Option<&str> {
    metadata
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

pub type AgentClient = AgentServiceClient<InterceptedService<Channel, TokenInterceptor>>;
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, TokenInterceptor>>;

/// The agent-side client of a channel, with the token and the message size limits.
pub fn agent_client(channel: Channel, token: TokenInterceptor) -> AgentClient {
    AgentServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

/// The admin client of a channel, with the token and the message size limits.
pub fn admin_client(channel: Channel, token: TokenInterceptor) -> AdminClient {
    AdminServiceClient::with_interceptor(channel, token)
        .max_decoding_message_size(crate::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_common_forms() {
        let fp = Fingerprint::of(b"certificate");
        let text = fp.to_string();
        assert!(text.starts_with("sha256:"));
        assert_eq!(Fingerprint::parse(&text).unwrap(), fp);
        let hex = &text["sha256:".len()..];
        assert_eq!(Fingerprint::parse(hex).unwrap(), fp);
        let colons: Vec<String> = hex
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")).unwrap(), fp);
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"zz".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn plaintext_refuses_non_loopback_addresses() {
        let e = connect(
            "192.0.2.1:7070",
            &ClientSecurity::InsecureLoopback,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, ConnectError::Refused(Refusal::NotLoopback(_))),
            "{e}"
        );
        assert!(!e.is_retryable());
        let e = connect(
            "nohost",
            &ClientSecurity::InsecureLoopback,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ConnectError::Address { .. }), "{e}");
    }

    #[test]
    fn token_metadata() {
        let mut i = TokenInterceptor::new("s3cret").unwrap();
        let req = i.call(Request::new(())).unwrap();
        assert_eq!(token_from_metadata(req.metadata()), Some("s3cret"));
        assert!(TokenInterceptor::new("").is_err());
        assert!(TokenInterceptor::new("bad\ntoken").is_err());
    }
}
