"""Real text for the parity gate (held-out) and for int8 calibration (training corpus).

A file given in the config wins; else the demo corpus cache (`bertforge data`), else the built-in
English texts shipped with the package (`export/data/gate_texts.txt`: varied sentences, long
paragraphs and odd Unicode), so export works offline on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from export.errors import ExportError

BUILT_IN_TEXTS = [
    "The committee will publish its report on the future of public transport next week.",
    "Shares in the bank fell sharply after it warned that profits would be lower than expected.",
    "The minister said the government had no plans to raise taxes before the election.",
    "Scientists have found that the river is warmer now than at any time in the last century.",
    "Local people gathered outside the town hall to protest against the closure of the library.",
    "The team won the final in extra time, their first title in more than twenty years.",
    "Prices for gas and electricity are expected to rise again in the autumn.",
    "The hospital has opened a new ward for children with long-term illnesses.",
    "Members of the house debated the bill late into the night before a narrow vote.",
    "A new study suggests that reading to young children improves their language skills.",
    "The company plans to build two factories and hire about a thousand workers.",
    "Heavy rain caused flooding across the north of the country on Sunday.",
    "The museum's new exhibition tells the story of the city through its maps.",
    "Police have asked anyone who saw the accident to come forward.",
    "The central bank kept interest rates unchanged for the third month in a row.",
    "Teachers say the new curriculum leaves too little time for music and art.",
]


GATE_TEXTS_FILE = Path(__file__).with_name("data") / "gate_texts.txt"


def parity_texts(config) -> list[str]:
    return _texts(config.parity_file, "eval.jsonl", config.parity_samples)


def calibration_texts(config) -> list[str]:
    return _texts(config.calibration_file, "train.jsonl", config.calibration_samples)


def _texts(path: Path | None, demo_file: str, count: int) -> list[str]:
    if path is not None:
        texts = read_texts(Path(path), count)
        if not texts:
            raise ExportError(f"{path} holds no text; give a .txt (one text a line) or .jsonl ({{\"text\": ...}}) file")
        return texts
    from bertforge.paths import demo_corpus_dir

    demo = demo_corpus_dir() / demo_file
    if demo.is_file():
        return read_texts(demo, count)
    return built_in_texts()[:count]


def built_in_texts() -> list[str]:
    """The texts shipped with the package (the short list below if the data file is missing)."""
    if GATE_TEXTS_FILE.is_file():
        return read_texts(GATE_TEXTS_FILE, 100_000)
    return list(BUILT_IN_TEXTS)


def text_source(path: Path | None, demo_file: str) -> str:
    """Where `_texts` takes its text from, for the report."""
    from bertforge.paths import demo_corpus_dir

    if path is not None:
        return str(path)
    demo = demo_corpus_dir() / demo_file
    return str(demo) if demo.is_file() else f"built-in ({GATE_TEXTS_FILE.name})"


def read_texts(path: Path, count: int) -> list[str]:
    """The first `count` non-empty texts of a .txt or .jsonl file (documents cut to 2,000 characters)."""
    if not path.is_file():
        raise ExportError(f"text file {path} not found")
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if path.suffix == ".jsonl":
                line = str(json.loads(line).get("text", "")).strip()
            if line:
                texts.append(line[:2000])
            if len(texts) >= count:
                break
    return texts
