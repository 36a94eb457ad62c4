//! The JavaScript host of one worker: a synchronous QuickJS runtime and one full context,
//! the module loader over the [`Bundle`], the native functions behind the `punisher` and
//! `punisher/http` modules, timers, and evaluation of the scenario's init code.
//!
//! The modules themselves are small JavaScript files (`punisher.js`, `http.js`) over one
//! hidden native object `__punisher`; they are declared from source on every import, so
//! several contexts of one runtime can import them (rquickjs's `ModuleLoader` would not).

mod conns;
mod http;
mod natives;
mod socketio;
mod ws;

pub(crate) use conns::Conns;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{
    Constructor, Context, Ctx, Exception, Function, Module, Object, Persistent, Runtime, Value,
};

use crate::bundle::{Bundle, NATIVE_MODULES, is_relative, resolve};
use crate::control::Control;
use crate::error::{ScenarioError, ScriptError};
use crate::state::{Hidden, Phase, State, StateConfig};

const BOOTSTRAP_JS: &str = include_str!("bootstrap.js");
const PUNISHER_JS: &str = include_str!("punisher.js");
const HTTP_JS: &str = include_str!("http.js");
const WS_JS: &str = include_str!("ws.js");
const SOCKETIO_JS: &str = include_str!("socketio.js");

/// How long init code may run before `inspect` gives up on it.
pub(crate) const INIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Lets QuickJS's interrupt handler (called every few thousand instructions) stop script
/// code on abort or past the hard deadline, so `while (true) {}` ends too.
#[derive(Debug)]
pub(crate) struct Interrupt {
    pub(crate) control: Arc<Control>,
    /// Whether the handler has interrupted something.
    pub(crate) fired: Cell<bool>,
}

impl Interrupt {
    fn should_stop(&self) -> bool {
        let stop = self.control.should_interrupt();
        if stop {
            self.fired.set(true);
        }
        stop
    }
}

/// A runtime, its context and the worker state. Dropping it frees everything in the order
/// QuickJS needs (handles first, runtime last).
pub(crate) struct Host {
    pub(crate) state: Rc<State>,
    pub(crate) interrupt: Rc<Interrupt>,
    // Declared last: dropped after `state` released every handle in `Drop`.
    _rt: Runtime,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.state.shutdown();
    }
}

/// What the scenario's module exports, as far as the engine cares.
#[derive(Debug, Clone)]
pub(crate) struct ModuleInfo {
    pub(crate) options: serde_json::Value,
    pub(crate) has_setup: bool,
    pub(crate) has_teardown: bool,
    pub(crate) has_handle_summary: bool,
}

impl Host {
    pub(crate) fn new(
        cfg: StateConfig,
        memory_limit: usize,
        control: Arc<Control>,
    ) -> Result<Host, ScenarioError> {
        let engine = |e: rquickjs::Error| ScenarioError::Engine(e.to_string());
        let rt = Runtime::new().map_err(engine)?;
        if memory_limit > 0 {
            rt.set_memory_limit(memory_limit);
        }
        let interrupt = Rc::new(Interrupt {
            control,
            fired: Cell::new(false),
        });
        let handler = interrupt.clone();
        rt.set_interrupt_handler(Some(Box::new(move || handler.should_stop())));
        rt.set_loader(
            BundleResolver {
                bundle: cfg.bundle.clone(),
            },
            BundleLoader {
                bundle: cfg.bundle.clone(),
            },
        );
        let ctx = Context::full(&rt).map_err(engine)?;
        let state = State::new(cfg, ctx.clone());
        let installed = ctx.with(|ctx| -> rquickjs::Result<Hidden> {
            let p = natives::install(&ctx, &state)?;
            let boot: Function<'_> = ctx.eval(BOOTSTRAP_JS)?;
            let out: Object<'_> = boot.call((p,))?;
            Ok(Hidden {
                runner: Persistent::save(&ctx, out.get::<_, Function<'_>>("runner")?),
                make_response: Persistent::save(
                    &ctx,
                    out.get::<_, Constructor<'_>>("makeResponse")?,
                ),
                default_fn: None,
                setup_fn: None,
                teardown_fn: None,
                handle_summary_fn: None,
                data: None,
            })
        });
        drop(ctx);
        let hidden = installed.map_err(engine)?;
        *state.hidden.borrow_mut() = Some(hidden);
        Ok(Host {
            state,
            interrupt,
            _rt: rt,
        })
    }

    /// Evaluates the scenario's init code (the entry module and its imports) and keeps its
    /// exported functions.
    pub(crate) fn evaluate(&self) -> Result<ModuleInfo, ScenarioError> {
        let state = self.state.clone();
        let bundle = state.bundle.clone();
        let entry = bundle.entry.clone();
        let Some(source) = bundle.sources.get(&entry).cloned() else {
            return Err(ScenarioError::Read {
                path: entry,
                message: "not in the bundle".into(),
            });
        };
        state.phase.set(Phase::Init);
        let result = state
            .enter(None, |ctx| evaluate_in(ctx, &state, &entry, source))
            .unwrap_or_else(|| Err(ScenarioError::Engine("context is gone".into())));
        state.phase.set(Phase::Run);
        if result.is_err() && self.interrupt.fired.get() && !self.interrupt.control.is_aborted() {
            return Err(ScenarioError::InitTimeout(INIT_TIMEOUT));
        }
        result
    }
}

fn caught<'js>(ctx: &Ctx<'js>, state: &State, err: rquickjs::Error) -> ScriptError {
    match err {
        rquickjs::Error::Exception => state.script_error(ctx, ctx.catch()),
        other => ScriptError::plain(other.to_string()),
    }
}

