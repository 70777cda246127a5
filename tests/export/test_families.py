"""Every supported encoder family, wrapped as a sentence-transformers folder, is exported as its author defines it
(pooling modes, Dense, Normalize, prompts) and matches SentenceTransformer.encode; flags that contradict the
folder are warned about and cannot hide from the gate; unsupported folders are refused with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertforge.testing import build_family_folder
from tests.conftest import COUNTED_SEARCH, make_sentences

# (family, pooling, options): every sentence-transformers pooling mode at least once, Dense, Normalize, prompts
CASES = [
    ("bert", "cls", {"normalize": True}),  # the bge shape
    ("roberta", ("mean", "max"), {"dense": 16, "normalize": True, "prompts": True}),
    ("xlm-roberta", "weightedmean", {}),
    ("camembert", "lasttoken", {}),
    ("distilbert", "mean", {"normalize": True}),
    ("mpnet", "mean_sqrt_len_tokens", {}),
    ("electra", ("cls", "mean"), {}),
    ("modernbert", "mean", {"prompts": True}),
]
TEXTS = ["The committee approved the new budget on monday.", "a reporter",
         "Our government rejected the trade deal after a long debate in london, despite strong opposition this week."]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="session")
def family_texts() -> list[str]:
    return make_sentences(400, seed=1)


@pytest.fixture(scope="session")
def family_folders(tmp_path_factory, tiny_tokenizer_dir, family_texts):
    """{family: sentence-transformers folder} for CASES (built once)."""
    root = tmp_path_factory.mktemp("families")
    folders = {}
    for kind, pooling, options in CASES:
        prompts = PROMPTS if options.get("prompts") else None
        folders[kind] = build_family_folder(kind, root / kind, tiny_tokenizer_dir, family_texts, pooling=pooling,
                                            normalize=options.get("normalize", False), dense=options.get("dense"),
                                            prompts=prompts, default_prompt="query" if prompts else None)
    return folders


@pytest.fixture(scope="session")
def family_exports(tmp_path_factory, family_folders):
    """{family: (repo, report)}: each folder exported with the defaults (fp32 to stay fast, a small gate)."""
    from export import export_to_repository

    root = tmp_path_factory.mktemp("family_repos")
    exports = {}
    for kind, folder in family_folders.items():
        repo = root / kind
        exports[kind] = repo, export_to_repository(folder, repo, precision="fp32", progress=False, parity_samples=24,
                                                   min_masks=200)
    return exports


def served_embeddings(repo, texts: list[str], prompt: str = "") -> np.ndarray:
    """The exported embed model as the server loads it (serve.runtime: its tokenizer with truncation at max_length,
    the tokenizer's own pad token, only the inputs the graph has); `prompt` is put before each text here."""
    from bertforge.served_model import ServedModelDir
    from serve.runtime import load_runtime

    runtime = load_runtime(ServedModelDir.in_repo(repo, "embed").version_dir)
    encodings = runtime.tokenizer.encode_batch([prompt + text for text in texts])
    longest = max(len(encoding.ids) for encoding in encodings)
    feeds = {name: np.zeros((len(texts), longest), dtype=np.int64) for name in ("input_ids", "attention_mask", "token_type_ids")}
    feeds["input_ids"][:] = runtime.pad_id
    for row, encoding in enumerate(encodings):
        feeds["input_ids"][row, : len(encoding.ids)] = encoding.ids
        feeds["attention_mask"][row, : len(encoding.ids)] = 1
        feeds["token_type_ids"][row, : len(encoding.ids)] = encoding.type_ids
    (embeddings,) = runtime.session.run(["sentence_embedding"], {k: v for k, v in feeds.items() if k in runtime.input_names})
    return embeddings


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("kind", [case[0] for case in CASES])
def test_family_served_as_sentence_transformers_encodes(kind, family_folders, family_exports):
    from sentence_transformers import SentenceTransformer

    repo, report = family_exports[kind]
    _, pooling, options = next(case for case in CASES if case[0] == kind)
    author = SentenceTransformer(str(family_folders[kind]), device="cpu")
    prompt = PROMPTS["query"] if options.get("prompts") else ""
    expected = author.encode(TEXTS, convert_to_numpy=True)  # the default prompt applies, as the server's will
    served = served_embeddings(repo, TEXTS, prompt=prompt)
    assert served.shape == expected.shape
    assert cosines(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, expected, atol=1e-4)
    # serving.json records what the graph does and where it came from
    settings = json.loads((repo / "embed" / "1" / "serving.json").read_text())["settings"]
    modes = (pooling,) if isinstance(pooling, str) else pooling
    assert settings["pooling"] == "+".join(modes) and settings["family"] == kind
    assert settings["normalize"] is options.get("normalize", False)
    assert settings["embedding_dim"] == expected.shape[1]
    assert settings["max_length"] == 48  # the folder's max_seq_length, not the positions
    if options.get("prompts"):
        assert settings["prompts"]["query"] == "query: " and settings["default_prompt_name"] == "query"
    assert report.definition["used"]["sources"]["pooling"] == "1_Pooling/config.json"
    info = json.loads((repo / "embed" / "1" / "serving.json").read_text())["info"]
    assert info["definition"]["agrees_with_author"] is True and info["definition"]["sources"]["pooling"] == "1_Pooling/config.json"
    assert report.gate_inputs["embed_reference"].startswith("SentenceTransformer(folder).encode")


@pytest.mark.parametrize("kind", ["roberta", "modernbert"])
def test_family_fill_mask_uses_its_own_mask_token(kind, family_folders, family_exports):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from bertforge.served_model import ServedModelDir
    from serve.runtime import load_runtime
    from serve.text import TextRequest

    repo, _ = family_exports[kind]
    tokenizer = AutoTokenizer.from_pretrained(family_folders[kind])
    text = f"the committee {tokenizer.mask_token} the report."
    runtime = load_runtime(ServedModelDir.in_repo(repo, "fill_mask").version_dir)
    (request,) = requests = [TextRequest(text=text, top_k=3, truncation="truncate")]
    assert runtime.tokenize(requests) == [None]
    (result,) = runtime.fill_mask(requests)
    model = AutoModelForMaskedLM.from_pretrained(family_folders[kind]).eval()
    encoded = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0])
    assert result.token_ids[0].tolist() == logits[position].topk(3).indices.tolist()


