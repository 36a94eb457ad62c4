//! Spot interruption: poll the instance metadata service (IMDSv2, with a session token) for
//! `spot/instance-action`, and say when EC2 announced a reclaim (two minutes ahead). Also
//! reads the instance's identity for the agent's labels.
//!
//! Self-contained (tokio and a tiny private HTTP/1.1 client) so that the agent links no AWS
//! SDK; the controller learns about the interruption from the agent's departing final
//! report and its Goodbye. Moved here from punisher-launcher.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where IMDS answers on every EC2 instance.
pub const DEFAULT_BASE_URL: &str = "http://169.254.169.254";
/// How often the AWS documentation suggests polling for a notice.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Session tokens are asked for six hours and renewed a minute before they end.
const TOKEN_TTL_SECS: u64 = 21_600;
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(60);
/// One IMDS call never takes longer than this (IMDS answers in milliseconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A spot interruption notice: `action` is `terminate`, `stop` or `hibernate`; `time` is
/// when EC2 will act (RFC 3339 UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotNotice {
    pub action: String,
    pub time: String,
}

impl SpotNotice {
    /// The reason an agent gives in its Goodbye.
    pub fn reason(&self) -> String {
        format!("spot interruption: {} at {}", self.action, self.time)
    }
}

/// Where the instance runs, for the agent's labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub region: String,
    pub zone: String,
}

/// IMDSv2 session: a token and when to renew it.
struct Session {
    base: String,
    token: Option<(String, Instant)>,
}

impl Session {
    fn new(base_url: &str) -> Session {
        Session {
            base: base_url.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    async fn token(&mut self) -> Option<String> {
        if let Some((t, until)) = &self.token
            && Instant::now() < *until
        {
            return Some(t.clone());
        }
        let ttl = TOKEN_TTL_SECS.to_string();
        let r = http::request(
            "PUT",
            &format!("{}/latest/api/token", self.base),
            &[("X-aws-ec2-metadata-token-ttl-seconds", &ttl)],
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, "imds token request failed"))
        .ok()?;
        if r.status != 200 {
            tracing::debug!(status = r.status, "imds refused a token");
            return None;
        }
        let token = String::from_utf8(r.body).ok()?.trim().to_owned();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return None;
        }
        let until = Instant::now() + Duration::from_secs(TOKEN_TTL_SECS) - TOKEN_RENEW_BEFORE;
        self.token = Some((token.clone(), until));
        Some(token)
    }

    /// GET a metadata path: `Ok(Some(body))` on 200, `Ok(None)` on 404, `Err` otherwise
    /// (the token is dropped on 401 so that the next call asks for a new one).
    async fn get(&mut self, path: &str) -> Result<Option<String>, ()> {
        let token = self.token().await.ok_or(())?;
        let r = http::request(
            "GET",
            &format!("{}/latest/meta-data/{path}", self.base),
            &[("X-aws-ec2-metadata-token", &token)],
            CALL_TIMEOUT,
        )
        .await
        .map_err(|e| tracing::debug!(error = %e, path, "imds request failed"))?;
        match r.status {
            200 => Ok(Some(String::from_utf8_lossy(&r.body).into_owned())),
            404 => Ok(None),
            401 => {
                self.token = None;
                Err(())
            }
            status => {
                tracing::debug!(status, path, "imds answered an error");
                Err(())
            }
        }
    }
}

/// Parses `{"action": "terminate", "time": "2017-09-18T08:22:00Z"}` without a JSON library:
/// the document is flat, and anything unexpected is treated as a terminate notice, because
/// a false alarm costs a drained agent while a missed one loses its users' results.
pub fn parse_notice(body: &str) -> SpotNotice {
    let field = |name: &str| -> Option<String> {
        let key = format!("\"{name}\"");
        let after = &body[body.find(&key)? + key.len()..];
        let after = after.trim_start().strip_prefix(':')?.trim_start();
        let after = after.strip_prefix('"')?;
        Some(after[..after.find('"')?].to_owned())
    };
    SpotNotice {
        action: field("action").unwrap_or_else(|| "terminate".to_owned()),
        time: field("time").unwrap_or_default(),
    }
}

/// Polls `spot/instance-action` every `interval` until a notice appears (returned) or
/// `cancel` fires (`None`). IMDS being unreachable (not on EC2, IMDS disabled) is logged
/// once and polling goes on: the watcher costs one request per interval and never fails
/// the agent.
pub async fn watch_spot_interruption(
    base_url: &str,
    interval: Duration,
    cancel: CancellationToken,
) -> Option<SpotNotice> {
    let mut session = Session::new(base_url);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            _ = ticker.tick() => {}
        }
        let polled = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            r = session.get("spot/instance-action") => r,
        };
        match polled {
            Ok(Some(body)) => return Some(parse_notice(&body)),
            Ok(None) => warned = false,
            Err(()) => {
                if !warned {
                    tracing::warn!(
                        base_url,
                        "instance metadata unreachable; spot notices \
                        cannot be seen until it answers"
                    );
                    warned = true;
                }
            }
        }
    }
}

