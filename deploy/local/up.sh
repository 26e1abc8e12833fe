#!/usr/bin/env bash
# `make up`: installs what is missing, starts Kafka, anvil, btcd and Prometheus on the
# contract's ports, starts the watcher against them, and sends a demo deposit so you
# can watch its events arrive in Kafka.
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/local/bootstrap.sh
python3 deploy/local/devstack.py up

run=.stack/run; mkdir -p "$run" .stack/logs
pidfile=$run/watcher.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "watcher: already running (pid $(cat "$pidfile"))"
else
  nohup .venv/bin/watcher run --config config/local.yaml > .stack/logs/watcher.log 2>&1 &
  echo $! > "$pidfile"
  echo "watcher: started (pid $!), log .stack/logs/watcher.log"
fi
# Traffic starts before the wait: after a kill -9 a node can restart a block or two behind
# the watcher's checkpoint, and the watcher waits until the chain passes it (then reverts
# what the lost blocks held, as for any reorg); the traffic's blocks are what pass it.
traffic_pid=$run/traffic.pid
if [ -f "$traffic_pid" ] && kill -0 "$(cat "$traffic_pid")" 2>/dev/null; then
  echo "traffic: already running (pid $(cat "$traffic_pid"))"
else
  nohup .venv/bin/python deploy/local/traffic.py > .stack/logs/traffic.log 2>&1 &
  echo $! > "$traffic_pid"
  echo "traffic: ETH, TKN and BTC deposits every 3 s, a new registration every 30 s, a reorg every 75 s (log .stack/logs/traffic.log)"
fi
for _ in $(seq 1 120); do
  if curl -fsS http://127.0.0.1:9308/readyz >/dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "watcher: exited during start; last lines of .stack/logs/watcher.log:" >&2
    tail -30 .stack/logs/watcher.log >&2
    exit 1
  fi
  sleep 0.5
done
curl -fsS http://127.0.0.1:9308/readyz >/dev/null || {
  echo "watcher: not ready after 60 s; what /readyz says:" >&2
  curl -sS http://127.0.0.1:9308/readyz >&2 || true
  echo; echo "its last warnings and errors (.stack/logs/watcher.log):" >&2
  grep -E '"level": "(warning|error|critical)"|\[(warning|error|critical) *\]' .stack/logs/watcher.log \
    | tail -8 >&2 || true
  echo "A stack left over from an unclean stop (a local node restarted far behind, or on" >&2
  echo "another chain than, the checkpoints Kafka kept) waits or halts, as it would in production;" >&2
  echo "start the local stack afresh with: make down && rm -rf .stack && make up" >&2
  exit 1
}
echo "watcher: ready — metrics http://127.0.0.1:9308/metrics, Prometheus http://127.0.0.1:9090"
.venv/bin/python deploy/local/demo.py
echo
echo "Stack and watcher are running. Watch the events: .venv/bin/watcher tail -c config/local.yaml"
echo "Stop everything with: make down"
