#!/usr/bin/env bash
# Crash under load (issue 13): four game backends behind the balancer (round
# robin, active health checks every 500 ms, rise = fall = 1), wrk driving
# GET /whoami, and every 2 s one backend in turn is SIGKILLed and restarted
# on its same port 1 s later. Prints one summary line per connection count:
#
#   connections=64 requests=... non2xx=... socket_errors=connect/read/write/timeout
#   kills=... budget_exhausted=... retries=... ejections=...
#
# (on one line), the last three counted in the balancer's log.
#
# Usage: scripts/crash-under-load.sh [CONNECTIONS...]   (default: 8 64 256)
# Env:   BIN_DIR   directory with `balancer` and `backend` (default: build
#                  target/release with cargo)
#        DURATION  seconds of load per run (default 16)
#        KEEP_LOGS a directory to copy each run's logs into (default: none)
#
# Each connection count gets a fresh set of processes on free loopback
# ports. Every process this script starts is stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

conns=("$@")
[ "${#conns[@]}" -gt 0 ] || conns=(8 64 256)
duration="${DURATION:-16}"
keep_logs="${KEEP_LOGS:-}"
ids=(r1 r2 r3 r4)

if ! command -v wrk >/dev/null 2>&1; then
    # The load generator; Debian's package is enough.
    echo "wrk is not installed: installing Debian's package (apt-get install -y wrk)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
        || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; }
fi

if [ -n "${BIN_DIR:-}" ]; then
    bin="$BIN_DIR"
else
    cargo build --release -p balancer -p backend
    bin="${CARGO_TARGET_DIR:-target}/release"
fi
for b in balancer backend; do
    [ -x "$bin/$b" ] || { echo "no executable $bin/$b" >&2; exit 1; }
done

tmp=$(mktemp -d)
# PIDs of live processes: backends by slot, the balancer, wrk.
declare -A backend_pid=()
balancer_pid=""
wrk_pid=""

