// Evaluated once per context before the scenario: globals and the hidden helpers the
// engine calls. `p` is the native object `__punisher`.
(function (p) {
  Object.defineProperty(globalThis, '__punisher', { value: p, enumerable: false, writable: false });
  const show = (x) => {
    if (typeof x === 'string') return x;
    if (x instanceof Error) return x.stack ? `${x.name}: ${x.message}\n${x.stack}` : String(x);
    try {
      const s = JSON.stringify(x);
      return s === undefined ? String(x) : s;
    } catch (_) {
      return String(x);
    }
  };
  const fmt = (args) => args.map(show).join(' ');
  // Calls a user's event handler; a throw or a rejected promise is counted against the
  // connection, never thrown into the engine.
  const callHandler = (f, self, args) => {
    try {
      const r = f.apply(self, args);
      if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
        r.then(undefined, (e) => p.connError(e));
      }
    } catch (e) {
      p.connError(e);
    }
  };
  // The event emitter of `punisher/ws` connections and `punisher/socketio` sockets.
  // Handlers are kept as one function or an array, since most events have one.
  class Emitter {
    constructor(kind) {
      this._kind = kind;
      this._h = null;
    }

    on(ev, fn) {
      if (typeof fn !== 'function') throw new TypeError(`${this._kind}.on("${ev}"): the handler must be a function`);
      const h = this._h || (this._h = Object.create(null));
      const cur = h[ev];
      if (cur === undefined) h[ev] = fn;
      else if (typeof cur === 'function') h[ev] = [cur, fn];
      else cur.push(fn);
      return this;
    }

    once(ev, fn) {
      const w = (...a) => {
        this.off(ev, w);
        return fn.apply(this, a);
      };
      w.fn = fn;
      return this.on(ev, w);
    }

    off(ev, fn) {
      const h = this._h;
      if (h === null) return this;
      if (ev === undefined) {
        this._h = null;
        return this;
      }
      const cur = h[ev];
      if (cur === undefined) return this;
      if (fn === undefined || cur === fn || cur.fn === fn) {
        delete h[ev];
      } else if (Array.isArray(cur)) {
        const i = cur.findIndex((f) => f === fn || f.fn === fn);
        if (i >= 0) cur.splice(i, 1);
        if (cur.length === 1) h[ev] = cur[0];
      }
      return this;
    }

    removeListener(ev, fn) {
      return this.off(ev, fn);
    }

    removeAllListeners(ev) {
      return this.off(ev);
    }

    listeners(ev) {
      const cur = this._h && this._h[ev];
      return cur === undefined || cur === null ? [] : typeof cur === 'function' ? [cur] : cur.slice();
    }

    hasListeners(ev) {
      return this.listeners(ev).length > 0;
    }

    _fire(ev, args) {
      const cur = this._h && this._h[ev];
      if (cur === undefined || cur === null) return;
      if (typeof cur === 'function') callHandler(cur, this, args);
      else for (const f of cur.slice()) callHandler(f, this, args);
    }
  }
  Object.defineProperty(p, 'Emitter', { value: Emitter, enumerable: false });
  // Open connections by the engine's connection id. QuickJS hashes every number map key
  // through the bits of its float64 value, so small consecutive integers (our ids) share
  // their low hash bits and pile into a few buckets: Map.get took ~2.8 us with 7,000
  // sockets open instead of ~0.2 us. The ids are scattered first (a bijection on u32).
  class ConnTable {
    constructor() {
      this._m = new Map();
    }
    get(id) {
      return this._m.get(Math.imul(id, 0x9e3779b1) >>> 0);
    }
    set(id, v) {
      this._m.set(Math.imul(id, 0x9e3779b1) >>> 0, v);
    }
    delete(id) {
      this._m.delete(Math.imul(id, 0x9e3779b1) >>> 0);
    }
  }
  Object.defineProperty(p, 'ConnTable', { value: ConnTable, enumerable: false });
  Object.defineProperty(p, 'callHandler', { value: callHandler, enumerable: false });
  globalThis.console = {
    log: (...a) => p.log(1, fmt(a)),
    info: (...a) => p.log(1, fmt(a)),
    debug: (...a) => p.log(0, fmt(a)),
    warn: (...a) => p.log(2, fmt(a)),
    error: (...a) => p.log(3, fmt(a)),
  };
  // `headers` and `timings` are built on first read: most scripts never look at them, and
  // each costs an object and a property per entry on every request. The engine hands them
  // over packed in one string under a symbol (invisible to Object.keys, for-in and JSON):
  // seven timings in nanoseconds separated by ',', then '\n', then `name\0value\0` pairs (names already
  // lower-case, repeated names already joined). A read or a write turns the accessor into an
  // ordinary own data property; toJSON keeps JSON.stringify(response) as it always was.
  const RAW = Symbol('raw');
  const TIMING_NAMES = ['blocked', 'connecting', 'tls_handshaking', 'sending', 'waiting', 'receiving', 'duration'];
  const own = (obj, name, value) => {
    Object.defineProperty(obj, name, { value, writable: true, enumerable: true, configurable: true });
    return value;
  };
  const parseHeaders = (raw) => {
    const h = {};
    let i = raw.indexOf('\n') + 1;
    while (i < raw.length) {
      const k = raw.indexOf('\0', i);
      const v = raw.indexOf('\0', k + 1);
      h[raw.slice(i, k)] = raw.slice(k + 1, v);
      i = v + 1;
    }
    return h;
  };
  const parseTimings = (raw) => {
    const parts = raw.slice(0, raw.indexOf('\n')).split(',');
    const t = {};
    for (let i = 0; i < TIMING_NAMES.length; i++) t[TIMING_NAMES[i]] = Number(parts[i]) / 1e6;
    return t;
  };
  const responseProto = {
    json() {
      try {
        return JSON.parse(this.body);
      } catch (e) {
        const start = String(this.body).slice(0, 60);
        throw new SyntaxError(
          `response of ${this.url} (status ${this.status}) is not JSON: ${e.message}; body starts with ${JSON.stringify(start)}`,
        );
      }
    },
  };
  Object.defineProperties(responseProto, {
    headers: {
      get() {
        return own(this, 'headers', this[RAW] === undefined ? undefined : parseHeaders(this[RAW]));
      },
      set(v) {
        own(this, 'headers', v);
      },
      enumerable: true,
      configurable: true,
    },
    timings: {
      get() {
        return own(this, 'timings', this[RAW] === undefined ? undefined : parseTimings(this[RAW]));
      },
      set(v) {
        own(this, 'timings', v);
      },
      enumerable: true,
      configurable: true,
    },
    toJSON: {
      value() {
        const out = {
          status: this.status, status_text: this.status_text, proto: this.proto, headers: this.headers,
          body: this.body, url: this.url, error: this.error, error_code: this.error_code,
          error_message: this.error_message, timings: this.timings,
        };
        for (const k of Object.keys(this)) if (!(k in out)) out[k] = this[k];
        return out;
      },
      writable: true,
      configurable: true,
    },
  });
  // Builds a response; the engine calls it with `new`. A constructor whose prototype is
  // `responseProto` gives every response the same shared shapes from the start, whereas
  // `Object.setPrototypeOf` on a literal gave each response a private shape (QuickJS copies
  // a shared shape on a prototype change) and made this the costliest step of a request.
  function Response(status, status_text, proto, raw, body, url, error, error_message) {
    this.status = status;
    this.status_text = status_text;
    this.proto = proto;
    this.body = body;
    this.url = url;
    this.error = error;
    this.error_code = error;
    this.error_message = error_message;
    this[RAW] = raw;
  }
  Response.prototype = responseProto;
  // Runs one iteration of a user and reports its end to the engine exactly once. An async
  // function awaiting the iteration costs less than `.then()` with two fresh closures.
  const runner = async (fn, data, key) => {
    let v;
    try {
      v = await fn(data);
    } catch (e) {
      p.done(key, e, true);
      return;
    }
    p.done(key, v, false);
  };
  return { runner, responseProto, makeResponse: Response };
})
