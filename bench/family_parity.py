"""Every encoder family through the default export, compared with sentence-transformers on real text.

    python -m bench.family_parity [--search-seconds 20] [--out family_parity.json]

For each family a tiny random model (2 layers, hidden 32; bertforge/testing.py `build_family_folder`) is wrapped
as a sentence-transformers folder, exported with `precision=auto` (the int8 search may pick int8), `int8` (the
search's winner) and fp32, and run as the server runs it (serve.runtime: parse, tokenize, ONNX session, finish).
Cosine to `SentenceTransformer(folder).encode` on export/data/gate_texts.txt (260 texts): min and mean.
No public checkpoint is used: the machine is offline (all-MiniLM-L6-v2 & co. cannot be downloaded here).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

from bertforge.tasks import EMBED

CASES = [("bert", "cls", True), ("roberta", "mean", False), ("xlm-roberta", "mean", True), ("camembert", "mean", False),
         ("distilbert", "mean", False), ("mpnet", "mean", True), ("electra", "cls", False), ("modernbert", "mean", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search-seconds", type=float, default=20.0)
    parser.add_argument("--init-range", type=float, default=0.02,
                        help="std of the random weights (transformers' initializer_range; 0.02 is its default)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from sentence_transformers import SentenceTransformer

    from bertforge.testing import build_family_folder, make_sentences
    from export import export_to_repository
    from train.tokenizer import train_wordpiece_tokenizer

    texts = Path("export/data/gate_texts.txt").read_text().splitlines()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        train_wordpiece_tokenizer(make_sentences(400, seed=1) + texts, scratch / "wp", vocab_size=400, model_max_length=64)
        for kind, pooling, normalize in CASES:
            folder = build_family_folder(kind, scratch / kind, scratch / "wp", make_sentences(400, seed=1) + texts,
                                         pooling=pooling, normalize=normalize, mlm_head=False, init_range=args.init_range)
            expected = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_numpy=True)
            row = {"family": kind, "pooling": pooling, "normalize": normalize}
            for precision in ("auto", "int8", "fp32"):
                started = time.perf_counter()
                report = export_to_repository(folder, scratch / f"{kind}-{precision}", precision=precision,
                                              tasks=(EMBED,), progress=False, search_seconds=args.search_seconds)
                served = served_embeddings(scratch / f"{kind}-{precision}", texts)
                cos = cosines(served, expected)
                chosen, variant = report.tasks[EMBED].served
                row[precision] = {"chosen": chosen + (f" ({variant.recipe['name']})" if variant.recipe else ""),
                                  "min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                                  "export_s": round(time.perf_counter() - started, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        from bench.report import arguments_config, provenance, write_results

        write_results(provenance(arguments_config(args)) | {"rows": rows}, Path(args.out), plots=False)
    print("| family | pooling | default (auto) serves | min / mean cos | int8 (search) min / mean cos | fp32 min cos |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        auto, int8, fp32 = row["auto"], row["int8"], row["fp32"]
        print(f"| {row['family']} | {row['pooling']}{' + Normalize' if row['normalize'] else ''} | {auto['chosen']} | "
              f"{auto['min_cosine']:.4f} / {auto['mean_cosine']:.4f} | {int8['min_cosine']:.4f} / {int8['mean_cosine']:.4f} "
              f"| {fp32['min_cosine']:.6f} |")


def served_embeddings(repo: Path, texts: list[str]):
    """The repository's embed model on `texts` as the server computes them (serve.runtime, default parameters)."""
    import numpy as np

    from bertforge.served_model import ServedModelDir
    from serve.runtime import load_runtime

    runtime = load_runtime(ServedModelDir.in_repo(repo, EMBED).version_dir)
    requests = [runtime.parse(text.encode(), {}) for text in texts]
    errors = [error for error in runtime.tokenize(requests) if error is not None]
    if errors:
        raise ValueError(f"the served model refused a gate text: {errors[0]}")
    return np.stack(runtime.finish_embeddings(requests, runtime.embed(requests)))


def cosines(a, b):
    """Row-wise cosine similarity of two (N, D) arrays."""
    import numpy as np

    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


if __name__ == "__main__":
    main()
