"""The parity gate: every exported variant against the PyTorch fp32 model, on fresh inputs.

Two sources of inputs, reported separately (`export_report.json` keeps every figure per source):
- "random": random token ids in several batch sizes and lengths, ragged rows so padding is exercised.
  They catch graph bugs, so fp32 is judged on them; lossy variants (int8, fp16) only report them,
  since no user sends random ids and a quantized model may legitimately differ there.
- "text": real held-out text cut into windows; fill-mask windows get [MASK]s in rounds until the gate
  holds at least `min_masks` masks, so one near-tie cannot decide a verdict. Lossy variants are judged here.

Fill-mask figures (all over masks): exact top-1 agreement; tie-aware agreement (a different top-1 counts
only when PyTorch rates the variant's choice more than `tie_margin` (relative) below its own top-1: the near-tie
rule of bertforge.pooling, with the margin the gates configure, `ParityGates.tie_margin`);
top-5 containment (PyTorch's top-1 is in the variant's top 5); total variation distance between the two
full distributions. Embedding figures: cosine to PyTorch's pooled vector, min and mean.
The reference is computed by PyTorch from the checkpoint, pooled/softmaxed by independent PyTorch code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bertforge import contract
from bertforge.pooling import TIE_MARGIN, is_near_tie, pool, tie_gap
from bertforge.tasks import FILL_MASK

RANDOM_SHAPES = ((1, 8), (3, 17), (8, 48))  # (batch, longest length); other rows are shorter (padding)
MASK_RATE = 0.15
TEXT_WINDOW = 128  # tokens per text window (incl. [CLS]/[SEP]); long documents give several windows
MAX_TEXT_WINDOWS = 256  # bounds the gate's cost on large corpora
MAX_MASK_ROUNDS = 8  # each round masks other positions of the same windows
PROBS_OUTPUT = "head/probs"  # the fill_mask graph's full softmax at the masks (export.graphs)
GATE_PROBS_OUTPUT = "gate/probs"  # the same, as float32, in the gate's copy of a variant (export.variants)
TOP_CONTAINMENT_K = 5


@dataclass
class ParityBatch:
    source: str  # "random" or "text"
    feeds: dict[str, np.ndarray]  # encoder inputs (+ mask_positions for fill-mask batches)
    texts: list[str] | None = None  # the texts (before any prompt) when the reference encodes text, not ids


@dataclass
class ParityInputs:
    """The gate's inputs for one model: fill-mask batches (with [MASK]s) and embedding batches (plain text)."""

    fill_mask: list[ParityBatch]
    embed: list[ParityBatch]

    def for_task(self, task: str) -> list[ParityBatch]:
        return self.fill_mask if task == FILL_MASK else self.embed


def make_parity_inputs(tokenizer, texts: list[str], max_length: int, seed: int, min_masks: int,
                       batch_size: int = 8) -> ParityInputs:
    """Random-id batches plus windows of real text: masked (>= min_masks masks where the text allows) and plain."""
    rng = np.random.default_rng(seed)
    ids = special_ids(tokenizer)
    window = min(max_length, TEXT_WINDOW)
    windows = text_windows(tokenizer, texts, window)
    # Random ids: [CLS] random... [SEP] [PAD]..., ragged lengths
    random_rows = []
    special = set(ids.values())
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    for batch, longest in RANDOM_SHAPES:
        longest = min(longest, max_length)
        lengths = [longest] + list(rng.integers(3, longest + 1, size=batch - 1))
        random_rows.append([[ids["cls"], *rng.choice(ordinary, size=length - 2), ids["sep"]] for length in lengths])
    random_batches = [ParityBatch("random", pad_rows(rows, ids["pad"], [_mask_rate_positions(row, rng) for row in rows],
                                                 ids["mask"]))
                      for rows in random_rows]
    # Text, masked in rounds: each round masks ~15% of the positions not masked before, until enough masks
    fill_batches, masks, used = [], 0, [set() for _ in windows]
    for _ in range(MAX_MASK_ROUNDS):
        if masks >= min_masks or not windows:
            break
        chosen = [_fresh_positions(row, done, rng) for row, done in zip(windows, used)]
        for done, positions in zip(used, chosen):
            done.update(positions)
        for start in range(0, len(windows), batch_size):
            rows, positions = windows[start:start + batch_size], chosen[start:start + batch_size]
            if any(positions):
                batch = pad_rows(rows, ids["pad"], positions, ids["mask"])
                masks += len(batch[contract.ONNX_MASK_POSITIONS])
                fill_batches.append(ParityBatch("text", batch))
    embed_batches = [ParityBatch("text", pad_rows(windows[start:start + batch_size], ids["pad"], None, ids["mask"]))
                     for start in range(0, len(windows), batch_size)]
    return ParityInputs(fill_mask=random_batches + fill_batches, embed=random_batches + embed_batches)


