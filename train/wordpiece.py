"""A deterministic WordPiece vocabulary learner (the merge procedure of `tokenizers`' trainer).

Why not `tokenizers.trainers.WordPieceTrainer`: it keeps its alphabet and word counts in Rust
HashMaps whose iteration order changes with every process's random hash seed, numbers symbols in
that order and breaks ties between equal-count merges by those numbers. Two processes on the same
corpus then learn differently numbered vocabularies and, when tied merges overlap near the size
limit, different pieces (measured: 4 of 8,192 pieces differed between two runs on 600 documents).

Here every choice is a function of the corpus alone: the most frequent adjacent pair is merged
first; ties go, as in the Rust trainer, to the pair of the oldest symbols, where the age order is
fixed: characters by code point, then `##` characters by code point, then merged pieces in the
order they were made. Ids are then assigned canonically (special tokens, then the pieces sorted). Same procedure otherwise: words split into
characters with `##` on non-initial ones, counts weighted by word frequency, merges stop at
`vocab_size` or when the best pair occurs fewer than `min_frequency` times.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

PREFIX = "##"


def learn_wordpiece_vocabulary(
    word_counts: Counter[str] | dict[str, int],
    vocab_size: int,
    special_tokens: Sequence[str],
    min_frequency: int = 2,
) -> dict[str, int]:
    """Pieces learnt by frequency-ordered merges -> {token: id}, specials first, then sorted."""
    # Words as symbol lists ("the" -> ["t", "##h", "##e"]); the alphabet is every symbol seen
    words = sorted(word_counts.items())  # sorted: the pair index below is built in one fixed order
    symbols = [[word[0], *(PREFIX + char for char in word[1:])] for word, _ in words]
    counts = [count for _, count in words]
    characters = sorted({char for word, _ in words for char in word})  # each also as a word start, as in Rust
    continuations = sorted({piece for pieces in symbols for piece in pieces[1:]})
    age = {token: rank for rank, token in enumerate([*special_tokens, *characters, *continuations])}

    # Pair counts and, per pair, the words that hold it
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for index, pieces in enumerate(symbols):
        for pair in zip(pieces, pieces[1:]):
            pair_counts[pair] += counts[index]
            where.setdefault(pair, set()).add(index)
    # Max-heap on count, ties to the smallest pair; stale entries are skipped when popped
    heap = [(-count, age[pair[0]], age[pair[1]], pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    while len(age) < vocab_size and heap:
        negative, left_age, right_age, pair = heapq.heappop(heap)
        current = pair_counts.get(pair, 0)
        if -negative != current:  # count changed since this entry was pushed
            if current > 0:
                heapq.heappush(heap, (-current, left_age, right_age, pair))
            continue
        if current < min_frequency:
            break
        left, right = pair
        merged = left + right[len(PREFIX):]
        age.setdefault(merged, len(age))  # a piece made twice keeps its first age
        # Rewrite every word holding the pair and move its pair counts
        for index in where.pop(pair, ()):
            old = symbols[index]
            new = _merge_pair(old, left, right, merged)
            symbols[index] = new
            weight = counts[index]
            old_pairs, new_pairs = Counter(zip(old, old[1:])), Counter(zip(new, new[1:]))
            for gone, times in (old_pairs - new_pairs).items():
                pair_counts[gone] -= weight * times
                if gone not in new_pairs:
                    where.get(gone, set()).discard(index)
            for added, times in (new_pairs - old_pairs).items():
                pair_counts[added] += weight * times
                where.setdefault(added, set()).add(index)
                heapq.heappush(heap, (-pair_counts[added], age[added[0]], age[added[1]], added))
        pair_counts.pop(pair, None)

    return canonical_vocabulary(age, special_tokens)


def canonical_vocabulary(tokens: Iterable[str], special_tokens: Sequence[str]) -> dict[str, int]:
    """Ids independent of learning order: special tokens first (in their given order), then sorted."""
    tokens = set(tokens)
    missing = [token for token in special_tokens if token not in tokens]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    pieces = sorted(tokens - set(special_tokens))
    return {token: index for index, token in enumerate([*special_tokens, *pieces])}


def _merge_pair(pieces: list[str], left: str, right: str, merged: str) -> list[str]:
    """Replace each non-overlapping (left, right) occurrence, scanning left to right."""
    result, position, end = [], 0, len(pieces)
    while position < end:
        if position + 1 < end and pieces[position] == left and pieces[position + 1] == right:
            result.append(merged)
            position += 2
        else:
            result.append(pieces[position])
            position += 1
    return result
