#!/usr/bin/env bash
# What the new recipe's shape costs at serving time: the served fill_mask p50 at one client of two model folders
# of the same size (by default the yardstick's round-0 `today` and `new` models), exported alike and served in
# alternating rounds on this machine (docs/training.md, "Serving cost of the new shape").
#
#   bash bench/recipe_latency.sh [PRECISION] [ROUNDS]        # PRECISION: fp32 (default) or auto
#   TODAY=runs/x/model NEW=runs/y/model OUT=/tmp/lat bash bench/recipe_latency.sh auto 5
set -euo pipefail
cd "$(dirname "$0")/.."
precision=${1:-fp32}
rounds=${2:-5}
today=${TODAY:-runs/quality/today-0/model}
new=${NEW:-runs/quality/new-0/model}
out=${OUT:-$(mktemp -d -t bertforge-recipe-latency.XXXXXX)}
bertforge=${BERTFORGE:-.venv/bin/bertforge}
mkdir -p "$out"

# export both folders the same way
for who in today new; do
  folder=$today; [ "$who" = new ] && folder=$new
  "$bertforge" export --model "$folder" --repo "$out/$who-$precision" --tasks fill_mask --precision "$precision" \
    --quiet > "$out/export-$who-$precision.log" 2>&1
done

# alternating rounds at one client, who goes first swapped every round
for round in $(seq 1 "$rounds"); do
  order="today new"; [ $((round % 2)) -eq 0 ] && order="new today"
  for who in $order; do
    "$bertforge" bench serve --repo "$out/$who-$precision" --task fill_mask --concurrency 1 --no-baselines \
      --no-plots --seconds 15 --rounds 1 --output "$out/$who-$precision-$round.json" > "$out/serve-$who-$precision-$round.log" 2>&1
  done
done

# medians and the ratio
OUT_DIR=$out PRECISION=$precision .venv/bin/python - <<'PY'
import glob, json, os, statistics

out, precision = os.environ["OUT_DIR"], os.environ["PRECISION"]
medians = {}
for who in ("today", "new"):
    rounds = [json.load(open(path)) for path in sorted(glob.glob(f"{out}/{who}-{precision}-[0-9]*.json"))]
    p50s = [document["points"][0]["p50_ms"] for document in rounds]
    medians[who] = statistics.median(p50s)
    served = rounds[0]["serving"].get("precision")
    print(f"{who}: served {served}, p50 per round {[round(value, 2) for value in p50s]} ms, median {medians[who]:.2f} ms")
print(f"new / today p50 ({precision}): {medians['new'] / medians['today']:.3f}   (files: {out})")
PY
