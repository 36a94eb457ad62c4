// Socket.IO clients for punisher-target's integration test (node + socket.io-client 4).
//
// usage: node clients.js URL
// Connects three clients: "ws" (websocket only, room "r1", logged in through /login so that
// its handshake carries the session cookie), "poll" (polling only) and "up" (polling, then
// upgraded to websocket). Each checks the `echo` ack; "ws" votes twice over the socket.
// Prints `READY` once everything is connected and upgraded, then `QUESTION <name> <json>`
// for every `question` event, and disconnects everyone and exits 0 when a line `BYE`
// arrives on stdin. Any failure prints `FAIL <reason>` and exits 1.
const { io } = require('socket.io-client');

const url = process.argv[2];
const fail = (why) => {
  console.log(`FAIL ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 30000).unref();

function connect(name, opts) {
  const socket = io(url, { reconnection: false, ...opts });
  return new Promise((resolve, reject) => {
    socket.on('connect', () => resolve(socket));
    socket.on('connect_error', (e) => reject(new Error(`${name}: ${e.message}`)));
  }).then((s) => {
    s.on('question', (q) => console.log(`QUESTION ${name} ${JSON.stringify(q)}`));
    return s;
  });
}

async function main() {
  const res = await fetch(`${url}/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ guest: true }),
  });
  if (res.status !== 200) fail(`login status ${res.status}`);
  const cookie = res.headers.get('set-cookie').split(';')[0];

  const ws = await connect('ws', {
    transports: ['websocket'],
    auth: { room: 'r1' },
    extraHeaders: { cookie },
  });
  const poll = await connect('poll', { transports: ['polling'] });
  const up = await connect('up', { transports: ['polling', 'websocket'] });
  if (up.io.engine.transport.name !== 'websocket') {
    await new Promise((resolve) => up.io.engine.once('upgrade', resolve));
  }
  if (ws.io.engine.transport.name !== 'websocket') fail('ws is not on websocket');
  if (poll.io.engine.transport.name !== 'polling') fail('poll is not on polling');

  for (const [name, s] of [['ws', ws], ['poll', poll], ['up', up]]) {
    const reply = await s.timeout(5000).emitWithAck('echo', { hello: name });
    if (JSON.stringify(reply) !== JSON.stringify({ hello: name })) {
      fail(`echo ${name}: ${JSON.stringify(reply)}`);
    }
  }
  const first = await ws.timeout(5000).emitWithAck('vote', { choice: 2 });
  if (first.ok !== true) fail(`vote: ${JSON.stringify(first)}`);
  const second = await ws.timeout(5000).emitWithAck('vote', { choice: 2 });
  if (second.ok !== false) fail(`second vote: ${JSON.stringify(second)}`);
  const anonymous = await poll.timeout(5000).emitWithAck('vote', { choice: 2 });
  if (anonymous.ok !== false) fail(`anonymous vote: ${JSON.stringify(anonymous)}`);

  console.log('READY');
  process.stdin.setEncoding('utf8');
  let input = '';
  process.stdin.on('data', (chunk) => {
    input += chunk;
    if (input.includes('BYE')) {
      ws.disconnect();
      poll.disconnect();
      up.disconnect();
      // Let the close packets leave before exiting.
      setTimeout(() => process.exit(0), 200);
    }
  });
}

main().catch((e) => fail(e.message));
