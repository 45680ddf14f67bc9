#!/usr/bin/env bash
# Runs the whole test suite (debug build). Installs the system packages, the official
# openai Python SDK, prometheus_client and jsonschema (independent checkers the tests drive).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -c "import openai, prometheus_client, jsonschema" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check openai prometheus-client jsonschema
swift build --build-tests
# The tests against a real llama-server run from scripts/test-llama.sh (it builds llama-server
# first); they are not yet part of this run: see docs/remote-policy.md, "How each adapter is tested".
swift test --skip-build --skip "LlamaServerTests|testEpisodesThroughLlamaServerAreServedLoggedAndSwapped" "$@"
