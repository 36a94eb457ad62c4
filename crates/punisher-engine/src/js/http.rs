//! `__punisher.http(method, url, body, params)`: one request on the calling user's client,
//! its metrics, and the response object scripts see.

use std::rc::Rc;

use bytes::Bytes;
use punisher_clients::http::{Method, Request, Response};
use rquickjs::function::Opt;
use rquickjs::{Ctx, Exception, Function, Object, Promise, Value};

use super::natives::{duration_value, js_string, run_time_only, spawn_promise, string_pairs};
use crate::metrics::HttpTags;
use crate::state::State;

type JsResult<T> = rquickjs::Result<T>;

pub(super) fn install<'js>(ctx: &Ctx<'js>, state: &Rc<State>, p: &Object<'js>) -> JsResult<()> {
    let s = state.clone();
    p.set(
        "http",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  method: String,
                  url: String,
                  body: Opt<Value<'js>>,
                  params: Opt<Value<'js>>,
                  binary: Opt<bool>|
                  -> JsResult<Promise<'js>> {
                request(
                    &s,
                    &ctx,
                    method,
                    url,
                    body.0,
                    params.0,
                    binary.0.unwrap_or(false),
                )
            },
        )?,
    )?;
    Ok(())
}

/// What a request's params ask for.
#[derive(Default)]
struct Params {
    headers: Vec<(String, String)>,
    name: Option<String>,
    timeout: Option<std::time::Duration>,
    tags: Vec<(String, String)>,
}

fn params<'js>(ctx: &Ctx<'js>, v: Option<Value<'js>>) -> JsResult<Params> {
    let mut out = Params::default();
    let Some(obj) = v.and_then(|v| v.into_object()) else {
        return Ok(out);
    };
    out.headers = string_pairs(ctx, obj.get("headers").ok())?;
    let name: Value<'js> = obj.get("name")?;
    if !name.is_undefined() && !name.is_null() {
        out.name = Some(js_string(ctx, name));
    }
    let timeout: Value<'js> = obj.get("timeout")?;
    if !timeout.is_undefined() && !timeout.is_null() {
        out.timeout = Some(
            duration_value(ctx, &timeout)
                .map_err(|e| Exception::throw_type(ctx, &format!("params.timeout: {e}")))?,
        );
    }
    out.tags = string_pairs(ctx, obj.get("tags").ok())?;
    Ok(out)
}

/// The request body: strings as is, byte arrays as bytes, other objects as JSON.
fn body<'js>(
    ctx: &Ctx<'js>,
    v: Option<Value<'js>>,
    binary: bool,
    headers: &mut Vec<(String, String)>,
) -> JsResult<Bytes> {
    let Some(v) = v.filter(|v| !v.is_undefined() && !v.is_null()) else {
        return Ok(Bytes::new());
    };
    if let Some(s) = v.as_string() {
        return Ok(Bytes::from(s.to_string()?));
    }
    if binary {
        // http.js turned an ArrayBuffer or typed array into an array of bytes (reading
        // binary buffers directly would need `unsafe`, which this workspace forbids).
        let bytes: Vec<u8> = rquickjs::FromJs::from_js(ctx, v)?;
        return Ok(Bytes::from(bytes));
    }
    if v.is_object() {
        let json = ctx
            .json_stringify(v)?
            .map(|s| s.to_string())
            .transpose()?
            .unwrap_or_default();
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            headers.push(("Content-Type".into(), "application/json".into()));
        }
        return Ok(Bytes::from(json));
    }
    Ok(Bytes::from(js_string(ctx, v)))
}

