// The `punisher/socketio` module: a socket.io-client look-alike over the engine's own
// Socket.IO client. `await io(url, opts)` resolves once the namespace is joined.
//
// One small object per socket; handlers live in a null-prototype object created on the
// first `on`. The engine delivers events through the dispatcher below, as the user that
// owns the socket, so `vu.idInTest` inside a handler is the owner's.
const p = globalThis.__punisher;

// Sockets by the engine's connection id.
const sockets = new p.ConnTable();
const RESERVED = new Set(['connect', 'connect_error', 'disconnect', 'disconnecting', 'newListener', 'removeListener']);

const isBinary = (v) => v instanceof ArrayBuffer || ArrayBuffer.isView(v);

function hasBinary(v, depth) {
  if (v === null || typeof v !== 'object' || depth > 64) return false;
  if (isBinary(v)) return true;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) if (hasBinary(v[i], depth + 1)) return true;
    return false;
  }
  if (typeof v.toJSON === 'function') return false;
  for (const k in v) {
    if (Object.prototype.hasOwnProperty.call(v, k) && hasBinary(v[k], depth + 1)) return true;
  }
  return false;
}

// Swaps binary values for placeholders, as socket.io-parser does; the bytes go beside.
function deconstruct(v, att, depth) {
  if (isBinary(v)) {
    const u8 = ArrayBuffer.isView(v) ? new Uint8Array(v.buffer, v.byteOffset, v.byteLength) : new Uint8Array(v);
    att.push(Array.from(u8));
    return { _placeholder: true, num: att.length - 1 };
  }
  if (v === null || typeof v !== 'object' || depth > 64 || typeof v.toJSON === 'function') return v;
  if (Array.isArray(v)) return v.map((x) => deconstruct(x, att, depth + 1));
  const o = {};
  for (const k of Object.keys(v)) o[k] = deconstruct(v[k], att, depth + 1);
  return o;
}

function encode(args) {
  if (!hasBinary(args, 0)) return [JSON.stringify(args), undefined];
  const att = [];
  return [JSON.stringify(deconstruct(args, att, 0)), att];
}

const ms = (v, what) => p.durationMs(v, what);

const call = p.callHandler;

function label(v) {
  return typeof v === 'number' ? `${v}ms` : String(v);
}

class Socket extends p.Emitter {
  constructor(c, id, transport, nsp, reconnects) {
    super('socket');
    this._c = c;
    this._t = undefined;
    this._r = reconnects;
    this.id = id;
    this.connected = true;
    this.transport = transport;
    this.nsp = nsp;
  }

  get disconnected() {
    return !this.connected;
  }

  // Flags the next emit with an ack timeout (socket.io-client's `socket.timeout(ms)`).
  timeout(t) {
    this._t = ms(t, 'socket.timeout()');
    return this;
  }

  emit(ev, ...args) {
    ev = String(ev);
    if (RESERVED.has(ev)) throw new Error(`"${ev}" is a reserved event name`);
    const t = this._t;
    this._t = undefined;
    if (args.length > 0 && typeof args[args.length - 1] === 'function') {
      const cb = args.pop();
      const [json, att] = encode(args);
      p.sioEmitAck(this._c, ev, json, att, t === undefined ? -1 : t).then(
        (r) => call(cb, this, t === undefined ? r : [null, ...r]),
        (e) => {
          // Without a timeout socket.io-client never calls back on failure either.
          if (t !== undefined) call(cb, this, [e]);
        },
      );
      return this;
    }
    const [json, att] = encode(args);
    p.sioEmit(this._c, ev, json, att);
    return this;
  }

  // Resolves with the first argument of the server's ack; rejects after `timeout(ms)`.
  emitWithAck(ev, ...args) {
    ev = String(ev);
    if (RESERVED.has(ev)) return Promise.reject(new Error(`"${ev}" is a reserved event name`));
    const t = this._t;
    this._t = undefined;
    const [json, att] = encode(args);
    return p.sioEmitAck(this._c, ev, json, att, t === undefined ? -1 : t).then((r) => r[0]);
  }

  send(...args) {
    return this.emit('message', ...args);
  }

