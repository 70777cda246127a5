"""`pip install "bertforge[client]"`: a fresh venv gets the client alone (no torch, optimum, transformers,
onnxruntime) and its `bertforge client` answers exactly as the main environment's client, from a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "optimum", "onnxruntime", "datasets", "tritonserver", "pytriton")
TEXTS = ["The minister [MASK] the new budget on monday.", "A reporter discussed the [MASK] in london."]


def run(command: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed with [client] into a new venv (pins from requirements.lock;
    pip's cache makes it ~20 s)."""
    work = tmp_path_factory.mktemp("client_install")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", work / "dist",
         ROOT], cwd=work)
    (wheel,) = (work / "dist").glob("bertforge-*.whl")
    run([sys.executable, "-m", "venv", work / "venv"], cwd=work)
    python = work / "venv" / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "-c", ROOT / "requirements.lock", f"{wheel}[client]"], cwd=work)
    return work / "venv"


@pytest.mark.slow
def test_client_extra_installs_without_heavy_packages(client_venv):
    python = client_venv / "bin" / "python"
    installed = json.loads(run([python, "-m", "pip", "list", "--format=json"], cwd=client_venv).stdout)
    names = {package["name"].lower().replace("_", "-") for package in installed}
    assert {"bertforge", "tritonclient", "numpy", "grpcio"} <= names
    assert not names & {"torch", "transformers", "optimum", "optimum-onnx", "onnxruntime", "nvidia-pytriton",
                        "datasets", "accelerate", "fastapi"}
    # importing the client library loads nothing heavy even if it were there
    probe = ("import sys, serve.client, serve.cli_client, bertforge.cli; bertforge.cli.build_parser(); "
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    assert run([python, "-c", probe], cwd=client_venv).stdout.strip() == "[]"
    site = run([python, "-c", "import serve, os; print(os.path.dirname(serve.__file__))"], cwd=client_venv).stdout
    assert str(client_venv) in site, f"serve imported from {site}, not from the installed wheel"


@pytest.mark.slow
def test_client_venv_answers_like_the_main_environment(client_venv, grpc_url):
    from serve.client import BertforgeClient

    bertforge = client_venv / "bin" / "bertforge"
    filled = json.loads(run([bertforge, "client", "fill-mask", *TEXTS, "--url", grpc_url, "--top-k", "5",
                             "--json"], cwd=client_venv, timeout=60).stdout)
    embedded = json.loads(run([bertforge, "client", "embed", *TEXTS, "--url", grpc_url, "--json"],
                              cwd=client_venv, timeout=60).stdout)
    with BertforgeClient(grpc_url) as client:
        expected_masks = client.fill_mask(TEXTS, 5)
        expected_vectors = client.embed(TEXTS)
    assert [item["text"] for item in filled] == TEXTS
    for item, masks in zip(filled, expected_masks):
        assert [[p["token_id"] for p in mask] for mask in item["masks"]] == [[p.token_id for p in m] for m in masks]
        assert [[p["token"] for p in mask] for mask in item["masks"]] == [[p.token for p in m] for m in masks]
        np.testing.assert_allclose([[p["score"] for p in mask] for mask in item["masks"]],
                                   [[p.score for p in m] for m in masks], rtol=1e-6)
    vectors = np.array([item["embedding"] for item in embedded])
    assert vectors.shape == expected_vectors.shape
    np.testing.assert_allclose(vectors, expected_vectors, rtol=1e-5, atol=1e-6)
