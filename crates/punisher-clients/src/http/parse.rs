//! Pure HTTP/1.1 wire parsing: the response head (through httparse), body framing
//! (RFC 9112 section 6.3) and an incremental chunked-transfer decoder. No I/O here, so
//! every rule is tested with plain byte strings split at arbitrary points.

use std::borrow::Cow;

/// The most header lines a response may carry.
const MAX_HEADERS: usize = 100;
/// The longest chunk-size or trailer line accepted, so a hostile peer cannot grow our buffer.
const MAX_CHUNK_LINE: usize = 4096;

/// Why a response could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ParseError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("invalid content-length")]
    ContentLength,
    #[error("malformed chunked body")]
    Chunked,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the peer closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) reason: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) framing: Framing,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// Parses a response head from the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the head and its length in bytes.
pub(crate) fn parse_head(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<(Head, usize)>, ParseError> {
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut raw);
    let len = match resp.parse(buf).map_err(ParseError::Head)? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(len) => len,
    };
    let status = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = minor == 0;
    let mut headers = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        // Values are nearly always ASCII: validating is cheaper than the lossy conversion.
        let value = match std::str::from_utf8(h.value) {
            Ok(v) => Cow::Borrowed(v),
            Err(_) => String::from_utf8_lossy(h.value),
        };
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .trim()
                .parse()
                .map_err(|_| ParseError::ContentLength)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ParseError::ContentLength);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // Only the last coding decides the framing (RFC 9112 section 6.3).
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && minor == 0 {
                    close = false;
                }
            }
        }
        headers.push((h.name.to_owned(), value.into_owned()));
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else if transfer_encoding {
        if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close && framing != Framing::UntilClose && status != 101;
    let head = Head {
        status,
        reason: resp.reason.unwrap_or("").to_owned(),
        minor,
        headers,
        framing,
        keep_alive,
    };
    Ok(Some((head, len)))
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// An incremental decoder for `Transfer-Encoding: chunked`.
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
}

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        Self {
            state: ChunkState::Size,
        }
    }

    /// Whether the terminating chunk and trailers were consumed.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes as much of `input` as possible, passing body data to `sink`, and returns how
    /// many bytes were consumed. Unconsumed bytes must be offered again with more appended.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        sink: &mut impl FnMut(&[u8]),
    ) -> Result<usize, ParseError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(pos);
                    };
                    pos += line.len() + 2;
                    let digits = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let size = parse_hex(trim(digits)).ok_or(ParseError::Chunked)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let n = left.min(rest.len() as u64) as usize;
                    sink(&rest[..n]);
                    pos += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ParseError::Chunked);
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(pos);
                    };
                    pos += line.len() + 2;
                    if line.is_empty() {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// The next CRLF-terminated line of `input` (without the CRLF), or `None` if incomplete.
fn take_line(input: &[u8]) -> Result<Option<&[u8]>, ParseError> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(i) if i <= MAX_CHUNK_LINE => Ok(Some(&input[..i])),
        Some(_) => Err(ParseError::Chunked),
        None if input.len() > MAX_CHUNK_LINE => Err(ParseError::Chunked),
        None => Ok(None),
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        Some(acc * 16 + (b as char).to_digit(16)? as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        parse_head(raw.as_bytes(), false).unwrap().unwrap().0
    }

    #[test]
    fn framing_rules() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(
            (h.status, h.reason.as_str(), h.framing, h.keep_alive),
            (200, "OK", Framing::Length(2), true)
        );
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = head("HTTP/1.1 304 Not Modified\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert!(!h.keep_alive);
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        let (h, _) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
    }

    #[test]
    fn head_errors_and_partials() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-", false)
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(ParseError::Head(_))
        ));
        let bad = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert_eq!(
            parse_head(bad, false).unwrap_err(),
            ParseError::ContentLength
        );
        let conflict = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            parse_head(conflict, false).unwrap_err(),
            ParseError::ContentLength
        );
        let (h, n) = parse_head(
            b"HTTP/1.1 200 OK\r\nX-A: b\r\nContent-Length: 0\r\n\r\nrest",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(n, 46);
        assert_eq!(h.headers[0], ("X-A".to_owned(), "b".to_owned()));
    }

    /// Decodes `input` fed in pieces of `step` bytes, as a socket might deliver it.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ParseError> {
        let mut dec = ChunkedDecoder::new();
        let mut body = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        while !dec.is_done() && fed < input.len() {
            let end = (fed + step).min(input.len());
            pending.extend_from_slice(&input[fed..end]);
            fed = end;
            let used = dec.decode(&pending, &mut |d| body.extend_from_slice(d))?;
            pending.drain(..used);
        }
        assert!(dec.is_done(), "decoder not done");
        Ok((body, pending.len() + input.len() - fed))
    }

    #[test]
    fn chunked_any_split() {
        let input =
            b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (body, left) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(left, 4, "step {step}");
        }
    }

    #[test]
    fn chunked_errors() {
        assert_eq!(
            decode_in_steps(b"zz\r\n", 64).unwrap_err(),
            ParseError::Chunked
        );
        assert_eq!(
            decode_in_steps(b"1\r\nabc\r\n", 64).unwrap_err(),
            ParseError::Chunked
        );
        assert_eq!(
            decode_in_steps(b"fffffffffffffffff\r\n", 64).unwrap_err(),
            ParseError::Chunked
        );
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            dec.decode(&long, &mut |_| {}).unwrap_err(),
            ParseError::Chunked
        );
    }
}
