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

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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
    let headers = Object::new(ctx.clone())?;
    for (k, v) in &resp.headers {
        let k = k.to_ascii_lowercase();
        if headers.contains_key(k.as_str())? {
            let prev: String = headers.get(k.as_str())?;
            headers.set(k, format!("{prev}, {v}"))?;
        } else {
            headers.set(k, v.as_str())?;
        }
    }
    let body = rquickjs::String::from_str(ctx.clone(), &String::from_utf8_lossy(&resp.body))?;
    let error = resp.error.map(|e| e.code()).unwrap_or("");
    let tm = &resp.timings;
    let mut args = rquickjs::function::Args::new(ctx.clone(), 15);
    args.push_arg(resp.status)?;
    args.push_arg(resp.status_text.as_str())?;
    args.push_arg(resp.proto)?;
    args.push_arg(headers)?;
    args.push_arg(body)?;
    args.push_arg(resp.url.as_str())?;
    args.push_arg(error)?;
    args.push_arg(resp.error_message.as_deref().unwrap_or(""))?;
    for d in [
        tm.blocked,
        tm.connecting,
        tm.tls_handshaking,
        tm.sending,
        tm.waiting,
        tm.receiving,
        tm.duration,
    ] {
        args.push_arg(ms(d))?;
    }
    make.call_arg(args)
}
