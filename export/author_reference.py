"""The embed gate's reference is the model's author: what the exporter needs from export.model_definition.

    definition, plan, notes = read_author(config, info)      # the folder's definition + explicit flags (warned)
    save_served_tokenizer(definition, info, folder)          # the tokenizer the server runs (author's lower-casing)
    author_outputs(...)                                      # SentenceTransformer outputs for the gate
    author_agreement(...)                                    # flags contradicted the folder: how far from the author
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
