"""Names and numbers shared by every stage: one source of truth.

Training writes these into the tokenizer and config.json; export writes them into
the ONNX graphs and config.pbtxt; serving and the client read them from here.
"""

# --- Tokenizer: BERT's special tokens, in vocabulary order (ids 0..4) ---
PAD_TOKEN = "[PAD]"
UNK_TOKEN = "[UNK]"
CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN)
SPECIAL_TOKEN_IDS = {token: index for index, token in enumerate(SPECIAL_TOKENS)}  # bertforge-trained tokenizers
IGNORE_INDEX = -100  # MLM labels of positions that are not predicted (PyTorch's cross-entropy default)

# --- Triton tensors (see README "Serving contract"); the tasks that use them: bertforge/tasks.py ---
TEXT_INPUT = "TEXT"  # BYTES [1]: one UTF-8 string per request
EMBEDDING_OUTPUT = "EMBEDDING"  # FP32 [hidden]
TOKENS_OUTPUT = "TOKENS"  # BYTES [num_masks, top_k]
TOKEN_IDS_OUTPUT = "TOKEN_IDS"  # INT64 [num_masks, top_k]
SCORES_OUTPUT = "SCORES"  # FP32 [num_masks, top_k]: probabilities
# Sequence-classification models (docs/tasks.md): one query/document pair or one text (+ optional pair) per request
TEXT_PAIR_INPUT = "TEXT_PAIR"  # BYTES [1]: the document (rerank) or the second text (classify, optional)
LOGITS_OUTPUT = "LOGITS"  # FP32 [num_labels]: the head's raw logits (sigmoid/softmax applied by the client/API)
# Sparse (SPLADE) embeddings of an MLM folder: max over positions of log(1 + ReLU(MLM logits)), non-zeros only
SPARSE_INDICES_OUTPUT = "SPARSE_INDICES"  # INT64 [non_zeros]: vocabulary ids, ascending
SPARSE_VALUES_OUTPUT = "SPARSE_VALUES"  # FP32 [non_zeros]
ONNX_SPARSE_EMBEDDING = "sparse_embedding"  # float32 [batch, vocab]
ONNX_LOGITS = "logits"  # float32 [batch, num_labels]: Optimum's text-classification output

# --- ONNX graph inputs/outputs written by export and read by the served models ---
ONNX_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # int64 [batch, seq]
ONNX_MASK_POSITIONS = "mask_positions"  # int64 [num_masks]: flat indices into batch*seq
ONNX_TOP_IDS = "top_ids"  # int64 [num_masks, max_top_k]
ONNX_TOP_PROBS = "top_probs"  # float32 [num_masks, max_top_k]
ONNX_SENTENCE_EMBEDDING = "sentence_embedding"  # float32 [batch, hidden]

# --- Defaults shared across stages ---
DEFAULT_MAX_LENGTH = 128
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_HOST = "127.0.0.1"
READY_TIMEOUT_S = 120.0  # how long `bertforge serve`, tests and bench wait for tritonserver to become ready
TRUNCATION_POLICIES = ("truncate", "error")  # what a served model does with a text longer than max_length
TRUNCATION_DIRECTIONS = ("right", "left")  # which end of a too long text is cut (TEI's truncation_direction)
DEMO_CORPUS_FOLDER = "demo_corpus"  # under the cache folder: train.jsonl, eval.jsonl (`bertforge data demo`)
