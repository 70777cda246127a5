"""Check what a served model answered against PyTorch fp32 on the same texts: PASS, or exit 1.

    bertforge client fill-mask TEXT... --json > fill.json
    bertforge client embed TEXT... --json > embed.json
    python -m serve.verify --model runs/demo/model --fill-mask fill.json --embed embed.json

fill-mask: every [MASK]'s served top-1 is PyTorch's top-1 or a near-tie (PyTorch rates it within
`bertforge.pooling.TIE_MARGIN`, relative, of its own top-1: the export gate's rule), and the served
probability of it is within `MAX_PROB_DIFF` of PyTorch's. embed: cosine >= `MIN_COSINE` to
SentenceTransformer(folder).encode for a sentence-transformers folder, else to PyTorch's pooled embedding
(`bertforge.pooling.pool`).
The demo's last step and the end-to-end CLI test both run this on the printed answers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bertforge.pooling import TIE_MARGIN, is_near_tie, pool, tie_gap

MAX_PROB_DIFF = 0.1  # int8 moves probabilities by a few hundredths on the demo model
MIN_COSINE = 0.99  # as the export gate's int8 cosine


def check_fill_mask(model_dir: Path, answers: list[dict]) -> list[str]:
    """One line per [MASK]: 'PASS ...' or 'FAIL ...'."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForMaskedLM.from_pretrained(model_dir, use_safetensors=True).eval()
    lines = []
    for answer in answers:
        encoded = tokenizer(answer["text"], return_tensors="pt", truncation=True)
        with torch.no_grad():
            probs = model(**encoded).logits[0].softmax(-1)
        positions = (encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        if len(positions) != len(answer["masks"]):
            lines.append(f"FAIL {answer['text']!r}: {len(answer['masks'])} masks answered, PyTorch sees {len(positions)}")
            continue
        for position, served in zip(positions, answer["masks"]):
            reference = probs[position]
            best = int(reference.argmax())
            served_id, served_score = int(served[0]["token_id"]), float(served[0]["score"])
            near_tie = bool(is_near_tie(float(tie_gap(reference, best, served_id)), TIE_MARGIN))
            prob_diff = abs(served_score - float(reference[served_id]))
            verdict = "PASS" if (served_id == best or near_tie) and prob_diff <= MAX_PROB_DIFF else "FAIL"
            lines.append(f"{verdict} fill-mask {answer['text']!r}: served {served[0]['token']!r} {served_score:.3f}, "
                         f"PyTorch {tokenizer.convert_ids_to_tokens(best)!r} {float(reference[best]):.3f}")
    return lines


def check_embed(model_dir: Path, answers: list[dict], pooling: str = "mean") -> list[str]:
    """A sentence-transformers folder: cosine to `SentenceTransformer(model_dir).encode(text)` (its pooling,
    Dense, Normalize and default prompt: the author's definition); a plain folder: PyTorch with `pooling`."""
    import torch

    if (Path(model_dir) / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        author = SentenceTransformer(str(model_dir), device="cpu")
        reference_of = lambda text: author.encode(text, convert_to_tensor=True).float().cpu()  # noqa: E731
        source = "sentence-transformers encode"
    else:
        reference_of, source = _pytorch_pooled(model_dir, pooling), f"PyTorch {pooling} pooling"
    lines = []
    for answer in answers:
        reference = reference_of(answer["text"])
        served = torch.tensor(answer["embedding"], dtype=torch.float32)
        cosine = float(torch.nn.functional.cosine_similarity(served, reference, dim=0)) if served.shape == reference.shape else 0.0
        verdict = "PASS" if served.shape == reference.shape and cosine >= MIN_COSINE else "FAIL"
        lines.append(f"{verdict} embed {answer['text']!r}: cosine to {source} {cosine:.5f} (>= {MIN_COSINE})")
    return lines


def _pytorch_pooled(model_dir: Path, pooling: str):
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, use_safetensors=True).eval()

    def pooled(text: str):
        encoded = tokenizer(text, return_tensors="pt", truncation=True)
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state  # (1, T, H)
        return pool(hidden, encoded["attention_mask"], pooling)[0]  # (H,)

    return pooled


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serve.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the Hugging Face or sentence-transformers folder that was exported "
                                                       "(e.g. runs/demo/model)")
    parser.add_argument("--fill-mask", help="`bertforge client fill-mask ... --json` output")
    parser.add_argument("--embed", help="`bertforge client embed ... --json` output")
    parser.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                        help="plain folders only; a sentence-transformers folder is compared with its own encode")
    args = parser.parse_args(argv)
    lines = []
    if args.fill_mask:
        lines += check_fill_mask(Path(args.model), json.loads(Path(args.fill_mask).read_text()))
    if args.embed:
        lines += check_embed(Path(args.model), json.loads(Path(args.embed).read_text()), args.pooling)
    if not lines:
        parser.error("give --fill-mask and/or --embed answers to check")
    print("\n".join(lines))
    failed = sum(line.startswith("FAIL") for line in lines)
    print(f"{'PASS' if not failed else 'FAIL'}: {len(lines) - failed} of {len(lines)} answers agree with PyTorch fp32")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
