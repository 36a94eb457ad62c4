//! The native functions behind `__punisher` (read by `punisher.js` and `http.js`) and the
//! globals (`setTimeout` and friends, `open`, `__ENV`).
//!
//! Every asynchronous native follows one pattern ([`spawn_promise`]): make a promise, run the
//! Rust future in a `spawn_local` task, and settle the promise through [`State::enter`] as the
//! user who started the operation.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use punisher_metrics::MetricKind;
use rquickjs::function::{Opt, Rest};
use rquickjs::{Array, Ctx, Exception, Function, Object, Persistent, Promise, Value};

use crate::bundle::resolve;
use crate::metrics::Fixed;
use crate::state::{IterationEnd, Phase, State, Timer, VuKey};

type JsResult<T> = rquickjs::Result<T>;

/// Installs the globals and returns the hidden native object.
pub(super) fn install<'js>(ctx: &Ctx<'js>, state: &Rc<State>) -> JsResult<Object<'js>> {
    let p = Object::new(ctx.clone())?;
    let g = ctx.globals();

    // __ENV
    let env = Object::new(ctx.clone())?;
    for (k, v) in &state.env {
        env.set(k.as_str(), v.as_str())?;
    }
    g.set("__ENV", env)?;

    let s = state.clone();
    p.set(
        "vuId",
        Function::new(ctx.clone(), move || vu_field(&s, |v| v.id))?,
    )?;
    let s = state.clone();
    p.set(
        "vuIdInTest",
        Function::new(ctx.clone(), move || vu_field(&s, |v| v.id_in_test))?,
    )?;
    // Where the current user sits in [0, 1) (`Segment::position`, the order that deals users
    // out to agents and workers), for `spread`; -1 outside a user.
    let s = state.clone();
    p.set(
        "vuPosition",
        Function::new(ctx.clone(), move || {
            let id = vu_field(&s, |v| v.id_in_test);
            if id < 1.0 {
                -1.0
            } else {
                punisher_core::Segment::position(id as u64 - 1)
            }
        })?,
    )?;
    let s = state.clone();
    p.set(
        "vuIteration",
        Function::new(ctx.clone(), move || vu_field(&s, |v| v.iteration))?,
    )?;

    let s = state.clone();
    p.set(
        "sleep",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, secs: f64| {
            run_time_only(&s, &ctx, "sleep()")?;
            let d = seconds(secs);
            spawn_promise(&s, &ctx, tokio::time::sleep(d), |_, _, ()| Ok(None))
        })?,
    )?;

    let s = state.clone();
    p.set(
        "check",
        Function::new(ctx.clone(), move |name: String, ok: bool| {
            let group = s.group_of(s.current.get());
            let name: Rc<str> = name.into();
            s.metrics.borrow_mut().check(&name, group.as_ref(), ok);
        })?,
    )?;

    let s = state.clone();
    p.set(
        "groupEnter",
        Function::new(ctx.clone(), move |name: String| {
            let Some(key) = s.current.get() else { return };
            if let Some(vu) = s.vus.borrow_mut().get_mut(key) {
                let parent = vu.group.as_deref().unwrap_or("");
                vu.group = Some(format!("{parent}::{name}").into());
            }
        })?,
    )?;
    let s = state.clone();
    p.set(
        "groupLeave",
        Function::new(ctx.clone(), move || {
            let Some(key) = s.current.get() else { return };
            if let Some(vu) = s.vus.borrow_mut().get_mut(key) {
                vu.group = vu
                    .group
                    .as_deref()
                    .and_then(|g| g.rfind("::").map(|i| &g[..i]))
                    .filter(|g| !g.is_empty())
                    .map(Rc::from);
            }
        })?,
    )?;

    let s = state.clone();
    p.set(
        "metric",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, kind: String, name: String, is_time: bool| -> JsResult<u32> {
                let kind = match kind.as_str() {
                    "trend" => MetricKind::Trend,
                    "counter" => MetricKind::Counter,
                    "rate" => MetricKind::Rate,
                    _ => MetricKind::Gauge,
                };
                s.metrics
                    .borrow_mut()
                    .declare(kind, &name, is_time)
                    .map_err(|e| Exception::throw_type(&ctx, &e.to_string()))
            },
        )?,
    )?;
    let s = state.clone();
    p.set(
        "metricAdd",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, handle: u32, value: f64, tags: Opt<Value<'js>>| -> JsResult<()> {
                let extra = string_pairs(&ctx, tags.0)?;
                let group = s.group_of(s.current.get());
                s.metrics
                    .borrow_mut()
                    .custom_add(handle, value, group.as_ref(), &extra)
                    .map_err(|e| Exception::throw_type(&ctx, &e.to_string()))
            },
        )?,
    )?;

    let s = state.clone();
    p.set(
        "barrier",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  name: String,
                  timeout: Opt<Value<'js>>|
                  -> JsResult<Promise<'js>> {
                run_time_only(&s, &ctx, "barrier()")?;
                let timeout = match timeout.0 {
                    Some(v) if !v.is_undefined() && !v.is_null() => {
                        Some(duration_value(&ctx, &v).map_err(|e| {
                            Exception::throw_type(&ctx, &format!("barrier timeout: {e}"))
                        })?)
                    }
                    _ => None,
                };
                let arrive = s.barriers.arrive(&name);
                // Remembered so that the hub learns, when this user leaves, which barriers
                // it passed (the others stop waiting for it).
                if let Some(key) = s.current.get()
                    && let Some(v) = s.vus.borrow_mut().get_mut(key)
                {
                    v.barriers.push(name.as_str().into());
                }
                let fut = async move {
                    match timeout {
                        Some(t) => match tokio::time::timeout(t, arrive).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err(format!(
                                "barrier {name:?} timed out after {}",
                                punisher_core::format_duration(t)
                            )),
                        },
                        None => arrive.await.map_err(|e| e.to_string()),
                    }
                };
                spawn_promise(&s, &ctx, fut, |ctx, st, r| match r {
                    Ok(()) => Ok(None),
                    Err(message) => {
                        if message.contains("timed out") {
                            st.metrics.borrow_mut().count(Fixed::BarrierTimeouts, 1.0);
                        }
                        Err(Exception::throw_message(ctx, &message))
                    }
                })
            },
        )?,
    )?;

    p.set(
        "parseCSV",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, text: String, header: bool| {
            parse_csv(&ctx, &text, header)
        })?,
    )?;

    // The indices among `0..n` of the data rows this host owns (`SharedRows`).
    let s = state.clone();
    p.set(
        "ownedRows",
        Function::new(ctx.clone(), move |n: f64| -> Vec<f64> {
            let n = if n.is_finite() && n > 0.0 {
                n as u64
            } else {
                0
            };
            s.rows.owned_below(n).map(|k| k as f64).collect()
        })?,
    )?;

    let s = state.clone();
    p.set(
        "log",
        Function::new(ctx.clone(), move |level: u32, msg: String| {
            let vu = vu_field(&s, |v| v.id_in_test);
            match level {
                0 => tracing::debug!(target: "punisher::console", worker = s.worker, vu, "{msg}"),
                1 => tracing::info!(target: "punisher::console", worker = s.worker, vu, "{msg}"),
                2 => tracing::warn!(target: "punisher::console", worker = s.worker, vu, "{msg}"),
                _ => tracing::error!(target: "punisher::console", worker = s.worker, vu, "{msg}"),
            }
        })?,
    )?;

    let s = state.clone();
    p.set(
        "done",
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>, key: f64, value: Opt<Value<'js>>, failed: Opt<bool>| {
                let Some(key) = VuKey::from_f64(key) else {
                    return;
                };
                let value = value.0.unwrap_or_else(|| Value::new_undefined(ctx.clone()));
                let end = if failed.0.unwrap_or(false) {
                    IterationEnd::Failed(s.script_error(&ctx, value))
                } else if s.vus.borrow().get(key).is_some_and(|v| v.want_result) {
                    IterationEnd::Ok(json_of(&ctx, value))
                } else {
                    IterationEnd::Ok(None)
                };
                let tx = s.vus.borrow_mut().get_mut(key).and_then(|v| v.done.take());
                if let Some(tx) = tx {
                    let _ = tx.send(end);
                }
            },
        )?,
    )?;

    super::http::install(ctx, state, &p)?;
    super::ws::install(ctx, state, &p)?;
    super::socketio::install(ctx, state, &p)?;

    // Timers.
    for (name, repeat) in [("setTimeout", false), ("setInterval", true)] {
        let s = state.clone();
        g.set(
            name,
            Function::new(
                ctx.clone(),
                move |ctx: Ctx<'js>, f: Function<'js>, ms: Opt<f64>, args: Rest<Value<'js>>| {
                    set_timer(&s, &ctx, f, ms.0.unwrap_or(0.0), args.0, repeat)
                },
            )?,
        )?;
    }
    for name in ["clearTimeout", "clearInterval"] {
        let s = state.clone();
        g.set(
            name,
            Function::new(ctx.clone(), move |id: Opt<Value<'js>>| {
                if let Some(id) = id.0.and_then(|v| v.as_number()) {
                    clear_timer(&s, id as u32);
                }
            })?,
        )?;
    }

    let s = state.clone();
    g.set(
        "open",
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, path: String| {
            open(&s, &ctx, &path)
        })?,
    )?;
    Ok(p)
}

