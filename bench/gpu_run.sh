#!/usr/bin/env bash
# A GPU session in one command: gpu_check, then the real CLI for both recipes (BERT-base with base.toml and
# ModernBERT-base with modernbert-base.toml, ~75 s each, the same wall clock: tokens/s, MFU and held-out loss at
# 15 % masks), checkpoint, resume, fp16 export checked against PyTorch; every figure into $OUT/gpu_run.json.
#
#   bash bench/gpu_run.sh                    # on a CUDA machine (carry the wheels and the corpus, docs/gpu.md)
#   bash bench/gpu_run.sh --dry-run          # anywhere: CPU, tiny sizes, seconds (tests/bench runs it)
#   options: --out DIR (default $OUT, else /tmp/gpu_run_out), --train FILE --eval FILE (default: demo corpus),
#            --wheels DIR (default .whl; its run/ and export/ hold wheels for the GPU machine's Python)
#
# Wheels (git-ignored, fetched beforehand, docs/gpu.md): .whl/run/ is installed for every step (what a bare GPU
# image may lack: datasets and its dill/multiprocess, tomli-w); .whl/export/ only for the export step
# (optimum-onnx needs transformers 4.57, which would shadow a newer one everywhere else).
# Budget: environment <= 120 s, gpu_check <= 240 s, each recipe's training <= 130 s, resume <= 60 s,
# export <= 80 s: the limits add to 12 min, the expected total is about 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ARGUMENTS=("$@")  # recorded in gpu_run.json's provenance
DRY=0
OUT_DIR=${OUT:-/tmp/gpu_run_out}
TRAIN_SOURCE=demo
EVAL_SOURCE=demo
WHEELS=.whl
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT_DIR=$2; shift ;;
    --train) TRAIN_SOURCE=$2; shift ;;
    --eval) EVAL_SOURCE=$2; shift ;;
    --wheels) WHEELS=$2; shift ;;
    *) echo "gpu_run.sh: unknown argument $1 (see the header of bench/gpu_run.sh)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run.XXXXXX")
trap 'rm -rf "$WORK"' EXIT  # what is worth keeping is copied under the output folder
mkdir -p "$OUT_DIR"
exec > >(tee -a "$OUT_DIR/gpu_run.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
STEPS=$WORK/steps.jsonl
FAILED=0

# Step limits fit the device's 15-minute budget. A dry run on a CPU only guards against hangs: its speed
# depends on the machine (a slow AVX2-only CPU next to the test suite took over 60 s for the resume step), so
# its limits are 5x the device's (GPU_RUN_LIMIT_SCALE overrides), never a bound tuned to one machine.
LIMIT_SCALE=${GPU_RUN_LIMIT_SCALE:-1}
[ $DRY = 1 ] && LIMIT_SCALE=${GPU_RUN_LIMIT_SCALE:-5}

# step NAME TIMEOUT_S COMMAND...: run, time, record {"step", "rc", "seconds"}
step() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE )) started rc
  shift 2
  echo "== $name ($(date -u +%T), at most ${limit} s): $*"
  started=$(date +%s%N)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  [ $rc -ne 0 ] && FAILED=1 && echo "== $name failed: exit $rc"
  printf '{"step": "%s", "rc": %d, "ms": %d}\n' "$name" $rc $(( ($(date +%s%N) - started) / 1000000 )) >>"$STEPS"
  return $rc
}

