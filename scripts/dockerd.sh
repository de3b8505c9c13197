#!/usr/bin/env bash
# A private Docker engine for building and running the scapgate image in tests and demos.
#
#   scripts/dockerd.sh start [DIR]   start (or reuse) the engine; prints its DOCKER_HOST
#   scripts/dockerd.sh stop  [DIR]   stop it, if this script started it
#   scripts/dockerd.sh host  [DIR]   print its DOCKER_HOST (unix://…)
#   scripts/dockerd.sh status [DIR]  exit 0 when it runs
#
# No engine runs on our machines by default, and the system's own must not be touched, so this
# one has its own data root (DIR/data, kept between runs: it holds the build cache), exec root
# and socket (short paths under /run: unix sockets are limited to 108 bytes). As DESIGN.md
# "Engines" measured: vfs storage (no overlay inside our sandboxes), no iptables, no bridge —
# containers use --network host. Installs docker.io when missing (Debian 12), like
# scripts/install-deps.sh. DIR defaults to $SCAPGATE_CACHE_DIR/dockerd
# (/var/cache/scapgate-test/dockerd).
set -euo pipefail
cmd=${1:-}
dir=${2:-${SCAPGATE_CACHE_DIR:-/var/cache/scapgate-test}/dockerd}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd -P)
run=/run/scapgate-dockerd-$(printf %s "$dir" | sha256sum | cut -c1-10)
sock=$run/docker.sock
pidfile=$run/dockerd.pid

running() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

install_engine() {
  command -v dockerd >/dev/null && return
  echo "dockerd.sh: installing docker.io" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends docker.io >/dev/null
}

start() {
  if running; then echo "unix://$sock"; return; fi
  install_engine
  mkdir -p "$run" "$dir/data"
  rm -f "$sock" "$pidfile"
  # setsid: the engine outlives this script and is not hit by the caller's Ctrl-C.
  setsid dockerd --data-root "$dir/data" --exec-root "$run/exec" -H "unix://$sock" \
    --pidfile "$pidfile" --storage-driver=vfs --iptables=false --ip-masq=false \
    --ip6tables=false --bridge=none >"$dir/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 300); do
    if DOCKER_HOST="unix://$sock" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
      echo "unix://$sock"; return
    fi
    if ! kill -0 $! 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "dockerd.sh: dockerd did not come up; last lines of $dir/dockerd.log:" >&2
  tail -n 20 "$dir/dockerd.log" >&2
  exit 1
}

stop() {
  running || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$pidfile" "$sock"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  host) echo "unix://$sock" ;;
  status) running ;;
  *) echo "usage: $0 start|stop|host|status [DIR]" >&2; exit 2 ;;
esac
