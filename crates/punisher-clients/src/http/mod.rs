//! A lean HTTP/1.1 client for virtual users: keep-alive, chunked and length-delimited
//! bodies, redirects, cookies, TLS through rustls, and k6's timing phases.
//!
//! Written by hand instead of over hyper/reqwest because the budgets are tight: at most
//! 1.5x wrk's CPU per request, and an idle keep-alive connection that holds its socket and
//! nothing else (read buffers live only while a request is in flight).
//!
//! # Layout
//! - this file: the public vocabulary ([`HttpConfig`], [`Request`], [`Response`], [`Timings`]);
//! - `client`: [`HttpShared`] (one per worker) and [`HttpClient`] (one per virtual user):
//!   redirects, cookies, retries, timeouts;
//! - `head`: serialising the request head;
//! - `conn`: connections, idle pools and one request/response exchange on the wire;
//! - `parse`: pure response parsing (head, framing, chunked decoding);
//! - `urls`: the per-worker cache of parsed URLs.
//!
//! TLS comes from the crate's `tls` module, shared with the WebSocket and Engine.IO clients.

mod client;
mod conn;
mod head;
// The Engine.IO polling transport reads its responses with the same rules.
pub(crate) mod parse;
mod urls;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use punisher_core::FailureKind;

use crate::net::{OpenGauge, SourcePool};

pub use client::{HttpClient, HttpSetupError, HttpShared};

/// Default cap on a response body kept in memory; the rest is read, counted and dropped.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default timeout of one request, redirects included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of redirects followed before the 3xx response itself is returned.
pub const DEFAULT_MAX_REDIRECTS: u32 = 10;

/// Settings shared by every client of a worker.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Skip certificate verification (`--insecure`).
    pub insecure: bool,
    /// Body bytes kept per response; the rest is discarded and counted.
    pub max_body_bytes: u64,
    /// Timeout of a request without its own.
    pub default_timeout: Duration,
    /// Redirects followed before the 3xx response is returned as is.
    pub max_redirects: u32,
    /// The `User-Agent` header sent unless the request sets its own.
    pub user_agent: String,
    /// Local addresses to connect from, round-robin.
    pub source_pool: Option<Arc<SourcePool>>,
    /// Counts this worker's open connections (idle keep-alive and in flight).
    pub open_connections: Option<OpenGauge>,
}

impl HttpConfig {
    /// The defaults: verification on, 10 MB bodies, 60 s timeout, 10 redirects,
    /// `punisher/<version>`, no source pool, no gauge.
    pub fn new_defaults() -> Self {
        Self {
            insecure: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            default_timeout: DEFAULT_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
            user_agent: concat!("punisher/", env!("CARGO_PKG_VERSION")).to_owned(),
            source_pool: None,
            open_connections: None,
        }
    }
}

/// An HTTP method. Common methods are plain variants so a request allocates no string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    /// Any other valid token, in upper case as given.
    Other(String),
}

/// A method string that is not a valid HTTP token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid http method {0:?}")]
pub struct InvalidMethod(pub String);

impl Method {
    /// Parses a method name case-insensitively (`"get"` is GET, as in k6).
    pub fn parse(s: &str) -> Result<Method, InvalidMethod> {
        let known = [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("PATCH", Method::Patch),
            ("DELETE", Method::Delete),
            ("OPTIONS", Method::Options),
        ];
        for (name, m) in known {
            if s.eq_ignore_ascii_case(name) {
                return Ok(m);
            }
        }
        if s.is_empty() || !s.bytes().all(is_token_byte) {
            return Err(InvalidMethod(s.to_owned()));
        }
        Ok(Method::Other(s.to_ascii_uppercase()))
    }

    /// The method as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other(s) => s,
        }
    }
}

/// Whether `b` may appear in an HTTP token (method, header name).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One request of a virtual user.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    /// Extra headers. `Host` and `User-Agent` replace ours, `Cookie` is merged with the
    /// jar's, `Content-Length` and `Transfer-Encoding` are ignored (we frame the body).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Overrides [`HttpConfig::default_timeout`]; covers the whole exchange, redirects included.
    pub timeout: Option<Duration>,
}

impl Request {
    /// A request without headers or body.
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: None,
        }
    }

    /// A GET of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }
}

/// Time spent in each phase of the final exchange, with k6's meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Before connecting: name resolution and finding an idle connection.
    pub blocked: Duration,
    /// TCP connect (zero on a reused connection).
    pub connecting: Duration,
    /// TLS handshake (zero on a reused or plain connection).
    pub tls_handshaking: Duration,
    /// Writing the request.
    pub sending: Duration,
    /// From the end of sending to the first response byte.
    pub waiting: Duration,
    /// From the first response byte to the last.
    pub receiving: Duration,
    /// `sending + waiting + receiving`, as k6's `http_req_duration`.
    pub duration: Duration,
}

/// The outcome of a request. Network failures are not errors: `status` is 0 and `error` says
/// why. A body over the cap keeps the real status and sets `error` to `BodyTooLarge`.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// The status code, 0 when no response was received.
    pub status: u16,
    /// The reason phrase as sent by the server.
    pub status_text: String,
    /// `"HTTP/1.1"` or `"HTTP/1.0"`, empty when no response was received.
    pub proto: &'static str,
    /// Response headers in arrival order, names as the server wrote them.
    pub headers: Vec<(String, String)>,
    /// The body, at most `max_body_bytes` of it.
    pub body: Bytes,
    /// Body bytes received beyond the cap and dropped.
    pub body_discarded: u64,
    /// The URL of the final response, after redirects.
    pub url: String,
    /// How many redirects were followed.
    pub redirects: u32,
    /// Phases of the final exchange.
    pub timings: Timings,
    pub error: Option<FailureKind>,
    pub error_message: Option<String>,
    /// Bytes written to the network, all hops and retries included.
    pub bytes_sent: u64,
    /// Bytes read from the network, all hops and retries included.
    pub bytes_received: u64,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a response was received (it may still be a 4xx or 5xx).
    pub fn is_received(&self) -> bool {
        self.status != 0
    }
}