def text_windows(tokenizer, texts: list[str], window: int, limit: int = MAX_TEXT_WINDOWS) -> list[list[int]]:
    """`[CLS] tokens [SEP]` rows of at most `window` tokens: long texts are cut into consecutive windows."""
    ids = special_ids(tokenizer)
    rows: list[list[int]] = []
    for text in texts:
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(tokens), window - 2):
            piece = tokens[start:start + window - 2]
            if len(piece) >= 2 or (piece and start == 0):
                rows.append([ids["cls"], *piece, ids["sep"]])
            if len(rows) >= limit:
                return rows
    return rows


def reference_outputs(torch_model, batches: list[ParityBatch], task: str, pooling: str, normalize: bool,
                      top_k: int, head=None) -> list[dict[str, np.ndarray]]:
    """PyTorch fp32 outputs for each batch: the full distribution at the masks (float16 to bound memory) and
    its top-k (the family's own MLM `head`, export.families.mlm_head), or pooled embeddings (a plain folder:
    bertforge's mean/cls pooling; a sentence-transformers folder uses `sentence_transformers_outputs`)."""
    import torch

    from export.families import encoder_of

    encoder = encoder_of(torch_model)
    names = _forward_inputs(encoder)
    results = []
    with torch.no_grad():
        for batch in batches:
            inputs = {name: torch.from_numpy(batch.feeds[name]) for name in contract.ONNX_ENCODER_INPUTS if name in names}
            hidden = encoder(**inputs).last_hidden_state  # (B, T, H)
            if task == FILL_MASK:
                # transformers' own modules: the encoder, then its MLM head on the masked rows only
                masked = hidden.reshape(-1, hidden.shape[-1])[torch.from_numpy(batch.feeds[contract.ONNX_MASK_POSITIONS])]
                probs = torch.softmax(head(masked).double(), dim=-1)  # (M, V)
                top_probs, top_ids = probs.topk(top_k, dim=-1)  # (M, K)
                results.append({contract.ONNX_TOP_IDS: top_ids.numpy(), contract.ONNX_TOP_PROBS: top_probs.float().numpy(),
                                PROBS_OUTPUT: probs.to(torch.float16).numpy()})
            else:
                pooled = pool(hidden, inputs["attention_mask"], "cls" if pooling == "cls" else "mean")  # (B, H)
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, dim=-1)
                results.append({contract.ONNX_SENTENCE_EMBEDDING: pooled.numpy()})
    return results


def sentence_transformers_outputs(model, batches: list[ParityBatch], prompt: str = "") -> list[dict[str, np.ndarray]]:
    """The author's embeddings: `model.encode(texts)` (the default prompt applied by sentence-transformers
    itself) for text batches, the model's own module chain on the token ids for random-id batches."""
    import torch

    names = set(model.tokenizer.model_input_names)
    results = []
    with torch.no_grad():
        for batch in batches:
            if batch.texts is not None:
                embedding = model.encode(batch.texts, prompt=prompt or None, batch_size=len(batch.texts),
                                         convert_to_numpy=True, show_progress_bar=False)
            else:
                features = {name: torch.from_numpy(value) for name, value in batch.feeds.items() if name in names}
                embedding = model(features)["sentence_embedding"].float().numpy()
            results.append({contract.ONNX_SENTENCE_EMBEDDING: np.asarray(embedding, dtype=np.float32)})
    return results


