//! The natives behind `punisher/socketio` (`socketio.js` holds the socket.io-client-like
//! API): connect, emit, emit with ack, ack, close, and the driver task of each socket,
//! which loops on `next_event()` and dispatches into JavaScript as the socket's owner.
//!
//! Values cross as JSON text from JavaScript (binary parts already swapped for
//! `{"_placeholder":true,"num":i}`, bytes beside them) and as JavaScript values built from
//! the decoded JSON towards it, with placeholders turned into `ArrayBuffer`s.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use punisher_clients::cookies::{CookieJar, SharedJar};
use punisher_clients::engineio::Transport;
use punisher_clients::socketio::{
    self, Backoff, ClientEvent, Payload, SocketIo, SocketIoClient, SocketIoError, SocketIoOptions,
};
use rquickjs::function::Opt;
use rquickjs::{Array, ArrayBuffer, Ctx, Exception, Function, IntoJs, Object, Promise, Value};
use serde::Deserialize;
use tokio::sync::Notify;

use super::conns::{self, Closer, Ended, Metric, Module, Sample};
use super::natives::{duration_value, run_time_only, spawn_promise};
use crate::state::{State, VuKey};

type JsResult<T> = rquickjs::Result<T>;

/// What `emitWithAck` waits without `socket.timeout(ms)`: socket.io-client waits until the
/// ack or the disconnect; a day stands for "forever" without overflowing timers.
const NO_ACK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Dispatch kinds, as `socketio.js` reads them.
const EV_EVENT: i32 = 0;
const EV_DISCONNECT: i32 = 1;
const EV_CONNECT: i32 = 2;
const EV_UPGRADE: i32 = 3;
const EV_ERROR: i32 = 4;
const EV_END: i32 = 5;

/// `io()` options as `socketio.js` normalises them (durations already in ms).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IoOptions {
    transports: Option<Vec<String>>,
    path: Option<String>,
    auth: Option<serde_json::Value>,
    #[serde(default)]
    query: Vec<(String, String)>,
    #[serde(default)]
    extra_headers: Vec<(String, String)>,
    #[serde(default)]
    reconnection: bool,
    reconnection_attempts: Option<f64>,
    reconnection_delay: Option<f64>,
    reconnection_delay_max: Option<f64>,
    randomization_factor: Option<f64>,
    timeout: Option<f64>,
}

fn ms_duration(ms: f64) -> Duration {
    Duration::from_secs_f64((ms.max(0.0) / 1000.0).min(1e9))
}

/// The user's cookie jar, shared with its HTTP client (made here when HTTP was not used).
pub(super) fn jar_of(state: &State, vu: VuKey) -> Option<SharedJar> {
    let mut vus = state.vus.borrow_mut();
    let v = vus.get_mut(vu)?;
    Some(v.jar.get_or_insert_with(CookieJar::shared).clone())
}

fn options(state: &State, vu: VuKey, o: IoOptions) -> Result<SocketIoOptions, String> {
    let mut so = SocketIoOptions::new();
    // socket.io-client's default: start on polling, upgrade to websocket.
    let names = o
        .transports
        .unwrap_or_else(|| vec!["polling".into(), "websocket".into()]);
    let mut transports = Vec::with_capacity(names.len());
    for n in &names {
        match Transport::parse(n) {
            Some(t) => transports.push(t),
            None => {
                return Err(format!(
                    "unknown transport {n:?}: use 'websocket' and/or 'polling'"
                ));
            }
        }
    }
    if transports.is_empty() {
        return Err("transports must name at least one transport".into());
    }
    so.transports = transports;
    if let Some(p) = o.path {
        so.path = p;
    }
    if let Some(auth) = o.auth.filter(|a| !a.is_null()) {
        if !auth.is_object() {
            return Err("auth must be an object".into());
        }
        so.auth = Some(auth);
    }
    so.query = o.query;
    so.extra_headers = o.extra_headers;
    if o.reconnection {
        let mut b = Backoff::new();
        if let Some(n) = o
            .reconnection_attempts
            .filter(|n| n.is_finite() && *n >= 0.0)
        {
            b.max_attempts = Some(n.min(u32::MAX as f64) as u32);
        }
        if let Some(d) = o.reconnection_delay {
            b.initial = ms_duration(d);
        }
        if let Some(d) = o.reconnection_delay_max {
            b.max = ms_duration(d);
        }
        if let Some(f) = o.randomization_factor {
            b.jitter = f;
        }
        so.reconnection = Some(b);
    }
    if let Some(t) = o.timeout {
        so.timeout = ms_duration(t);
    }
    so.jar = jar_of(state, vu);
    if let Some(env) = &state.http {
        let cfg = env.shared.config();
        so.source = cfg.source_pool.as_ref().map(|p| p.next());
        so.insecure = cfg.insecure;
        so.open_connections = cfg.open_connections.clone();
    }
    so.resolver = Some(state.conns.resolver.clone());
    Ok(so)
}

