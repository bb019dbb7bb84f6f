// One Socket.IO v4 server process of a cluster: the Redis adapter carries
// broadcasts between processes. Logs one JSON object per line on stdout:
// {"event":"listening","port":N}, every engine.io connection error
// (code 1 is "Session ID unknown": a polling request reached the wrong
// process), and every connection.
//
// usage: node server.js ID REDIS_URL
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const [id, redisUrl] = process.argv.slice(2);
const log = (o) => process.stdout.write(JSON.stringify({ id, ...o }) + "\n");

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, { adapter: createAdapter(pub, sub) });

  io.engine.on("connection_error", (err) => {
    log({ event: "connection_error", code: err.code, message: err.message });
  });
  io.on("connection", (socket) => {
    log({ event: "connection", transport: socket.conn.transport.name });
    socket.on("whoami", (ack) => ack(id));
    // A client asks for a broadcast: every client on every process gets it.
    socket.on("shout", (text) => io.emit("news", text));
  });

  server.listen(0, "127.0.0.1", () => log({ event: "listening", port: server.address().port }));
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  log({ event: "fatal", message: String(e && e.stack || e) });
  process.exit(1);
});
