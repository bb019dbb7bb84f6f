#!/usr/bin/env bash
# Runs the whole game locally: a redis-server of its own on a free port (or
# the one in $REDIS_URL), three game backends on 127.0.0.1:9001-9003 and the
# balancer on 127.0.0.1:8080 in front (config/examples/demo.toml). Open the
# printed URL in two browser windows and play. Ctrl-C stops exactly the
# processes this script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    # The game keeps its shared state in Redis; Debian's package is enough.
    echo "redis-server is not installed: installing Debian's package (apt-get install -y redis-server)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server \
        || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; }
fi

cargo build --release -p balancer -p backend
bin=target/release

pids=()
tmp=$(mktemp -d)
cleanup() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        echo
        echo "stopping ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

"$bin/balancer" check --config config/examples/demo.toml

# Waits (bounded: 10 s) until "$@" succeeds.
wait_for() {
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gave up waiting for: $*" >&2
    return 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${REDIS_URL:-}" ]; then
    port=$((20000 + RANDOM % 20000))
    while ! port_free "$port"; do port=$((20000 + RANDOM % 20000)); done
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$tmp" --logfile "$tmp/redis.log" &
    pids+=("$!")
    REDIS_URL="redis://127.0.0.1:$port"
    wait_for redis-cli -p "$port" ping
    echo "redis-server on $REDIS_URL (nothing saved to disk)"
else
    echo "using REDIS_URL=$REDIS_URL"
fi

backend_pids=()
for i in 1 2 3; do
    "$bin/backend" --listen "127.0.0.1:900$i" --id "game-$i" --redis "$REDIS_URL" &
    pids+=("$!")
    backend_pids+=("game-$i=$!")
done
# Access-log lines are off in the demo to keep the terminal readable;
# run with RUST_LOG=info to see one line per request.
RUST_LOG="${RUST_LOG:-info,access=off}" "$bin/balancer" --config config/examples/demo.toml &
pids+=("$!")

wait_for curl -fsS -o /dev/null http://127.0.0.1:8080/readyz
echo
echo "balancer on http://127.0.0.1:8080 in front of game-1 (weight 2), game-2, game-3"
echo "round robin over 8 requests:"
for _ in $(seq 1 8); do printf '  %s\n' "$(curl -fsS http://127.0.0.1:8080/whoami)"; done
cat <<'HINT'

play: open http://127.0.0.1:8080/ in two browser windows (each window is a
      player; they may land on different processes and still play together)

try:
  kill -TERM <pid of a backend>     its players get 1012 and resume elsewhere
  curl -i http://127.0.0.1:8080/whoami
  curl -X POST --data-binary @README.md http://127.0.0.1:8080/echo
  a WebSocket echo at ws://127.0.0.1:8080/ws

Ctrl-C stops everything.
HINT
echo "backend pids: ${backend_pids[*]}"
wait