fn vu_field(state: &State, f: impl Fn(&crate::state::VuState) -> u64) -> f64 {
    state
        .current
        .get()
        .and_then(|k| state.vus.borrow().get(k).map(&f))
        .unwrap_or(0) as f64
}

fn seconds(secs: f64) -> Duration {
    if secs.is_finite() && secs > 0.0 {
        Duration::from_secs_f64(secs.min(1e9))
    } else {
        Duration::ZERO
    }
}

pub(super) fn run_time_only(state: &State, ctx: &Ctx<'_>, what: &str) -> JsResult<()> {
    if state.phase.get() == Phase::Init {
        return Err(Exception::throw_message(
            ctx,
            &format!(
                "{what} is not available in init code (the top level of the script); call it from the default function, setup or teardown"
            ),
        ));
    }
    Ok(())
}

/// Runs `fut` in a local task and settles the returned promise as the calling user:
/// `settle` returns `Ok(Some(value))`/`Ok(None)` to resolve (with undefined) or an error to
/// reject. Nothing happens when the user ended meanwhile.
pub(super) fn spawn_promise<'js, T, F, S>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    fut: F,
    settle: S,
) -> JsResult<Promise<'js>>
where
    T: 'static,
    F: Future<Output = T> + 'static,
    S: for<'a> FnOnce(&Ctx<'a>, &State, T) -> JsResult<Option<Value<'a>>> + 'static,
{
    let (promise, resolve, reject) = ctx.promise()?;
    let resolve = Persistent::save(ctx, resolve);
    let reject = Persistent::save(ctx, reject);
    let vu = state.current.get();
    let st = state.clone();
    // Boxed so that spawning moves a pointer, not a multi-kilobyte request future.
    let fut = Box::pin(fut);
    tokio::task::spawn_local(async move {
        let out = fut.await;
        let st2 = st.clone();
        st.enter(vu, move |ctx| {
            settle_promise(ctx, &st2, resolve, reject, |ctx, st| settle(ctx, st, out))
        });
    });
    Ok(promise)
}