def test_fusions_apply_per_family(family_exports):
    """ONNX Runtime's BERT fusions: Attention where its matcher knows the family's attention, else LayerNorm/Gelu;
    ModernBERT's encoder written in ORT's MultiHeadAttention and RotaryEmbedding (export.modernbert_graph)."""
    fused = {kind: report.tasks["embed"].variants["fp32"].fused_ops for kind, (_, report) in family_exports.items()}
    # SkipLayerNormalizations fused, whether served fused or split again where that was timed faster
    skip_layer_norms = {kind: report.tasks["embed"].layer_norm.get("nodes", 0)
                        for kind, (_, report) in family_exports.items()}
    for kind in ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra"):
        assert fused[kind].get("Attention") == 2, (kind, fused[kind])
    assert skip_layer_norms["mpnet"] and skip_layer_norms["modernbert"]
    assert "Attention" not in fused["modernbert"]
    assert fused["modernbert"].get("MultiHeadAttention") == 2 and fused["modernbert"].get("RotaryEmbedding") == 4


def test_forced_pooling_is_warned_and_reported_as_disagreeing(tmp_path, family_folders, capsys):
    """The bge shape (CLS + Normalize) exported with --pooling mean: honoured, warned, and the report shows the
    served vectors are not the author's."""
    from export import export_to_repository

    report = export_to_repository(family_folders["bert"], tmp_path / "repo", precision="fp32", tasks=("embed",),
                                  pooling="mean", parity_samples=24)
    assert "WARNING: --pooling mean contradicts the model's own definition (1_Pooling/config.json: cls)" in capsys.readouterr().out
    assert report.definition["used"]["agrees_with_author"] is False
    assert report.definition["used"]["sources"]["pooling"].startswith("explicit --pooling")
    assert report.definition["author_agreement"]["agrees"] is False
    assert report.definition["author_agreement"]["min_cosine"] < 0.99
    assert json.loads((tmp_path / "repo" / "embed" / "1" / "serving.json").read_text())["settings"]["pooling"] == "mean"


