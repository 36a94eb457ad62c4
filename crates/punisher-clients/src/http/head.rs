//! Serialising a request head: request line, our default headers, the user's headers
//! (validated so that a scenario cannot inject header lines), the merged Cookie header and
//! the body framing.

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
        // `host[:port]` exactly as serialised in the URL (brackets around IPv6, no default
        // port): a slice, so no integer formatting per request.
        push_header(out, "Host", &url[Position::BeforeHost..Position::AfterPort]);
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
        out.extend_from_slice(b"Content-Length: ");
        push_decimal(out, body_len);
        out.extend_from_slice(b"\r\n");
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

/// Appends `n` in decimal: `write!` goes through `fmt` machinery at ~300 instructions per
/// call, this is a few dozen.
fn push_decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 4096, 1_000_001, usize::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }
}
