#!/usr/bin/env bash
# Starts (or stops) a local NATS with JetStream on :4222 and etcd on :2379 for development,
# the defaults the worker and the request command read. Data and logs live in .dev/.
#   scripts/dev-services.sh        start both in the background (no-op for one already running)
#   scripts/dev-services.sh stop   stop both and keep the data
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.dev
mkdir -p "$dir"

running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

if [ "${1:-start}" = stop ]; then
  for s in nats etcd; do
    if running "$s"; then kill "$(cat "$dir/$s.pid")" && echo "stopped $s"; fi
    rm -f "$dir/$s.pid"
  done
  exit 0
fi
if [ "${1:-start}" != start ]; then
  echo "usage: $0 [start|stop]" >&2
  exit 2
fi

for bin in nats-server etcd; do
  if ! command -v "$bin" >/dev/null 2>&1; then
    pkg=$bin; [ "$bin" = etcd ] && pkg=etcd-server
    echo "$bin is missing: apt-get update && apt-get install -y $pkg" >&2
    exit 1
  fi
done

if ! running nats; then
  nats-server -js -a 127.0.0.1 -p 4222 -sd "$dir/nats" >"$dir/nats.log" 2>&1 &
  echo $! >"$dir/nats.pid"
fi
if ! running etcd; then
  etcd --data-dir "$dir/etcd" --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
fi

# Ready means: both accept TCP connections (bounded wait, no fixed sleep).
for _ in $(seq 1 100); do
  if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/2379) 2>/dev/null; then
    echo "NATS on nats://127.0.0.1:4222 (JetStream), etcd on http://127.0.0.1:2379; logs in $dir/"
    exit 0
  fi
  for s in nats etcd; do
    if ! running "$s"; then echo "$s exited:" >&2; tail -n 5 "$dir/$s.log" >&2; exit 1; fi
  done
  sleep 0.1
done
echo "NATS or etcd did not become ready within 10 s; see $dir/*.log" >&2
exit 1
