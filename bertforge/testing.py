"""Tiny random models and texts built locally (no model hub), for the tests and the benchmarks alike.

    make_sentences(8, seed=1)                                          # English-like text, small vocabulary
    build_tiny_bert(folder, tokenizer_dir)                             # BertForMaskedLM, 2 layers, hidden 32
    build_tiny_bert(folder, tokenizer_dir, hidden_size=256, num_hidden_layers=4, ...)   # any size: BertConfig keys
    build_classifier(folder, tokenizer_dir, num_labels=1)              # a cross-encoder (1 label) or classifier
    build_family_folder("roberta", folder, wordpiece_dir, texts)       # every family, as a sentence-transformers folder
    plant_outlier_dimensions(model_dir, target)                        # int8's failure mode, fp32 outputs unchanged

Packaged with bertforge (it imports no stage and nothing from tests/), so an installed bertforge can build the same
models; torch, transformers, tokenizers and sentence-transformers are imported inside the functions that use them.
The tokenizers come from the caller (train.tokenizer.train_wordpiece_tokenizer, or byte_level_bpe below).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

SUBJECTS = ["the minister", "the committee", "a reporter", "the council", "our government", "the bank", "the team"]
VERBS = ["announced", "rejected", "discussed", "approved", "reviewed", "criticised", "supported"]
OBJECTS = ["the new budget", "a housing plan", "the report", "an energy policy", "the trade deal", "the proposal"]
TAILS = ["on monday", "after a long debate", "in london", "this week", "despite strong opposition", "for the second time"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}  # a 3-label classifier's id2label
ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "electra", "modernbert")
MAX_SEQ_LENGTH = 48  # the family folders' max_seq_length
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_sentences(count: int, seed: int = 0) -> list[str]:
    """Deterministic English-like sentences with a small vocabulary (fast to learn)."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        for _ in range(count)
    ]


def make_documents(count: int, sentences_per_document: int = 8, seed: int = 0) -> list[str]:
    """`count` documents of `sentences_per_document` sentences each."""
    sentences = make_sentences(count * sentences_per_document, seed)
    return [" ".join(sentences[i : i + sentences_per_document]) for i in range(0, len(sentences), sentences_per_document)]


# --- BERT: masked-LM, encoder, sequence classification ---------------------------------------------------------
def build_tiny_bert(folder: Path, tokenizer_dir: Path, seed: int = 0, with_mlm_head: bool = True, **overrides) -> Path:
    """Save a random BERT (+ tokenizer) as a standard HF folder: tiny (2 layers, hidden 32, 64 positions) unless
    `overrides` (BertConfig keys) say otherwise; BertForMaskedLM, or BertModel without the MLM head."""
    from transformers import BertForMaskedLM, BertModel

    return _save_bert(BertForMaskedLM if with_mlm_head else BertModel, folder, tokenizer_dir, seed, overrides)


