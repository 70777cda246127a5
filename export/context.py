"""What the task exporters of one export share, each piece built once and only when a task asks for it.

    context = ExportContext.open(config, info, scratch, progress)   # the author's definition, tokenizer, max length
    context.encoder          # Optimum's encoder graph (feature-extraction), for the tasks that add a head to it
    context.torch_model      # the PyTorch fp32 model (the family's *ForMaskedLM, else its base model)
    context.parity_inputs    # the gate's random-id and text batches (export.parity), shared by fill_mask and embed
    context.fuse(fp32, folder)   # ONNX Runtime's fusions for the family (ModernBERT: export.modernbert_graph)

Below every exporter (export.task_exporter): it imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from bertforge import contract, tasks
from bertforge.served_model import TOKENIZER_DIR
from export.config import ExportConfig
from export.errors import ExportError
from export.model_folder import ModelFolderInfo
from export.progress import ExportProgress

TIMING_BATCH, TIMING_TOKENS = 8, 128  # candidates are timed on 8 texts of min(128, max_length) tokens


@dataclass
class ExportContext:
    config: ExportConfig
    info: ModelFolderInfo
    scratch: Path
    progress: ExportProgress
    definition: Any  # export.model_definition.ModelDefinition, or export.sparse_definition.SparseDefinition
    plan: Any  # export.model_definition.EmbeddingPlan (None for a SparseEncoder folder)
    tokenizer: Any  # the served tokenizer (transformers), saved in `tokenizer_dir`
    max_length: int
    top_k: int
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, config: ExportConfig, info: ModelFolderInfo, scratch: Path, progress: ExportProgress) -> ExportContext:
        """Read the author's definition (export.model_definition or export.sparse_definition), save the tokenizer the
        server runs, and fix tokens per input and the fill-mask top-k."""
        from export.author_reference import read_author, save_served_tokenizer

        if info.kind == tasks.SPARSE_ENCODER:
            from export.sparse_definition import read_sparse_definition

            definition, plan, notes = read_sparse_definition(info.root), None, []
        else:
            definition, plan, notes = read_author(config, info)
        tokenizer = save_served_tokenizer(definition, info, Path(scratch) / TOKENIZER_DIR)
        return cls(config=config, info=info, scratch=Path(scratch), progress=progress, definition=definition,
                   plan=plan, tokenizer=tokenizer, max_length=tokens_per_input(config, info, tokenizer, definition),
                   top_k=min(config.max_top_k, int(info.config["vocab_size"])), notes=notes)

    @property
    def tokenizer_dir(self) -> Path:
        return self.scratch / TOKENIZER_DIR

    @cached_property
    def encoder(self):
        """Optimum's encoder graph of the folder (`optimum_encoder`), for the tasks that add a head or pooling to it."""
        import onnx

        self.progress.step(f"optimum export of {self.info.folder} (opset {self.config.opset})")
        return onnx.load(str(optimum_encoder(self.info.folder, self.scratch / "optimum", self.config.opset)))

    @cached_property
    def torch_model(self):
        """The PyTorch fp32 reference (safetensors only): the family's *ForMaskedLM, or its base model."""
        from transformers import AutoModel, AutoModelForMaskedLM

        if self.info.has_mlm_head:
            return AutoModelForMaskedLM.from_pretrained(self.info.folder, use_safetensors=True).eval()
        return AutoModel.from_pretrained(self.info.folder, use_safetensors=True).eval()

    @cached_property
    def texts(self) -> list[str]:
        from export.texts import parity_texts

        return parity_texts(self.config)

    @cached_property
    def parity_inputs(self):
        """Random-id batches and windows of held-out text, masked in rounds (export.parity.ParityInputs)."""
        from export.parity import make_parity_inputs

        return make_parity_inputs(self.tokenizer, self.texts, self.max_length, seed=self.config.seed,
                                  min_masks=self.config.gates.min_masks)

    @cached_property
    def calibration_feeds(self) -> list[dict]:
        """Masked windows of calibration text (int8-static, SmoothQuant, the search's sensitivities), with
        mask_positions; a task whose graph has no such input gets them without (`encoder_feeds`)."""
        from export.parity import make_parity_inputs
        from export.texts import calibration_texts

        calibration = make_parity_inputs(self.tokenizer, calibration_texts(self.config), self.max_length,
                                         seed=self.config.seed + 1, min_masks=1)
        return [batch.feeds for batch in calibration.fill_mask if batch.source == "text"]

    def text_batches(self) -> list:
        """The random-id batches, then whole texts tokenized exactly as the server does (its tokenizer.json, with the
        definition's default prompt), which a reference encodes from the text itself."""
        from export.parity import special_ids, text_batches_as_served

        random_batches = [batch for batch in self.parity_inputs.embed if batch.source == "random"]
        return random_batches + text_batches_as_served(self.tokenizer_dir / "tokenizer.json", self.texts,
                                                       self.max_length, special_ids(self.tokenizer)["pad"],
                                                       prompt=self.definition.default_prompt)

    def timing_feeds(self, masks: bool = False) -> dict:
        """8 texts of min(128, max_length) random tokens to time candidates on; `masks`: 15% masked (fill_mask)."""
        import numpy as np

        from export.parity import pad_rows, special_ids

        rng = np.random.default_rng(0)
        ids = special_ids(self.tokenizer)
        length = min(TIMING_TOKENS, self.max_length)
        rows = [[ids["cls"], *rng.integers(5, len(self.tokenizer), size=length - 2).tolist(), ids["sep"]]
                for _ in range(TIMING_BATCH)]
        positions = [sorted(rng.choice(np.arange(1, length - 1), size=max(1, length * 15 // 100), replace=False).tolist())
                     for _ in rows] if masks else None
        return pad_rows(rows, ids["pad"], positions, ids["mask"])

    def fuse(self, fp32_path: Path, folder: Path) -> Path:
        """The fused graph every variant starts from: ONNX Runtime's fusions where the family has them, ModernBERT's
        encoder written in ORT's fused ops (export.modernbert_graph), else the plain graph (export.families)."""
        from export.variants import fuse

        target = folder / "model.fused.onnx"
        if self.config.optimize and self.info.family.fusion == "modernbert":
            from export.modernbert_graph import fusable, replace_encoder

            why_not = fusable(fp32_path, self.torch_model.config)
            if why_not is None:
                return replace_encoder(fp32_path, target, self.torch_model)
            self.notes.append(f"ModernBERT encoder kept as traced (ONNX Runtime's BERT fusions only): {why_not}")
        optimize = self.config.optimize and self.info.family.fusion is not None
        return fuse(fp32_path, target, num_heads=self.info.num_heads, hidden_size=self.info.hidden_size,
                    optimize=optimize)

    def definition_report(self) -> dict:
        """The report's `definition`: the family, what the author defines, what the graph computes and why."""
        if self.plan is None:  # a SparseEncoder folder (export.sparse_definition)
            return {"family": self.info.family.model_type, "author": self.definition.summary(),
                    "fusion": self.info.family.fusion if self.config.optimize else None}
        from export.author_reference import definition_report

        return definition_report(self.info, self.config, self.definition, self.plan)

    def served_fields(self) -> dict:
        """ServingSettings fields of the author's (dense) definition: pooling as used, prompts, family, width."""
        from export.model_definition import serving_fields

        return serving_fields(self.info.family.model_type, self.info.hidden_size, self.definition, self.plan)

    def definition_used(self) -> dict:
        """serving.json's `info.definition`: what the graph computes and which file (or flag) each choice came from."""
        return {"definition": self.definition_report()["used"]}

    def require_mlm_head(self, task: str) -> None:
        if not self.info.has_mlm_head:
            raise ExportError(f"{task} needs the MLM head ({self.info.family.mlm_head_key}); {self.info.folder} has none: "
                              "export a *ForMaskedLM folder (bertforge's own runs are)")


def optimum_encoder(model_dir: Path, output: Path, opset: int) -> Path:
    """Optimum's feature-extraction export of the transformers model (never its sentence-transformers variant: the
    head or pooling is bertforge's): input_ids/attention_mask[/token_type_ids] -> last_hidden_state."""
    import warnings

    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main_export(str(model_dir), str(output), task="feature-extraction", opset=opset, device="cpu",
                    do_validation=False, library_name="transformers")
    return output / "model.onnx"


def tokens_per_input(config: ExportConfig, info: ModelFolderInfo, tokenizer, definition) -> int:
    """The model's usable positions (export.families.position_limit: a RoBERTa with 514 position rows takes 512
    tokens), the tokenizer's limit and a sentence-transformers max_seq_length: the smallest; `config.max_length`
    may lower it. The one rule for every task."""
    from export.families import position_limit

    limit = position_limit(info.family, info.config)
    tokenizer_limit = getattr(tokenizer, "model_max_length", limit) or limit
    limit = min(limit, tokenizer_limit, definition.max_seq_length or limit)
    if config.max_length is not None:
        if config.max_length > limit:
            raise ExportError(f"max_length {config.max_length} exceeds the model's {limit} positions; lower it")
        return config.max_length
    return limit


def encoder_feeds(feeds: dict, names: set[str] | None = None) -> dict:
    """The encoder inputs of `feeds` (no mask_positions), only those among `names` when given."""
    return {name: feeds[name] for name in contract.ONNX_ENCODER_INPUTS
            if name in feeds and (names is None or name in names)}
