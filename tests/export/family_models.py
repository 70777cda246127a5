"""Tiny random encoders of every supported family, saved as sentence-transformers folders (no hub).

`build_family_folder(kind, folder, wordpiece_dir, texts)` writes a 2-layer, hidden-32 model of `kind`
(BERT, RoBERTa, XLM-RoBERTa, CamemBERT, DistilBERT, MPNet, ELECTRA, ModernBERT) with its tokenizer:
byte-level BPE for the RoBERTa family, the WordPiece tokenizer of `wordpiece_dir` for the others (ModernBERT's
emits no token_type_ids), then the sentence-transformers modules around it (pooling, Dense, Normalize, prompts)."""

from __future__ import annotations

import json
from pathlib import Path

ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "mpnet", "electra", "modernbert")
MAX_SEQ_LENGTH = 48


def byte_level_bpe(folder: Path, texts: list[str]):
    """A RoBERTa-style byte-level BPE tokenizer (<s> </s> <pad> <unk> <mask>) trained on `texts`."""
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


def build_family_folder(kind: str, folder: Path, wordpiece_dir: Path, texts: list[str], *, pooling="mean",
                        normalize: bool = False, dense: int | None = None, prompts: dict | None = None,
                        default_prompt: str | None = None, mlm_head: bool = True, seed: int = 0,
                        init_range: float = 0.02) -> Path:
    """Save a tiny `kind` model + tokenizer in `folder`, wrapped as a sentence-transformers model."""
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
    return [entry["type"] for entry in json.loads((folder / "modules.json").read_text())]
