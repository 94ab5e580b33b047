#!/usr/bin/env bash
# Before and after, alternating on one machine: bench/compare.py against a baseline commit's code and
# against this working tree's, ROUNDS times each (A B B A ...), so machine noise falls on both alike.
#
#   bench/ab.sh <base-commit> [rounds] [compare.py options...]
#   bench/ab.sh main 2 --reply-ms 320 --concurrency 64 --targets direct,embedded,kafka --duration 10 --runs 1 --ttfb-requests 0
#
# Both are copied first (the baseline with `git archive`, the working tree's files as they are now, so
# that editing during the run changes nothing) and run by this venv's `tollgate` with PYTHONPATH pointing
# at the copy (its packages shadow the editable install). Results: bench/results/ab-<stamp>/
# {base,new}-<round>/compare-latest.json, and a summary on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/ab.sh <base-commit> [rounds] [compare.py options...]}
rounds=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
stamp=$(date +%Y%m%d-%H%M%S)
out=bench/results/ab-$stamp
snapshot=$(mktemp -d /tmp/tollgate-ab-base.XXXXXX)
current=$(mktemp -d /tmp/tollgate-ab-new.XXXXXX)
trap 'rm -rf "$snapshot" "$current"' EXIT
git archive "$base" | tar -x -C "$snapshot"
git ls-files -co --exclude-standard | grep -v '^bench/results/' | tar -cf - -T - | tar -x -C "$current"
echo "base $(git rev-parse --short "$base") vs working tree $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes'); results in $out"
for round in $(seq 1 "$rounds"); do
  # A B, then B A: a machine that drifts over the run (this one does, by a few per cent in a quarter
  # of an hour) then weighs on both sides alike instead of always on the side that runs second.
  sides="base new"
  [ $((round % 2)) = 0 ] && sides="new base"
  for side in $sides; do
    code=$current
    [ "$side" = base ] && code=$snapshot
    cmd="env PYTHONPATH=$code $PWD/.venv/bin/tollgate"
    echo "--- $side round $round ($(uptime | sed 's/.*load/load/'))"
    .venv/bin/python bench/compare.py --tollgate "$cmd" --out "$out/$side-$round" "$@" 2>&1 \
      | grep -E "c=[0-9]+ +run|c=[0-9]+:|within 10%|ERRORS|error" || true
  done
done
.venv/bin/python - "$out" <<'PY'
import json, sys
from pathlib import Path
rows = {}
for path in sorted(Path(sys.argv[1]).glob("*/compare-latest.json")):
    side = path.parent.name.split("-")[0]
    report = json.loads(path.read_text())
    for row in report["load"]:
        rows.setdefault((row["target"], row["concurrency"], side), []).append(row)
print(f"{'target':>9} {'conc':>4} {'side':>4}  req/s per round        p50 ms   p99 ms   cpu s/1k  ext load")
for (target, conc, side), found in sorted(rows.items()):
    rps = [r["requests_per_s"] for r in found]
    def mean(key, sub=None):
        values = [(r[key][sub] if sub else r[key]) for r in found]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else float("nan")
    print(f"{target:>9} {conc:>4} {side:>4}  {str(rps):<20} {mean('latency_ms', 'p50'):8.1f} {mean('latency_ms', 'p99'):8.1f}"
          f" {mean('cpu_s_per_1k_requests'):9.3f} {mean('outside_load_cores'):9.2f}")
PY
