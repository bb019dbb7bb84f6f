#!/usr/bin/env bash
# Runs the demo: three backend processes on 127.0.0.1:9001-9003 behind one
# balancer on 127.0.0.1:8080 (config/examples/demo.toml). Ctrl-C stops
# exactly the processes this script started, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p balancer -p backend
bin=target/release

pids=()
cleanup() {
    trap - EXIT INT TERM
    if [ "${#pids[@]}" -gt 0 ]; then
        echo
        echo "stopping ${pids[*]}"
        kill -TERM "${pids[@]}" 2>/dev/null || true
        wait "${pids[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT INT TERM

"$bin/balancer" check --config config/examples/demo.toml

for i in 1 2 3; do
    "$bin/backend" --listen "127.0.0.1:900$i" --id "game-$i" &
    pids+=("$!")
done
# Access-log lines are off in the demo to keep the terminal readable;
# run with RUST_LOG=info to see one line per request.
RUST_LOG="${RUST_LOG:-info,access=off}" "$bin/balancer" --config config/examples/demo.toml &
pids+=("$!")

# Wait (bounded) until the balancer answers, then show what it does.
for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null http://127.0.0.1:8080/healthz 2>/dev/null; then break; fi
    sleep 0.1
done
echo
echo "balancer on http://127.0.0.1:8080 in front of game-1 (weight 2), game-2, game-3"
echo "round robin over 8 requests:"
for _ in $(seq 1 8); do printf '  %s\n' "$(curl -fsS http://127.0.0.1:8080/whoami)"; done
cat <<'HINT'

try:
  curl -i http://127.0.0.1:8080/whoami
  curl --http2-prior-knowledge http://127.0.0.1:8080/headers
  curl -X POST --data-binary @README.md http://127.0.0.1:8080/echo
  a WebSocket echo at ws://127.0.0.1:8080/ws

Ctrl-C stops everything.
HINT
wait