pub(super) fn install<'js>(ctx: &Ctx<'js>, state: &Rc<State>, p: &Object<'js>) -> JsResult<()> {
    let s = state.clone();
    p.set(
        "sioInit",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, f: Function<'js>| {
            s.conns
                .set_dispatch(Module::SocketIo, rquickjs::Persistent::save(&ctx, f));
        })?,
    )?;
    let s = state.clone();
    p.set(
        "sioConnect",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, url: String, opts: String| -> JsResult<Promise<'js>> {
                connect(&s, &ctx, url, opts)
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "sioEmit",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  id: u32,
                  event: String,
                  json: String,
                  att: Opt<Option<Vec<Vec<u8>>>>|
                  -> JsResult<bool> {
                let Some(handle) = s.conns.socketio(id) else {
                    return Ok(false);
                };
                if !handle.connected() {
                    return Ok(false);
                }
                let payload = payload(&ctx, &json, att.0.flatten())?;
                let transport = handle.transport().as_str();
                s.conns
                    .record(&s, Metric::SioEventsSent, Sample::transport(transport), 1.0);
                tokio::task::spawn_local(async move {
                    // A failed emit is a lost connection; the driver reports it.
                    let _ = handle.emit(&event, payload).await;
                });
                Ok(true)
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "sioEmitAck",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  id: u32,
                  event: String,
                  json: String,
                  att: Opt<Option<Vec<Vec<u8>>>>,
                  timeout_ms: Opt<f64>|
                  -> JsResult<Promise<'js>> {
                emit_with_ack(&s, &ctx, id, event, json, att.0.flatten(), timeout_ms.0)
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "sioAck",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  id: u32,
                  ack: f64,
                  json: String,
                  att: Opt<Option<Vec<Vec<u8>>>>|
                  -> JsResult<()> {
                let Some(handle) = s.conns.socketio(id) else {
                    return Ok(());
                };
                let payload = payload(&ctx, &json, att.0.flatten())?;
                let ack = ack as u64;
                tokio::task::spawn_local(async move {
                    let _ = handle.ack(ack, payload).await;
                });
                Ok(())
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "sioClose",
        Function::new(ctx.clone(), move |id: u32| s.conns.close(id, false))?,
    )?;
    let s = state.clone();
    p.set(
        "connError",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, e: Value<'js>| {
            let err = s.script_error(&ctx, e);
            s.log_error_once("event handler failed", &err);
        })?,
    )?;
    p.set(
        "durationMs",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, v: Value<'js>, what: Opt<String>| -> JsResult<f64> {
                duration_value(&ctx, &v)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .map_err(|e| {
                        let what = what.0.unwrap_or_else(|| "timeout".into());
                        Exception::throw_type(&ctx, &format!("{what}: {e}"))
                    })
            },
        )?,
    )?;
    Ok(())
}