pub(super) fn settle_promise<'a>(
    ctx: &Ctx<'a>,
    state: &State,
    resolve: Persistent<Function<'static>>,
    reject: Persistent<Function<'static>>,
    settle: impl FnOnce(&Ctx<'a>, &State) -> JsResult<Option<Value<'a>>>,
) {
    let (Ok(resolve), Ok(reject)) = (resolve.restore(ctx), reject.restore(ctx)) else {
        return;
    };
    let _ = match settle(ctx, state) {
        Ok(Some(v)) => resolve.call::<_, ()>((v,)),
        Ok(None) => resolve.call::<_, ()>(()),
        Err(rquickjs::Error::Exception) => reject.call::<_, ()>((ctx.catch(),)),
        Err(other) => {
            let e = Exception::from_message(ctx.clone(), &other.to_string());
            match e {
                Ok(e) => reject.call::<_, ()>((e,)),
                Err(e) => Err(e),
            }
        }
    };
}

fn set_timer<'js>(
    state: &Rc<State>,
    ctx: &Ctx<'js>,
    f: Function<'js>,
    ms: f64,
    args: Vec<Value<'js>>,
    repeat: bool,
) -> JsResult<u32> {
    run_time_only(
        state,
        ctx,
        if repeat {
            "setInterval()"
        } else {
            "setTimeout()"
        },
    )?;
    let id = state.next_timer.get();
    state.next_timer.set(id.wrapping_add(1).max(1));
    let vu = state.current.get();
    let period = Duration::from_secs_f64(if ms.is_finite() {
        ms.max(0.0) / 1000.0
    } else {
        0.0
    });
    // An interval of 0 would spin the worker; browsers clamp to a few ms as well.
    let period = if repeat {
        period.max(Duration::from_millis(1))
    } else {
        period
    };
    let f = Persistent::save(ctx, f);
    let args: Vec<_> = args.into_iter().map(|a| Persistent::save(ctx, a)).collect();
    let st = state.clone();
    let task = tokio::task::spawn_local(async move {
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            if !repeat {
                forget_timer(&st, id);
            }
            let (f, args) = (f.clone(), args.clone());
            let st2 = st.clone();
            let ran = st.enter(vu, move |ctx| {
                let (Ok(f), Ok(args)) = (
                    f.restore(ctx),
                    args.into_iter()
                        .map(|a| a.restore(ctx))
                        .collect::<JsResult<Vec<_>>>(),
                ) else {
                    return;
                };
                let mut call_args = rquickjs::function::Args::new(ctx.clone(), args.len());
                for a in args {
                    let _ = call_args.push_arg(a);
                }
                if let Err(rquickjs::Error::Exception) = f.call_arg::<Value<'_>>(call_args) {
                    let err = st2.script_error(ctx, ctx.catch());
                    st2.log_error_once("timer callback failed", &err);
                }
            });
            if !repeat || ran.is_none() {
                break;
            }
            next += period;
            let now = tokio::time::Instant::now();
            if next < now {
                // Late (a busy worker): skip the missed ticks rather than bursting.
                next = now + period;
            }
        }
    });
    state.timers.borrow_mut().insert(
        id,
        Timer {
            vu,
            abort: task.abort_handle(),
        },
    );
    if let Some(key) = vu
        && let Some(v) = state.vus.borrow_mut().get_mut(key)
    {
        v.timers.push(id);
    }
    Ok(id)
}

