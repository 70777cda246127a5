"""Initialisations that let a small BERT use its context within minutes instead of hours.

A freshly initialised post-LN BERT first learns the unigram distribution and then sits on that
plateau: its [MASK] positions ignore the context, because at BERT's init (std 0.02, learned random
positions) attending to a neighbour must be discovered position by position, while fitting the
unigram only needs the output bias. On the demo's CPU budget it never leaves the plateau and
answers "the , ." to every query. Two changes of the starting point, nothing of the architecture
(the checkpoint stays a plain BertForMaskedLM):

- `unigram_output_bias`: the MLM output bias starts at the log frequencies of the training tokens,
  so the unigram is known at step 0 and the gradient has no reason to shut the context out;
- `apply_locality_prior` (`model.init = "local"`): sinusoidal position embeddings in their own
  subspace, and two layer-0 heads that start out attending to the previous and the next token
  (a shift of a sinusoid is a rotation, so the key matrix is that rotation), carrying a random
  projection of the neighbours' word vectors. All of it is trained from there like any weight.

Measured side by side (train/configs/demo.toml, 1,600 steps on a 2-core CPU): held-out loss 6.32 ->
4.92 and accuracy 0.135 -> 0.226; neither change alone leaves the plateau (README, "Training a small
model on a CPU"). Needs num_attention_heads >= 2 (ModelConfig checks it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

POSITION_SCALE = 0.1  # position vectors' RMS, against 0.02 for words: word growth must not drown them
NEIGHBOUR_WEIGHT = 0.9  # attention the wired heads give their neighbour at init
MAX_COUNTED_BLOCKS = 50_000


def unigram_output_bias(mlm, blocks: np.ndarray, special_ids: tuple[int, ...]) -> None:
    """Set the MLM output bias (BERT's is tied to the decoder's; ModernBERT's is the decoder's) to log p(token)
    over the training blocks."""
    vocab_size = mlm.config.vocab_size
    # Count a strided sample of blocks (all of them for corpora up to MAX_COUNTED_BLOCKS)
    stride = max(1, len(blocks) // MAX_COUNTED_BLOCKS)
    counts = np.bincount(np.asarray(blocks[::stride]).ravel(), minlength=vocab_size)[:vocab_size].astype(np.float64)
    # Special tokens are never labels; add-one smoothing keeps unseen tokens finite
    counts[list(special_ids)] = 0.0
    counts += 1.0
    log_frequency = torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32)
    from train.architecture import family_of

    bias = family_of(mlm).output_bias(mlm)
    with torch.no_grad():
        bias.copy_(log_frequency.to(bias.device))


def apply_locality_prior(mlm, neighbour_weight: float = NEIGHBOUR_WEIGHT) -> None:
    """Layer-0 heads 0/1 look at token i-1 / i+1: through sinusoidal positions in the last head_dim dimensions
    (BERT), or through rotary positions acting on a constant direction (ModernBERT, `rotary_locality_prior`)."""
    if mlm.config.model_type == "modernbert":
        return rotary_locality_prior(mlm, neighbour_weight)
    config = mlm.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = hidden // heads
    word_dims = hidden - head_dim  # words in [0, word_dims), positions in [word_dims, hidden)
    embeddings, attention = mlm.bert.embeddings, mlm.bert.encoder.layer[0].attention
    table, omega = sinusoids(config.max_position_embeddings, head_dim)
    with torch.no_grad():
        # Embeddings: words and positions in separate subspaces, no segment signal
        embeddings.word_embeddings.weight[:, word_dims:] = 0.0
        embeddings.token_type_embeddings.weight.zero_()
        embeddings.position_embeddings.weight.zero_()
        embeddings.position_embeddings.weight[:, word_dims:] = table * POSITION_SCALE
        # Layer 0, heads 0 and 1: query = position, key = position shifted by one; value = the word
        query, key, value = attention.self.query, attention.self.key, attention.self.value
        for head, shift in ((0, 1.0), (1, -1.0)):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            for layer in (query, key, value):
                layer.weight[rows] = 0.0
                layer.bias[rows] = 0.0
            query.weight[rows, word_dims:] = torch.eye(head_dim)
            key.weight[rows, word_dims:] = shift_rotation(omega, shift)
            value.weight[rows, :word_dims] = torch.randn(head_dim, word_dims) / math.sqrt(word_dims)
        # Their output lands in the word subspace, where the MLM head reads
        output = attention.output.dense.weight
        output[:, : 2 * head_dim] = 0.0
        output[:word_dims, : 2 * head_dim] = torch.randn(word_dims, 2 * head_dim) / math.sqrt(2 * head_dim)
        # Sharpen both heads until the neighbour gets `neighbour_weight` of the attention
        scale = math.sqrt(_score_scale_for(mlm, neighbour_weight))
        for head in (0, 1):
            rows = slice(head * head_dim, (head + 1) * head_dim)
            query.weight[rows] *= scale
            key.weight[rows] *= scale


def rotary_locality_prior(mlm, neighbour_weight: float = NEIGHBOUR_WEIGHT) -> None:
    """The locality prior under rotary positions (ModernBERT: no position table, no biases).

    Every token's embedding gets the same zero-mean vector u in the last head_dim dimensions (pairs weighted by
    their rotary frequency), so after the embedding LayerNorm each position carries nearly the same c there. Layer 0's heads 0 and 1 take
    q = c and k = R(+-w) c, R the rotary rotation by one position: RoPE turns their score into
    c' R((j - i +- 1) w) c = sum_f |c_f|^2 cos((j - i +- 1) w_f), largest at j = i -+ 1. Their values are a
    random projection of the word dimensions, written back into the word dimensions; the scores are sharpened
    until the neighbour gets `neighbour_weight` of the attention, as for BERT."""
    config = mlm.config
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = hidden // heads
    word_dims = hidden - head_dim  # words in [0, word_dims), the constant direction in [word_dims, hidden)
    embeddings, attention = mlm.model.embeddings, mlm.model.layers[0].attn
    omega = attention.rotary_emb.inv_freq.double()  # (head_dim / 2,): rotate_half pairs (f, f + head_dim / 2)
    with torch.no_grad():
        # Embeddings: one zero-mean direction shared by every token, its rotary pairs weighted by their frequency
        # (slow pairs barely tell neighbours apart) and twice a word entry's size (so the LayerNorm's per-token
        # scale hardly varies): measured, the neighbour then gets 0.90 of the attention, against 0.67 with equal
        # weights at a word entry's size (the wired heads' q.k then differed by less than the norms' noise)
        weights = omega.float() / omega.float().pow(2).mean().sqrt()
        direction = torch.cat([weights, -weights]) * 2 * config.initializer_range
        embeddings.tok_embeddings.weight[:, word_dims:] = direction
        # Layer 0, heads 0 and 1: query = the direction, key = the direction rotated one position on; value = words
        weight = attention.Wqkv.weight  # (3 * hidden, hidden): query, key, value rows
        for head, shift in ((0, 1.0), (1, -1.0)):
            for block in range(3):
                weight[block * hidden + head * head_dim : block * hidden + (head + 1) * head_dim] = 0.0
            rows = slice(head * head_dim, (head + 1) * head_dim)
            weight[rows, word_dims:] = torch.eye(head_dim)
            weight[hidden + head * head_dim : hidden + (head + 1) * head_dim, word_dims:] = \
                half_rotation(omega, shift).float()
            weight[2 * hidden + head * head_dim : 2 * hidden + (head + 1) * head_dim, :word_dims] = \
                torch.randn(head_dim, word_dims) / math.sqrt(word_dims)
        # Their output lands in the word subspace, where the MLM head reads
        output = attention.Wo.weight
        output[:, : 2 * head_dim] = 0.0
        output[:word_dims, : 2 * head_dim] = torch.randn(word_dims, 2 * head_dim) / math.sqrt(2 * head_dim)
        # Sharpen both heads until the neighbour gets `neighbour_weight` of the attention
        scale = math.sqrt(_rotary_score_scale_for(mlm, neighbour_weight))
        for head in (0, 1):
            for block in (0, 1):  # query and key rows
                weight[block * hidden + head * head_dim : block * hidden + (head + 1) * head_dim] *= scale


def half_rotation(omega: torch.Tensor, shift: float) -> torch.Tensor:
    """R with RoPE(x, p + shift) = RoPE(R x, p) for transformers' rotate_half layout (pairs f, f + d/2)."""
    half = len(omega)
    cos, sin = torch.cos(omega * shift), torch.sin(omega * shift)
    rotation = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    rotation[:half, :half], rotation[:half, half:] = torch.diag(cos), torch.diag(-sin)
    rotation[half:, :half], rotation[half:, half:] = torch.diag(sin), torch.diag(cos)
    return rotation