def test_gate_fails_a_graph_that_pools_unlike_the_author(tmp_path, family_folders):
    """The old failure: bertforge's mean pooling on a CLS-pooled folder. The gate's reference is the author's
    encode, so the graph fails it (it passed when the reference was bertforge's own pooling)."""
    import onnx
    import onnxruntime as ort
    from transformers import AutoTokenizer

    from export.author_reference import author_outputs
    from export.config import ParityGates
    from export.context import optimum_encoder
    from export.graphs import add_pooling
    from export.model_definition import author_model, read_definition
    from export.parity import compare, gate, text_batches_as_served

    folder = family_folders["bert"]
    definition = read_definition(folder)
    assert definition.pooling == ("cls",) and definition.normalize
    encoder = onnx.load(str(optimum_encoder(folder, tmp_path / "optimum", 18)))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batches = text_batches_as_served(folder / "tokenizer.json", make_sentences(16, seed=3), 48, tokenizer.pad_token_id)
    reference = author_outputs(author_model(definition, 48), batches, definition)
    verdicts = {}
    for pooling in ("mean", "cls"):
        path = tmp_path / f"{pooling}.onnx"
        onnx.save(add_pooling(encoder, pooling, normalize=True), str(path))
        metrics = compare(ort.InferenceSession(str(path)), batches, reference, "embed")
        verdicts[pooling] = (metrics, gate(metrics, "embed", "fp32", ParityGates(), task="embed"))
    assert verdicts["mean"][1] and verdicts["mean"][0]["min_cosine"] < 0.99
    assert verdicts["cls"][1] == [] and verdicts["cls"][0]["min_cosine"] >= 0.9999


def test_unsupported_modules_are_refused(tmp_path, family_folders):
    import shutil

    from export.errors import ExportError
    from export.model_definition import read_definition

    # a module the graph cannot hold is named, never dropped

    folder = shutil.copytree(family_folders["bert"], tmp_path / "lstm")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(1, {"idx": 1, "name": "x", "path": "1_LSTM", "type": "sentence_transformers.models.LSTM"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ExportError, match=r"1_LSTM \(sentence_transformers.models.LSTM\)"):
        read_definition(folder)
    # include_prompt=false (INSTRUCTOR-style) is refused
    folder = shutil.copytree(family_folders["bert"], tmp_path / "instructor")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": False}))
    with pytest.raises(ExportError, match="include_prompt=false"):
        read_definition(folder)


@pytest.mark.slow
def test_families_served_by_tritonserver_match_encode(family_folders, family_exports):
    """A BERT and a RoBERTa-family export served by a real tritonserver answer over gRPC and HTTP as encode does."""
    from huggingface_hub import InferenceClient
    from sentence_transformers import SentenceTransformer

    from serve.api.process import running_api
    from serve.client import BertforgeClient
    from serve.launcher import running_server

    for kind in ("bert", "xlm-roberta"):
        repo, _ = family_exports[kind]
        expected = SentenceTransformer(str(family_folders[kind]), device="cpu").encode(TEXTS, convert_to_numpy=True)
        with running_server(repo, grpc_port=0, http_port=0, metrics_port=0) as server:
            with BertforgeClient(server.endpoints.grpc_url) as client:
                served = client.embed(TEXTS)
            with running_api(repo, server.endpoints.grpc_url) as api:  # HTTP, through TEI's own client
                over_http = [InferenceClient(model=f"{api.url}/embed").feature_extraction(text, normalize=False)[0]
                             for text in TEXTS]
        assert cosines(served, expected).min() >= 0.9999, kind
        assert cosines(np.asarray(over_http), expected).min() >= 0.9999, kind


def test_verify_compares_with_the_authors_encode(family_folders, family_exports):
    """`python -m serve.verify` on a sentence-transformers folder: served answers pass, mean-pooled vectors fail."""
    import torch

    from serve.verify import check_embed

    repo, _ = family_exports["bert"]
    served = served_embeddings(repo, TEXTS)
    assert all(line.startswith("PASS") for line in check_embed(family_folders["bert"], [
        {"text": text, "embedding": vector.tolist()} for text, vector in zip(TEXTS, served)]))
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family_folders["bert"])
    model = AutoModel.from_pretrained(family_folders["bert"]).eval()
    with torch.no_grad():
        mean_pooled = [model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0) for text in TEXTS]
    lines = check_embed(family_folders["bert"], [{"text": t, "embedding": v.tolist()} for t, v in zip(TEXTS, mean_pooled)])
    assert any(line.startswith("FAIL") for line in lines)


