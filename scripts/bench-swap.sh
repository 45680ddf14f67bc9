#!/usr/bin/env bash
# Measures a policy hot-swap on the Qwen2.5-0.5B-shaped checkpoint: time from POST /admin/policy
# to the new version serving, and the gateway's RSS (current and peak) before and after.
# Needs a release build (swift build -c release) and the bench model, which
# `gateway-bench collab` or `gateway-bench engine` create in /tmp/prompt-r1-bench on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-/tmp/prompt-r1-bench/qwen2.5-0.5b-shape}
work=$(mktemp -d /tmp/gw-swap-XXXX)
mkdir -p "$work/models"
# Hard links: two folders inside the models directory without copying 2 GB (symlinks would be
# refused as escaping it).
cp -al "$model" "$work/models/a"
cp -al "$model" "$work/models/b"
cat > "$work/gateway.json" <<JSON
{"server": {"port": 18480}, "upstream": {"base_url": "http://127.0.0.1:9/v1"},
 "admin": {"port": 18481, "models_dir": "$work/models"}, "log": {"path": "$work/traffic.sqlite"}}
JSON
.build/release/gateway serve --config "$work/gateway.json" --policy "$work/models/a" --log-level warning &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do curl -sf localhost:18481/ready >/dev/null && break; sleep 0.2; done
rss() { grep -E '^(VmRSS|VmHWM)' /proc/$pid/status | tr -s ' ' | tr '\n' ' '; }
echo "before swap: $(rss)"
start=$(date +%s.%N)
curl -sf -X POST -H "Authorization: Bearer $(cat "$work/admin-token")" localhost:18481/admin/policy -d '{"path": "b"}' > "$work/swap.json"
end=$(date +%s.%N)
echo "swap: $(python3 -c "print(f'{$end - $start:.2f}')") s from POST to the new version serving (load_seconds $(python3 -c "import json;print(round(json.load(open('$work/swap.json'))['load_seconds'],2))"))"
echo "after swap:  $(rss)"
