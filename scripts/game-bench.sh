#!/usr/bin/env bash
# The game under load: its own redis-server, N game backends (default 4) and
# the balancer, all on 127.0.0.1 free ports, then `loadgen` with the
# arguments given here, e.g.
#
#   scripts/game-bench.sh --players 1000 --rate 1500 --duration 20
#   BACKENDS=2 scripts/game-bench.sh --players 200 --rate 400 --json
#   DRAIN_AFTER=10 scripts/game-bench.sh --players 1000 --rate 1500 --duration 20
#
# DRAIN_AFTER=S sends SIGTERM to game-1 S seconds after loadgen starts: its
# players get 1012 and resume on the other processes.
#
# SUPERVISED=1 has the balancer run the backends itself ([pool.processes]);
# with it, RESTART_AFTER=S asks for a rolling restart of them all
# (POST /api/pools/game/restart) S seconds after loadgen starts:
#
#   SUPERVISED=1 RESTART_AFTER=5 scripts/game-bench.sh --players 1000 --rate 1500 --duration 25
#
# Everything it started is stopped by PID when loadgen ends (or on Ctrl-C).
# Results and the runs behind docs/benchmarks.md: see that page.
set -euo pipefail
cd "$(dirname "$0")/.."
backends=${BACKENDS:-4}

cargo build --release --quiet -p balancer -p backend -p benches
bin=target/release
tmp=$(mktemp -d)
pids=()
cleanup() {
    trap - EXIT INT TERM
    [ "${#pids[@]}" -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local p=$((20000 + RANDOM % 30000))
    while ! port_free "$p"; do p=$((20000 + RANDOM % 30000)); done
    echo "$p"
}
wait_for() {
    for _ in $(seq 1 100); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "gave up waiting for: $*" >&2; return 1
}

rport=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly no \
    --dir "$tmp" --logfile "$tmp/redis.log" &
pids+=("$!")
wait_for redis-cli -p "$rport" ping

# Backends and the balancer bind port 0 and report their address in their
# JSON logs: no port can be taken twice.
address_in() {
    for _ in $(seq 1 100); do
        a=$(grep -o '"address":"127.0.0.1:[0-9]*"' "$1" 2>/dev/null | head -1 | cut -d'"' -f4)
        [ -n "$a" ] && { echo "$a"; return 0; }
        sleep 0.1
    done
    echo "no address in $1" >&2; return 1
}
printf '[admin]\naddress = "127.0.0.1:0"\n\n[[listener]]\nname = "public"\naddress = "127.0.0.1:0"\n\n' > "$tmp/lb.toml"
# Least connections counts open WebSockets: every process gets its share of
# players (round robin would count each player's login request too).
printf '[[pool]]\nname = "game"\npolicy = "least_connections"\n' >> "$tmp/lb.toml"
if [ -n "${SUPERVISED:-}" ]; then
    # 2 x backends free ports in a row: the instances', then their surge ports.
    base=$(free_port)
    for _ in $(seq 1 50); do
        ok=1
        for k in $(seq 0 $((2 * backends - 1))); do port_free $((base + k)) || { ok=0; break; }; done
        [ "$ok" -eq 1 ] && break
        base=$(free_port)
    done
    printf '  [pool.processes]\n  command = ["%s", "--listen", "127.0.0.1:{port}", "--id", "{id}", "--redis", "redis://127.0.0.1:%s", "--log-format", "json"]\n' \
        "$PWD/$bin/backend" "$rport" >> "$tmp/lb.toml"
    printf '  instances = %s\n  base_port = %s\n  surge_port_offset = %s\n' "$backends" "$base" "$backends" >> "$tmp/lb.toml"
fi
for i in $(seq 1 "$backends"); do
    [ -n "${SUPERVISED:-}" ] && break
    "$bin/backend" --listen 127.0.0.1:0 --id "game-$i" --redis "redis://127.0.0.1:$rport" \
        --log-format json 2>"$tmp/backend-$i.log" &
    pids+=("$!")
    a=$(address_in "$tmp/backend-$i.log")
    printf '  [[pool.backend]]\n  id = "game-%s"\n  address = "%s"\n' "$i" "$a" >> "$tmp/lb.toml"
    wait_for curl -fsS "http://$a/readyz"
done
printf '  [pool.health]\n  path = "/readyz"\n  interval = "500ms"\n  rise = 1\n  fall = 1\n\n' >> "$tmp/lb.toml"
printf '[[route]]\nlistener = "public"\npath_prefix = "/"\npool = "game"\n\n[timeouts]\nwebsocket_idle = "none"\n' >> "$tmp/lb.toml"
RUST_LOG=info,access=off "$bin/balancer" --config "$tmp/lb.toml" --log-format json 2>"$tmp/balancer.log" &
pids+=("$!")
lb=$(address_in "$tmp/balancer.log")
admin=$(grep -o '"message":"admin listening","address":"127.0.0.1:[0-9]*"' "$tmp/balancer.log" | head -1 | cut -d'"' -f8)
wait_for curl -fsS "http://$lb/readyz"
if [ -n "${SUPERVISED:-}" ]; then
    ready() { curl -fsS "http://$admin/api/status" | grep -q "\"ready\":$backends,"; }
    wait_for ready
fi

echo "redis 127.0.0.1:$rport, $backends backends, balancer $lb" >&2
# CPU seconds (utime + stime from /proc) each part spent during the run.
cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
names=(redis)
[ -n "${SUPERVISED:-}" ] || for i in $(seq 1 "$backends"); do names+=("game-$i"); done
names+=(balancer)
before=(); for p in "${pids[@]}"; do before+=("$(cpu "$p")"); done
TIMEFORMAT="loadgen cpu %Us user + %Ss sys"
status=0
if [ -n "${RESTART_AFTER:-}" ]; then
    (sleep "$RESTART_AFTER"; echo "rolling restart of every backend" >&2
     curl -fsS -X POST -H 'X-Admin-Request: 1' "http://$admin/api/pools/game/restart" >&2; echo >&2) &
fi
if [ -n "${DRAIN_AFTER:-}" ]; then
    (sleep "$DRAIN_AFTER"; echo "draining game-1 (SIGTERM)" >&2; kill -TERM "${pids[1]}") &
fi
time "$bin/loadgen" --target "$lb" "$@" || status=$?
line="cpu s     "
for k in "${!pids[@]}"; do
    line+=" ${names[$k]} $(awk -v a="$(cpu "${pids[$k]}")" -v b="${before[$k]}" 'BEGIN { printf "%.2f", a - b }')"
done
echo "$line" >&2
if [ -n "${SUPERVISED:-}" ]; then
    echo "(supervised backends are the balancer's children: their CPU is not in these figures)" >&2
    grep -o '"message":"\(rolling restart[^"]*\|backend moved to the replacement\|instance drained: stopping it\)"[^}]*' "$tmp/balancer.log" | cut -c1-200 >&2 || true
fi
exit "$status"