stop_all() {
    local p=()
    for pid in "${backend_pid[@]}" "$balancer_pid" "$wrk_pid"; do
        [ -n "$pid" ] && p+=("$pid")
    done
    if [ "${#p[@]}" -gt 0 ]; then
        kill -TERM "${p[@]}" 2>/dev/null || true
        wait "${p[@]}" 2>/dev/null || true
    fi
    backend_pid=()
    balancer_pid=""
    wrk_pid=""
}
cleanup() {
    trap - EXIT INT TERM
    stop_all
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

now_ms() { date +%s%3N; }

# Sleeps until the wall-clock time $1 (ms since the epoch), if still ahead.
sleep_until() {
    local left=$(($1 - $(now_ms)))
    if [ "$left" -gt 0 ]; then sleep "$(printf '%d.%03d' $((left / 1000)) $((left % 1000)))"; fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Picks a free loopback port not among the ones already taken ("$@").
free_port() {
    local port
    for _ in $(seq 1 1000); do
        port=$((20000 + RANDOM % 20000))
        case " $* " in *" $port "*) continue ;; esac
        if port_free "$port"; then echo "$port"; return 0; fi
    done
    echo "no free port found" >&2
    return 1
}

# Starts backend $1 (slot) on port $2 and waits (bounded) for its "listening"
# line (its log goes to $run_dir). A bind that fails (port still held) makes
# the process exit with an error: then it is started again, for at most 5 s.
start_backend() {
    local slot=$1 port=$2 log pid attempt
    local deadline=$(($(now_ms) + 5000))
    for attempt in $(seq 1 50); do
        log="$run_dir/${ids[$slot]}.$(now_ms).$attempt.log"
        "$bin/backend" --listen "127.0.0.1:$port" --id "${ids[$slot]}" --log-format json 2>"$log" &
        pid=$!
        backend_pid[$slot]=$pid
        while [ "$(now_ms)" -lt "$deadline" ]; do
            if grep -q '"message":"listening"' "$log" 2>/dev/null; then return 0; fi
            if ! kill -0 "$pid" 2>/dev/null; then break; fi
            sleep 0.02
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "${ids[$slot]} did not log \"listening\" in 5 s (see $log)" >&2
            return 1
        fi
        wait "$pid" 2>/dev/null || true
        unset "backend_pid[$slot]"
        [ "$(now_ms)" -lt "$deadline" ] || break
        sleep 0.05
    done
    echo "${ids[$slot]} could not listen on 127.0.0.1:$port:" >&2
    cat "$log" >&2
    return 1
}

# SIGKILLs backend $1 (slot) and reaps it.
kill_backend() {
    local slot=$1 pid=${backend_pid[$1]}
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "backend_pid[$slot]"
}

count() { grep -c -F "\"message\":\"$1\"" "$2" || true; }

# One run: fresh processes, $1 wrk connections. Prints the summary line.
run_dir=""
run() {
    local c=$1
    run_dir="$tmp/c$c"
    mkdir -p "$run_dir"
    local taken=() ports=() lb_port
    for slot in "${!ids[@]}"; do
        ports[$slot]=$(free_port "${taken[@]}")
        taken+=("${ports[$slot]}")
    done
    lb_port=$(free_port "${taken[@]}")

    local config="$run_dir/balancer.toml" lb_log="$run_dir/balancer.log"
    {
        printf '[[listener]]\nname = "public"\naddress = "127.0.0.1:%s"\n\n' "$lb_port"
        printf '[[pool]]\nname = "game"\npolicy = "round_robin"\n\n'
        for slot in "${!ids[@]}"; do
            printf '  [[pool.backend]]\n  id = "%s"\n  address = "127.0.0.1:%s"\n\n' "${ids[$slot]}" "${ports[$slot]}"
        done
        printf '  [pool.health]\n  path = "/healthz"\n  interval = "500ms"\n  timeout = "300ms"\n  rise = 1\n  fall = 1\n\n'
        printf '[[route]]\nlistener = "public"\npath_prefix = "/"\npool = "game"\n'
    } >"$config"
    "$bin/balancer" check --config "$config" >/dev/null

    for slot in "${!ids[@]}"; do start_backend "$slot" "${ports[$slot]}"; done
    RUST_LOG=info,access=off "$bin/balancer" --config "$config" --log-format json 2>"$lb_log" &
    balancer_pid=$!

    # Ready: /whoami answers 200 and every backend's first check passed (10 s).
    local url="http://127.0.0.1:$lb_port/whoami" deadline=$(($(now_ms) + 10000))
    until [ "$(count "backend up" "$lb_log")" -ge "${#ids[@]}" ] \
        && [ "$(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null)" = 200 ]; do
        if [ "$(now_ms)" -ge "$deadline" ] || ! kill -0 "$balancer_pid" 2>/dev/null; then
            echo "balancer not ready in 10 s (see its log below)" >&2
            cat "$lb_log" >&2
            return 1
        fi
        sleep 0.05
    done

    local wrk_out="$run_dir/wrk.txt"
    wrk -t1 -c"$c" -d"${duration}s" --timeout 5s "$url" >"$wrk_out" 2>&1 &
    wrk_pid=$!
    local start end kills=0 victim=0 k=1
    start=$(now_ms)
    end=$((start + duration * 1000))
    # The chaos schedule: kill at start + 2k s, restart at start + 2k + 1 s,
    # while the kill and the 2 s after it still fall inside the run.
    while [ $((start + (2 * k + 2) * 1000)) -le "$end" ]; do
        sleep_until $((start + 2 * k * 1000))
        kill_backend "$victim"
        kills=$((kills + 1))
        sleep_until $((start + (2 * k + 1) * 1000))
        start_backend "$victim" "${ports[$victim]}"
        victim=$(((victim + 1) % ${#ids[@]}))
        k=$((k + 1))
    done
    local rc=0
    wait "$wrk_pid" || rc=$?
    wrk_pid=""
    if [ "$rc" -ne 0 ]; then
        echo "wrk exited with $rc:" >&2
        cat "$wrk_out" >&2
        return 1
    fi

    local requests non2xx sock
    requests=$(sed -n 's/^ *\([0-9]\+\) requests in .*/\1/p' "$wrk_out")
    non2xx=$(sed -n 's/^ *Non-2xx or 3xx responses: *\([0-9]\+\).*/\1/p' "$wrk_out")
    sock=$(sed -n 's/^ *Socket errors: connect \([0-9]\+\), read \([0-9]\+\), write \([0-9]\+\), timeout \([0-9]\+\).*/\1\/\2\/\3\/\4/p' "$wrk_out")
    [ -n "$requests" ] || { echo "cannot parse wrk's output:" >&2; cat "$wrk_out" >&2; return 1; }

    echo "connections=$c requests=$requests non2xx=${non2xx:-0} socket_errors=${sock:-0/0/0/0}" \
        "kills=$kills budget_exhausted=$(count "retry budget exhausted: not retrying" "$lb_log")" \
        "retries=$(count "retrying on another backend" "$lb_log")" \
        "ejections=$(count "backend ejected" "$lb_log")"

    stop_all
    if [ -n "$keep_logs" ]; then
        mkdir -p "$keep_logs/c$c"
        cp "$run_dir"/*.log "$run_dir"/*.toml "$wrk_out" "$keep_logs/c$c/"
    fi
}

for c in "${conns[@]}"; do run "$c"; done
