#!/usr/bin/env bash
# A long fuzz run of the untrusted-input parsers (safetensors header, tokenizer.json, model and
# gateway config.json, SSE, the Prompt-R1 turn parser, chat request bodies).
#
#   scripts/fuzz.sh [ITERATIONS] [SEED]
#
# ITERATIONS mutants per parser (default 100000), from SEED (default: the time). The input being
# parsed is kept in .fuzz/<target>.current: after a crash it is the reproducer; rerun that target
# with the same FUZZ_SEED to get it again. CI runs the same tests with 200 iterations.
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-100000}"
seed="${2:-$(date +%s)}"
mkdir -p .fuzz
echo "fuzzing: $iterations iterations per target, FUZZ_SEED=$seed (inputs in .fuzz/)"
swift build --build-tests
FUZZ_ITERATIONS="$iterations" FUZZ_SEED="$seed" FUZZ_SAVE_DIR="$PWD/.fuzz" \
  swift test --skip-build --filter FuzzTests
