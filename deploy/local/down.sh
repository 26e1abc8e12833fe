#!/usr/bin/env bash
# `make down`: stops the watcher, then every service `make up` started.
set -euo pipefail
cd "$(dirname "$0")/../.."
traffic_pid=.stack/run/traffic.pid
if [ -f "$traffic_pid" ]; then
  tpid=$(cat "$traffic_pid")
  if kill -TERM "$tpid" 2>/dev/null; then
    # Gone before the watcher stops: a payment it sent late would be mined after the
    # watcher's last commit.
    for _ in $(seq 1 40); do kill -0 "$tpid" 2>/dev/null || break; sleep 0.25; done
    echo "traffic: stopped"
  fi
  rm -f "$traffic_pid"
fi
pidfile=.stack/run/watcher.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    # anvil cannot trace the blocks it reloads from its state file, and the watcher traces
    # every block: it commits anvil's head first, so the next start traces only live blocks.
    python3 deploy/local/devstack.py settle || true
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "watcher: stopped"
  fi
  rm -f "$pidfile"
fi
python3 deploy/local/devstack.py down
