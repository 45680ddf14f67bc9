#!/usr/bin/env bash
# Converts the tiny Prompt-R1 protocol policy (Tests/Fixtures/models/promptr1-tiny) to GGUF with
# llama.cpp's own convert_hf_to_gguf.py, from the llama.cpp tree that
# scripts/build-llama-server.sh unpacks. The result is committed as
# Tests/Fixtures/models/promptr1-tiny.gguf (F32, ~3 MB), so CI never runs this script.
#
#   scripts/convert-policy-gguf.sh            # writes the fixture
#   scripts/convert-policy-gguf.sh --check    # converts into a temp file, compares byte for byte
#   scripts/convert-policy-gguf.sh DIR OUT    # any other checkpoint (e.g. gateway-bench's 0.5B shape)
#
# The converter needs gguf (installed from the same llama.cpp tree), numpy, transformers (for the
# tokenizer) and torch; they go into a venv under the git-ignored .build-llama/ folder.
# The fixture tokenizer's pre-tokenizer is the Qwen2 split, which the converter does not
# recognise by its hash: the checkpoint is converted from a temporary copy whose
# tokenizer.json is unchanged and whose pre-tokenizer name is forced to `qwen2`.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
ROOT="$PWD/.build-llama"
LLAMA="$ROOT/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
VENV="$ROOT/venv"
MODEL="Tests/Fixtures/models/promptr1-tiny"
OUT="Tests/Fixtures/models/promptr1-tiny.gguf"
if [ $# -eq 2 ]; then MODEL="$1"; OUT="$2"; fi

[ -f "$LLAMA/convert_hf_to_gguf.py" ] || scripts/build-llama-server.sh >/dev/null
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  # A CPU build of torch is enough (the converter only reads tensors with it).
  torch_wheel=$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1 || true)
  "$VENV/bin/pip" install -q --disable-pip-version-check ${torch_wheel:-torch}
  "$VENV/bin/pip" install -q --disable-pip-version-check "numpy>=2,<3" "transformers>=4.57,<6" \
    sentencepiece safetensors "$LLAMA/gguf-py"
fi

target="$OUT"
[ "${1:-}" = "--check" ] && target="$(mktemp --suffix .gguf)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
work="$tmp/$(basename "$MODEL")"   # the converter names the model after its folder
mkdir "$work"
cp "$MODEL"/*.json "$MODEL"/*.safetensors "$work/"
# Force the pre-tokenizer name (the hash lookup in get_vocab_base_pre does not know this
# BPE vocabulary); everything else is read from the checkpoint as is.
"$VENV/bin/python" - "$LLAMA" "$work" "$target" <<'EOF'
import sys, runpy
llama, model, out = sys.argv[1:4]
sys.path.insert(0, llama)
import convert_hf_to_gguf as conv
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f32"]
conv.main()
EOF
if [ "${1:-}" = "--check" ]; then
  cmp "$target" "$OUT" && echo "promptr1-tiny.gguf: identical"
  rm -f "$target"
fi
