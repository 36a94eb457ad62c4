//! The HTTP/1.1 exchanges of the polling transport: one request, one response, on a
//! kept-alive connection.
//!
//! Written here rather than through `http::HttpClient` because of the idle budget: a polling
//! user always has one long-poll GET outstanding, and this exchange allocates its read
//! buffer only once the server starts answering (it waits for readability first), so an
//! idle long-poll holds its socket and a few bytes of state, not a 4 KiB buffer. The wire
//! rules (head, framing, chunked decoding) are the HTTP client's, from `http::parse`.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::EngineError;
use crate::http::parse::{ChunkedDecoder, Framing, ParseError, parse_head};
use crate::ws::NetStream;

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
        if let Some(done) = parse_head(&buf, false).map_err(http_err)? {
            break done;
        }
    };
    let mut body_buf = buf.split_off(head_len);
    drop(buf);
    let body = match parsed.framing {
        Framing::Empty => Vec::new(),
        Framing::Length(len) => {
            let len = match usize::try_from(len) {
                Ok(len) if len <= max_body => len,
                _ => {
                    return Err(EngineError::Http(format!(
                        "response body of {len} bytes too large"
                    )));
                }
            };
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
    let set_cookie = parsed
        .headers
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, value)| value)
        .collect();
    Ok(Reply {
        status: parsed.status,
        body,
        keep_alive: parsed.keep_alive,
        set_cookie,
    })
}

fn http_err(e: ParseError) -> EngineError {
    EngineError::Http(e.to_string())
}

fn eof() -> EngineError {
    EngineError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-body",
    ))
}

/// Reads a chunked body whose first bytes are already in `raw`. The decoder consumes data
/// as it arrives and bounds its lines, so `raw` stays small.
async fn read_chunked(
    stream: &mut NetStream,
    mut raw: Vec<u8>,
    max_body: usize,
) -> Result<Vec<u8>, EngineError> {
    let mut out = Vec::new();
    let mut decoder = ChunkedDecoder::new();
    loop {
        let mut too_large = false;
        let used = decoder
            .decode(&raw, &mut |data| {
                if out.len() + data.len() > max_body {
                    too_large = true;
                } else {
                    out.extend_from_slice(data);
                }
            })
            .map_err(http_err)?;
        if too_large {
            return Err(EngineError::Http("chunked body too large".into()));
        }
        if decoder.is_done() {
            return Ok(out);
        }
        raw.drain(..used);
        raw.reserve(FIRST_READ);
        if stream.read_buf(&mut raw).await.map_err(EngineError::Io)? == 0 {
            return Err(eof());
        }
    }
}
