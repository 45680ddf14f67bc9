#!/usr/bin/env bash
# Runs `gateway-train experiment` for several seeds and prints, per seed, held-out EM over the
# iterations for the learning and the control run, the rise (last - first), and the mean and
# standard deviation of the rises: the numbers docs/learning.md reports and the CI test's margin
# is set from.
#
#   scripts/experiment-seeds.sh experiments/toy-ci.json OUTROOT 1 2 3 4 5
#
# Uses the release build (swift build -c release --product gateway-train); GATEWAY_TRAIN overrides.
# Extra options for every run (e.g. --learning-rate 0) go in EXPERIMENT_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
config=$1
root=$2
shift 2
bin=${GATEWAY_TRAIN:-.build/release/gateway-train}
mkdir -p "$root"
for seed in "$@"; do
  if [ ! -f "$root/seed$seed/report.json" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    "$bin" experiment --config "$config" --seed "$seed" --out "$root/seed$seed" ${EXPERIMENT_ARGS:-} \
      > "$root/seed$seed.out" 2> "$root/seed$seed.err"
    echo "seed $seed: $(( $(date +%s) - start )) s" >&2
  fi
done
python3 - "$root" "$@" <<'EOF'
import json, statistics, sys
root, seeds = sys.argv[1], sys.argv[2:]
rises = {"learn": [], "control": []}
print("| seed | run | held-out EM per iteration | rise | rollout restating per iteration | wall s |")
print("| --- | --- | --- | --- | --- | --- |")
for s in seeds:
    r = json.load(open(f"{root}/seed{s}/report.json"))
    for name in ("learn", "control"):
        pts = r["runs"][name]
        em = [p["heldout_em"] for p in pts]
        rise = em[-1] - em[0]
        rises[name].append(rise)
        rest = [p.get("train_restating") for p in pts[1:]]
        print(f"| {s} | {name} | {' '.join(f'{x:.3f}' for x in em)} | {rise:+.3f} | "
              f"{' '.join('-' if x is None else f'{x:.2f}' for x in rest)} | {pts[-1]['wall_seconds']:.0f} |")
for name, xs in rises.items():
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    print(f"{name}: rise mean {statistics.mean(xs):+.3f}, sd {sd:.3f}, min {min(xs):+.3f}, max {max(xs):+.3f} over {len(xs)} seeds")
EOF
