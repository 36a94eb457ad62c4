// Socket.IO 4.x test server for punisher-clients' compatibility tests.
//
// Usage: node sio_server.js [pingIntervalMs pingTimeoutMs]
// Listens on 127.0.0.1:0 and prints the port as the first stdout line. Exits when stdin
// closes, so a test that dies never leaves it behind.
//
// Namespaces:
//   /       echo (acks its arguments, or emits "echo" back without ack), ask (server asks
//           the client with emitWithAck, then emits "answer" with the reply), bin (server
//           emits binary), kick (server disconnects the socket), drop (server closes the
//           Engine.IO session, as a lost connection would), silence (server stops
//           pinging this socket), broadcast (io.emit("news", ...args)), transport (acks the
//           transport name), cookies (acks the Cookie headers seen for this x-test-id),
//           tcp (acks how many TCP connections the server has accepted so far).
//   /admin  needs auth {token: "secret"}; echo acks ["admin", ...args].
const { Server } = require("socket.io");
const http = require("http");

const pingInterval = Number(process.argv[2] || 25000);
const pingTimeout = Number(process.argv[3] || 20000);

const httpServer = http.createServer();
let tcpConnections = 0;
httpServer.on("connection", () => tcpConnections++);
const io = new Server(httpServer, { pingInterval, pingTimeout, maxHttpBufferSize: 1e6 });

// Cookie headers seen per x-test-id: [{transport, method, cookie}].
const seen = new Map();
function record(req) {
  const id = req.headers["x-test-id"];
  if (!id) return;
  const url = new URL(req.url, "http://x");
  if (!seen.has(id)) seen.set(id, []);
  seen.get(id).push({
    transport: url.searchParams.get("transport"),
    method: req.method,
    cookie: req.headers.cookie || "",
  });
}
io.engine.on("initial_headers", (headers, req) => {
  record(req);
  headers["set-cookie"] = ["lb=sticky1; Path=/"];
});
io.engine.on("headers", (headers, req) => {
  // "headers" also fires for the handshake; record it once.
  const url = new URL(req.url, "http://x");
  if (url.searchParams.get("sid")) record(req);
});

io.on("connection", (socket) => {
  socket.on("echo", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack(...args);
    else socket.emit("echo", ...args);
  });
  socket.on("ask", async (what) => {
    try {
      const reply = await socket.timeout(5000).emitWithAck("question", what);
      socket.emit("answer", reply);
    } catch (e) {
      socket.emit("answer", "timeout");
    }
  });
  socket.on("bin", () => {
    socket.emit("bin", Buffer.from([1, 2, 3]), { nested: Buffer.from([4, 5]), n: 1 });
  });
  socket.on("kick", () => socket.disconnect(true));
  socket.on("drop", () => socket.conn.close());
  socket.on("silence", (ack) => {
    const conn = socket.conn;
    clearTimeout(conn.pingIntervalTimer);
    conn.pingIntervalTimer = null;
    clearTimeout(conn.pingTimeoutTimer);
    conn.pingTimeoutTimer = null;
    if (typeof ack === "function") ack("silent");
  });
  socket.on("broadcast", (...args) => io.emit("news", ...args));
  socket.on("transport", (ack) => ack(socket.conn.transport.name));
  socket.on("tcp", (ack) => ack(tcpConnections));
  socket.on("cookies", (ack) => {
    const id = socket.handshake.headers["x-test-id"];
    ack(seen.get(id) || []);
  });
});

const admin = io.of("/admin");
admin.use((socket, next) => {
  if (socket.handshake.auth && socket.handshake.auth.token === "secret") next();
  else next(new Error("not authorized"));
});
admin.on("connection", (socket) => {
  socket.on("echo", (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    if (ack) ack("admin", ...args);
  });
});

httpServer.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${httpServer.address().port}\n`);
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
