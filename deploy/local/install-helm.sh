#!/usr/bin/env bash
# Installs helm (for `helm template` in the chart test) into the dev cache, once.
# `go install` compiles from source through the Go module proxy: a few minutes on
# 2 cores, then cached under $WATCHER_DEV_HOME/bin (reused by every later run and CI).
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.20.2}"
DEV_HOME="${WATCHER_DEV_HOME:-$HOME/.cache/watcher-dev}"
BIN="$DEV_HOME/bin"
mkdir -p "$BIN"
if [ -x "$BIN/helm" ] && "$BIN/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}"; then
    echo "helm: $("$BIN/helm" version --short) already in $BIN"
    exit 0
fi
command -v go >/dev/null || { echo "helm: needs Go (https://go.dev/dl/) to build helm ${HELM_VERSION}" >&2; exit 1; }
echo "helm: building ${HELM_VERSION} with go install (a few minutes) ..."
# -ldflags sets the version helm reports (otherwise 'v3.x-unreleased' style strings).
GOBIN="$BIN" nice go install \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
echo "helm: $("$BIN/helm" version --short) installed in $BIN"
