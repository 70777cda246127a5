"""Build the graphs of one fill_mask/embed export and every variant of each, gated against PyTorch fp32.

    built = build_and_check(config, info, (definition, plan), tasks, scratch, report, progress)

Optimum's encoder -> per graph (fill_mask/embed served, plus the plain Optimum-loadable ones in --output mode):
the fp32 graph, fused -> the parity and calibration inputs -> each precision (export.choice) -> its verdict in
`report.tasks[name]`. Nothing is written outside `scratch`; export.exporter decides what gets written.
"""

from __future__ import annotations

from pathlib import Path

from bertforge import contract
from bertforge.served_model import TOKENIZER_DIR
from bertforge.tasks import EMBED, FILL_MASK
from export.config import ExportConfig
from export.errors import ExportError
from export.model_folder import ModelFolderInfo
from export.report import ExportReport, TargetReport

# --output mode: folders loadable by optimum.onnxruntime.ORTModelForMaskedLM / ORTModelForFeatureExtraction
PLAIN_FOLDERS = {FILL_MASK: "masked-lm", EMBED: "feature-extraction"}


def build_and_check(config: ExportConfig, info: ModelFolderInfo, author: tuple, tasks: list[str], scratch: Path,
                    report: ExportReport, progress, keep_failed: bool = False, plain: bool | None = None) -> dict:
    """Build every (task, precision) variant in `scratch` and gate it; returns {task: {precision: path}}.
    The served tokenizer is saved to `scratch/tokenizer` (as the author's library tokenizes: lower-casing included)."""
    import onnx

    from export.author_reference import (
        author_agreement,
        author_outputs,
        definition_report,
        embed_gate_batches,
        fused_graph,
        reference_name,
        save_served_tokenizer,
    )
    from export.choice import Target, build_precision
    from export.families import mlm_head
    from export.graphs import add_fill_mask_head, add_logits_head, add_pooling, encoder_only
    from export.layer_norm import choose_layer_norm_form
    from export.model_definition import reference_model
    from export.parity import make_parity_inputs, reference_outputs
    from export.texts import calibration_texts, parity_texts
    definition, plan = author
    tokenizer = save_served_tokenizer(definition, info, scratch / TOKENIZER_DIR)
    max_length = _max_length(config, info, tokenizer, definition)
    report.max_length = max_length
    top_k = min(config.max_top_k, int(info.config["vocab_size"]))
    report.max_top_k = top_k
    report.definition = definition_report(info, config, definition, plan)
    _check_serving(config, tasks, max_length, top_k, report.definition["served"])
    # 1. Optimum: the encoder (last_hidden_state), dynamic batch and sequence axes
    progress.step(f"optimum export of {info.folder} (opset {config.opset})")
    encoder = onnx.load(str(optimum_encoder(info.folder, scratch / "optimum", config.opset)))
    torch_model = _load_torch(info)
    # 2. Parity and calibration data: fresh random ids + windows of held-out text (masked in rounds)
    texts = parity_texts(config)
    inputs = make_parity_inputs(tokenizer, texts, max_length, seed=config.seed, min_masks=config.gates.min_masks)
    calibration = make_parity_inputs(tokenizer, calibration_texts(config), max_length, seed=config.seed + 1, min_masks=1)
    # only the inputs the family's graph has (no token_type_ids for RoBERTa, DistilBERT, ModernBERT, ...)
    graph_inputs = {node.name for node in encoder.graph.input} | {contract.ONNX_MASK_POSITIONS}
    calibration_feeds = [{name: value for name, value in batch.feeds.items() if name in graph_inputs}
                         for batch in calibration.fill_mask if batch.source == "text"]
    if EMBED in tasks:
        inputs.embed = embed_gate_batches(inputs, texts, scratch / TOKENIZER_DIR, max_length, tokenizer, definition)
    report.gate_inputs = {"texts": len(texts), "source": _text_source(config),
                          "fill_mask_batches": len(inputs.fill_mask), "embed_batches": len(inputs.embed),
                          "embed_reference": reference_name(definition)}
    built: dict[str, dict[str, Path]] = {}
    references: dict[tuple, list] = {}
    plain = config.output is not None if plain is None else plain
    for name, task, kind in _targets(tasks, plain=plain):
        # 3. fp32 graph: gather + MLM head + top-k, pooling, or (plain) logits / last_hidden_state; then fused
        pooling, normalize = (plan.pooling_name, plan.normalize) if kind == "served" else ("mean", False)
        if task == FILL_MASK:
            head, head_module = mlm_head(torch_model)
            graph = add_fill_mask_head(encoder, head, top_k) if kind == "served" else add_logits_head(encoder, head)
        else:
            graph = add_pooling(encoder, plan.pooling, plan.normalize, plan.dense) if kind == "served" else encoder_only(encoder)
        fp32_path = scratch / name / "model.fp32.onnx"
        fp32_path.parent.mkdir(parents=True)
        onnx.save(graph, str(fp32_path))
        fused = fused_graph(fp32_path, scratch / name, info, config, plan if task == EMBED and kind == "served" else None)
        batches = inputs.for_task(task)
        key = (task, pooling, normalize)
        if key not in references and task == EMBED and kind == "served":
            # the author's computation: sentence-transformers on the same texts / ids (flags that contradict the
            # folder replace its Pooling/Normalize with sentence-transformers' own, as asked)
            references[key] = author_outputs(reference_model(definition, plan, max_length), batches, definition)
            if not plan.agrees_with_author:
                report.definition["author_agreement"] = author_agreement(fp32_path, batches, definition, max_length)
        elif key not in references:
            references[key] = reference_outputs(torch_model, batches, task, pooling, normalize, top_k,
                                                head=head_module if task == FILL_MASK else None)
        feeds = calibration_feeds if task == FILL_MASK and kind == "served" else [_encoder_only(f) for f in calibration_feeds]
        timing_feeds = {name: value for name, value in _timing_feeds(tokenizer, max_length, task, kind).items()
                        if name in graph_inputs}
        # the residual LayerNorm in the form that is faster on this CPU (fp16 keeps ONNX Runtime's fusion)
        report.tasks[name] = TargetReport(task=task, graph=kind)
        cpu_fused = fused
        if any(precision != "fp16" for precision in config.precisions):
            progress.step(f"{name}: timing SkipLayerNormalization against Add + LayerNormalization")
            cpu_fused, report.tasks[name].layer_norm = choose_layer_norm_form(fused, timing_feeds)
        target = Target(name=name, task=task, kind=kind, fused=cpu_fused, folder=scratch / name, batches=batches,
                        references=references[key], calibration_feeds=feeds, config=config, timing_feeds=timing_feeds,
                        gpu_fused=fused)
        # 4. each precision: build (auto and int8 search recipes), run on fresh inputs, gate
        for requested in config.precisions:
            precision, path, variant, choice = build_precision(target, requested, progress)
            if choice is not None:
                report.tasks[name].chosen = choice
            report.tasks[name].variants[precision] = variant
            if variant.passed or (keep_failed and path.exists()):
                built.setdefault(name, {})[precision] = path
    return built