/// Arguments from `socketio.js`: a JSON array and the attachments its placeholders index.
fn payload(ctx: &Ctx<'_>, json: &str, att: Option<Vec<Vec<u8>>>) -> JsResult<Payload> {
    let args: Vec<serde_json::Value> = serde_json::from_str(json)
        .map_err(|e| Exception::throw_type(ctx, &format!("socket.io arguments: {e}")))?;
    Ok(Payload {
        args,
        attachments: att
            .unwrap_or_default()
            .into_iter()
            .map(Bytes::from)
            .collect(),
    })
}

fn error_value<'js>(ctx: &Ctx<'js>, message: &str) -> rquickjs::Error {
    match Exception::from_message(ctx.clone(), message) {
        Ok(e) => ctx.throw(e.into_value()),
        Err(e) => e,
    }
}

fn connect<'js>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    url: String,
    opts: String,
) -> JsResult<Promise<'js>> {
    run_time_only(state, ctx, "io()")?;
    let Some(vu) = state.current.get() else {
        return Err(Exception::throw_message(
            ctx,
            "io() needs a virtual user (it is not available here)",
        ));
    };
    let o: IoOptions = serde_json::from_str(&opts)
        .map_err(|e| Exception::throw_type(ctx, &format!("io() options: {e}")))?;
    let so =
        options(state, vu, o).map_err(|e| Exception::throw_type(ctx, &format!("io(): {e}")))?;
    let first = so.transports[0].as_str();
    let reconnects = so.reconnection.is_some();
    let fut = {
        let url = url.clone();
        async move { socketio::connect(&url, so).await }
    };
    let st = state.clone();
    spawn_promise(state, ctx, fut, move |ctx, _, r| match r {
        Ok((client, handle, info)) => {
            let transport = info.transport.as_str();
            st.conns.record(
                &st,
                Metric::SioConnectDuration,
                Sample::transport(transport),
                info.connect_duration.as_secs_f64() * 1000.0,
            );
            let kill = Rc::new(Notify::new());
            let ended = Rc::new(Ended::default());
            let id = st.conns.add(
                vu,
                Closer::SocketIo {
                    handle: handle.clone(),
                    kill: kill.clone(),
                    ended: ended.clone(),
                },
            );
            let driver = Driver {
                id,
                vu,
                handle: handle.clone(),
                kill,
                ended,
            };
            tokio::task::spawn_local(drive(st.clone(), driver, client));
            let out = Array::new(ctx.clone())?;
            out.set(0, id)?;
            out.set(1, info.sid.as_str())?;
            out.set(2, handle.transport().as_str())?;
            out.set(3, handle.namespace())?;
            out.set(4, reconnects)?;
            Ok(Some(out.into_value()))
        }
        Err(e) => {
            let code = e.kind().code();
            st.conns.record(
                &st,
                Metric::SioConnectErrors,
                Sample {
                    transport: Some(first),
                    extra: Some(code),
                },
                1.0,
            );
            Err(error_value(ctx, &format!("io({url}): {e}")))
        }
    })
}

fn emit_with_ack<'js>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    id: u32,
    event: String,
    json: String,
    att: Option<Vec<Vec<u8>>>,
    timeout_ms: Option<f64>,
) -> JsResult<Promise<'js>> {
    let payload = payload(ctx, &json, att)?;
    let handle = state.conns.socketio(id);
    let timeout = timeout_ms
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(ms_duration)
        .unwrap_or(NO_ACK_TIMEOUT);
    if let Some(h) = &handle
        && h.connected()
    {
        state.conns.record(
            state,
            Metric::SioEventsSent,
            Sample::transport(h.transport().as_str()),
            1.0,
        );
    }
    let fut = async move {
        let Some(handle) = handle else {
            return Err((SocketIoError::NotConnected, "websocket"));
        };
        let start = Instant::now();
        let r = handle.emit_with_ack(&event, payload, timeout).await;
        let transport = handle.transport().as_str();
        r.map(|p| (p, start.elapsed(), transport))
            .map_err(|e| (e, transport))
    };
    let st = state.clone();
    spawn_promise(state, ctx, fut, move |ctx, _, r| match r {
        Ok((payload, took, transport)) => {
            st.conns.record(
                &st,
                Metric::SioAckDuration,
                Sample::transport(transport),
                took.as_secs_f64() * 1000.0,
            );
            let args = args_array(ctx, &payload.args, &payload.attachments)?;
            Ok(Some(args.into_value()))
        }
        // socket.io-client's message, so that scripts written for it keep matching.
        Err((SocketIoError::AckTimeout(_), _)) => Err(error_value(ctx, "operation has timed out")),
        Err((e, _)) => Err(error_value(ctx, &e.to_string())),
    })
}

