#!/usr/bin/env bash
# The test command: installs what the tests need, then builds (debug) and runs the whole suite.
#
#   scripts/test.sh [swift test arguments, e.g. --filter ConfigTests]
#
# What it sets up, each in one place (add yours there, not here):
#   - Debian packages: the lists in scripts/install-deps.sh (--tests adds the test-only ones);
#   - Python packages the tests drive: scripts/test-requirements.txt, installed into .venv/ by
#     scripts/setup-venv.sh; tests run that Python through $GATEWAY_TEST_PYTHON;
#   - services a test needs (a database, a model server): one script each,
#     scripts/services/NAME.sh, called with `start` before the tests and with `stop` after
#     (also on failure); list NAME in `services` below. Loopback or unix sockets only.
set -euo pipefail
cd "$(dirname "$0")/.."

services=()

scripts/install-deps.sh --tests
scripts/setup-venv.sh
export GATEWAY_TEST_PYTHON="$PWD/.venv/bin/python3"
export PATH="$PWD/.venv/bin:$PATH"

started=()
stop_services() {
  local s
  for s in "${started[@]}"; do scripts/services/"$s".sh stop || echo "test.sh: stopping $s failed" >&2; done
}
trap stop_services EXIT
for s in "${services[@]}"; do
  scripts/services/"$s".sh start
  started+=("$s")
done

swift build --build-tests
# The remote-policy tests drive a real llama.cpp llama-server: built once from the llama.cpp
# that llama-cpp-python vendors (~6 min on 2 cores) and cached in .build-llama/.
scripts/build-llama-server.sh
# The PostgreSQL tests (shared traffic log, replicas) need a server: with-postgres.sh runs one.
scripts/with-postgres.sh swift test --skip-build "$@"