def text_batches_as_served(tokenizer_file, texts: list[str], max_length: int, pad_id: int, prompt: str = "",
                        batch_size: int = 8, limit: int = MAX_TEXT_WINDOWS) -> list[ParityBatch]:
    """Whole texts (with the prompt put before each) tokenized exactly as the server tokenizes them: its
    tokenizer.json, cut at max_length, padded on the right to the batch's longest."""
    from bertforge.served_model import load_served_tokenizer

    tokenizer = load_served_tokenizer(tokenizer_file, max_length)
    texts = [text for text in texts if text.strip()][:limit]
    batches = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        encodings = tokenizer.encode_batch([prompt + text for text in chunk])
        feeds = pad_rows([encoding.ids for encoding in encodings], pad_id, None, pad_id)
        for row, encoding in enumerate(encodings):
            feeds["token_type_ids"][row, : len(encoding.type_ids)] = encoding.type_ids
        batches.append(ParityBatch("text", feeds, texts=chunk))
    return batches


def _forward_inputs(encoder) -> set[str]:
    import inspect

    return set(inspect.signature(encoder.forward).parameters)


def compare(session, batches: list[ParityBatch], references: list[dict], task: str, graph: str = "served",
            tie_margin: float = TIE_MARGIN) -> dict:
    """Run the variant on every batch; figures over all inputs at the top level and per source in `by_source`.

    graph="served": the contract graphs (top_ids/top_probs [+ head/probs], sentence_embedding); graph="plain":
    Optimum-style graphs (`logits` [B, T, V] or `last_hidden_state`), reduced here to the same form."""
    rows: dict[str, list[dict[str, np.ndarray]]] = {}
    max_abs: dict[str, float] = {}
    input_names = {i.name for i in session.get_inputs()}
    output_names = {o.name for o in session.get_outputs()}
    for batch, reference in zip(batches, references):
        feeds = {name: value for name, value in batch.feeds.items() if name in input_names}
        if task == FILL_MASK:
            top_ids, top_probs, probs = _fill_mask_outputs(session, feeds, batch, reference, graph, output_names)
            figures = _fill_mask_figures(top_ids, probs, reference, tie_margin)
            difference = float(np.abs(top_probs - reference[contract.ONNX_TOP_PROBS]).max(initial=0.0))
        else:
            embedding = _embedding_output(session, feeds, batch, graph)
            expected = reference[contract.ONNX_SENTENCE_EMBEDDING]
            difference = float(np.abs(embedding - expected).max(initial=0.0))
            norms = np.linalg.norm(embedding, axis=-1) * np.linalg.norm(expected, axis=-1)
            figures = {"cosine": (embedding * expected).sum(-1) / (norms + 1e-12)}
        rows.setdefault(batch.source, []).append(figures)
        max_abs[batch.source] = max(max_abs.get(batch.source, 0.0), difference)
    by_source = {source: _summarise(parts, task, max_abs[source]) for source, parts in rows.items()}
    metrics = _summarise([part for parts in rows.values() for part in parts], task, max(max_abs.values(), default=0.0))
    metrics.update(batches=len(batches), by_source=by_source, tie_margin=tie_margin)
    return metrics


def judged_figures(metrics: dict, precision: str) -> tuple[str, dict]:
    """Which inputs decide the verdict: everything for fp32, real text for lossy variants."""
    if precision == "fp32" or "text" not in metrics.get("by_source", {}):
        return "all", metrics
    return "text", metrics["by_source"]["text"]


