// New Socket.IO sessions per second (benches/socketio_memory.py --rate): looping users each
// open a websocket session, wait for the namespace to be joined, and close it again.
import { io } from 'punisher/socketio';
import { vu } from 'punisher';

const APIS = (__ENV.API || 'http://127.0.0.1:8080').split(',');

export const options = {
  vus: Number(__ENV.VUS || 200),
  duration: __ENV.DURATION || '20s',
};

export default async function () {
  const api = APIS[vu.id % APIS.length];
  const socket = await io(api, { transports: ['websocket'] });
  const gone = socket.waitFor('disconnect', { timeout: '10s' });
  socket.close();
  await gone;
}
