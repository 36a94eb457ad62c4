//! The HTTP/1.1 exchanges of the polling transport: one request, one response, on a
//! kept-alive connection.
//!
//! Written here rather than through `http::HttpClient` because of the idle budget: a polling
//! user always has one long-poll GET outstanding, and this exchange allocates its read
//! buffer only once the server starts answering (it waits for readability first), so an
//! idle long-poll holds its socket and a few bytes of state, not a 4 KiB buffer.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EngineError;
use crate::ws::NetStream;

/// Most header lines in a polling response.
const MAX_HEADERS: usize = 64;
/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// First read buffer: a typical polling answer (`2`, `ok`, an event) fits.
const FIRST_READ: usize = 1024;

/// A polling response: status, body, and whether the connection may be reused.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    pub(crate) keep_alive: bool,
    pub(crate) set_cookie: Vec<String>,
}

/// Writes `head` (a full request head ending in CRLFCRLF) and `body`, then reads one
/// response whose body is at most `max_body` bytes.
pub(crate) async fn exchange(
    stream: &mut NetStream,
    head: &[u8],
    body: &[u8],
    max_body: usize,
) -> Result<Reply, EngineError> {
    if body.is_empty() {
        stream.write_all(head).await.map_err(EngineError::Io)?;
    } else {
        // One write for small requests: a pong must not cost two segments.
        let mut req = Vec::with_capacity(head.len() + body.len());
        req.extend_from_slice(head);
        req.extend_from_slice(body);
        stream.write_all(&req).await.map_err(EngineError::Io)?;
    }
    stream.flush().await.map_err(EngineError::Io)?;
    // The long-poll may wait for tens of seconds: no buffer until the answer starts.
    stream.readable().await.map_err(EngineError::Io)?;
    let mut buf: Vec<u8> = Vec::with_capacity(FIRST_READ);
    let (parsed, head_len) = loop {
        if buf.len() == buf.capacity() {
            if buf.len() >= MAX_HEAD {
                return Err(EngineError::Http("response head too large".into()));
            }
            buf.reserve(buf.len());
        }
        let n = stream.read_buf(&mut buf).await.map_err(EngineError::Io)?;
        if n == 0 {
            return Err(EngineError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            )));
        }
        if let Some(done) = parse_head(&buf)? {
            break done;
        }
    };
    let mut body_buf = buf.split_off(head_len);
    drop(buf);
    let body = match parsed.framing {
        Framing::Length(len) => {
            if len > max_body {
                return Err(EngineError::Http(format!(
                    "response body of {len} bytes too large"
                )));
            }
            body_buf.reserve(len.saturating_sub(body_buf.len()));
            while body_buf.len() < len {
                if stream
                    .read_buf(&mut body_buf)
                    .await
                    .map_err(EngineError::Io)?
                    == 0
                {
                    return Err(eof());
                }
            }
            body_buf.truncate(len);
            body_buf
        }
        Framing::Chunked => read_chunked(stream, body_buf, max_body).await?,
        Framing::UntilClose => {
            loop {
                if body_buf.len() > max_body {
                    return Err(EngineError::Http("response body too large".into()));
                }
                body_buf.reserve(FIRST_READ);
                if stream
                    .read_buf(&mut body_buf)
                    .await
                    .map_err(EngineError::Io)?
                    == 0
                {
                    break;
                }
            }
            body_buf
        }
    };
    Ok(Reply {
        status: parsed.status,
        body,
        keep_alive: parsed.keep_alive && parsed.framing != Framing::UntilClose,
        set_cookie: parsed.set_cookie,
    })
}

fn eof() -> EngineError {
    EngineError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-body",
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
struct Parsed {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    set_cookie: Vec<String>,
}

/// Parses a response head: `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Parsed, usize)>, EngineError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(EngineError::Http(format!("malformed response head: {e}"))),
    };
    let status = resp.code.unwrap_or(0);
    let mut keep_alive = resp.version == Some(1);
    let mut framing = Framing::UntilClose;
    let mut set_cookie = Vec::new();
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| EngineError::Http("invalid content-length".into()))?;
            if framing != Framing::Chunked {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().ends_with("chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("set-cookie") {
            set_cookie.push(value.to_owned());
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((
        Parsed {
            status,
            framing,
            keep_alive,
            set_cookie,
        },
        len,
    )))
}