fn evaluate_in<'js>(
    ctx: &Ctx<'js>,
    state: &State,
    entry: &str,
    source: String,
) -> Result<ModuleInfo, ScenarioError> {
    let script = |e| ScenarioError::Script(caught(ctx, state, e));
    let declared = Module::declare(ctx.clone(), entry, source).map_err(script)?;
    let (module, promise) = declared.eval().map_err(script)?;
    while ctx.execute_pending_job() {}
    match promise.state() {
        rquickjs::promise::PromiseState::Resolved => {}
        rquickjs::promise::PromiseState::Rejected => {
            let err = match promise.result::<Value<'_>>() {
                Some(Err(e)) => e,
                _ => rquickjs::Error::Unknown,
            };
            return Err(script(err));
        }
        rquickjs::promise::PromiseState::Pending => return Err(ScenarioError::InitPending),
    }
    let ns = module.namespace().map_err(script)?;
    let function = |name: &str| -> Result<Option<Function<'js>>, ScenarioError> {
        let v: Value<'js> = ns.get(name).map_err(script)?;
        if v.is_undefined() {
            return Ok(None);
        }
        match v.into_function() {
            Some(f) => Ok(Some(f)),
            None if name == "default" => Err(ScenarioError::NoDefault {
                entry: entry.to_owned(),
            }),
            None => Err(ScenarioError::NotAFunction {
                entry: entry.to_owned(),
                name: name.to_owned(),
            }),
        }
    };
    let default_fn = function("default")?.ok_or_else(|| ScenarioError::NoDefault {
        entry: entry.to_owned(),
    })?;
    let setup_fn = function("setup")?;
    let teardown_fn = function("teardown")?;
    let handle_summary_fn = function("handleSummary")?;
    let has_handle_summary = handle_summary_fn.is_some();
    let options_value: Value<'js> = ns.get("options").map_err(script)?;
    let options = if options_value.is_undefined() || options_value.is_null() {
        serde_json::Value::Null
    } else {
        let text = ctx
            .json_stringify(options_value)
            .map_err(|e| ScenarioError::Options {
                entry: entry.to_owned(),
                message: caught(ctx, state, e).short(),
            })?
            .and_then(|s| s.to_string().ok())
            .unwrap_or_else(|| "null".into());
        serde_json::from_str(&text).map_err(|e| ScenarioError::Options {
            entry: entry.to_owned(),
            message: e.to_string(),
        })?
    };
    state.conns.configure(&options);
    let info = ModuleInfo {
        options,
        has_setup: setup_fn.is_some(),
        has_teardown: teardown_fn.is_some(),
        has_handle_summary,
    };
    if let Some(hidden) = state.hidden.borrow_mut().as_mut() {
        hidden.default_fn = Some(Persistent::save(ctx, default_fn));
        hidden.setup_fn = setup_fn.map(|f| Persistent::save(ctx, f));
        hidden.teardown_fn = teardown_fn.map(|f| Persistent::save(ctx, f));
        hidden.handle_summary_fn = handle_summary_fn.map(|f| Persistent::save(ctx, f));
    }
    Ok(info)
}

/// Resolves imports: engine modules by name, relative paths against the importer.
struct BundleResolver {
    bundle: Arc<Bundle>,
}

impl Resolver for BundleResolver {
    fn resolve<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        if NATIVE_MODULES.contains(&name) {
            return Ok(name.to_owned());
        }
        if is_relative(name) || name.starts_with('/') {
            let path = resolve(base, name);
            if self.bundle.sources.contains_key(&path) {
                return Ok(path);
            }
            return Err(Exception::throw_message(
                ctx,
                &format!(
                    "{base}: cannot import {name:?}: {path} is not part of the scenario (was it created after the scenario was loaded?)"
                ),
            ));
        }
        Err(Exception::throw_message(
            ctx,
            &format!(
                "{base}: cannot import {name:?}: only relative paths ('./lib.js') and the modules {} can be imported",
                NATIVE_MODULES.join(", ")
            ),
        ))
    }
}

/// Loads modules: engine modules from their embedded source, the rest from the bundle.
struct BundleLoader {
    bundle: Arc<Bundle>,
}

impl Loader for BundleLoader {
    fn load<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js>> {
        let source = match name {
            "punisher" => PUNISHER_JS,
            "punisher/http" => HTTP_JS,
            "punisher/ws" => WS_JS,
            "punisher/socketio" => SOCKETIO_JS,
            _ => match self.bundle.sources.get(name) {
                Some(s) => s.as_str(),
                None => {
                    return Err(Exception::throw_message(
                        ctx,
                        &format!("module {name:?} is not part of the scenario"),
                    ));
                }
            },
        };
        Module::declare(ctx.clone(), name, source)
    }
}
