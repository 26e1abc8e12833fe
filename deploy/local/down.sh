#!/usr/bin/env bash
# `make down`: stops the watcher, then every service `make up` started.
set -euo pipefail
cd "$(dirname "$0")/../.."
traffic_pid=.stack/run/traffic.pid
if [ -f "$traffic_pid" ]; then
  kill -TERM "$(cat "$traffic_pid")" 2>/dev/null && echo "traffic: stopped"
  rm -f "$traffic_pid"
fi
pidfile=.stack/run/watcher.pid
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "watcher: stopped"
  fi
  rm -f "$pidfile"
fi
python3 deploy/local/devstack.py down
