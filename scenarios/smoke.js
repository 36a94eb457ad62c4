// A few HTTP calls with checks and thresholds: the first thing to run against a backend.
//
//   punisher run scenarios/smoke.js --demo-target
//   punisher run scenarios/smoke.js -e API=http://127.0.0.1:8080
import http from 'punisher/http';
import { check, group, sleep } from 'punisher';

const API = __ENV.API || 'http://127.0.0.1:8080';

export const options = {
  vus: 5,
  duration: '5s',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: ['p(95)<500'],
    'http_req_duration{name:login}': ['p(99)<1000'],
    checks: ['rate>0.99'],
  },
};

export default async function () {
  await group('login', async () => {
    const res = await http.post(`${API}/login`, { guest: true }, { name: 'login' });
    check(res, {
      'login is 200': (r) => r.status === 200,
      'login sets a session': (r) => r.json().kind === 'guest',
    });
  });
  const info = await http.get(`${API}/api/info`, { name: 'info' });
  check(info, { 'info is 200': (r) => r.status === 200 });
  const timeline = await http.get(`${API}/api/timeline`, { name: 'timeline' });
  check(timeline, { 'timeline is 200': (r) => r.status === 200 });
  await sleep(0.1);
}
