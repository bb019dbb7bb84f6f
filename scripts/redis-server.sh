#!/usr/bin/env bash
# redis-server for the demo (config/examples/demo.toml runs this as a
# [[process]]): installs Debian's package first if it is missing (as root,
# or with sudo that needs no password: the balancer gives its processes no
# terminal to type one), then becomes redis-server with these arguments.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server is not installed: installing Debian's package (apt-get install -y redis-server)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server </dev/null \
        || { $sudo apt-get update -qq </dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server </dev/null; }
fi
exec redis-server "$@"