fn request<'js>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    method: String,
    url: String,
    body_value: Option<Value<'js>>,
    params_value: Option<Value<'js>>,
    binary: bool,
) -> JsResult<Promise<'js>> {
    run_time_only(state, ctx, "http requests")?;
    let method = Method::parse(&method).map_err(|e| Exception::throw_type(ctx, &e.to_string()))?;
    let mut p = params(ctx, params_value)?;
    let body = body(ctx, body_value, binary, &mut p.headers)?;
    let vu = state.current.get();
    let Some(client) = state.client_for(vu) else {
        return Err(Exception::throw_message(
            ctx,
            "http requests need a virtual user (they are not available here)",
        ));
    };
    let group = state.group_of(vu);
    let name = p.name.take().unwrap_or_else(|| url.clone());
    let req = Request {
        method,
        url,
        headers: p.headers,
        body,
        timeout: p.timeout,
    };
    let tags = p.tags;
    let st = state.clone();
    let fut = async move {
        let method = req.method.as_str().to_owned();
        let resp = client.request(req).await;
        st.metrics.borrow_mut().http(
            &HttpTags {
                name: &name,
                method: &method,
                group: group.as_deref(),
                extra: &tags,
            },
            &resp,
        );
        resp
    };
    spawn_promise(state, ctx, fut, |ctx, st, resp| {
        response_object(ctx, st, resp).map(|o| Some(o.into_value()))
    })
}

/// Timings and headers in the one string `bootstrap.js` unpacks on first read of
/// `headers` or `timings`: the seven timings in whole nanoseconds separated by `,` (integers
/// format far faster than floats; JS divides by 1e6), a `\n`, then `name\0value\0` for each
/// header, names lower-cased and repeated names joined with ", " (as k6 does). One JS string
/// instead of two objects and a property per entry.
fn packed_details(resp: &Response) -> String {
    let tm = &resp.timings;
    let mut out = String::with_capacity(
        96 + resp
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>(),
    );
    for (i, d) in [
        tm.blocked,
        tm.connecting,
        tm.tls_handshaking,
        tm.sending,
        tm.waiting,
        tm.receiving,
        tm.duration,
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            out.push(',');
        }
        push_u64(&mut out, u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }
    out.push('\n');
    for (i, (k, v)) in resp.headers.iter().enumerate() {
        let repeat = resp.headers[..i]
            .iter()
            .any(|(prev, _)| prev.eq_ignore_ascii_case(k));
        if repeat {
            continue;
        }
        let start = out.len();
        push_clean(&mut out, k);
        out[start..].make_ascii_lowercase();
        out.push('\0');
        push_clean(&mut out, v);
        for (later, more) in &resp.headers[i + 1..] {
            if later.eq_ignore_ascii_case(k) {
                out.push_str(", ");
                push_clean(&mut out, more);
            }
        }
        out.push('\0');
    }
    out
}

/// Appends `n` in decimal.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Appends `s` without NUL bytes (the separator; a parsed header never holds one).
fn push_clean(out: &mut String, s: &str) {
    if s.contains('\0') {
        out.push_str(&s.replace('\0', " "));
    } else {
        out.push_str(s);
    }
}

fn response_object<'js>(ctx: &Ctx<'js>, state: &State, resp: Response) -> JsResult<Object<'js>> {
    let make = state
        .hidden
        .borrow()
        .as_ref()
        .map(|h| h.make_response.clone());
    let Some(make) = make else {
        return Err(Exception::throw_message(ctx, "the engine is shutting down"));
    };
    let make = make.restore(ctx)?;
    let body = rquickjs::String::from_str(ctx.clone(), &String::from_utf8_lossy(&resp.body))?;
    let error = resp.error.map(|e| e.code()).unwrap_or("");
    let mut args = rquickjs::function::Args::new(ctx.clone(), 8);
    args.push_arg(resp.status)?;
    args.push_arg(resp.status_text.as_str())?;
    args.push_arg(resp.proto)?;
    args.push_arg(packed_details(&resp).as_str())?;
    args.push_arg(body)?;
    args.push_arg(resp.url.as_str())?;
    args.push_arg(error)?;
    args.push_arg(resp.error_message.as_deref().unwrap_or(""))?;
    make.construct_args(args)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn details_pack_timings_and_merged_lowercase_headers() {
        let mut resp = Response {
            status: 200,
            ..Default::default()
        };
        resp.timings.waiting = Duration::from_nanos(1_500_000);
        resp.timings.duration = Duration::from_secs(2);
        resp.headers = vec![
            ("Set-Cookie".into(), "a=1".into()),
            ("X-Odd".into(), "nul\0inside".into()),
            ("set-cookie".into(), "b=2".into()),
        ];
        assert_eq!(
            packed_details(&resp),
            "0,0,0,0,1500000,0,2000000000\nset-cookie\0a=1, b=2\0x-odd\0nul inside\0"
        );
    }
}
