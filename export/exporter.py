"""Export an encoder folder (BERT, RoBERTa, ... ; export.families), served as its author defines it
(export.model_definition): Optimum ONNX export -> served graphs -> fused/quantized variants -> parity gate -> write.

    export_to_repository(model_dir, repo_dir)                      # Triton model repository (precision "auto")
    export_onnx(model_dir, output_dir, precision="all")            # plain ONNX variants + report
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertforge import contract
from bertforge.config import save_config, to_dict
from bertforge.cpu import detect_cpu
from bertforge.files import write_json_atomically
from bertforge.served_model import REPORT_FILE, TOKENIZER_DIR
from bertforge.tasks import EMBED, FILL_MASK
from export.author_reference import read_author
from export.config import AUTO, DEFAULT_PRECISION, ExportConfig, ParityGates
from export.errors import ExportError, ParityError
from export.model_folder import ModelFolderInfo, inspect_model_folder
from export.progress import ExportProgress, PrintProgress

FAILED_REPORT_FILE = "export_report.failed.json"  # when an earlier, good export is still in place
CONFIG_FILE = "export_config.toml"  # the resolved config, saved next to what it produced
# --output mode: folders loadable by optimum.onnxruntime.ORTModelForMaskedLM / ORTModelForFeatureExtraction
PLAIN_FOLDERS = {FILL_MASK: "masked-lm", EMBED: "feature-extraction"}


def export_to_repository(model_dir: str | Path, repo_dir: str | Path, precision: str = DEFAULT_PRECISION,
                         **options: Any) -> dict:
    """Export `model_dir` into the Triton repository `repo_dir` (fill_mask + embed); returns the report."""
    return run_export(_config(model=Path(model_dir), repo=Path(repo_dir), output=None, precision=precision, **options))


def export_onnx(model_dir: str | Path, output_dir: str | Path, precision: str = "all", **options: Any) -> dict:
    """Write only the verified ONNX variants (+ tokenizer, config.json, report) into `output_dir`."""
    return run_export(_config(model=Path(model_dir), output=Path(output_dir), repo=None, precision=precision, **options))


def run_export(config: ExportConfig, progress: ExportProgress | None = None) -> dict:
    """Run one export as configured; raises ExportError (ParityError for a failed gate) with a clear message."""
    from export.writer import prepare_destination

    if config.model is None:
        raise ExportError("no model folder given; pass --model DIR (a Hugging Face or sentence-transformers folder)")
    started = time.perf_counter()
    progress = progress or (PrintProgress() if config.progress else ExportProgress())
    from export.task_models import export_if_task_model

    # rerank / classify heads, embed_sparse (export/task_models.py): their own graphs and gates
    if (task_report := export_if_task_model(config, progress)) is not None:
        return task_report
    # Check the checkpoint and the destination before any heavy work
    info = inspect_model_folder(config.model)
    destination = Path(config.output or config.repo)
    prepare_destination(destination, replaces_whole_folder=config.output is not None)
    tasks, notes = _tasks(config, info)
    definition, plan, definition_notes = read_author(config, info)
    notes += definition_notes
    for note in notes:
        progress.outcome(note)
    report: dict[str, Any] = {"model": str(config.model), "destination": str(destination), "config": to_dict(config),
                              "mode": "output" if config.output else "repository", "notes": notes,
                              "cpu": detect_cpu().summary(), "tasks": {}}  # the CPU every gate ran on
    with tempfile.TemporaryDirectory(prefix="bertforge-export-") as scratch:
        scratch = Path(scratch)
        built = _build_and_check(config, info, (definition, plan), tasks, scratch, report, progress)
        failures = [line for task in report["tasks"].values() for v in task["variants"].values() for line in v["failures"]]
        report["passed"] = not failures
        report["seconds"] = round(time.perf_counter() - started, 1)
        if failures:
            report["written"] = False
            _write_report(destination, report)
            raise ParityError(failures, report)
        # Write atomically: a running server never sees half a model
        report["written"] = True
        if config.output:
            from export.writer import write_output_folder

            write_output_folder(destination, built, scratch / TOKENIZER_DIR, info, report)
        else:
            from export.writer import write_repository

            write_repository(destination, built, scratch / TOKENIZER_DIR, info, config, report)
        save_config(config, destination / CONFIG_FILE)
    progress.outcome(f"wrote {destination} in {report['seconds']} s")
    return report


def build_checked_variants(config: ExportConfig, scratch: Path, progress: ExportProgress | None = None, plain: bool = False) -> tuple[dict, dict]:
    """For benchmarks: build and parity-check every variant in `scratch`, keeping those that miss the gate too
    (their numbers are in the report). Returns ({target: {precision: path}}, report). Writes nothing else."""
    progress = progress or ExportProgress()
    info = inspect_model_folder(config.model)
    tasks, notes = _tasks(config, info)
    definition, plan, definition_notes = read_author(config, info)
    report: dict[str, Any] = {"model": str(config.model), "notes": notes + definition_notes, "tasks": {}}
    built = _build_and_check(config, info, (definition, plan), tasks, Path(scratch), report, progress, keep_failed=True,
                             plain=plain)
    return built, report


def _build_and_check(config: ExportConfig, info: ModelFolderInfo, author: tuple, tasks: list[str], scratch: Path,
                     report: dict, progress, keep_failed: bool = False, plain: bool | None = None) -> dict:
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
    from export.families import mlm_head
    from export.graphs import add_fill_mask_head, add_logits_head, add_pooling, encoder_only
    from export.model_definition import reference_model
    from export.parity import make_parity_inputs, reference_outputs
    from export.texts import calibration_texts, parity_texts
    definition, plan = author
    tokenizer = save_served_tokenizer(definition, info, scratch / TOKENIZER_DIR)
    max_length = _max_length(config, info, tokenizer, definition)
    report["max_length"] = max_length
    top_k = min(config.max_top_k, int(info.config["vocab_size"]))
    report["max_top_k"] = top_k
    report["definition"] = definition_report(info, config, definition, plan)
    _check_serving(config, tasks, max_length, top_k, report["definition"]["served"])
    # 1. Optimum: the encoder (last_hidden_state), dynamic batch and sequence axes
    progress.step(f"optimum export of {info.folder} (opset {config.opset})")
    encoder = onnx.load(str(_optimum_encoder(info.folder, scratch / "optimum", config.opset)))
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
    report["gate_inputs"] = {"texts": len(texts), "source": _text_source(config),
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
                report["definition"]["author_agreement"] = author_agreement(fp32_path, batches, definition, max_length)
        elif key not in references:
            references[key] = reference_outputs(torch_model, batches, task, pooling, normalize, top_k,
                                                head=head_module if task == FILL_MASK else None)
        feeds = calibration_feeds if task == FILL_MASK and kind == "served" else [_encoder_only(f) for f in calibration_feeds]
        timing_feeds = {name: value for name, value in _timing_feeds(tokenizer, max_length, task, kind).items()
                        if name in graph_inputs}
        target = _Target(name=name, task=task, kind=kind, fused=fused, folder=scratch / name, batches=batches,
                         references=references[key], calibration_feeds=feeds, config=config,
                         timing_feeds=timing_feeds)
        report["tasks"][name] = {"task": task, "graph": kind, "variants": {}}
        # 4. each precision: build (auto and int8 search recipes), run on fresh inputs, gate
        for precision in config.precisions:
            if precision == AUTO:
                chosen, path, entry = _choose_auto(target, progress)
                report["tasks"][name]["chosen"] = entry.pop("chosen")
            elif precision == "int8":
                chosen, path, entry = _search_int8(target, progress)
            else:
                chosen, (path, entry) = precision, _build_and_gate(target, precision, progress)
            report["tasks"][name]["variants"][chosen] = entry
            if entry["passed"] or (keep_failed and path.exists()):
                built.setdefault(name, {})[chosen] = path
    return built


@dataclass
class _Target:
    """One graph to build variants of, with what its gate needs."""

    name: str
    task: str
    kind: str
    fused: Path
    folder: Path
    batches: list
    references: list
    calibration_feeds: list
    config: ExportConfig
    timing_feeds: dict

    def evaluate(self, path: Path, precision: str) -> tuple[dict, list[str], float, list[str]]:
        """(metrics, failures, error, providers) of the variant at `path` against the reference."""
        from export.parity import compare, gate, task_error
        from export.variants import gate_session

        session = gate_session(path, precision)
        metrics = compare(session, self.batches, self.references, self.task, graph=self.kind,
                          tie_margin=self.config.gates.tie_margin)
        failures = gate(metrics, self.name, precision, self.config.gates, task=self.task)
        return metrics, failures, task_error(metrics, self.task), session.get_providers()


def _build_and_gate(target: _Target, precision: str, progress) -> tuple[Path, dict]:
    from export.variants import build_variant

    progress.step(f"{target.name} {precision}: building")
    path = target.folder / precision / "model.onnx"
    details = build_variant(target.fused, precision, path, calibration_feeds=target.calibration_feeds)
    metrics, failures, _, providers = target.evaluate(path, precision)
    progress.outcome(f"{target.name} {precision}: " + ("PASS " if not failures else "FAIL ") + _summary(metrics, target.task,
                                                                                                  precision))
    return path, {**details, "providers": providers, "parity": metrics, "failures": failures, "passed": not failures}


def _search_int8(target: _Target, progress) -> tuple[str, Path, dict]:
    """`--precision int8`: the recipe search; the winner is described like any variant."""
    from export.int8_search import search_int8
    from export.variants import describe, session_providers

    progress.step(f"{target.name} int8: searching recipes (at most {target.config.search_seconds:.0f} s)")
    result = search_int8(target.fused, target.folder / "int8-search",
                         lambda path: target.evaluate(path, "int8")[:3], target.calibration_feeds,
                         target.timing_feeds, seconds=target.config.search_seconds, progress=progress, label=f"{target.name} int8",
                         portable=target.config.int8_portable)
    if result.path is None:
        failures = [f"{target.name} int8: no recipe passed the gate ({len(result.candidates)} tried in "
                    f"{result.seconds:.0f} s); closest: {_closest(result)}"]
        entry = {"precision": "int8", "passed": False, "failures": failures, "search": result.summary(),
                 "parity": _best_parity(result)}
        progress.outcome(failures[0])
        return "int8", target.folder / "int8-search" / "none.onnx", entry
    # the winner was gated in the search already: its figures are the candidate's
    winner = next(c for c in result.candidates if c.get("name") == result.recipe.name and c.get("passed"))
    metrics = winner["parity"]
    entry = {**describe(result.path, "int8"), "recipe": result.recipe.summary(), "providers": session_providers("int8"),
             "parity": metrics, "failures": [], "passed": True, "search": result.summary()}
    progress.outcome(f"{target.name} int8: PASS with recipe {result.recipe.name} " + _summary(metrics, target.task, "int8"))
    return "int8", result.path, entry


def _choose_auto(target: _Target, progress) -> tuple[str, Path, dict]:
    """`--precision auto`: the int8 search, then fused fp32; the fastest that passes is served."""
    from export.int8_search import paired_latency

    fp32_path, fp32_entry = _build_and_gate(target, "fp32", progress)
    if not fp32_entry["passed"]:  # a graph bug, not a precision question: stop here
        return "fp32", fp32_path, {**fp32_entry, "chosen": {"requested": AUTO, "precision": "fp32",
                                                            "reason": "fp32 itself missed the gate"}}
    _, int8_path, int8_entry = _search_int8(target, progress)
    batch = "x".join(str(n) for n in target.timing_feeds["input_ids"].shape)
    if int8_entry["passed"]:
        # the final choice is timed in alternation, so a change of load on the machine cannot decide it
        times = paired_latency({"fp32": fp32_path, "int8": int8_path}, target.timing_feeds)
        fp32_entry["latency_ms"], int8_ms = times["fp32"], times["int8"]
        int8_entry["latency_ms"] = int8_ms
        if int8_ms < fp32_entry["latency_ms"]:
            reason = (f"int8 recipe {int8_entry['recipe']['name']} passed the gate and runs a {batch} batch in "
                      f"{int8_ms:.2f} ms vs fp32 {fp32_entry['latency_ms']:.2f} ms")
            progress.outcome(f"{target.name} auto: chose int8 ({reason})")
            return "int8", int8_path, {**int8_entry, "chosen": {"requested": AUTO, "precision": "int8", "reason": reason}}
        reason = (f"int8 passed but is not faster on this CPU ({int8_ms:.2f} ms vs fp32 "
                  f"{fp32_entry['latency_ms']:.2f} ms per {batch} batch)")
    else:
        reason = f"no int8 recipe passed the gate ({int8_entry['failures'][0]})"
    progress.outcome(f"{target.name} auto: chose fp32 ({reason})")
    return "fp32", fp32_path, {**fp32_entry, "int8_search": int8_entry.get("search"),
                               "chosen": {"requested": AUTO, "precision": "fp32", "reason": reason}}


def _closest(result) -> str:
    tried = [c for c in result.candidates if "error" in c]
    if not tried:
        return "none tried"
    best = min(tried, key=lambda c: c["error"])
    return f"{best['name']}: " + "; ".join(line.split(": ", 1)[-1] for line in best["failures"])


def _best_parity(result) -> dict:
    tried = [c for c in result.candidates if "error" in c]
    return min(tried, key=lambda c: c["error"])["parity"] if tried else {}


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


def _tasks(config: ExportConfig, info: ModelFolderInfo) -> tuple[list[str], list[str]]:
    tasks, notes = list(config.tasks), []
    if FILL_MASK in tasks and not info.has_mlm_head:
        tasks.remove(FILL_MASK)
        notes.append(f"{info.folder} has no MLM head (cls.predictions.*): exporting embed only, no fill_mask model")
    if not tasks:
        raise ExportError(f"nothing to export: {info.folder} has no MLM head and only fill_mask was asked; "
                          "ask for embed (tasks=['embed']) or export a BertForMaskedLM checkpoint")
    return tasks, notes


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


def _optimum_encoder(model_dir: Path, output: Path, opset: int) -> Path:
    """Optimum's feature-extraction export of the transformers model (never its sentence-transformers variant:
    the pooling is ours): input_ids/attention_mask[/token_type_ids] -> last_hidden_state."""
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(model_dir), str(output), task="feature-extraction", opset=opset, device="cpu",
                    do_validation=False, library_name="transformers")
    return output / "model.onnx"


def _load_torch(info: ModelFolderInfo):
    """The PyTorch fp32 reference (safetensors only): the family's *ForMaskedLM, or its base model."""
    from transformers import AutoModel, AutoModelForMaskedLM

    if info.has_mlm_head:
        return AutoModelForMaskedLM.from_pretrained(info.folder, use_safetensors=True).eval()
    return AutoModel.from_pretrained(info.folder, use_safetensors=True).eval()