# write_report: every figure so far into $OUT/gpu_run.json through bench.report.write_results, with provenance
# (after each step: a cut-short run keeps its figures)
write_report() {
  cp "$WORK/run/metrics.jsonl" "$OUT_DIR/metrics.jsonl" 2>/dev/null
  cp "$WORK/modernbert/metrics.jsonl" "$OUT_DIR/metrics_modernbert.jsonl" 2>/dev/null
  cp "$WORK/run/loss_curve.png" "$OUT_DIR/loss_curve.png" 2>/dev/null
  "$PY" - "$WORK" "$OUT_DIR/gpu_run.json" "$DRY" ${ARGUMENTS[@]+"${ARGUMENTS[@]}"} <<'PY'
import datetime, json, statistics, sys
from pathlib import Path

from bench.report import provenance, write_results

work, output, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
sys.argv = ["bash", "bench/gpu_run.sh", *sys.argv[4:]]  # provenance's command: this script's, not the heredoc's

def load(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default

steps = [json.loads(line) for line in (work / "steps.jsonl").read_text().splitlines()] if (work / "steps.jsonl").exists() else []
metrics = [json.loads(line) for line in (work / "run/metrics.jsonl").read_text().splitlines()] \
    if (work / "run/metrics.jsonl").exists() else []
resumed_from = int((work / "resumed_from_step").read_text()) if (work / "resumed_from_step").exists() else None
train_logs = [m for m in metrics if "loss" in m]
first_run = [m for m in train_logs if resumed_from is None or m["step"] <= resumed_from]
timed = first_run[2:] or first_run  # the first windows hold compilation and warm-up
evals = [m for m in metrics if "eval_loss" in m]


def recipe_figures(records, until_step=None):
    """tokens/s and MFU medians after warm-up, the held-out evaluations (15 % masks) of one training run."""
    logs = [m for m in records if "loss" in m and (until_step is None or m["step"] <= until_step)]
    timed = logs[2:] or logs
    return {"precision": next((m.get("precision") for m in records if "precision" in m), None),
            "steps": logs[-1]["step"] if logs else None,
            "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in timed) if timed else None,
            "mfu_median": statistics.median(m["mfu"] for m in timed) if timed and "mfu" in timed[0] else None,
            "held_out": [m for m in records if "eval_loss" in m and (until_step is None or m["step"] <= until_step)]}


modern = [json.loads(line) for line in (work / "modernbert/metrics.jsonl").read_text().splitlines()] \
    if (work / "modernbert/metrics.jsonl").exists() else []
report = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "dry_run": dry,
    "environment": load(work / "environment.json"),
    "steps": steps,
    "gpu_check": load(work / "gpu_check.json", {}).get("rows", []),  # its provenance is this file's
    "train": {
        "precision": next((m.get("precision") for m in metrics if "precision" in m), None),
        "steps_in_budget": resumed_from,
        "tokens_per_s_median": statistics.median(m["tokens_per_s"] for m in timed) if timed else None,
        "mfu_median": statistics.median(m["mfu"] for m in timed) if timed and "mfu" in timed[0] else None,
        "mfu_max": max((m["mfu"] for m in timed if "mfu" in m), default=None),
        "held_out": evals,
    },
    "train_modernbert": recipe_figures(modern),
    "recipes_at_equal_time": {name: figures["held_out"][-1]["eval_loss"] if figures["held_out"] else None
                              for name, figures in (("bert-base", recipe_figures(metrics, resumed_from)),
                                                    ("modernbert-base", recipe_figures(modern)))},
    "resume": {"from_step": resumed_from, "final_step": train_logs[-1]["step"] if train_logs else None,
               "rc": next((s["rc"] for s in steps if s["step"] == "resume"), None)},
    "export_fp16": {"rc": next((s["rc"] for s in steps if s["step"].startswith("export_fp16")), None),
                    "report": load(work / "onnx/export_report.json")},
}
write_results(provenance({"dry_run": dry, "arguments": sys.argv[2:]}) | report, output, plots=False)
print(json.dumps({k: report[k] for k in ("environment", "steps", "train")}, indent=1, default=str)[:4000])
PY
}

# 1. Carried wheels into private folders (never into the device's own environment)
SITE=$WORK/site
EXPORT_SITE=$WORK/export-site
for group in run export; do
  target=$SITE
  [ $group = export ] && target=$EXPORT_SITE
  mkdir -p "$target"
  if compgen -G "$WHEELS/$group/*.whl" >/dev/null; then
    step "install $group wheels" 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$target" "$WHEELS/$group"/*.whl
  fi
done
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
EXPORT_PYTHONPATH=$EXPORT_SITE:$PYTHONPATH
step environment 120 "$PY" - "$WORK/environment.json" <<'PY'
import json, platform, sys
import torch, transformers
info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "platform": platform.platform(), "cpus": __import__("os").cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
print(info)
json.dump(info, open(sys.argv[1], "w"))
PY