/// The receive time on the corrected clock (the controller's), which every agent of a run
/// shares; a stamp the target server wrote is compared with the common time.
fn unix_ms() -> f64 {
    crate::clock::unix_ms_corrected_f64()
}

/// Forgets the connection when its driver ends or is dropped.
struct Forget {
    state: Rc<State>,
    id: u32,
}

impl Drop for Forget {
    fn drop(&mut self) {
        self.state.conns.remove(self.id);
    }
}

/// What a socket's task knows about its socket.
struct Driver {
    id: u32,
    vu: VuKey,
    handle: SocketIo,
    kill: Rc<Notify>,
    ended: Rc<Ended>,
}

/// The one task of a socket: reads events until the socket is over (or killed after its
/// owner ended) and delivers them to JavaScript as the owner.
async fn drive(state: Rc<State>, d: Driver, mut client: SocketIoClient) {
    let Driver {
        id,
        vu,
        handle,
        kill,
        ended,
    } = d;
    let forget = Forget {
        state: state.clone(),
        id,
    };
    let mut disconnected = false;
    loop {
        let ev = tokio::select! {
            biased;
            _ = kill.notified() => break,
            ev = client.next_event() => ev,
        };
        let Some(ev) = ev else { break };
        if matches!(ev, ClientEvent::Disconnected { .. }) {
            disconnected = true;
        } else if matches!(ev, ClientEvent::Reconnected { .. }) {
            disconnected = false;
        }
        on_event(&state, id, vu, &handle, ev);
    }
    if !disconnected {
        // Stopped before the session reported its end: the owner's goodbye.
        state.conns.record(
            &state,
            Metric::SioDisconnects,
            Sample {
                transport: Some(handle.transport().as_str()),
                extra: Some("io client disconnect"),
            },
            1.0,
        );
    }
    drop(client);
    drop(forget);
    ended.set();
    conns::dispatch(&state, Module::SocketIo, None, |ctx| {
        Ok(vec![id.into_js(ctx)?, EV_END.into_js(ctx)?])
    });
}