@pytest.mark.int8_kernel
def test_int8_search_works_for_a_family_without_token_type_ids(tmp_path, family_folders):
    """The int8 search (calibration, timing) on XLM-RoBERTa, whose graph has no token_type_ids; the chosen int8
    graph still matches the author's encode."""
    from sentence_transformers import SentenceTransformer

    from export import export_to_repository

    report = export_to_repository(family_folders["xlm-roberta"], tmp_path / "repo", precision="int8", tasks=("embed",),
                                  progress=False, parity_samples=24, **COUNTED_SEARCH)
    assert report.tasks["embed"].variants["int8"].passed
    expected = SentenceTransformer(str(family_folders["xlm-roberta"]), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert cosines(served_embeddings(tmp_path / "repo", TEXTS), expected).min() >= 0.99


def test_do_lower_case_is_served(tmp_path, tiny_tokenizer_dir, family_texts):
    """A cased (byte-level BPE) tokenizer under a legacy sentence_bert_config.json with do_lower_case=true: the
    served tokenizer lower-cases as sentence-transformers does, so upper-case text gets the author's vectors."""
    from sentence_transformers import SentenceTransformer

    from export import export_to_repository

    folder = build_family_folder("roberta", tmp_path / "cased", tiny_tokenizer_dir, family_texts, mlm_head=False)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": True}))
    report = export_to_repository(folder, tmp_path / "repo", precision="fp32", progress=False, parity_samples=24)
    assert report.definition["author"]["do_lower_case"] is True
    assert report.definition["author"]["sources"]["do_lower_case"] == "sentence_bert_config.json"
    shouted = [text.upper() for text in TEXTS]
    expected = SentenceTransformer(str(folder), device="cpu").encode(shouted, convert_to_numpy=True)
    served = served_embeddings(tmp_path / "repo", shouted)
    assert cosines(served, expected).min() >= 0.9999
    np.testing.assert_allclose(served, served_embeddings(tmp_path / "repo", [t.lower() for t in TEXTS]), atol=1e-5)


def test_usable_positions_follow_the_family():
    """RoBERTa-family positions start after padding_idx (514 rows: 512 tokens), MPNet's after 2, BERT's at 0."""
    from export.families import FAMILIES, position_limit

    assert position_limit(FAMILIES["roberta"], {"max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit(FAMILIES["xlm-roberta"], {"max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit(FAMILIES["mpnet"], {"max_position_embeddings": 514, "pad_token_id": 1}) == 512
    assert position_limit(FAMILIES["bert"], {"max_position_embeddings": 512, "pad_token_id": 0}) == 512
