//! The natives behind `punisher/ws` (`ws.js` holds the API): connect, send, close, and the
//! driver task of each connection, which reads messages and dispatches them into
//! JavaScript as the connection's owner, and writes what the script queued.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use punisher_clients::ws::{self, CloseFrame, WsConnectParams, WsConnection, WsMessage};
use rquickjs::function::Opt;
use rquickjs::{Array, ArrayBuffer, Ctx, Exception, Function, IntoJs, Object, Promise};
use serde::Deserialize;
use tokio::sync::Notify;

use super::conns::{self, CLOSE_GRACE, Closer, Ended, Metric, Module, Sample};
use super::natives::{run_time_only, spawn_promise};
use super::socketio::jar_of;
use crate::state::{State, VuKey};

type JsResult<T> = rquickjs::Result<T>;

/// Messages a script may queue on one connection before `send` throws: the driver writes
/// them as fast as the socket takes them, so only a script sending in a tight loop to a
/// stalled server reaches this.
const MAX_QUEUED: usize = 4096;

/// Dispatch kinds, as `ws.js` reads them.
const EV_MESSAGE: i32 = 0;
const EV_CLOSE: i32 = 1;
const EV_ERROR: i32 = 2;
const EV_END: i32 = 3;

/// What the script asked the driver to write.
#[derive(Default)]
pub(crate) struct WsOut {
    queue: RefCell<VecDeque<WsMessage>>,
    /// `Some` once a close was asked for, with its frame.
    close: RefCell<Option<Option<CloseFrame>>>,
    /// Stop reading right after the close frame (the owner is gone).
    drop_after: Cell<bool>,
    notify: Notify,
    /// Set when the driver ended.
    pub(crate) ended: Ended,
}

impl WsOut {
    /// Asks the driver to send a close frame (code 1000 when `None`).
    pub(crate) fn close(&self, frame: Option<CloseFrame>, drop_after: bool) {
        let mut c = self.close.borrow_mut();
        if c.is_none() {
            *c = Some(frame);
        }
        if drop_after {
            self.drop_after.set(true);
        }
        self.notify.notify_one();
    }
}

/// `connect()` params as `ws.js` normalises them.
#[derive(Debug, Deserialize)]
struct Params {
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    subprotocols: Vec<String>,
    /// Milliseconds.
    timeout: Option<f64>,
}

pub(super) fn install<'js>(ctx: &Ctx<'js>, state: &Rc<State>, p: &Object<'js>) -> JsResult<()> {
    let s = state.clone();
    p.set(
        "wsInit",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, f: Function<'js>| {
            s.conns
                .set_dispatch(Module::Ws, rquickjs::Persistent::save(&ctx, f));
        })?,
    )?;
    let s = state.clone();
    p.set(
        "wsConnect",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, url: String, params: String| -> JsResult<Promise<'js>> {
                connect(&s, &ctx, url, params)
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "wsSend",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, id: u32, data: rquickjs::Value<'js>| -> JsResult<()> {
                let Some(out) = s.conns.ws(id) else {
                    return Err(Exception::throw_message(&ctx, "websocket is closed"));
                };
                if out.close.borrow().is_some() {
                    return Err(Exception::throw_message(&ctx, "websocket is closing"));
                }
                // ws.js passes strings as they are and binary data as an array of bytes.
                let msg = match data.as_string() {
                    Some(t) => WsMessage::Text(t.to_string()?),
                    None => {
                        let b: Vec<u8> = rquickjs::FromJs::from_js(&ctx, data)?;
                        WsMessage::Binary(Bytes::from(b))
                    }
                };
                {
                    let mut q = out.queue.borrow_mut();
                    if q.len() >= MAX_QUEUED {
                        return Err(Exception::throw_message(
                            &ctx,
                            &format!("websocket send queue full ({MAX_QUEUED} messages)"),
                        ));
                    }
                    q.push_back(msg);
                }
                out.notify.notify_one();
                Ok(())
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "wsClose",
        Function::new(
            ctx.clone(),
            move |id: u32, code: Opt<Option<f64>>, reason: Opt<Option<String>>| {
                if let Some(out) = s.conns.ws(id) {
                    let frame = code.0.flatten().map(|c| CloseFrame {
                        code: c as u16,
                        reason: reason.0.flatten().unwrap_or_default(),
                    });
                    out.close(frame, false);
                }
            },
        )?,
    )?;
    Ok(())
}