fn forget_timer(state: &State, id: u32) -> Option<Timer> {
    let timer = state.timers.borrow_mut().remove(&id)?;
    if let Some(key) = timer.vu
        && let Some(v) = state.vus.borrow_mut().get_mut(key)
        && let Some(pos) = v.timers.iter().position(|t| *t == id)
    {
        v.timers.swap_remove(pos);
    }
    Some(timer)
}

fn clear_timer(state: &State, id: u32) {
    if let Some(t) = forget_timer(state, id) {
        t.abort.abort();
    }
}

fn open(state: &State, ctx: &Ctx<'_>, path: &str) -> JsResult<String> {
    if state.phase.get() != Phase::Init {
        return Err(Exception::throw_message(
            ctx,
            "open() is only available in init code (the top level of the script), as in k6",
        ));
    }
    // Level 0 is the innermost script frame: the module or function calling open().
    let base = ctx
        .script_or_module_name(0)
        .and_then(|a| a.to_string().ok())
        .filter(|b| state.bundle.sources.contains_key(b))
        .unwrap_or_else(|| state.bundle.entry.clone());
    let resolved = resolve(&base, path);
    if let Some(bytes) = state.bundle.files.get(&resolved) {
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    if let Some(bytes) = state.opened.borrow().get(&resolved) {
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    if !state.read_disk {
        return Err(Exception::throw_message(
            ctx,
            &format!("open({path:?}): {resolved} is not in the scenario bundle"),
        ));
    }
    match std::fs::read(&resolved) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            state.opened.borrow_mut().insert(resolved, bytes);
            Ok(text)
        }
        Err(e) => Err(Exception::throw_message(
            ctx,
            &format!("open({path:?}): cannot read {resolved}: {e}"),
        )),
    }
}

fn parse_csv<'js>(ctx: &Ctx<'js>, text: &str, header: bool) -> JsResult<Array<'js>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(header)
        .flexible(true)
        .from_reader(text.as_bytes());
    let out = Array::new(ctx.clone())?;
    let fail = |e: csv::Error| Exception::throw_message(ctx, &format!("parseCSV: {e}"));
    let headers: Vec<String> = if header {
        reader
            .headers()
            .map_err(fail)?
            .iter()
            .map(str::to_owned)
            .collect()
    } else {
        Vec::new()
    };
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(fail)?;
        if header {
            let row = Object::new(ctx.clone())?;
            for (j, field) in record.iter().enumerate() {
                match headers.get(j) {
                    Some(h) => row.set(h.as_str(), field)?,
                    None => row.set(j as u32, field)?,
                }
            }
            out.set(i, row)?;
        } else {
            let row = Array::new(ctx.clone())?;
            for (j, field) in record.iter().enumerate() {
                row.set(j, field)?;
            }
            out.set(i, row)?;
        }
    }
    Ok(out)
}

/// A JS duration: `'10s'` or milliseconds.
pub(super) fn duration_value(_ctx: &Ctx<'_>, v: &Value<'_>) -> Result<Duration, String> {
    if let Some(n) = v.as_number() {
        return punisher_core::parse_duration_value(&serde_json::json!(n))
            .map_err(|e| e.to_string());
    }
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return punisher_core::parse_duration(&s).map_err(|e| e.to_string());
    }
    Err("expected a duration like '10s' or a number of milliseconds".into())
}

/// `{k: v}` as string pairs (values converted with `String(v)`).
pub(super) fn string_pairs<'js>(
    ctx: &Ctx<'js>,
    v: Option<Value<'js>>,
) -> JsResult<Vec<(String, String)>> {
    let Some(obj) = v.and_then(|v| v.into_object()) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for prop in obj.props::<String, Value<'js>>() {
        let (k, v) = prop?;
        out.push((k, js_string(ctx, v)));
    }
    Ok(out)
}

pub(super) fn js_string<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> String {
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return s;
    }
    let string: JsResult<Function<'js>> = ctx.globals().get("String");
    string
        .and_then(|f| f.call::<_, String>((v,)))
        .unwrap_or_default()
}

fn json_of<'js>(ctx: &Ctx<'js>, v: Value<'js>) -> Option<String> {
    ctx.json_stringify(v)
        .ok()
        .flatten()
        .and_then(|s| s.to_string().ok())
}
