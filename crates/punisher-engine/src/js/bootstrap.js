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
  globalThis.console = {
    log: (...a) => p.log(1, fmt(a)),
    info: (...a) => p.log(1, fmt(a)),
    debug: (...a) => p.log(0, fmt(a)),
    warn: (...a) => p.log(2, fmt(a)),
    error: (...a) => p.log(3, fmt(a)),
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
  // Builds a response from positional values: an object literal has a fixed shape and
  // compile-time property names, cheaper than setting each property from Rust.
  const makeResponse = (status, status_text, proto, headers, body, url, error, error_message,
    blocked, connecting, tls_handshaking, sending, waiting, receiving, duration) => {
    const r = {
      status, status_text, proto, headers, body, url, error, error_code: error, error_message,
      timings: { blocked, connecting, tls_handshaking, sending, waiting, receiving, duration },
    };
    Object.setPrototypeOf(r, responseProto);
    return r;
  };
  // Runs one iteration of a user and reports its end to the engine exactly once.
  const runner = (fn, data, key) => {
    let r;
    try {
      r = fn(data);
    } catch (e) {
      p.done(key, e, true);
      return;
    }
    if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
      r.then(
        (v) => p.done(key, v, false),
        (e) => p.done(key, e, true),
      );
    } else {
      p.done(key, r, false);
    }
  };
  return { runner, responseProto, makeResponse };
})