  // Resolves with the first argument of the next `ev`; rejects on timeout, and when the
  // socket disconnects first (unless it reconnects by itself).
  waitFor(ev, opts) {
    ev = String(ev);
    const timeout = opts && opts.timeout !== undefined && opts.timeout !== null ? opts.timeout : undefined;
    const t = timeout === undefined ? -1 : ms(timeout, 'waitFor timeout');
    return new Promise((resolve, reject) => {
      if (!this.connected && ev !== 'disconnect' && !this._r) {
        reject(new Error(`socket is disconnected: "${ev}" will not arrive`));
        return;
      }
      let timer;
      const done = () => {
        this.off(ev, onEvent);
        this.off('disconnect', onDisconnect);
        if (timer !== undefined) clearTimeout(timer);
      };
      const onEvent = (a) => {
        done();
        resolve(a);
      };
      const onDisconnect = (reason) => {
        if (this._r && reason !== 'io client disconnect' && reason !== 'io server disconnect') return;
        done();
        reject(new Error(`socket disconnected (${reason}) while waiting for "${ev}"`));
      };
      this.on(ev, onEvent);
      if (ev !== 'disconnect') this.on('disconnect', onDisconnect);
      if (t >= 0) {
        timer = setTimeout(() => {
          done();
          reject(new Error(`waitFor("${ev}") timed out after ${label(timeout)}`));
        }, t);
      }
    });
  }

  close() {
    this.connected = false;
    p.sioClose(this._c);
    return this;
  }

  disconnect() {
    return this.close();
  }
}

p.sioInit((c, kind, a, b, d) => {
  const s = sockets.get(c);
  if (s === undefined) return;
  switch (kind) {
    case 0: // event: name, args, ack id (-1 without)
      if (d >= 0) {
        let sent = false;
        b.push((...r) => {
          if (sent) return;
          sent = true;
          const [json, att] = encode(r);
          p.sioAck(c, d, json, att);
        });
      }
      s._fire(a, b);
      break;
    case 1: // disconnect: reason
      s.connected = false;
      s._fire('disconnect', [a]);
      break;
    case 2: // reconnected: id, transport
      s.connected = true;
      s.id = a;
      s.transport = b;
      s._fire('connect', []);
      break;
    case 3: // upgraded: transport
      s.transport = a;
      break;
    case 4: // error: message
      s._fire('connect_error', [new Error(a)]);
      break;
    case 5: // the connection is gone for good
      s.connected = false;
      sockets.delete(c);
      break;
  }
});

function pairs(o) {
  if (o === undefined || o === null) return [];
  if (typeof o === 'string') {
    return o.split('&').filter(Boolean).map((kv) => {
      const i = kv.indexOf('=');
      return i < 0 ? [decodeURIComponent(kv), ''] : [decodeURIComponent(kv.slice(0, i)), decodeURIComponent(kv.slice(i + 1))];
    });
  }
  return Object.keys(o).map((k) => [k, String(o[k])]);
}

function num(v, what) {
  if (v === undefined || v === null) return undefined;
  return typeof v === 'number' ? v : ms(v, what);
}

export function io(url, opts) {
  const o = opts || {};
  let auth = o.auth;
  if (typeof auth === 'function') {
    // socket.io-client's `auth: (cb) => cb({...})`, called synchronously here.
    let got;
    auth((a) => {
      got = a;
    });
    auth = got;
  }
  const norm = {
    transports: o.transports === undefined ? undefined : Array.from(o.transports, String),
    path: o.path === undefined ? undefined : String(o.path),
    auth: auth === undefined ? undefined : auth,
    query: pairs(o.query),
    extraHeaders: pairs(o.extraHeaders),
    reconnection: o.reconnection === true,
    reconnectionAttempts: o.reconnectionAttempts === Infinity ? undefined : o.reconnectionAttempts,
    reconnectionDelay: num(o.reconnectionDelay, 'reconnectionDelay'),
    reconnectionDelayMax: num(o.reconnectionDelayMax, 'reconnectionDelayMax'),
    randomizationFactor: o.randomizationFactor,
    timeout: num(o.timeout, 'timeout'),
  };
  return p.sioConnect(String(url), JSON.stringify(norm)).then((r) => {
    const s = new Socket(r[0], r[1], r[2], r[3], r[4]);
    sockets.set(r[0], s);
    return s;
  });
}

export const connect = io;
export { Socket };
export default io;
