"""Run logging: metrics.jsonl (always), TensorBoard (when installed), and a PNG loss curve."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bertforge.run_dir import RunDir


class MetricsLogger:
    """Appends one JSON object per record; mirrors scalars to TensorBoard when available."""

    def __init__(self, run_dir: RunDir | Path, tensorboard: bool = True):
        run = RunDir(run_dir)
        self.path = run.metrics_file
        self.handle = self.path.open("a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run.tensorboard_dir))
            except ImportError:
                self.writer = None

    def log(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        """Flush and close (idempotent)."""
        self.handle.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(run_dir: RunDir | Path) -> list[dict[str, Any]]:
    path = RunDir(run_dir).metrics_file
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(run_dir: RunDir | Path) -> Path | None:
    """loss_curve.png: training loss per logged step, held-out loss as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    # Keep the last record per step: a resumed run re-logs the steps after its checkpoint
    train = {r["step"]: r["loss"] for r in records if "loss" in r}
    held_out = {r["step"]: r["eval_loss"] for r in records if "eval_loss" in r}
    if not train:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(sorted(train), [train[s] for s in sorted(train)], label="train MLM loss")
    if held_out:
        axis.plot(sorted(held_out), [held_out[s] for s in sorted(held_out)], "o-", label="held-out MLM loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("cross-entropy (masked tokens)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    output = RunDir(run_dir).loss_curve_file
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output


def run_summary(run_dir: RunDir | Path) -> str:
    """The run's final figures in a few lines: steps, final LR, held-out masked-token accuracy, embedding probe."""
    records = read_metrics(run_dir)
    steps = [r for r in records if "lr" in r]
    held_out = [r for r in records if "eval_accuracy" in r]
    probe = [r for r in records if "probe_knn_accuracy" in r]
    lines = []
    if steps:
        last = steps[-1]
        lines.append(f"  training        {last['step']:,} steps in {last['elapsed_s'] / 60:.1f} min, "
                     f"final LR {last['lr']:.2g}")
    if held_out:
        final = held_out[-1]
        lines.append(f"  held-out MLM    masked-token accuracy {final['eval_accuracy']:.3f}, "
                     f"perplexity {final['eval_perplexity']:.0f} (15 % of held-out tokens masked)")
    if probe:
        final = probe[-1]
        lines.append(f"  embedding probe k-NN sentiment accuracy {final['probe_knn_accuracy']:.3f} "
                     f"(chance {final['probe_chance']:.2f}; {final['probe_examples']:,} review snippets never trained on)")
        if "cloze_top1" in final:
            lines.append(f"  cloze probe     whole-word top-1 {final['cloze_top1']:.3f} (+/- {final['cloze_stderr']:.3f}; "
                         f"{final['cloze_items']:,} review snippets, another domain)")
        if "retrieval_top1" in final:
            lines.append(f"                  sentence -> own document retrieval top-1 {final['retrieval_top1']:.3f} "
                         f"(chance {final['retrieval_chance']:.3f}; {final['retrieval_documents']} held-out documents)")
    return "\n".join(lines) or f"  no metrics in {run_dir}"
