#!/usr/bin/env bash
# Runs the whole test suite (debug build). Installs the system packages, the official
# openai Python SDK, prometheus_client and jsonschema (independent checkers the tests drive), and
# builds llama-server.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -c "import openai, prometheus_client, jsonschema" 2>/dev/null || python3 -m pip install -q --disable-pip-version-check openai prometheus-client jsonschema
# llama.cpp's llama-server, the real engine behind the llama.cpp policy backend tests (built once
# from PyPI's llama-cpp-python source package, cached in .build-llama/; ~6 min the first time).
scripts/build-llama-server.sh
swift build --build-tests
swift test --skip-build "$@"