def gate(metrics: dict, name: str, precision: str, gates, task: str | None = None) -> list[str]:
    """The gate's verdict: an empty list when the variant passes, else one line per missed threshold."""
    task = task or name
    source, figures = judged_figures(metrics, precision)
    checks: list[tuple[str, float, float, bool]] = []  # (name, value, threshold, higher_is_better)
    if precision == "fp32":
        checks.append(("max_abs_diff", figures["max_abs_diff"], gates.fp32_max_abs_diff, False))
        if task == FILL_MASK:
            checks.append(("top1_agreement", figures["top1_agreement"], 1.0, True))
    else:
        family = "int8" if precision.startswith("int8") else "fp16"
        if task == FILL_MASK:
            checks += [("tie_aware_agreement", figures["tie_aware_agreement"], getattr(gates, f"{family}_tie_aware"), True),
                       ("top5_containment", figures["top5_containment"], getattr(gates, f"{family}_top5"), True),
                       ("mean_total_variation", figures.get("mean_total_variation", float("inf")),
                        getattr(gates, f"{family}_total_variation"), False)]
        else:
            checks += [("min_cosine", figures["min_cosine"], getattr(gates, f"{family}_cosine"), True),
                       ("mean_cosine", figures["mean_cosine"], getattr(gates, f"{family}_mean_cosine"), True)]
    count = f"{figures['masked_tokens']} masks" if task == FILL_MASK else f"{figures['texts']} texts"
    return verdict(checks, f"{name} {precision}", f"{count} of {source} inputs")


def verdict(checks: list[tuple[str, float, float, bool]], subject: str, inputs: str) -> list[str]:
    """One line per missed check (metric, value, threshold, higher_is_better), in the words every gate uses:
    `<model> <precision>: <metric> = <value> on <inputs>, needs >= <threshold> (missed by <gap>)`."""
    failures = []
    for metric, value, threshold, higher_is_better in checks:
        if value is None or not (value >= threshold if higher_is_better else value <= threshold):
            relation = ">=" if higher_is_better else "<="
            missed = f" (missed by {abs(value - threshold):.3g})" if value is not None else ""
            failures.append(f"{subject}: {metric} = {value if value is None else format(value, '.6g')} on {inputs}, "
                            f"needs {relation} {threshold:g}{missed}")
    return failures


def task_error(metrics: dict, task: str) -> float:
    """One number to rank candidates by (lower is closer to PyTorch), on the judged (text) inputs."""
    _, figures = judged_figures(metrics, "int8")
    if task == FILL_MASK:
        return float(figures["mean_total_variation"])
    return float(1.0 - figures["mean_cosine"])


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays inside 0..1 near 1.0, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _fill_mask_outputs(session, feeds, batch, reference, graph, output_names):
    """(top_ids, top_probs, full probabilities or None) of the variant at the masks."""
    top_k = reference[contract.ONNX_TOP_IDS].shape[1]
    if graph == "plain":
        logits = session.run(["logits"], feeds)[0]
        picked = logits.reshape(-1, logits.shape[-1])[batch.feeds[contract.ONNX_MASK_POSITIONS]].astype(np.float64)
        probs = np.exp(picked - picked.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ids = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
        return ids, np.take_along_axis(probs, ids, -1).astype(np.float32), probs
    if GATE_PROBS_OUTPUT in output_names:
        top_ids, top_probs, probs = session.run([contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS, GATE_PROBS_OUTPUT], feeds)
        return top_ids, top_probs, probs
    top_ids, top_probs = session.run([contract.ONNX_TOP_IDS, contract.ONNX_TOP_PROBS], feeds)
    return top_ids, top_probs, None


def _fill_mask_figures(top_ids: np.ndarray, probs: np.ndarray | None, reference: dict, tie_margin: float) -> dict:
    reference_probs = reference[PROBS_OUTPUT].astype(np.float32)  # (M, V)
    reference_top1 = reference[contract.ONNX_TOP_IDS][:, 0]
    chosen = top_ids[:, 0]
    gap = tie_gap(reference_probs, reference_top1, chosen)  # 0 = a perfect tie (bertforge.pooling)
    figures = {"top1": chosen == reference_top1, "tie_aware": (chosen == reference_top1) | is_near_tie(gap, tie_margin),
               "top5": (top_ids[:, :TOP_CONTAINMENT_K] == reference_top1[:, None]).any(-1),
               "gap": np.where(chosen == reference_top1, 0.0, gap)}
    if probs is not None:
        figures["total_variation"] = 0.5 * np.abs(probs.astype(np.float32) - reference_probs).sum(-1)
    return figures


def _embedding_output(session, feeds, batch, graph) -> np.ndarray:
    if graph == "plain":
        hidden = session.run(["last_hidden_state"], feeds)[0]  # (B, T, H)
        return pool(hidden, batch.feeds["attention_mask"], "mean")  # (B, H)
    (embedding,) = session.run([contract.ONNX_SENTENCE_EMBEDDING], feeds)
    return embedding


def _summarise(parts: list[dict], task: str, max_abs_diff: float) -> dict:
    joined = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]} if parts else {}
    if task != FILL_MASK:
        cosines = joined.get("cosine", np.ones(0))
        return {"max_abs_diff": max_abs_diff, "texts": int(len(cosines)),
                "min_cosine": float(cosines.min(initial=1.0)), "mean_cosine": float(cosines.mean()) if len(cosines) else 1.0}
    masks = int(len(joined.get("top1", [])))
    tie_aware_hits = int(joined["tie_aware"].sum()) if masks else 0
    disagreements = joined["gap"][~joined["top1"]] if masks else np.zeros(0)
    figures = {"max_abs_diff": max_abs_diff, "masked_tokens": masks,
               "top1_agreement": float(joined["top1"].mean()) if masks else 1.0,
               "tie_aware_agreement": tie_aware_hits / masks if masks else 1.0,
               "tie_aware_interval": list(wilson_interval(tie_aware_hits, masks)),
               "top5_containment": float(joined["top5"].mean()) if masks else 1.0,
               "disagreement_gaps": {"count": int(len(disagreements)),
                                     "median": float(np.median(disagreements)) if len(disagreements) else 0.0,
                                     "max": float(disagreements.max(initial=0.0))}}
    if "total_variation" in joined:
        variation = joined["total_variation"]
        figures.update(mean_total_variation=float(variation.mean()) if masks else 0.0,
                       p99_total_variation=float(np.quantile(variation, 0.99)) if masks else 0.0)
    return figures


