#!/usr/bin/env bash
# Builds (release) and runs the gateway from the repository root, so its runtime files (traffic
# log, generated admin token, models) go to ./data, which git ignores. Extra arguments go to
# `gateway serve`, e.g. scripts/run-gateway.sh --port 8080 --upstream-url http://127.0.0.1:11434/v1
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product gateway
exec .build/release/gateway serve --config gateway.json "$@"