# 2. bench/gpu_check.py: matmul peak, pretraining rows (sparse/dense, eager/compiled, batch and vocab levers), inference
if [ $DRY = 1 ]; then
  step gpu_check 240 "$PY" bench/gpu_check.py --dry-run --skip-compile --output "$WORK/gpu_check.json"
else
  step gpu_check 240 "$PY" bench/gpu_check.py --batch-size 256 --output "$WORK/gpu_check.json"
fi
write_report >/dev/null

# 3. The real CLI: each recipe on the demo corpus for the same wall-clock budget (MFU in metrics.jsonl), held-out
#    loss at 15 % masks, checkpointed: base.toml (BERT as of 2018) and modernbert-base.toml (the new recipe)
# recipe_command RUN_DIR CONFIG: the training command of one recipe (dry runs: tiny sizes, a step budget)
recipe_command() {
  TRAIN=("$PY" -m bertforge.cli train --config "$2" --run-dir "$1"
         --set "data.train=$TRAIN_SOURCE" --set "data.eval=$EVAL_SOURCE" --set log.progress=false)
  if [ $DRY = 1 ]; then
    TRAIN+=(--set model.hidden_size=32 --set model.num_hidden_layers=2
            --set model.num_attention_heads=2 --set model.intermediate_size=64 --set model.max_position_embeddings=64
            --set data.vocab_size=200 --set data.seq_len=32 --set data.num_proc=1 --set data.num_workers=0
            --set data.max_eval_blocks=16 --set train.batch_size=8 --set train.compile=false
            --set train.max_steps=6 --set train.eval_every=3 --set optim.warmup_steps=2
            --set checkpoint.every=3 --set log.every=1)
  else
    TRAIN+=(--set train.max_minutes=1.25 --set train.eval_every=400 --set checkpoint.every=1000 --set log.every=50)
  fi
}
RESUME_EXTRA=100
[ $DRY = 1 ] && RESUME_EXTRA=3
MODERN=$WORK/modernbert
recipe_command "$MODERN" train/configs/modernbert-base.toml
step train_modernbert 130 "${TRAIN[@]}"
write_report >/dev/null
RUN=$WORK/run
recipe_command "$RUN" train/configs/base.toml
step train 130 "${TRAIN[@]}"
write_report >/dev/null

# 4. Resume from the newest checkpoint for a few more steps (eager: compile is no resume invariant)
LAST=$(ls -d "$RUN"/checkpoints/step-* 2>/dev/null | sed 's/.*step-//' | sort -n | tail -1)
if [ -n "$LAST" ]; then
  echo "$LAST" >"$WORK/resumed_from_step"
  step resume 60 "${TRAIN[@]}" --resume --set train.compile=false --set train.max_minutes=0 \
    --set "train.max_steps=$((LAST + RESUME_EXTRA))"
  write_report >/dev/null
else
  echo "== resume skipped: no checkpoint"; FAILED=1
fi

# 5. fp16 ONNX export with its parity gate against PyTorch. The gate runs on onnxruntime's CUDA EP where
#    that build has it; the device's onnxruntime is CPU-only, where fp16 kernels may be missing: then the
#    outcome is recorded (rc and report in the JSON) without failing the run.
if [ -d "$RUN/model" ]; then
  if env "PYTHONPATH=$EXPORT_PYTHONPATH" "$PY" -c \
      "import onnxruntime, sys; sys.exit('CUDAExecutionProvider' not in onnxruntime.get_available_providers())"; then
    step export_fp16 80 env "PYTHONPATH=$EXPORT_PYTHONPATH" "$PY" -m bertforge.cli export --model "$RUN/model" \
      --output "$WORK/onnx" --precision fp16 --quiet
  else
    echo "== onnxruntime has no CUDA EP here: the fp16 gate runs on the CPU EP and does not decide the exit status"
    before=$FAILED
    step export_fp16_cpu_ep 80 env "PYTHONPATH=$EXPORT_PYTHONPATH" "$PY" -m bertforge.cli export --model "$RUN/model" \
      --output "$WORK/onnx" --precision fp16 --quiet
    FAILED=$before
  fi
else
  echo "== export skipped: no trained model"; FAILED=1
fi

# 6. The final JSON (with the run's metrics and loss curve beside it)
write_report
echo "== done: $OUT_DIR/gpu_run.json (failed steps: $FAILED)"
exit $FAILED
