// The `punisher` module: thin JavaScript over the engine's natives.
const p = globalThis.__punisher;

export const vu = Object.freeze(
  Object.defineProperties({}, {
    id: { get: () => p.vuId(), enumerable: true },
    idInTest: { get: () => p.vuIdInTest(), enumerable: true },
    iteration: { get: () => p.vuIteration(), enumerable: true },
  }),
);

export function sleep(seconds) {
  return p.sleep(Number(seconds));
}

export function check(value, sets) {
  let all = true;
  for (const name of Object.keys(sets || {})) {
    const f = sets[name];
    const ok = !!(typeof f === 'function' ? f(value) : f);
    p.check(name, ok);
    if (!ok) all = false;
  }
  return all;
}

export function group(name, fn) {
  p.groupEnter(String(name));
  let r;
  try {
    r = fn();
  } catch (e) {
    p.groupLeave();
    throw e;
  }
  if (r !== null && typeof r === 'object' && typeof r.then === 'function') {
    return r.then(
      (v) => {
        p.groupLeave();
        return v;
      },
      (e) => {
        p.groupLeave();
        throw e;
      },
    );
  }
  p.groupLeave();
  return r;
}

export function randomBetween(a, b) {
  if (Number.isInteger(a) && Number.isInteger(b)) {
    return a + Math.floor(Math.random() * (b - a + 1));
  }
  return a + Math.random() * (b - a);
}

class Metric {
  constructor(kind, name, isTime) {
    if (typeof name !== 'string' || name === '') throw new TypeError('a metric needs a name');
    this.name = name;
    this._h = p.metric(kind, name, !!isTime);
  }
  add(value, tags) {
    p.metricAdd(this._h, Number(value), tags);
  }
}
export class Trend extends Metric {
  constructor(name, isTime) {
    super('trend', name, isTime);
  }
}
export class Counter extends Metric {
  constructor(name) {
    super('counter', name, false);
  }
}
export class Rate extends Metric {
  constructor(name) {
    super('rate', name, false);
  }
}
export class Gauge extends Metric {
  constructor(name) {
    super('gauge', name, false);
  }
}

export function barrier(name, opts) {
  return p.barrier(String(name), opts ? opts.timeout : undefined);
}

// One of `items` for the current user, by the user's place in the test: every item gets an
// equal share of the users (within a few), and the users of one worker, so of one agent, get a
// contiguous few of the items. Spreading users over N servers this way, each agent talks to
// about N / agents of them and each server to a few agents: a server's burst of heartbeats
// wakes a few agent processes instead of all of them (benches/RESULTS.md).
export function spread(items) {
  if (!Array.isArray(items) || items.length === 0) {
    throw new TypeError('spread needs a non-empty array, e.g. spread(__ENV.API.split(\',\'))');
  }
  // The user's place in the order that deals users out to agents and workers.
  const position = p.vuPosition();
  if (position < 0) {
    throw new Error('spread picks by the current user: call it in the default function, not in init code or setup()');
  }
  return items[Math.min(items.length - 1, Math.floor(position * items.length))];
}

export function parseCSV(text, opts) {
  return p.parseCSV(String(text), !!(opts && opts.header));
}

// The rows of a data file, shared out so that no two users of the test get the same row,
// on any worker of any agent: row k belongs to the worker that owns user k (a van der
// Corput segment), so nobody coordinates. `next()` hands out this worker's rows in order.
export class SharedRows {
  #rows;
  #next = 0;
  #total;
  constructor(rows) {
    if (!Array.isArray(rows)) {
      throw new TypeError(
        "SharedRows needs an array of rows, e.g. new SharedRows(parseCSV(open('accounts.csv'), { header: true }))",
      );
    }
    this.#total = rows.length;
    this.#rows = p.ownedRows(rows.length).map((k) => rows[k]);
  }
  // Rows this worker owns.
  get length() {
    return this.#rows.length;
  }
  // Rows this worker has not handed out yet.
  get remaining() {
    return this.#rows.length - this.#next;
  }
  // Rows in the whole file (all workers of all agents).
  get total() {
    return this.#total;
  }
  next() {
    if (this.#next >= this.#rows.length) {
      throw new Error(
        `SharedRows: this worker has no rows left: it owned ${this.#rows.length} of the ${this.#total} rows ` +
          'and handed them all out (each row goes to one worker of the test and is never given twice; ' +
          'setup() and teardown() own none): add rows to the file, or check .remaining first',
      );
    }
    return this.#rows[this.#next++];
  }
}

export const open = globalThis.open;

export default { vu, sleep, check, group, randomBetween, Trend, Counter, Rate, Gauge, barrier, parseCSV, SharedRows, spread, open };