fn on_event(state: &Rc<State>, id: u32, vu: VuKey, handle: &SocketIo, ev: ClientEvent) {
    let transport = handle.transport().as_str();
    let c = &state.conns;
    match ev {
        ClientEvent::Event {
            name,
            args,
            attachments,
            ack_id,
            received_at,
        } => {
            c.record(
                state,
                Metric::SioEventsReceived,
                Sample {
                    transport: Some(transport),
                    extra: Some(&name),
                },
                1.0,
            );
            let ts = {
                let field = c.ts_field();
                args.first()
                    .and_then(|a| a.get(&**field))
                    .and_then(serde_json::Value::as_f64)
            };
            if let Some(ts) = ts {
                let received = unix_ms() - received_at.elapsed().as_secs_f64() * 1000.0;
                c.record(
                    state,
                    Metric::SioEventLatency,
                    Sample {
                        transport: Some(transport),
                        extra: Some(&name),
                    },
                    (received - ts).max(0.0),
                );
            }
            conns::dispatch(state, Module::SocketIo, Some(vu), |ctx| {
                Ok(vec![
                    id.into_js(ctx)?,
                    EV_EVENT.into_js(ctx)?,
                    name.as_str().into_js(ctx)?,
                    args_array(ctx, &args, &attachments)?.into_value(),
                    ack_id.map_or(-1.0, |a| a as f64).into_js(ctx)?,
                ])
            });
        }
        ClientEvent::Disconnected { reason } => {
            c.record(
                state,
                Metric::SioDisconnects,
                Sample {
                    transport: Some(transport),
                    extra: Some(reason.as_str()),
                },
                1.0,
            );
            conns::dispatch(state, Module::SocketIo, Some(vu), |ctx| {
                Ok(vec![
                    id.into_js(ctx)?,
                    EV_DISCONNECT.into_js(ctx)?,
                    reason.as_str().into_js(ctx)?,
                ])
            });
        }
        ClientEvent::Upgraded => {
            c.record(
                state,
                Metric::SioUpgrades,
                Sample::transport(transport),
                1.0,
            );
            conns::dispatch(state, Module::SocketIo, Some(vu), |ctx| {
                Ok(vec![
                    id.into_js(ctx)?,
                    EV_UPGRADE.into_js(ctx)?,
                    transport.into_js(ctx)?,
                ])
            });
        }
        ClientEvent::Reconnected { info, .. } => {
            c.record(
                state,
                Metric::SioConnectDuration,
                Sample::transport(info.transport.as_str()),
                info.connect_duration.as_secs_f64() * 1000.0,
            );
            conns::dispatch(state, Module::SocketIo, Some(vu), |ctx| {
                Ok(vec![
                    id.into_js(ctx)?,
                    EV_CONNECT.into_js(ctx)?,
                    info.sid.as_str().into_js(ctx)?,
                    transport.into_js(ctx)?,
                ])
            });
        }
        ClientEvent::Error(SocketIoError::Upgrade(_)) => {
            // The session stays on polling, as socket.io-client's does; nothing to tell.
        }
        ClientEvent::Error(e) => {
            let message = e.to_string();
            conns::dispatch(state, Module::SocketIo, Some(vu), |ctx| {
                Ok(vec![
                    id.into_js(ctx)?,
                    EV_ERROR.into_js(ctx)?,
                    message.as_str().into_js(ctx)?,
                ])
            });
        }
        _ => {}
    }
}

/// Event arguments as a JavaScript array.
pub(super) fn args_array<'js>(
    ctx: &Ctx<'js>,
    args: &[serde_json::Value],
    att: &[Bytes],
) -> JsResult<Array<'js>> {
    let out = Array::new(ctx.clone())?;
    for (i, a) in args.iter().enumerate() {
        out.set(i, to_js(ctx, a, att)?)?;
    }
    Ok(out)
}

/// A JSON value as a JavaScript value; binary placeholders become `ArrayBuffer`s.
fn to_js<'js>(ctx: &Ctx<'js>, v: &serde_json::Value, att: &[Bytes]) -> JsResult<Value<'js>> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => Value::new_null(ctx.clone()),
        J::Bool(b) => Value::new_bool(ctx.clone(), *b),
        J::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
            Some(i) => Value::new_int(ctx.clone(), i),
            None => Value::new_number(ctx.clone(), n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => rquickjs::String::from_str(ctx.clone(), s)?.into_value(),
        J::Array(a) => args_array(ctx, a, att)?.into_value(),
        J::Object(o) => {
            if !att.is_empty()
                && let Some(bytes) = socketio::placeholder_num(v).and_then(|n| att.get(n))
            {
                return Ok(ArrayBuffer::new(ctx.clone(), bytes.to_vec())?.into_value());
            }
            let obj = Object::new(ctx.clone())?;
            for (k, x) in o {
                obj.set(k.as_str(), to_js(ctx, x, att)?)?;
            }
            obj.into_value()
        }
    })
}