/// Reads instance id, region and zone; `None` when IMDS does not answer (not on EC2).
pub async fn instance_identity(base_url: &str) -> Option<InstanceIdentity> {
    let mut session = Session::new(base_url);
    let instance_id = session.get("instance-id").await.ok().flatten()?;
    let zone = session
        .get("placement/availability-zone")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let region = session
        .get("placement/region")
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    Some(InstanceIdentity {
        instance_id: instance_id.trim().to_owned(),
        region: region.trim().to_owned(),
        zone: zone.trim().to_owned(),
    })
}

/// A deliberately tiny HTTP/1.1 client for IMDS: one request per connection
/// (`Connection: close`), bounded body, bounded time; no TLS, no redirects.
mod http {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Bodies larger than this are refused: metadata and checksums are a few hundred bytes.
    const MAX_RESPONSE: usize = 64 * 1024;

    #[derive(Debug, thiserror::Error)]
    pub(crate) enum HttpError {
        #[error("unsupported URL {0:?}: only http://host[:port]/path")]
        Url(String),
        #[error("{0}")]
        Io(#[from] std::io::Error),
        #[error("timed out")]
        Timeout,
        #[error("malformed response: {0}")]
        Malformed(&'static str),
    }

    /// A response: status and body.
    #[derive(Debug)]
    pub(crate) struct Response {
        pub(crate) status: u16,
        pub(crate) body: Vec<u8>,
    }

    /// Splits `http://host:port/path` into (`host:port`, `/path`).
    pub(crate) fn split_url(url: &str) -> Result<(String, String), HttpError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| HttpError::Url(url.to_owned()))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty()
            || authority.contains(['@', ' '])
            || path.contains([' ', '\r', '\n'])
        {
            return Err(HttpError::Url(url.to_owned()));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            || authority.ends_with(']')
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok((authority, path.to_owned()))
    }

    /// Sends one request and reads the whole response within `timeout`.
    pub(crate) async fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Response, HttpError> {
        let (authority, path) = split_url(url)?;
        for (k, v) in headers {
            if k.contains([':', '\r', '\n']) || v.contains(['\r', '\n']) {
                return Err(HttpError::Malformed("header with a line break"));
            }
        }
        tokio::time::timeout(timeout, exchange(method, &authority, &path, headers))
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    async fn exchange(
        method: &str,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        let mut stream = TcpStream::connect(authority).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            if buf.len() + n > MAX_RESPONSE {
                return Err(HttpError::Malformed("response too large"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        parse(&buf)
    }

    fn parse(buf: &[u8]) -> Result<Response, HttpError> {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(HttpError::Malformed("no end of headers"))?;
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed("head"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError::Malformed("status line"));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(HttpError::Malformed("status code"))?;
        let mut content_length = None;
        let mut chunked = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                content_length = Some(
                    v.parse::<usize>()
                        .map_err(|_| HttpError::Malformed("length"))?,
                );
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
        let raw = &buf[end + 4..];
        let body = if chunked {
            dechunk(raw)?
        } else if let Some(len) = content_length {
            raw.get(..len)
                .ok_or(HttpError::Malformed("body shorter than content-length"))?
                .to_vec()
        } else {
            raw.to_vec()
        };
        Ok(Response { status, body })
    }

    fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        loop {
            let eol = raw
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or(HttpError::Malformed("chunk size"))?;
            let size_str =
                std::str::from_utf8(&raw[..eol]).map_err(|_| HttpError::Malformed("chunk"))?;
            let size_str = size_str.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| HttpError::Malformed("chunk size"))?;
            raw = &raw[eol + 2..];
            if size == 0 {
                return Ok(out);
            }
            let data = raw.get(..size).ok_or(HttpError::Malformed("short chunk"))?;
            out.extend_from_slice(data);
            raw = raw
                .get(size + 2..)
                .ok_or(HttpError::Malformed("short chunk"))?;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls() {
            assert_eq!(
                split_url("http://169.254.169.254/latest/api/token").unwrap(),
                ("169.254.169.254:80".into(), "/latest/api/token".into())
            );
            assert_eq!(split_url("http://127.0.0.1:9/").unwrap().0, "127.0.0.1:9");
            assert_eq!(split_url("http://h:1").unwrap().1, "/");
            for bad in [
                "https://x/",
                "ftp://x",
                "http://",
                "http://a@b/",
                "http://x/a b",
            ] {
                assert!(split_url(bad).is_err(), "{bad}");
            }
        }

        #[test]
        fn parses_responses() {
            let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX").unwrap();
            assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
            let r = parse(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
            )
            .unwrap();
            assert_eq!(r.body, b"abc");
            let r = parse(b"HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
            assert_eq!(r.status, 404);
            for bad in [
                &b"garbage"[..],
                b"HTTP/1.1 abc\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
            ] {
                assert!(parse(bad).is_err());
            }
            assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices() {
        let n = parse_notice(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#);
        assert_eq!(n.action, "terminate");
        assert_eq!(n.time, "2017-09-18T08:22:00Z");
        assert_eq!(
            n.reason(),
            "spot interruption: terminate at 2017-09-18T08:22:00Z"
        );
        let n = parse_notice(r#"{"action":"stop","time":"x"}"#);
        assert_eq!(n.action, "stop");
        let n = parse_notice("garbage");
        assert_eq!((n.action.as_str(), n.time.as_str()), ("terminate", ""));
        let n = parse_notice(r#"{"action": 5"#);
        assert_eq!(n.action, "terminate");
    }
}
