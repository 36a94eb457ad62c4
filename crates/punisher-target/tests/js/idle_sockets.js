// Opens N idle Socket.IO websocket connections with raw Engine.IO frames (the `ws` module,
// a dependency of socket.io-client), answers pings, and reports progress on stdout.
//
// usage: node idle_sockets.js URL N
// Prints `CONNECTED <n>` every 1,000 sockets and `ALL <n>` when all joined the namespace;
// exits when stdin closes.
const WebSocket = require('ws');

const [url, total] = [process.argv[2].replace(/^http/, 'ws'), Number(process.argv[3])];
let connected = 0;
let failed = 0;
const sockets = [];

function open() {
  const ws = new WebSocket(`${url}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false });
  sockets.push(ws);
  ws.on('message', (data) => {
    const msg = data.toString();
    if (msg.startsWith('0')) ws.send('40');
    else if (msg === '2') ws.send('3');
    else if (msg.startsWith('40')) {
      connected += 1;
      if (connected % 1000 === 0) console.log(`CONNECTED ${connected}`);
      if (connected === total) console.log(`ALL ${connected}`);
      if (sockets.length < total) open();
    }
  });
  ws.on('error', () => {
    failed += 1;
    console.log(`FAIL socket error (${failed})`);
  });
}

// A bounded number of handshakes in flight: each success opens the next.
for (let i = 0; i < Math.min(200, total); i += 1) open();
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