/// Reads a chunked body whose first bytes are already in `raw`.
async fn read_chunked(
    stream: &mut NetStream,
    mut raw: Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, EngineError> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        match dechunk_step(&raw[pos..])? {
            Step::Need => {
                if raw.len() - pos > MAX_HEAD + max_body {
                    return Err(EngineError::Http("chunked body too large".into()));
                }
                raw.reserve(FIRST_READ);
                if stream.read_buf(&mut raw).await.map_err(EngineError::Io)? == 0 {
                    return Err(eof());
                }
            }
            Step::Chunk { start, len, next } => {
                if out.len() + len > max_body {
                    return Err(EngineError::Http("chunked body too large".into()));
                }
                out.extend_from_slice(&raw[pos + start..pos + start + len]);
                pos += next;
            }
            Step::End => return Ok(out),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// More bytes are needed.
    Need,
    /// A data chunk at `start..start+len`; the next chunk begins at `next`.
    Chunk {
        start: usize,
        len: usize,
        next: usize,
    },
    /// The last chunk and the trailers were read.
    End,
}

fn dechunk_step(b: &[u8]) -> Result<Step, EngineError> {
    let bad = || EngineError::Http("malformed chunked body".into());
    let Some(line_end) = b.windows(2).position(|w| w == b"\r\n") else {
        return if b.len() > 1024 {
            Err(bad())
        } else {
            Ok(Step::Need)
        };
    };
    let line = std::str::from_utf8(&b[..line_end]).map_err(|_| bad())?;
    let size = line.split(';').next().unwrap_or("").trim();
    let len = usize::from_str_radix(size, 16).map_err(|_| bad())?;
    let start = line_end + 2;
    if len == 0 {
        // Trailers end with an empty line; we accept only none at all or skip them.
        let rest = &b[start..];
        if rest.starts_with(b"\r\n") {
            return Ok(Step::End);
        }
        return match rest.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(_) => Ok(Step::End),
            None => Ok(Step::Need),
        };
    }
    let end = start.checked_add(len).ok_or_else(bad)?;
    if b.len() < end + 2 {
        return Ok(Step::Need);
    }
    if &b[end..end + 2] != b"\r\n" {
        return Err(bad());
    }
    Ok(Step::Chunk {
        start,
        len,
        next: end + 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let (p, len) =
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\n\r\nok")
                .unwrap()
                .unwrap();
        assert_eq!(
            (p.status, p.framing, p.keep_alive, len),
            (200, Framing::Length(2), true, 55)
        );
        assert_eq!(p.set_cookie, ["a=1"]);
        let (p, _) = parse_head(b"HTTP/1.0 400 Bad\r\n\r\n").unwrap().unwrap();
        assert_eq!(
            (p.status, p.framing, p.keep_alive),
            (400, Framing::UntilClose, false)
        );
        let (p, _) = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.framing, p.keep_alive), (Framing::Chunked, false));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Len")
                .unwrap()
                .is_none()
        );
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk_step(b"2\r\nok\r\n").unwrap(),
            Step::Chunk {
                start: 3,
                len: 2,
                next: 7
            }
        );
        assert_eq!(dechunk_step(b"2\r\no").unwrap(), Step::Need);
        assert_eq!(dechunk_step(b"0\r\n\r\n").unwrap(), Step::End);
        assert_eq!(dechunk_step(b"0\r\n").unwrap(), Step::Need);
        assert!(dechunk_step(b"zz\r\n").is_err());
        assert!(dechunk_step(b"2\r\nokXX").is_err());
        assert!(dechunk_step(b"ffffffffffffffffff\r\n").is_err());
    }
}
