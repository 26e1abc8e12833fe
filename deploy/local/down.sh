#!/usr/bin/env bash
# `make down`: stops the watcher, then every service `make up` started.
set -euo pipefail
cd "$(dirname "$0")/../.."
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
