#!/usr/bin/env bash
# Runs the whole test suite (debug build). Installs the system packages, the official
# openai Python SDK, prometheus_client and jsonschema (independent checkers the tests drive).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -c "import openai, prometheus_client, jsonschema" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check openai prometheus-client jsonschema
swift build --build-tests
# The PostgreSQL tests (shared traffic log, replicas) need a server: with-postgres.sh runs one.
scripts/with-postgres.sh swift test --skip-build "$@"
