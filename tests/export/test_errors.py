"""Every user error gives a clear message and leaves nothing behind; the parity gate refuses a corrupted variant."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bertforge.tasks import EMBED, FILL_MASK
from export.errors import ExportError


def _export(model, repo, **options):
    from export import export_to_repository

    return export_to_repository(model, repo, precision="fp32", progress=False, **options)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_not_a_folder(tmp_path):
    with pytest.raises(ExportError, match="is not a folder"):
        _export(tmp_path / "nowhere", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_not_a_bert_checkpoint(tmp_path, tiny_bert_dir):
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    (model / "config.json").unlink()
    with pytest.raises(ExportError, match="config.json is missing"):
        _export(model, tmp_path / "repo")
    config = json.loads((tiny_bert_dir / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ExportError, match="'gpt2' model; bertforge exports the encoder families bert, roberta"):
        _export(model, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_pickled_weights_are_refused(tmp_path, tiny_bert_dir):
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    with pytest.raises(ExportError, match="safetensors only"):
        _export(model, tmp_path / "repo")


def test_missing_tokenizer(tmp_path, tiny_bert_dir):
    model = Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))
    for name in ("tokenizer.json", "vocab.txt"):
        (model / name).unlink()
    with pytest.raises(ExportError, match="has no tokenizer .*save_pretrained"):
        _export(model, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_unwritable_destination(tmp_path, tiny_bert_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        _export(tiny_bert_dir, blocker / "repo")
    with pytest.raises(ExportError, match="cannot write to /proc/bertforge_repo"):
        _export(tiny_bert_dir, Path("/proc/bertforge_repo"))
    assert blocker.read_text() == "not a folder"


def test_fill_mask_without_mlm_head(tmp_path, tiny_tokenizer_dir):
    from tests.conftest import build_tiny_bert

    model = build_tiny_bert(tmp_path / "encoder", tiny_tokenizer_dir, with_mlm_head=False)
    with pytest.raises(ExportError, match=r"with no MLM head, which exports task\(s\) \['embed'\] only, not "
                                          r"\['fill_mask'\] \(fill_mask needs a masked-LM folder\)"):
        _export(model, tmp_path / "repo", tasks=("fill_mask",))
    assert not (tmp_path / "repo").exists()


def test_unknown_option_and_bad_precision(tmp_path, tiny_bert_dir):
    with pytest.raises(ExportError, match="unknown export option"):
        _export(tiny_bert_dir, tmp_path / "repo", colour="blue")
    from export import export_to_repository

    with pytest.raises(ValueError, match="'int4' is not one of"):
        export_to_repository(tiny_bert_dir, tmp_path / "repo", precision="int4")
    with pytest.raises(ValueError, match="serves one precision"):
        export_to_repository(tiny_bert_dir, tmp_path / "repo", precision="fp32,int8")


def test_parity_gate_refuses_corrupted_weight(tmp_path, tiny_bert_dir, monkeypatch):
    """A variant whose ONNX weight was corrupted after export misses the gate: exit non-zero, says by how much,
    writes no model, and the report holds the numbers."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    import export.variants
    from bertforge.cli import main
    from export.errors import ParityError

    real_build = export.variants.build_variant

    def corrupted_build(fp32_path, precision, target, **kwargs):
        details = real_build(fp32_path, precision, target, **kwargs)
        model = onnx.load(str(target))
        # scale the word embeddings: every downstream number moves
        for index, init in enumerate(model.graph.initializer):
            if "word_embeddings" in init.name:
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 3.0, init.name))
        onnx.save(model, str(target))
        return details

    monkeypatch.setattr(export.variants, "build_variant", corrupted_build)
    repo = tmp_path / "repo"
    with pytest.raises(ParityError, match=r"fill_mask fp32: .* \(missed by .*\)") as caught:
        _export(tiny_bert_dir, repo)
    assert not (repo / FILL_MASK).exists() and not (repo / EMBED).exists()
    report = json.loads((repo / "export_report.json").read_text())
    assert report["passed"] is False and report["written"] is False
    assert report["tasks"]["embed"]["variants"]["fp32"]["parity"]["max_abs_diff"] > 1e-4
    assert caught.value.failures and all("missed by" in line for line in caught.value.failures)
    assert np.isfinite(report["tasks"]["fill_mask"]["variants"]["fp32"]["parity"]["top1_agreement"])
    # the CLI says the same and exits non-zero
    assert main(["export", "--model", str(tiny_bert_dir), "--repo", str(tmp_path / "cli_repo"), "--precision", "fp32",
                 "--quiet"]) == 2
    assert not (tmp_path / "cli_repo" / FILL_MASK).exists()


def test_output_mode_refuses_a_foreign_folder(tmp_path, tiny_bert_dir):
    from export import export_onnx

    folder = tmp_path / "my_documents"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_onnx(tiny_bert_dir, folder, precision="fp32", progress=False)
    assert _leftovers(folder) == ["thesis.txt"]
