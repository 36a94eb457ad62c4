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

export function parseCSV(text, opts) {
  return p.parseCSV(String(text), !!(opts && opts.header));
}

export const open = globalThis.open;

export default { vu, sleep, check, group, randomBetween, Trend, Counter, Rate, Gauge, barrier, parseCSV, open };
