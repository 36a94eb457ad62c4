// The TV show: viewers arrive over the ramp, log in (80% guests, 20% SNS accounts),
// fetch the show info, poll the timeline every 30 s, hold a Socket.IO connection (80%
// websocket, 20% xhr-polling), wait until everyone is connected, receive one broadcast
// question and vote 5-15 s later. Ends with the sign-off thresholds.
//
//   punisher run scenarios/tv_show.js --users 2000 --ramp-up 20s --demo-target
//   punisher run scenarios/tv_show.js --users 300000 --ramp-up 30m -e API=https://show.example
//
// __ENV: API (one URL or a comma-separated list to spread users over), SNS_RATIO (0.2),
// POLLING_RATIO (0.2), POLL_INTERVAL seconds (30), VOTE_MIN / VOTE_MAX seconds (5 / 15),
// BARRIER_TIMEOUT ('10m'), QUESTION_TIMEOUT ('10m'), VOTE_VIA ('http', or 'socket': the vote is
// a Socket.IO `vote` event with an ack on the viewer's open connection, no new request),
// LEAVE ('after-vote': each viewer leaves once its vote is answered; or 'at-end': viewers keep
// the app open until every vote is in, the `voted` barrier, and then all leave at once).
import http from 'punisher/http';
import { io } from 'punisher/socketio';
import { barrier, check, randomBetween, sleep, spread, vu, Counter, Rate } from 'punisher';

const APIS = (__ENV.API || 'http://127.0.0.1:8080').split(',').map((u) => u.trim()).filter(Boolean);
const SNS_RATIO = Number(__ENV.SNS_RATIO || 0.2);
const POLLING_RATIO = Number(__ENV.POLLING_RATIO || 0.2);
const POLL_INTERVAL_MS = Number(__ENV.POLL_INTERVAL || 30) * 1000;
const VOTE_MIN = Number(__ENV.VOTE_MIN || 5);
const VOTE_MAX = Number(__ENV.VOTE_MAX || 15);
const VOTE_VIA = __ENV.VOTE_VIA || 'http';
if (VOTE_VIA !== 'http' && VOTE_VIA !== 'socket') throw new Error(`VOTE_VIA must be http or socket, not ${VOTE_VIA}`);
const LEAVE = __ENV.LEAVE || 'after-vote';
if (LEAVE !== 'after-vote' && LEAVE !== 'at-end') throw new Error(`LEAVE must be after-vote or at-end, not ${LEAVE}`);

// Every user adds exactly one sample: true when the question reached it.
const questionReceived = new Rate('question_received');
// Votes sent, either way (HTTP or Socket.IO), to compare with what the target counted.
const votesSent = new Counter('votes_sent');

export const options = {
  users: 2000,
  rampUp: '20s',
  thresholds: {
    'http_req_duration{name:vote}': ['p(99)<1000'],
    'http_req_duration{name:login}': ['p(95)<500'],
    'socketio_connect_duration': ['p(95)<1000'],
    http_req_failed: ['rate<0.01'],
    question_received: ['rate==1'],
    barrier_timeouts: ['count==0'],
    checks: ['rate>0.99'],
  },
};

export default async function () {
  // Each URL gets an equal share of the users and each agent a contiguous few of the URLs,
  // so that one server's burst of heartbeats wakes a few agents, not all of them.
  const api = spread(APIS);
  const sns = Math.random() < SNS_RATIO;
  const login = await http.post(
    `${api}/login`,
    sns ? { provider: 'sns', token: `sns-${vu.idInTest}` } : { guest: true },
    { name: 'login', tags: { kind: sns ? 'sns' : 'guest' } },
  );
  if (!check(login, { 'logged in': (r) => r.status === 200 })) {
    questionReceived.add(false);
    return;
  }

  const info = await http.get(`${api}/api/info`, { name: 'info' });
  check(info, { 'info is 200': (r) => r.status === 200 });

  const poll = setInterval(() => http.get(`${api}/api/timeline`, { name: 'poll' }), POLL_INTERVAL_MS);
  const transport = Math.random() < POLLING_RATIO ? 'polling' : 'websocket';
  let socket;
  let received = false;
  try {
    socket = await io(api, { transports: [transport] });
    const question = socket.waitFor('question', { timeout: __ENV.QUESTION_TIMEOUT || '10m' });
    await barrier('connected', { timeout: __ENV.BARRIER_TIMEOUT || '10m' });
    if (vu.idInTest === 1) {
      const sent = await http.post(`${api}/admin/broadcast`, { question: 'Who wins tonight?' }, { name: 'broadcast' });
      check(sent, { 'broadcast sent': (r) => r.status === 200 });
    }
    const q = await question;
    received = true;
    await sleep(randomBetween(VOTE_MIN, VOTE_MAX));
    const choice = (q.id + vu.idInTest) % 4;
    votesSent.add(1);
    if (VOTE_VIA === 'socket') {
      // A lost or late ack is a failed check, like a failed HTTP vote, not an exception.
      const ack = await socket.timeout(60_000).emitWithAck('vote', { choice }).catch(() => null);
      check(ack, { 'vote accepted': (a) => a && a.ok === true });
    } else {
      const vote = await http.post(`${api}/api/vote`, { choice }, { name: 'vote' });
      check(vote, { 'vote accepted': (r) => r.status === 200 });
    }
    if (LEAVE === 'at-end') await barrier('voted', { timeout: __ENV.BARRIER_TIMEOUT || '10m' });
  } finally {
    questionReceived.add(received);
    clearInterval(poll);
    if (socket) socket.close();
  }
}
