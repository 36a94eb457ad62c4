// Memory per connected idle Socket.IO user (benches/socketio_memory.py): each user opens one
// socket on the transport in __ENV.TRANSPORT, registers a handler (its JS state), and
// holds still. No login: the socket is what is measured.
import { io } from 'punisher/socketio';
import { sleep, vu } from 'punisher';

const APIS = (__ENV.API || 'http://127.0.0.1:8080').split(',');

export const options = {
  users: Number(__ENV.USERS || 1000),
  rampUp: __ENV.RAMP || '10s',
};

export default async function () {
  const api = APIS[(vu.idInTest - 1) % APIS.length];
  const socket = await io(api, { transports: [__ENV.TRANSPORT || 'websocket'] });
  let questions = 0;
  socket.on('question', () => {
    questions += 1;
  });
  await sleep(Number(__ENV.HOLD || 20));
  socket.close();
}
