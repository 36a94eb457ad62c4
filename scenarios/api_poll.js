// Login then polling, on an open model: a constant arrival rate of sessions, each of
// which logs in and polls the timeline a few times. Latency is measured from each
// iteration's scheduled start, so a slow backend cannot hide behind fewer requests.
//
//   punisher run scenarios/api_poll.js --demo-target
import http from 'punisher/http';
import { check, sleep, randomBetween } from 'punisher';

const API = __ENV.API || 'http://127.0.0.1:8080';
const POLLS = Number(__ENV.POLLS || 3);
const POLL_INTERVAL = Number(__ENV.POLL_INTERVAL || 0.2);

export const options = {
  rate: Number(__ENV.RATE || 50),
  timeUnit: '1s',
  duration: __ENV.DURATION || '5s',
  preAllocatedVUs: 50,
  maxVUs: 500,
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:poll}': ['p(95)<300'],
    dropped_iterations: ['count<10'],
    checks: ['rate>0.99'],
  },
};

export default async function () {
  const sns = Math.random() < 0.2;
  const body = sns ? { provider: 'sns', token: `t-${Math.floor(randomBetween(1, 1e9))}` } : { guest: true };
  const login = await http.post(`${API}/login`, body, { name: 'login' });
  check(login, { 'logged in': (r) => r.status === 200 });
  for (let i = 0; i < POLLS; i++) {
    const res = await http.get(`${API}/api/timeline`, { name: 'poll' });
    check(res, { 'poll is 200': (r) => r.status === 200 });
    await sleep(POLL_INTERVAL);
  }
}
