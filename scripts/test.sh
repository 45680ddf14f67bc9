#!/usr/bin/env bash
# Runs the whole test suite (debug build). Installs the system packages and the official
# openai Python SDK that the compatibility test drives.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -c "import openai, prometheus_client" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check openai prometheus-client
swift build --build-tests
swift test --skip-build "$@"