def build_classifier(folder: Path, tokenizer_dir: Path, num_labels: int, seed: int = 3, **overrides) -> Path:
    """A random BertForSequenceClassification: one label is a cross-encoder (rerank), several a classifier whose
    labels are LABELS. Tiny and with weights of std 0.3 (spread-out scores: rankings mean something) unless
    `overrides` say otherwise."""
    from transformers import BertForSequenceClassification

    labels = {} if num_labels == 1 else {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    settings = {"num_labels": num_labels, "initializer_range": 0.3, **labels, **overrides}
    return _save_bert(BertForSequenceClassification, folder, tokenizer_dir, seed, settings)


def _save_bert(model_class, folder: Path, tokenizer_dir: Path, seed: int, overrides: dict) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    settings.update(overrides)
    torch.manual_seed(seed)
    model_class(BertConfig(**settings)).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


# --- every encoder family, wrapped as a sentence-transformers folder ---------------------------------------------
def build_family_folder(kind: str, folder: Path, wordpiece_dir: Path, texts: list[str], *, pooling="mean",
                        normalize: bool = False, dense: int | None = None, prompts: dict | None = None,
                        default_prompt: str | None = None, mlm_head: bool = True, seed: int = 0,
                        init_range: float = 0.02) -> Path:
    """Save a 2-layer, hidden-32 model of `kind` (one of FAMILIES) with its tokenizer in `folder`, wrapped as a
    sentence-transformers model (pooling, Dense, Normalize, prompts). The RoBERTa family gets a byte-level BPE
    trained on `texts`, the others the WordPiece tokenizer of `wordpiece_dir` (ModernBERT's and DistilBERT's
    without token_type_ids)."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    folder.mkdir(parents=True, exist_ok=True)
    if kind in ROBERTA_FAMILY:
        tokenizer = byte_level_bpe(folder, texts)
    else:
        tokenizer = wordpiece(folder, wordpiece_dir, token_type_ids=kind not in ("modernbert", "distilbert"))
    torch.manual_seed(seed)
    model = family_model(kind, tokenizer, mlm_head, init_range)
    model.save_pretrained(folder)
    transformer = models.Transformer(str(folder), max_seq_length=MAX_SEQ_LENGTH)
    modules = [transformer, models.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)]
    if dense:
        modules.append(models.Dense(modules[-1].get_embedding_dimension(), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(models.Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts or {}, default_prompt_name=default_prompt, device="cpu")
    st.save(str(folder))
    model.save_pretrained(folder)  # keep the MLM head next to the ST files (st.save writes the base model)
    return folder


def st_modules(folder: Path) -> list[str]:
    """The module types of a sentence-transformers folder's modules.json, in order."""
    return [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]


def byte_level_bpe(folder: Path, texts: list[str]):
    """A RoBERTa-style byte-level BPE tokenizer (<s> </s> <pad> <unk> <mask>) trained on `texts`, saved in `folder`."""
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(texts, vocab_size=300, min_frequency=2, special_tokens=specials, show_progress=False)
    trained._tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = RobertaTokenizerFast(tokenizer_object=trained._tokenizer, bos_token="<s>", eos_token="</s>",
                                     sep_token="</s>", cls_token="<s>", unk_token="<unk>", pad_token="<pad>",
                                     mask_token="<mask>", model_max_length=MAX_SEQ_LENGTH)
    tokenizer.save_pretrained(folder)
    return tokenizer


def wordpiece(folder: Path, wordpiece_dir: Path, token_type_ids: bool = True):
    """The WordPiece tokenizer of `wordpiece_dir` saved in `folder`; without token_type_ids as ModernBERT's."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(wordpiece_dir)
    if not token_type_ids:  # ModernBERT's tokenizer: input_ids and attention_mask only
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, unk_token="[UNK]",
                                            pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                            mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
                                            model_max_length=MAX_SEQ_LENGTH)
    tokenizer.save_pretrained(folder)
    return tokenizer


def family_model(kind: str, tokenizer, mlm_head: bool, init_range: float = 0.02):
    """A random model of `kind` (2 layers, hidden 32) sized for `tokenizer`; `init_range` is the weights' std
    (transformers' initializer_range: larger gives less uniform activations, a harder case for int8)."""
    import transformers

    size = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, initializer_range=init_range)
    if kind == "distilbert":
        config = transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, **size)
    elif kind == "modernbert":
        config = transformers.ModernBertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                               intermediate_size=64, max_position_embeddings=64, local_attention=16,
                                               global_attn_every_n_layers=2, cls_token_id=tokenizer.cls_token_id,
                                               sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                                               eos_token_id=tokenizer.sep_token_id, reference_compile=False, **size)
    else:
        config_class = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
                        "xlm-roberta": transformers.XLMRobertaConfig, "camembert": transformers.CamembertConfig,
                        "mpnet": transformers.MPNetConfig, "electra": transformers.ElectraConfig}[kind]
        extra = {"embedding_size": 32} if kind == "electra" else {}
        # RoBERTa-family and MPNet positions start after padding_idx: 2 more rows than usable positions
        positions = 66 if kind in (*ROBERTA_FAMILY, "mpnet") else 64
        config = config_class(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              max_position_embeddings=positions, **extra, **size)
    model_class = transformers.AutoModelForMaskedLM if mlm_head else transformers.AutoModel
    return model_class.from_config(config).eval()


# --- outlier dimensions: the failure mode of per-tensor int8 on real checkpoints ----------------------------------
def plant_outlier_dimensions(model_dir: str | Path, target: str | Path, channels: Sequence[int] = (3, 17),
                             factor: float = 60.0) -> Path:
    """Copy the HF BERT folder `model_dir` to `target` with outlier channels planted; returns `target`.

    Trained BERTs carry a few channels whose activations are 10-100x the rest; per-tensor int8 of an activation
    that holds them leaves the other channels a handful of levels. Both transforms leave the fp32 model's outputs
    as they were (the gate's reference is unchanged, any loss is the quantizer's):
    - attention: a few value channels are scaled by `factor` and the output projection's matching input columns
      by 1/factor: the input of every attention output MatMul carries outliers;
    - FFN: a few extra neurons whose GELU output is the constant `factor` and whose output weights are zero: the
      input of every second FFN MatMul carries them (as the GELU outliers of trained BERTs do).
    (Scaling LayerNorm weights instead, as trained BERTs show them, changes the next LayerNorm's statistics in
    post-LN BERT: the model then lives in the outlier channels and int8 of it stays accurate.)
    """
    import torch
    from transformers import AutoConfig, BertForMaskedLM, BertModel

    model_dir, target = Path(model_dir), Path(target)
    config = AutoConfig.from_pretrained(model_dir)
    has_head = any("MaskedLM" in name for name in (config.architectures or []))
    model = (BertForMaskedLM if has_head else BertModel).from_pretrained(model_dir).eval()
    bert = getattr(model, "bert", model)
    index = torch.tensor([channel % config.hidden_size for channel in channels])
    with torch.no_grad():
        for layer in bert.encoder.layer:
            # attention: value channels x factor, the output projection's columns / factor (same product)
            layer.attention.self.value.weight[index] *= factor
            layer.attention.self.value.bias[index] *= factor
            layer.attention.output.dense.weight[:, index] /= factor
            # FFN: extra neurons with GELU(factor) = factor for every token, zero output weights
            layer.intermediate.dense = _grown(layer.intermediate.dense, len(index), rows=True, bias_value=factor)
            layer.output.dense = _grown(layer.output.dense, len(index), rows=False)
    model.config.intermediate_size += len(index)
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, target / name)
    return target


def _grown(linear, extra: int, rows: bool, bias_value: float = 0.0):
    """`linear` with `extra` zero output rows (rows=True, bias `bias_value`) or zero input columns."""
    import torch

    out_features, in_features = linear.out_features + (extra if rows else 0), linear.in_features + (0 if rows else extra)
    grown = torch.nn.Linear(in_features, out_features)
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: linear.out_features, : linear.in_features] = linear.weight
        grown.bias.fill_(bias_value)
        grown.bias[: linear.out_features] = linear.bias
    return grown
