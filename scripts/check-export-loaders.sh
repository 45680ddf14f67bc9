#!/usr/bin/env bash
# Proves `gateway-train export` with the real libraries, as a user on a GPU cluster would use it
# (docs/export.md). Not part of scripts/test.sh (the install is several GB); run it by hand:
#
#   scripts/check-export-loaders.sh
#
# 1. Two git-ignored venvs with pinned versions (they conflict on transformers):
#      .venv/export-check-trl:  torch, trl 1.16.0, transformers 5.24.0, datasets 5.2.0
#      .venv/export-check-verl: torch, verl 0.9.1, ray, tensordict, transformers < 5.11
#    torch: the CPU-only wheel when the index has it (torch==2.13.0+cpu), else PyPI's default
#    (which pulls the CUDA libraries).
# 2. Real gateway traffic: GatewayExportTests runs the gateway with the tiny Prompt-R1 policy
#    against the scripted FakeUpstream, posts feedback, and leaves the traffic log in a folder;
#    the built `gateway-train export` writes every --format from it.
# 3. TRL: two SFTTrainer steps on --format trl-sft (trained tokens == sum of loss_mask), one
#    GRPOTrainer step on --format verl-rl whose reward function reads ground_truth, and the
#    written chat template re-rendering the logged ids and masks.
#    verl: MultiTurnSFTDataset on --format verl-sft and RLHFDataset on --format verl-rl, after the
#    documented parquet conversion, ids checked against the export.
# Exits non-zero on the first failed check. EXPORT_CHECK_KEEP=1 keeps the work folder.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venvs=${EXPORT_CHECK_VENVS:-$root/.venv}
trl_venv=$venvs/export-check-trl
verl_venv=$venvs/export-check-verl

scripts/install-deps.sh
python3 -m venv --help >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }

torch_spec() {
  # The CPU-only wheel if the configured index has it; PyPI's default torch otherwise.
  if "$1/bin/pip" download -q --no-deps -d "$(mktemp -d)" "torch==2.13.0+cpu" >/dev/null 2>&1; then echo "torch==2.13.0+cpu"; else echo "torch"; fi
}
make_venv() { # dir, pip requirements...
  local dir=$1; shift
  [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
  local torch; torch=$(torch_spec "$dir")
  echo "== $dir: $torch $*"
  "$dir/bin/pip" install -q --disable-pip-version-check "$torch" "$@"
}
make_venv "$trl_venv" trl==1.16.0 transformers==5.24.0 datasets==5.2.0 jsonschema
make_venv "$verl_venv" verl==0.9.1 ray tensordict "transformers<5.11" pyarrow pandas
for v in "$trl_venv" "$verl_venv"; do
  "$v/bin/python" - <<'PY'
import importlib.metadata as m, sys
names = ["torch", "transformers", "trl", "datasets", "verl", "ray", "tensordict", "pyarrow", "pandas", "jinja2"]
print("versions:", sys.executable, "python", sys.version.split()[0], " ".join(f"{n} {m.version(n)}" for n in names if any(d.metadata["Name"].lower() == n for d in m.distributions())))
PY
done

swift build --build-tests
work=$(mktemp -d /tmp/export-check-XXXX)
[ "${EXPORT_CHECK_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
echo "== real gateway traffic -> $work"
EXPORT_CHECK_DIR="$work" swift test --skip-build --filter GatewayExportTests/testExportsOfGatewayTrafficHaveOneShapeAndTheLoggedIDs
[ -f "$work/traffic.sqlite" ] || { echo "the export test left no traffic log in $work"; exit 1; }

# The policy folder as a user would prepare it: the checkpoint plus the exported template as
# chat_template.jinja (transformers loads it in place of tokenizer_config.json's template).
bin=$(swift build --show-bin-path)
policy=$root/Tests/Fixtures/models/promptr1-tiny
mkdir -p "$work/export"
for f in jsonl trl-sft verl-sft verl-rl; do
  "$bin/gateway-train" export --db "$work/traffic.sqlite" --format "$f" --out "$work/export/$f.jsonl" --tokenizer "$policy"
  python3 Tests/compat/validate_export.py docs/export-row.schema.json "$f" "$work/export/$f.jsonl"
done
cp -r "$policy" "$work/policy"
cp "$work/export/trl-sft.chat_template.jinja" "$work/policy/chat_template.jinja"

echo "== TRL"
"$trl_venv/bin/python" scripts/export-loaders/trl_check.py "$work/export" "$work/policy" "$policy" "$work/trl-out"

echo "== verl (parquet conversion as in docs/export.md)"
for f in verl-sft verl-rl; do
  "$verl_venv/bin/python" -c "import pandas as pd; pd.read_json('$work/export/$f.jsonl', lines=True, dtype=False).to_parquet('$work/export/$f.parquet')"
done
"$verl_venv/bin/python" scripts/export-loaders/verl_check.py "$work/export" "$work/policy"
echo "check-export-loaders: all checks passed"
