#!/usr/bin/env bash
# The README's test command: the whole test suite on a fresh machine.
# Installs what the end-to-end tests run and the machine lacks (Debian's
# packages: redis-server and redis-cli for the game cluster and Socket.IO
# tests, node and npm to run socket.io-client, chromium for the status page
# and the browser game, openssl for the Redis TLS test, curl), then runs
# `cargo test --workspace` with any extra arguments passed on.
# `.ci/run` calls this same script.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in "curl:curl" "redis-server:redis-server" "redis-cli:redis-tools" \
    "node:nodejs" "npm:npm" "chromium:chromium" "openssl:openssl"; do
    cmd="${pair%%:*}" pkg="${pair#*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages the tests need: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

cargo test --workspace "$@"
