//! Serialising a request head: request line, our default headers, the user's headers
//! (validated so that a scenario cannot inject header lines), the merged Cookie header and
//! the body framing.

use std::io::Write as _;

use url::{Position, Url};

use super::{Method, is_token_byte};

/// Writes the request head into `out`. Returns whether the request asks to close the
/// connection, or why a user header cannot be sent.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    url: &Url,
    headers: &[(String, String)],
    jar_cookie: Option<&str>,
    body_len: usize,
    user_agent: &str,
) -> Result<bool, String> {
    let target = &url[Position::BeforePath..Position::AfterQuery];
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (mut has_host, mut has_ua, mut close) = (false, false, false);
    let mut cookies: Option<String> = None;
    for (name, value) in headers {
        if name.is_empty()
            || !name.bytes().all(is_token_byte)
            || value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
        {
            return Err(format!("invalid request header {name:?}"));
        }
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        if name.eq_ignore_ascii_case("cookie") {
            let c = cookies.get_or_insert_with(String::new);
            if !c.is_empty() {
                c.push_str("; ");
            }
            c.push_str(value);
            continue;
        }
        has_host |= name.eq_ignore_ascii_case("host");
        has_ua |= name.eq_ignore_ascii_case("user-agent");
        close |= name.eq_ignore_ascii_case("connection")
            && value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        push_header(out, name, value);
    }
    if !has_host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(url.host_str().unwrap_or_default().as_bytes());
        if let Some(port) = url.port() {
            // Writing into a Vec cannot fail.
            let _ = write!(out, ":{port}");
        }
        out.extend_from_slice(b"\r\n");
    }
    if !has_ua {
        push_header(out, "User-Agent", user_agent);
    }
    match (cookies, jar_cookie) {
        (Some(user), Some(jar)) => {
            out.extend_from_slice(b"Cookie: ");
            out.extend_from_slice(user.as_bytes());
            out.extend_from_slice(b"; ");
            out.extend_from_slice(jar.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (Some(only), None) => push_header(out, "Cookie", &only),
        (None, Some(only)) => push_header(out, "Cookie", only),
        (None, None) => {}
    }
    if body_len > 0 || matches!(method, Method::Post | Method::Put | Method::Patch) {
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(close)
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}