def served_tasks(config: ExportConfig, info: ModelFolderInfo) -> tuple[list[str], list[str]]:
    """The tasks this folder can serve of those asked for, and notes on any dropped."""
    tasks, notes = list(config.tasks), []
    if FILL_MASK in tasks and not info.has_mlm_head:
        tasks.remove(FILL_MASK)
        notes.append(f"{info.folder} has no MLM head (cls.predictions.*): exporting embed only, no fill_mask model")
    if not tasks:
        raise ExportError(f"nothing to export: {info.folder} has no MLM head and only fill_mask was asked; "
                          "ask for embed (tasks=['embed']) or export a BertForMaskedLM checkpoint")
    return tasks, notes


def optimum_encoder(model_dir: Path, output: Path, opset: int) -> Path:
    """Optimum's feature-extraction export of the transformers model (never its sentence-transformers variant:
    the pooling is ours): input_ids/attention_mask[/token_type_ids] -> last_hidden_state."""
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(model_dir), str(output), task="feature-extraction", opset=opset, device="cpu",
                    do_validation=False, library_name="transformers")
    return output / "model.onnx"


def _timing_feeds(tokenizer, max_length: int, task: str, kind: str) -> dict:
    """A batch of 8 texts of min(128, max_length) tokens (15% masked for fill-mask) to time candidates on."""
    import numpy as np

    from export.parity import pad_rows, special_ids

    rng = np.random.default_rng(0)
    ids = special_ids(tokenizer)
    length = min(128, max_length)
    rows = [[ids["cls"], *rng.integers(5, len(tokenizer), size=length - 2).tolist(), ids["sep"]] for _ in range(8)]
    positions = [sorted(rng.choice(np.arange(1, length - 1), size=max(1, length * 15 // 100), replace=False).tolist())
                 for _ in rows] if task == FILL_MASK and kind == "served" else None
    return pad_rows(rows, ids["pad"], positions, ids["mask"])


def _text_source(config: ExportConfig) -> str:
    from export.texts import text_source

    return text_source(config.parity_file, "eval.jsonl")


def _targets(tasks: list[str], plain: bool) -> list[tuple[str, str, str]]:
    """(folder name, task, graph kind): the served graphs, plus Optimum-loadable ones in --output mode."""
    targets = [(task, task, "served") for task in tasks]
    if plain:
        targets += [(PLAIN_FOLDERS[task], task, "plain") for task in tasks]
    return targets


def _max_length(config: ExportConfig, info: ModelFolderInfo, tokenizer, definition) -> int:
    """The model's usable positions (export.families.position_limit), the tokenizer's limit, and a
    sentence-transformers max_seq_length: the smallest; `config.max_length` may lower it."""
    from export.families import position_limit

    limit = position_limit(info.family, info.config)
    tokenizer_limit = getattr(tokenizer, "model_max_length", limit) or limit
    limit = min(limit, tokenizer_limit, definition.max_seq_length or limit)
    if config.max_length is not None:
        if config.max_length > limit:
            raise ExportError(f"max_length {config.max_length} exceeds the model's {limit} positions; lower it")
        return config.max_length
    return limit


def _check_serving(config: ExportConfig, tasks: list[str], max_length: int, max_top_k: int, fields: dict) -> None:
    """The serving settings must hold for this model (e.g. one max-length text within the token budget)
    before the export spends minutes; the writer builds the same settings at the end."""
    from bertforge.config import ConfigError
    from export.writer import serving_settings

    for task in tasks:
        try:
            serving_settings(task, "fp32", config, max_length, max_top_k, fields)
        except ConfigError as error:
            raise ExportError(f"serving settings do not fit this model: {error}") from None


def _load_torch(info: ModelFolderInfo):
    """The PyTorch fp32 reference (safetensors only): the family's *ForMaskedLM, or its base model."""
    from transformers import AutoModel, AutoModelForMaskedLM

    if info.has_mlm_head:
        return AutoModelForMaskedLM.from_pretrained(info.folder, use_safetensors=True).eval()
    return AutoModel.from_pretrained(info.folder, use_safetensors=True).eval()


def _encoder_only(feeds: dict) -> dict:
    return {name: feeds[name] for name in contract.ONNX_ENCODER_INPUTS if name in feeds}
