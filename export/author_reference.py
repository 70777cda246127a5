"""The embed gate's reference is the model's author: what the exporter needs from export.model_definition.

    definition, plan, notes = read_author(config, info)      # the folder's definition + explicit flags (warned)
    save_served_tokenizer(definition, info, folder)          # the tokenizer the server runs (author's lower-casing)
    embed_gate_batches(...) / author_outputs(...)            # inputs and SentenceTransformer outputs for the gate
    author_agreement(...)                                    # flags contradicted the folder: how far from the author
    fused_graph(...)                                         # ORT fusions for the family, Dense/Normalize after them
"""

from __future__ import annotations

from pathlib import Path

from bertforge.tasks import EMBED
from export.config import ExportConfig
from export.model_folder import ModelFolderInfo


def definition_report(info: ModelFolderInfo, config: ExportConfig, definition, plan) -> dict:
    """The report's `definition`: the family, what the author defines, what the graph computes and where each
    choice came from, and the fields serving.json records (export.model_definition.serving_fields)."""
    from export.model_definition import serving_fields

    return {"family": info.family.model_type, "fusion": info.family.fusion if config.optimize else None,
            "author": definition.summary(),
            "used": {"pooling": plan.pooling_name, "normalize": plan.normalize, "dense": len(plan.dense),
                     "sources": plan.sources, "agrees_with_author": plan.agrees_with_author},
            "served": serving_fields(info.family.model_type, info.hidden_size, definition, plan)}


def fused_graph(fp32_path: Path, folder: Path, info: ModelFolderInfo, config: ExportConfig, plan) -> Path:
    """The fused graph every variant starts from: ONNX Runtime's fusions for the family (export.families), the
    plain graph where it has none. Dense/Normalize modules are appended after fusing (see graphs.append_projection)."""
    import onnx

    from export.graphs import add_pooling, append_projection
    from export.variants import fuse

    optimize = config.optimize and info.family.fusion is not None
    target = folder / "model.fused.onnx"
    if plan is None or not plan.dense:
        return fuse(fp32_path, target, num_heads=info.num_heads, hidden_size=info.hidden_size, optimize=optimize)
    pooled = folder / "model.pooled.onnx"
    encoder = onnx.load(str(folder.parent / "optimum" / "model.onnx"))
    onnx.save(add_pooling(encoder, plan.pooling), str(pooled))
    fuse(pooled, target, num_heads=info.num_heads, hidden_size=info.hidden_size, optimize=optimize)
    onnx.save(append_projection(onnx.load(str(target)), plan.dense, plan.normalize), str(target))
    return target


def read_author(config: ExportConfig, info: ModelFolderInfo) -> tuple:
    """(the author's definition, what the graph computes, warnings for flags that contradict the folder)."""
    from export.model_definition import read_definition, resolve_embedding

    definition = read_definition(info.root if info.sentence_transformers else info.folder)
    plan, notes = resolve_embedding(definition, config.pooling, config.normalize)
    return definition, plan, notes


def save_served_tokenizer(definition, info: ModelFolderInfo, target: Path):
    """The tokenizer the server runs, saved to `target`: sentence-transformers' own (it adds lower-casing when
    the folder says do_lower_case), else the folder's. Returns it loaded back."""
    from transformers import AutoTokenizer

    source = definition.model.tokenizer if definition.model is not None else AutoTokenizer.from_pretrained(info.folder)
    source.save_pretrained(target)
    return AutoTokenizer.from_pretrained(target)


def embed_gate_batches(inputs, texts: list[str], tokenizer_dir: Path, max_length: int, tokenizer, definition) -> list:
    """The embed gate's inputs: the random-id batches, then whole texts tokenized as the server does (with the
    default prompt, when the folder sets one), which the reference encodes from the text itself."""
    from export.parity import special_ids, text_batches_as_served

    random_batches = [batch for batch in inputs.embed if batch.source == "random"]
    return random_batches + text_batches_as_served(tokenizer_dir / "tokenizer.json", texts, max_length,
                                                   special_ids(tokenizer)["pad"], prompt=definition.default_prompt)


def reference_name(definition) -> str:
    if not definition.sentence_transformers:
        return "transformers model + sentence-transformers Pooling (no sentence-transformers definition in the folder)"
    prompt = f", default prompt {definition.default_prompt_name!r}" if definition.default_prompt else ""
    return f"SentenceTransformer(folder).encode (sentence-transformers{prompt})"


def author_outputs(model, batches: list, definition) -> list:
    from export.parity import sentence_transformers_outputs

    return sentence_transformers_outputs(model, batches, prompt=definition.default_prompt)


def author_agreement(fp32_path: Path, batches: list, definition, max_length: int) -> dict:
    """Flags contradicted the folder: how far the exported graph is from what the author's model computes."""
    import onnxruntime as ort

    from export.model_definition import author_model
    from export.parity import compare

    session = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    metrics = compare(session, batches, author_outputs(author_model(definition, max_length), batches, definition), EMBED)
    return {"min_cosine": metrics["min_cosine"], "mean_cosine": metrics["mean_cosine"],
            "agrees": metrics["min_cosine"] >= 0.9999,
            "note": "the graph follows explicit flags; these figures compare it with SentenceTransformer(folder).encode"}