fn connect<'js>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    url: String,
    params: String,
) -> JsResult<Promise<'js>> {
    run_time_only(state, ctx, "ws connect()")?;
    let Some(vu) = state.current.get() else {
        return Err(Exception::throw_message(
            ctx,
            "ws connect() needs a virtual user (it is not available here)",
        ));
    };
    let p: Params = serde_json::from_str(&params)
        .map_err(|e| Exception::throw_type(ctx, &format!("ws connect() params: {e}")))?;
    let mut wp = WsConnectParams::new();
    wp.headers = p.headers;
    wp.subprotocols = p.subprotocols;
    if let Some(t) = p.timeout.filter(|t| t.is_finite() && *t >= 0.0) {
        wp.timeout = std::time::Duration::from_secs_f64(t / 1000.0);
    }
    wp.jar = jar_of(state, vu);
    if let Some(env) = &state.http {
        let cfg = env.shared.config();
        wp.source = cfg.source_pool.as_ref().map(|p| p.next());
        wp.insecure = cfg.insecure;
        wp.open_connections = cfg.open_connections.clone();
    }
    wp.resolver = Some(state.conns.resolver.clone());
    let started = Instant::now();
    let fut = {
        let url = url.clone();
        async move { ws::connect(&url, &wp).await }
    };
    let st = state.clone();
    st.conns
        .record(state, Metric::WsSessions, Sample::default(), 1.0);
    spawn_promise(state, ctx, fut, move |ctx, _, r| match r {
        Ok((conn, hs)) => {
            st.conns.record(
                &st,
                Metric::WsConnecting,
                Sample::default(),
                hs.timings.total.as_secs_f64() * 1000.0,
            );
            let out = Rc::new(WsOut::default());
            let id = st.conns.add(vu, Closer::Ws(out.clone()));
            tokio::task::spawn_local(drive(st.clone(), id, vu, conn, out, started));
            let a = Array::new(ctx.clone())?;
            a.set(0, id)?;
            a.set(1, hs.status)?;
            a.set(2, hs.protocol.as_deref().unwrap_or(""))?;
            Ok(Some(a.into_value()))
        }
        Err(e) => {
            st.conns.record(
                &st,
                Metric::WsErrors,
                Sample {
                    transport: None,
                    extra: Some(e.kind().code()),
                },
                1.0,
            );
            let message = format!("ws connect({url}): {e}");
            Err(match Exception::from_message(ctx.clone(), &message) {
                Ok(ex) => ctx.throw(ex.into_value()),
                Err(e) => e,
            })
        }
    })
}

/// The one task of a connection: writes what the script queued, reads and dispatches
/// messages, and closes; reports `close` (and `error`) once at the end.
async fn drive(
    state: Rc<State>,
    id: u32,
    vu: VuKey,
    conn: WsConnection,
    out: Rc<WsOut>,
    started: Instant,
) {
    let (mut tx, mut rx) = conn.split();
    let mut close_sent: Option<tokio::time::Instant> = None;
    let mut code: u16 = 1006;
    let mut reason = String::new();
    let mut error: Option<String> = None;
    'run: loop {
        loop {
            let next = out.queue.borrow_mut().pop_front();
            let Some(m) = next else { break };
            match tx.send(m).await {
                Ok(()) => state
                    .conns
                    .record(&state, Metric::WsMsgsSent, Sample::default(), 1.0),
                Err(e) => {
                    error = Some(e.to_string());
                    break 'run;
                }
            }
        }
        if close_sent.is_none() {
            let frame = out.close.borrow().clone();
            if let Some(frame) = frame {
                let _ = tx.close(frame).await;
                if out.drop_after.get() {
                    break;
                }
                close_sent = Some(tokio::time::Instant::now() + CLOSE_GRACE);
            }
        }
        let deadline = close_sent;
        tokio::select! {
            biased;
            _ = out.notify.notified() => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => break,
            m = rx.next() => match m {
                None => break,
                Some(Ok(WsMessage::Close(frame))) => {
                    if let Some(f) = frame {
                        code = f.code;
                        reason = f.reason;
                    } else {
                        code = 1005;
                    }
                }
                Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_)))) => {
                    state
                        .conns
                        .record(&state, Metric::WsMsgsReceived, Sample::default(), 1.0);
                    conns::dispatch(&state, Module::Ws, Some(vu), |ctx| {
                        let data = match m {
                            WsMessage::Text(t) => t.as_str().into_js(ctx)?,
                            WsMessage::Binary(b) => {
                                ArrayBuffer::new(ctx.clone(), b.to_vec())?.into_value()
                            }
                            _ => rquickjs::Value::new_undefined(ctx.clone()),
                        };
                        Ok(vec![id.into_js(ctx)?, EV_MESSAGE.into_js(ctx)?, data])
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    error = Some(e.to_string());
                    state.conns.record(
                        &state,
                        Metric::WsErrors,
                        Sample { transport: None, extra: Some(e.kind().code()) },
                        1.0,
                    );
                    break;
                }
            },
        }
    }
    drop((tx, rx));
    out.ended.set();
    state.conns.record(
        &state,
        Metric::WsSessionDuration,
        Sample::default(),
        started.elapsed().as_secs_f64() * 1000.0,
    );
    state.conns.remove(id);
    if let Some(message) = error {
        conns::dispatch(&state, Module::Ws, Some(vu), |ctx| {
            Ok(vec![
                id.into_js(ctx)?,
                EV_ERROR.into_js(ctx)?,
                message.as_str().into_js(ctx)?,
            ])
        });
    }
    conns::dispatch(&state, Module::Ws, Some(vu), |ctx| {
        Ok(vec![
            id.into_js(ctx)?,
            EV_CLOSE.into_js(ctx)?,
            code.into_js(ctx)?,
            reason.as_str().into_js(ctx)?,
        ])
    });
    conns::dispatch(&state, Module::Ws, None, |ctx| {
        Ok(vec![id.into_js(ctx)?, EV_END.into_js(ctx)?])
    });
}
