#!/usr/bin/env bash
# The policy-backend tests against a real llama.cpp llama-server: builds it (cached in
# .build-llama/, ~6 min on 2 idle cores the first time) and runs the tests that start it.
# A missing binary fails these tests; they are not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-llama-server.sh
swift build --build-tests
swift test --skip-build --filter "LlamaServerTests|RemotePolicyGatewayTests.testEpisodesThroughLlamaServerAreServedLoggedAndSwapped" "$@"