def _encoder_only(feeds: dict) -> dict:
    return {name: feeds[name] for name in contract.ONNX_ENCODER_INPUTS if name in feeds}


def _summary(metrics: dict, task: str, precision: str) -> str:
    from export.parity import judged_figures

    source, figures = judged_figures(metrics, precision)
    if task == FILL_MASK:
        if precision == "fp32":
            return (f"top-1 agreement {figures['top1_agreement']:.4f} on {figures['masked_tokens']} masks, "
                    f"max |dp| {figures['max_abs_diff']:.2e}")
        return (f"tie-aware agreement {figures['tie_aware_agreement']:.4f}, top-5 {figures['top5_containment']:.4f}, "
                f"mean TV {figures.get('mean_total_variation', float('nan')):.4f} on {figures['masked_tokens']} masks "
                f"of {source}")
    return (f"cosine min {figures['min_cosine']:.6f} / mean {figures['mean_cosine']:.6f} on {figures['texts']} texts "
            f"of {source}, max |d| {figures['max_abs_diff']:.2e}")


def _write_report(destination: Path, report: dict) -> None:
    """A failed export's report; it does not clobber the report of the export that is still in place."""
    destination.mkdir(parents=True, exist_ok=True)
    path = destination / REPORT_FILE
    if path.exists():
        path = destination / FAILED_REPORT_FILE
    write_json_atomically(path, report)


def _config(**fields: Any) -> ExportConfig:
    """ExportConfig from keyword options; ServingOptions names go to `serving`, gate names to `gates`."""
    import dataclasses

    from bertforge.served_model import ServingOptions, option_fields

    own = {f.name for f in dataclasses.fields(ExportConfig)}
    gate_names = {f.name for f in dataclasses.fields(ParityGates)}
    serving = fields.pop("serving", None)
    gates = fields.pop("gates", None)
    gate_values = {name: fields.pop(name) for name in list(fields) if name in gate_names}
    serving_values = {name: fields.pop(name) for name in list(fields) if name not in own and name in option_fields()}
    unknown = sorted(set(fields) - own)
    if unknown:
        raise ExportError(f"unknown export option(s) {unknown}; valid: {sorted(own | gate_names | set(option_fields()))}")
    if gates is None:
        gates = ParityGates(**gate_values)
    if serving is None:
        serving = ServingOptions(**serving_values)
    for name in ("calibration_file", "parity_file"):
        if fields.get(name) is not None:
            fields[name] = Path(fields[name])
    return ExportConfig(**fields, serving=serving, gates=gates)
