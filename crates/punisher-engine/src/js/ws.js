// The `punisher/ws` module: `const ws = await connect(url, params)`, then `ws.on(...)`,
// `ws.send(data)`, `ws.close()`, `await ws.waitFor(predicateOrEvent, { timeout })`.
// Handlers run as the user that opened the connection.
const p = globalThis.__punisher;

const conns = new p.ConnTable();

function pairs(o) {
  if (o === undefined || o === null) return [];
  return Object.keys(o).map((k) => [k, String(o[k])]);
}

// readyState values, as the browser's WebSocket.
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

class WebSocket extends p.Emitter {
  constructor(c, url, status, protocol) {
    super('ws');
    this._c = c;
    this.url = url;
    this.status = status;
    this.protocol = protocol;
    this.readyState = OPEN;
  }

  // Text as a string; binary as an ArrayBuffer or a typed array.
  send(data) {
    if (this.readyState !== OPEN) throw new Error('websocket is not open');
    if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) {
      const u8 = ArrayBuffer.isView(data)
        ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
        : new Uint8Array(data);
      p.wsSend(this._c, Array.from(u8));
    } else {
      p.wsSend(this._c, typeof data === 'string' ? data : String(data));
    }
  }

  close(code, reason) {
    if (this.readyState !== OPEN) return;
    this.readyState = CLOSING;
    p.wsClose(this._c, code === undefined ? undefined : Number(code), reason === undefined ? undefined : String(reason));
  }

  // `what` is an event name ('message', 'close', ...) or a predicate over messages.
  // Resolves with the event's first argument (the matching message); rejects on timeout
  // and when the connection closes first (unless waiting for 'close').
  waitFor(what, opts) {
    const timeout = opts && opts.timeout !== undefined && opts.timeout !== null ? opts.timeout : undefined;
    const t = timeout === undefined ? -1 : p.durationMs(timeout, 'waitFor timeout');
    const ev = typeof what === 'function' ? 'message' : String(what);
    const name = typeof what === 'function' ? 'a matching message' : `"${ev}"`;
    return new Promise((resolve, reject) => {
      if (this.readyState === CLOSED && ev !== 'close') {
        reject(new Error(`websocket is closed: ${name} will not arrive`));
        return;
      }
      let timer;
      const done = () => {
        this.off(ev, onEvent);
        this.off('close', onClose);
        if (timer !== undefined) clearTimeout(timer);
      };
      const onEvent = (a) => {
        if (typeof what === 'function') {
          let ok;
          try {
            ok = what(a);
          } catch (e) {
            done();
            reject(e);
            return;
          }
          if (!ok) return;
        }
        done();
        resolve(a);
      };
      const onClose = (code) => {
        done();
        reject(new Error(`websocket closed (code ${code}) while waiting for ${name}`));
      };
      this.on(ev, onEvent);
      if (ev !== 'close') this.on('close', onClose);
      if (t >= 0) {
        timer = setTimeout(() => {
          done();
          reject(new Error(`waitFor(${name}) timed out after ${typeof timeout === 'number' ? `${timeout}ms` : timeout}`));
        }, t);
      }
    });
  }
}

p.wsInit((c, kind, a, b) => {
  const w = conns.get(c);
  if (w === undefined) return;
  switch (kind) {
    case 0: // message
      w._fire('message', [a]);
      break;
    case 1: // close: code, reason
      w.readyState = CLOSED;
      w._fire('close', [a, b]);
      break;
    case 2: // error: message
      w._fire('error', [new Error(a)]);
      break;
    case 3: // gone for good
      w.readyState = CLOSED;
      conns.delete(c);
      break;
  }
});

// params: { headers, subprotocols (or protocols), timeout }
export function connect(url, params) {
  const o = params || {};
  const sub = o.subprotocols !== undefined ? o.subprotocols : o.protocols;
  const norm = {
    headers: pairs(o.headers),
    subprotocols: sub === undefined ? [] : Array.from(typeof sub === 'string' ? [sub] : sub, String),
    timeout: o.timeout === undefined || o.timeout === null ? undefined : p.durationMs(o.timeout, 'timeout'),
  };
  return p.wsConnect(String(url), JSON.stringify(norm)).then((r) => {
    const w = new WebSocket(r[0], String(url), r[1], r[2]);
    conns.set(r[0], w);
    return w;
  });
}

export { WebSocket };
export default { connect };
