// Memory per user: session users that log in (a cookie in their jar, a keep-alive
// connection in their pool) and then hold still (benches/memory.py).
import http from 'punisher/http';
import { sleep } from 'punisher';

export const options = {
  users: Number(__ENV.USERS || 1000),
  rampUp: __ENV.RAMP || '10s',
};

export default async function () {
  await http.post(`${__ENV.API}/login`, { guest: true }, { name: 'login' });
  await sleep(Number(__ENV.HOLD || 20));
}
