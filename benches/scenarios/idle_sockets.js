// Memory per connected idle Socket.IO user (benches/socketio_memory.py): each user opens one
// socket on the transport in __ENV.TRANSPORT, registers a handler (its JS state), and
// holds still. No login: the socket is what is measured.
// EXTRA (benches/idle_cpu.sh) adds what a waiting tv_show viewer holds besides its socket:
// 'timers' = a 10-minute setInterval and a pending waitFor with a timeout, 'http' = a
// login first (its pooled keep-alive connection), 'all' = both.
import http from 'punisher/http';
import { io } from 'punisher/socketio';
import { sleep, spread, vu } from 'punisher';

const APIS = (__ENV.API || 'http://127.0.0.1:8080').split(',');

export const options = {
  users: Number(__ENV.USERS || 1000),
  rampUp: __ENV.RAMP || '10s',
};

export default async function () {
  // MAP=spread: `spread(APIS)`, each agent on a contiguous few of the APIs; default: the
  // user's id modulo the number of APIs, every agent on all of them.
  const api = __ENV.MAP === 'spread' ? spread(APIS) : APIS[(vu.idInTest - 1) % APIS.length];
  const extra = __ENV.EXTRA || '';
  if (extra === 'http' || extra === 'all') {
    await http.post(`${api}/login`, { guest: true }, { name: 'login' });
  }
  const socket = await io(api, { transports: [__ENV.TRANSPORT || 'websocket'] });
  let questions = 0;
  socket.on('question', () => {
    questions += 1;
  });
  let poll;
  if (extra === 'timers' || extra === 'all') {
    poll = setInterval(() => {}, 600000);
    socket.waitFor('question', { timeout: '10m' }).catch(() => {});
  }
  await sleep(Number(__ENV.HOLD || 20));
  if (poll !== undefined) clearInterval(poll);
  socket.close();
}
