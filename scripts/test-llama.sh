#!/usr/bin/env bash
# Only the policy-backend tests against a real llama.cpp llama-server: builds it (cached in
# .build-llama/, ~6 min on 2 idle cores the first time) and runs the tests that start it.
# scripts/test.sh runs the same tests within the whole suite. A missing binary fails them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-llama-server.sh
swift build --build-tests
swift test --skip-build --filter "LlamaServerTests|RemotePolicyGatewayTests.testEpisodesThroughLlamaServerAreServedLoggedAndSwapped" "$@"