def special_ids(tokenizer) -> dict[str, int]:
    """The tokenizer's own start/end/padding/mask ids ([CLS]/[SEP] for BERT, <s>/</s> for RoBERTa, ...)."""
    first = lambda *ids: next((i for i in ids if i is not None), None)  # noqa: E731
    ids = {"cls": first(tokenizer.cls_token_id, tokenizer.bos_token_id), "sep": first(tokenizer.sep_token_id, tokenizer.eos_token_id),
           "pad": tokenizer.pad_token_id, "mask": tokenizer.mask_token_id}
    if ids["mask"] is None:  # no mask token (embedding-only tokenizers): fill-mask batches are never built
        ids["mask"] = ids["pad"]
    return ids


def _mask_rate_positions(row: list[int], rng: np.random.Generator) -> list[int]:
    """~15% of the inner positions of a row (at least one)."""
    inner = np.arange(1, len(row) - 1)
    if not len(inner):
        return []
    count = max(1, int(round(MASK_RATE * len(inner))))
    return sorted(int(p) for p in rng.choice(inner, size=count, replace=False))


def _fresh_positions(row: list[int], done: set[int], rng: np.random.Generator) -> list[int]:
    """~15% of the inner positions not masked in an earlier round (at least one while any is left)."""
    inner = np.array([p for p in range(1, len(row) - 1) if p not in done])
    if not len(inner):
        return []
    count = min(len(inner), max(1, int(round(MASK_RATE * (len(row) - 2)))))
    return sorted(int(p) for p in rng.choice(inner, size=count, replace=False))


def pad_rows(rows: list[list[int]], pad_id: int, mask_positions: list[list[int]] | None, mask_id: int) -> dict[str, np.ndarray]:
    """Pad rows to the longest; put [MASK] at the given positions of each row (fill-mask batches)."""
    longest = max(len(row) for row in rows)
    input_ids = np.full((len(rows), longest), pad_id, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros_like(input_ids)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = row
        attention_mask[index, : len(row)] = 1
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
    if mask_positions is not None:
        flat = []
        for index, positions in enumerate(mask_positions):
            input_ids[index, positions] = mask_id
            flat += [index * longest + position for position in positions]
        feeds[contract.ONNX_MASK_POSITIONS] = np.array(flat, dtype=np.int64)  # (M,) flat b*T+t
    return feeds