def _rotary_score_scale_for(mlm, neighbour_weight: float) -> float:
    """Factor on layer-0 head 0's rotary scores that gives the previous token `neighbour_weight` on average."""
    from transformers.models.modernbert.modeling_modernbert import apply_rotary_pos_emb

    config = mlm.config
    hidden, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    length = min(config.max_position_embeddings, 512)
    ids = torch.randint(0, config.vocab_size, (1, length), device=mlm.device)
    was_training = mlm.training
    mlm.eval()
    with torch.no_grad():
        states = mlm.model.embeddings(input_ids=ids)  # (1, T, H)
        attention = mlm.model.layers[0].attn
        query = states @ attention.Wqkv.weight[:head_dim].T  # (1, T, head_dim)
        key = states @ attention.Wqkv.weight[hidden : hidden + head_dim].T
        cos, sin = attention.rotary_emb(states, position_ids=torch.arange(length, device=ids.device)[None])
        query, key = apply_rotary_pos_emb(query[:, None], key[:, None], cos, sin)
        scores = (query[0, 0] @ key[0, 0].T / math.sqrt(head_dim)).double()  # (T, T)
    mlm.train(was_training)
    return scale_for_neighbour_weight(scores, neighbour_weight)


def sinusoids(positions: int, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions, dims) table of [sin(w_f p), cos(w_f p)] pairs, RMS 1, and the frequencies w_f."""
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    omega = float(positions) ** (-torch.arange(0, dims, 2, dtype=torch.float64) / dims)  # 1 .. ~1/positions
    table = torch.zeros(positions, dims, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * omega)
    table[:, 1::2] = torch.cos(position * omega)
    return (table * math.sqrt(2.0)).float(), omega


def shift_rotation(omega: torch.Tensor, shift: float) -> torch.Tensor:
    """R with R @ s(p) = s(p + shift) for the sinusoid pairs s of `sinusoids`."""
    cos, sin = torch.cos(omega * shift).float(), torch.sin(omega * shift).float()
    rotation = torch.zeros(2 * len(omega), 2 * len(omega))
    rotation[0::2, 0::2], rotation[0::2, 1::2] = torch.diag(cos), torch.diag(sin)
    rotation[1::2, 0::2], rotation[1::2, 1::2] = torch.diag(-sin), torch.diag(cos)
    return rotation


def _score_scale_for(mlm, neighbour_weight: float) -> float:
    """Factor on head 0's attention scores that gives the previous token `neighbour_weight` on average."""
    config = mlm.config
    head_dim = config.hidden_size // config.num_attention_heads
    length = config.max_position_embeddings
    # Head 0's scores on a random sequence, at the unscaled weights (dropout off)
    ids = torch.randint(0, config.vocab_size, (1, length), device=mlm.device)
    was_training = mlm.training
    mlm.eval()
    hidden = mlm.bert.embeddings(input_ids=ids)[0]  # (T, H)
    mlm.train(was_training)
    attention = mlm.bert.encoder.layer[0].attention.self
    query = hidden @ attention.query.weight[:head_dim].T
    key = hidden @ attention.key.weight[:head_dim].T
    scores = (query @ key.T / math.sqrt(head_dim)).double()  # (T, T)
    return scale_for_neighbour_weight(scores, neighbour_weight)


def scale_for_neighbour_weight(scores: torch.Tensor, neighbour_weight: float) -> float:
    """Factor on the (T, T) attention `scores` that gives each token's previous one `neighbour_weight` of its
    attention on average: bisection in log space (the weight grows with the factor)."""
    rows = torch.arange(1, scores.shape[0], device=scores.device)

    def weight_on_previous(factor: float) -> float:
        return torch.softmax(scores * factor, dim=-1)[rows, rows - 1].mean().item()

    low, high = 1e-3, 1e4
    for _ in range(60):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if weight_on_previous(middle) < neighbour_weight else (low, middle)
    return math.sqrt(low * high)
