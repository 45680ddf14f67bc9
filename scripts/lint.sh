#!/usr/bin/env bash
# Checks the Swift sources against the committed .swift-format (the last step of .ci/run).
# Fails on any finding; `swift format -i -r -p Sources Tests Package.swift` fixes the layout ones.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! swift format lint --strict -r -p Sources Tests Package.swift; then
  echo "lint.sh: swift format found the problems above; fix them, or run" >&2
  echo "  swift format -i -r -p Sources Tests Package.swift" >&2
  exit 1
fi
echo "lint.sh: swift format lint passed"
