"""Data pipeline: tokenize once, pack into fixed-length blocks, mask dynamically per step.

- Tokenization runs through `datasets.map` (multiprocess, cached by fingerprint); packed
  blocks are stored once as a .npy file and memory-mapped by every run and every rank.
- Packing concatenates documents separated by [SEP] and cuts [CLS] + (seq_len - 2) + [SEP]
  blocks: no padding at all, so attention needs no mask.
- The order of blocks and every mask are pure functions of (seed, epoch, block index), so
  a resumed run, a 2-process run and a 1-process run see exactly the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertforge import contract
from bertforge.errors import UserError
from bertforge.files import write_bytes_atomically

IGNORE_INDEX = contract.IGNORE_INDEX


def build_blocks(dataset, tokenizer, seq_len: int, cache_folder: Path, num_proc: int = 1) -> np.ndarray:
    """Tokenize + pack a text `datasets.Dataset` into an int32 [blocks, seq_len] memmap (cached)."""
    # A cache key from the corpus fingerprint, the tokenizer's vocabulary and the block length
    key = _cache_key(dataset._fingerprint, tokenizer, seq_len)
    blocks_file = cache_folder / f"blocks-{key}.npy"
    if blocks_file.is_file():
        return np.load(blocks_file, mmap_mode="r")

    # Tokenize documents (no special tokens) and pack them, 1000 documents per batch
    body = seq_len - 2
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id

    def tokenize_and_pack(batch: dict) -> dict:
        encoded = tokenizer.backend_tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        stream = [token for encoding in encoded for token in (*encoding.ids, sep_id)]
        usable = len(stream) // body * body
        return {"block": [[cls_id, *stream[i : i + body], sep_id] for i in range(0, usable, body)]}

    packed = dataset.map(
        tokenize_and_pack,
        batched=True,
        batch_size=1000,
        remove_columns=dataset.column_names,
        num_proc=num_proc if len(dataset) >= 2000 and num_proc > 1 else None,
        desc="tokenizing and packing",
    )
    if len(packed) == 0:
        total = sum(len(t) for t in dataset["text"][:1000])
        raise UserError(
            f"the corpus is smaller than one block of {seq_len} tokens (about {total} characters of text); "
            "add text or lower data.seq_len"
        )

    # Store as one .npy file (atomically), then memory-map it
    cache_folder.mkdir(parents=True, exist_ok=True)
    blocks = np.asarray(packed.with_format("numpy")["block"], dtype=np.int32)
    buffer = io.BytesIO()
    np.save(buffer, blocks)
    write_bytes_atomically(blocks_file, buffer.getvalue())
    return np.load(blocks_file, mmap_mode="r")


@dataclass(frozen=True)
class MaskingSpec:
    mask_prob: float
    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    continuation: np.ndarray | None = None  # bool [vocab]: token continues a word (##...), for whole-word masking


def mask_tokens(block: np.ndarray, spec: MaskingSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one block: choose mask_prob of the positions, 80% [MASK] / 10% random / 10% kept.

    Special tokens are never chosen. With whole-word masking, a word's pieces are chosen together.
    Returns (input_ids, labels) with labels = IGNORE_INDEX where no prediction is asked.
    """
    block = np.asarray(block, dtype=np.int64)
    maskable = ~np.isin(block, spec.special_ids)
    # Choose positions (per word when whole-word masking: a piece inherits its word's draw)
    if spec.continuation is None:
        chosen = (rng.random(block.shape[0]) < spec.mask_prob) & maskable
    else:
        word_start = maskable & ~spec.continuation[block]
        word_index = np.cumsum(word_start) - 1
        word_draw = rng.random(max(int(word_start.sum()), 1)) < spec.mask_prob
        chosen = maskable & (word_index >= 0) & word_draw[np.clip(word_index, 0, None)]
    if not chosen.any():  # every block asks at least one prediction
        candidates = np.flatnonzero(maskable)
        chosen[candidates[rng.integers(len(candidates))]] = True
    labels = np.where(chosen, block, IGNORE_INDEX)
    # 80% -> [MASK], 10% -> random token, 10% -> unchanged
    action = rng.random(block.shape[0])
    inputs = block.copy()
    inputs[chosen & (action < 0.8)] = spec.mask_token_id
    replace = chosen & (action >= 0.8) & (action < 0.9)
    inputs[replace] = rng.integers(len(spec.special_ids), spec.vocab_size, size=int(replace.sum()))
    return inputs, labels


class BlockBatches:
    """The micro-batches of one process: deterministic, resumable, sharded by rank.

    Global micro-batch g holds `batch_size * world_size` blocks of epoch g // batches_per_epoch;
    rank r takes its contiguous slice. Iteration starts at any micro-batch index.
    """

    def __init__(self, num_blocks: int, batch_size: int, world_size: int, rank: int, seed: int):
        self.num_blocks, self.batch_size = num_blocks, batch_size
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = num_blocks // self.global_batch
        if self.batches_per_epoch == 0:
            raise UserError(
                f"only {num_blocks} training blocks, fewer than one global batch of {self.global_batch}; "
                "add text, or lower train.batch_size / data.seq_len"
            )
        self._epoch, self._order = -1, None

    def indices(self, micro_batch: int) -> tuple[int, np.ndarray]:
        """(epoch, block indices) of this rank's share of global micro-batch `micro_batch`."""
        epoch, within = divmod(micro_batch, self.batches_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_blocks)
        start = within * self.global_batch + self.rank * self.batch_size
        return epoch, self._order[start : start + self.batch_size]


class MaskedBlockDataset:
    """Map-style dataset over micro-batches: item g is this rank's masked micro-batch g.

    Used with a torch DataLoader (batch_size=None) so masking runs in worker processes and
    batches land in pinned memory; a sampler over range(start, end) makes it resumable.
    """

    def __init__(self, blocks: np.ndarray, batches: BlockBatches, spec: MaskingSpec, seed: int):
        self.blocks, self.batches, self.spec, self.seed = blocks, batches, spec, seed

    def __getitem__(self, micro_batch: int):
        import torch

        epoch, indices = self.batches.indices(micro_batch)
        inputs, labels = zip(
            *(mask_tokens(self.blocks[i], self.spec, np.random.default_rng([self.seed, epoch, int(i)])) for i in indices)
        )
        return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(labels))  # (B, T), (B, T)


def masked_eval_batches(blocks: np.ndarray, spec: MaskingSpec, batch_size: int, seed: int = 0):
    """Held-out blocks masked with a fixed seed, so every run is scored on the same questions."""
    import torch

    for start in range(0, len(blocks), batch_size):
        pairs = [
            mask_tokens(blocks[i], spec, np.random.default_rng([seed, i]))
            for i in range(start, min(start + batch_size, len(blocks)))
        ]
        inputs, labels = zip(*pairs)
        yield torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(labels))


def masking_spec(tokenizer, mask_prob: float, whole_word_mask: bool) -> MaskingSpec:
    vocab = tokenizer.get_vocab()
    continuation = None
    if whole_word_mask:
        continuation = np.zeros(len(tokenizer), dtype=bool)
        for token, index in vocab.items():
            continuation[index] = token.startswith("##")
    return MaskingSpec(
        mask_prob=mask_prob,
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=tuple(sorted(tokenizer.all_special_ids)),
        continuation=continuation,
    )


def _cache_key(fingerprint: str, tokenizer, seq_len: int) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    material = f"{fingerprint}|{seq_len}|{tokenizer.do_lower_case if hasattr(tokenizer, 'do_lower_case') else ''}|{vocab}"
    return hashlib.sha256(material.encode()).hexdigest()[:16]
