// N socket.io-client clients with default transports (long-polling first,
// then the upgrade to WebSocket) and a cookie jar (withCredentials), through
// the balancer. Waits until every client is connected and upgraded, has one
// of them ask for a broadcast, and waits until every client got it. Bounded:
// gives up after TIMEOUT_MS. Prints one JSON summary line on stdout.
//
// usage: node clients.js URL N TIMEOUT_MS
"use strict";
const { io } = require("socket.io-client");

const [url, nText, timeoutText] = process.argv.slice(2);
const n = Number(nText);
const timeoutMs = Number(timeoutText);

const summary = { clients: n, connected: 0, upgraded: 0, received: 0, connect_errors: 0, servers: {} };
const sockets = [];
let done = false;

function finish(ok) {
  if (done) return;
  done = true;
  summary.ok = ok;
  for (const s of sockets) s.close();
  process.stdout.write(JSON.stringify(summary) + "\n");
  process.exit(0);
}

setTimeout(() => finish(false), timeoutMs);

function maybeShout() {
  if (summary.connected === n && summary.upgraded === n && !summary.shouted) {
    summary.shouted = true;
    sockets[0].emit("shout", "hello everyone");
  }
}

for (let i = 0; i < n; i++) {
  const socket = io(url, { withCredentials: true, reconnection: false, timeout: timeoutMs });
  sockets.push(socket);
  socket.on("connect_error", () => {
    summary.connect_errors++;
    // Without reconnection a failed client stays failed: once every client
    // has either connected or failed, waiting longer shows nothing new.
    if (summary.connected + summary.connect_errors === n) finish(false);
  });
  socket.on("connect", () => {
    summary.connected++;
    socket.emit("whoami", (id) => { summary.servers[id] = (summary.servers[id] || 0) + 1; });
    const engine = socket.io.engine;
    const upgraded = () => { summary.upgraded++; maybeShout(); };
    if (engine.transport.name === "websocket") upgraded();
    else engine.once("upgrade", upgraded);
  });
  socket.on("news", () => {
    summary.received++;
    if (summary.received === n) finish(true);
  });
}
