"""The typed export report: both layouts on disk load, round-trip unchanged, and old files still load;
`--precision` parses into a Precision with errors that say what to write instead."""

from __future__ import annotations

import json

import pytest

from bertforge.config import ConfigError
from bertforge.tasks import CLASSIFY, EMBED, FILL_MASK
from export.precision import AUTO, PRECISIONS, Precision
from export.report import (
    Choice,
    ExportReport,
    TargetReport,
    VariantReport,
    read_report,
    task_report_file,
    write_report,
)

PARITY = {"max_abs_diff": 2e-06, "min_cosine": 0.99999, "mean_cosine": 1.0, "texts": 24, "batches": 3,
          "by_source": {"text": {"min_cosine": 0.99999, "mean_cosine": 1.0, "texts": 12, "max_abs_diff": 2e-06}}}
FUSED = {"precision": "fp32", "bytes": 1234, "fused_ops": {"Attention": 2}, "op_counts": {"Attention": 2, "Gather": 3}}

# `<repo>/export_report.json` as the exporter wrote it before the typed report (a dict filled in place)
OLD_REPOSITORY_REPORT = {
    "model": "runs/demo/model", "destination": "model_repository", "mode": "repository", "cpu": "x86_64 avx2",
    "config": {"precision": "auto", "tasks": [FILL_MASK, EMBED]}, "notes": ["a note"],
    "max_length": 64, "max_top_k": 32, "definition": {"served": {"family": "bert"}, "used": {"pooling": "mean"}},
    "gate_inputs": {"texts": 400, "source": "built-in", "fill_mask_batches": 6, "embed_batches": 5},
    "tasks": {
        FILL_MASK: {"task": FILL_MASK, "graph": "served",
                    "variants": {"fp32": {**FUSED, "providers": ["CPUExecutionProvider"], "parity": PARITY,
                                          "failures": [], "passed": True, "latency_ms": 3.1,
                                          "int8_search": {"seconds": 12.0, "candidates": []}}},
                    "chosen": {"requested": AUTO, "precision": "fp32", "reason": "int8 passed but is not faster"},
                    "model_dir": "model_repository/fill_mask", "serving": {"max_batch_size": 32}},
        EMBED: {"task": EMBED, "graph": "served",
                "variants": {"int8": {**FUSED, "precision": "int8", "recipe": {"name": "dynamic-per-channel"},
                                      "providers": ["CPUExecutionProvider"], "parity": PARITY, "failures": [],
                                      "passed": True, "search": {"winner": "dynamic-per-channel"}}},
                "chosen": {"requested": AUTO, "precision": "int8", "reason": "int8 is faster"},
                "model_dir": "model_repository/embed", "serving": {"max_batch_size": 32}}},
    "passed": True, "seconds": 42.0, "written": True,
    "some_future_or_past_key": {"kept": True},  # keys this version does not know survive a round trip
}
# `<repo>/export_report.classify.json`: a task model's flat report
OLD_TASK_MODEL_REPORT = {
    "model": "cross", "destination": "repo", "task": CLASSIFY, "labels": ["no", "yes"], "max_length": 128,
    "variants": {"fp32": {**FUSED, "parity": PARITY, "failures": [], "passed": True},
                 "int8": {**FUSED, "precision": "int8", "parity": PARITY, "failures": ["classify int8: missed"],
                          "passed": False}},
    "gate_inputs": {"queries": 8, "documents_per_query": 8},
    "chosen": {"requested": AUTO, "precision": "fp32", "reason": "int8 missed the gate"},
    "passed": True, "seconds": 3.2,
}


@pytest.mark.parametrize("document", [OLD_REPOSITORY_REPORT, OLD_TASK_MODEL_REPORT], ids=["repository", "task-model"])
def test_an_old_report_file_loads_and_writes_back_unchanged(tmp_path, document):
    path = tmp_path / "export_report.json"
    path.write_text(json.dumps(document, indent=2))
    report = read_report(path)
    write_report(tmp_path / "again.json", report)
    assert json.loads((tmp_path / "again.json").read_text()) == document


def test_both_layouts_read_as_one_shape(tmp_path):
    repository = ExportReport.from_dict(OLD_REPOSITORY_REPORT)
    assert repository.task is None and set(repository.tasks) == {FILL_MASK, EMBED}
    precision, variant = repository.tasks[EMBED].served
    assert precision == "int8" and variant.recipe["name"] == "dynamic-per-channel" and variant.passed
    assert repository.tasks[FILL_MASK].chosen == Choice(requested=AUTO, precision="fp32",
                                                        reason="int8 passed but is not faster")
    assert repository.tasks[FILL_MASK].variants["fp32"].int8_search["seconds"] == 12.0
    assert repository.failures == [] and repository.written is True
    assert repository.extra == {"some_future_or_past_key": {"kept": True}}
    task_model = ExportReport.from_dict(OLD_TASK_MODEL_REPORT)
    assert task_model.task == CLASSIFY and list(task_model.tasks) == [CLASSIFY]
    assert task_model.target.served[0] == "fp32" and task_model.labels == ["no", "yes"]
    assert task_model.failures == ["classify int8: missed"]
    with pytest.raises(ValueError, match="several graphs"):
        _ = repository.target


def test_a_report_built_in_memory_round_trips(tmp_path):
    sparse = ExportReport(model="m", destination="repo", task="embed_sparse", max_length=64,
                          tasks={"embed_sparse": TargetReport(task="embed_sparse")})
    sparse.target.variants["fp32"] = VariantReport.gated(FUSED, PARITY, [])
    sparse.target.chosen = Choice(requested=AUTO, precision="fp32", reason="fp32 only")
    report = ExportReport(model="m", destination="repo", mode="repository", notes=[], embed_sparse=sparse)
    report.tasks[EMBED] = TargetReport(task=EMBED, graph="served")
    report.tasks[EMBED].variants["fp32"] = VariantReport.gated(FUSED, PARITY, ["embed fp32: missed"],
                                                               providers=["CPUExecutionProvider"])
    document = report.to_dict()
    assert document["embed_sparse"]["variants"]["fp32"]["passed"] is True  # the nested task model: flat
    assert "tasks" not in document["embed_sparse"] and document["embed_sparse"]["task"] == "embed_sparse"
    assert document["tasks"][EMBED]["variants"]["fp32"]["passed"] is False
    assert "chosen" not in document["tasks"][EMBED]  # None fields are left out, as before
    path = tmp_path / task_report_file("mine")
    assert path.name == "export_report.mine.json"
    write_report(path, report)
    assert read_report(path) == report


def test_a_repository_folder_reads_its_export_report(tmp_path):
    (tmp_path / "export_report.json").write_text(json.dumps(OLD_REPOSITORY_REPORT))
    assert read_report(tmp_path) == read_report(tmp_path / "export_report.json")


def test_a_missing_report_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no export report at .*bertforge export"):
        read_report(tmp_path / "export_report.json")


@pytest.mark.parametrize("text, names", [("auto", (AUTO,)), ("fp32", ("fp32",)), (" fp32 , int8 ", ("fp32", "int8")),
                                         ("all", PRECISIONS), ("int8-static", ("int8-static",))])
def test_precision_parses_every_spelling(text, names):
    precision = Precision.parse(text)
    assert precision.names == names and str(precision) == text.strip()
    assert precision.is_auto is (names == (AUTO,))
    assert precision.single == (names[0] if len(names) == 1 else None)
    assert Precision.parse(precision) is precision


@pytest.mark.parametrize("text, message", [("int4", r"'int4' is not one of \['auto', 'fp32'"),
                                           ("fp32,int3", "'int3' is not one of"), ("", "precision is empty"),
                                           (" , ", "precision is empty"), (8, "must be a string")])
def test_precision_errors_say_what_to_write(text, message):
    with pytest.raises(ConfigError, match=message):
        Precision.parse(text)


def test_the_config_keeps_the_text_and_checks_it_once():
    from bertforge.config import to_dict
    from export.config import ExportConfig

    config = ExportConfig(output="out", repo=None, precision="all")
    assert config.precisions == PRECISIONS and config.requested_precision.names == PRECISIONS
    assert to_dict(config)["precision"] == "all"  # export_config.toml keeps the spelling
    assert ExportConfig(precision=Precision.parse("fp32")).precision == "fp32"
    with pytest.raises(ConfigError, match="serves one precision"):
        ExportConfig(precision="fp32,int8")
    with pytest.raises(ConfigError, match="'int4' is not one of"):
        ExportConfig(precision="int4")


def test_a_failed_task_model_keeps_its_null_choice():
    document = {**OLD_TASK_MODEL_REPORT, "passed": False,
                "chosen": {"requested": "fp32", "precision": None, "reason": "fp32 missed the gate"}}
    report = ExportReport.from_dict(document)
    assert report.target.chosen.precision is None and report.to_dict() == document


@pytest.mark.slow
def test_a_model_added_alone_writes_its_own_flat_report_and_an_export_of_several_one(tmp_path, tiny_bert_dir,
                                                                                     tiny_tokenizer_dir):
    """A classify head alone: its own flat report (and config) beside the others', read back as written; embed and
    embed_sparse from one folder: one export, one report holding both graphs."""
    from bertforge.served_model import REPORT_FILE
    from bertforge.tasks import EMBED_SPARSE
    from bertforge.testing import build_classifier
    from export import export_to_repository

    repo = tmp_path / "repo"
    classifier = build_classifier(tmp_path / "classifier", tiny_tokenizer_dir, 3)
    report = export_to_repository(classifier, repo, precision="fp32", progress=False)
    assert report.task == CLASSIFY and report.target.served[0] == "fp32" and report.passed
    saved = json.loads((repo / task_report_file(CLASSIFY)).read_text())
    assert "tasks" not in saved and saved["variants"]["fp32"]["passed"] and saved["task"] == CLASSIFY
    assert read_report(repo / task_report_file(CLASSIFY)).to_dict() == saved == report.to_dict()
    assert (repo / "export_config.classify.toml").is_file() and not (repo / REPORT_FILE).exists()
    report = export_to_repository(tiny_bert_dir, repo, precision="fp32", tasks=(EMBED, EMBED_SPARSE), progress=False)
    assert report.task is None and list(report.tasks) == [EMBED, EMBED_SPARSE] and report.embed_sparse is None
    saved = json.loads((repo / REPORT_FILE).read_text())
    assert read_report(repo / REPORT_FILE).to_dict() == saved == report.to_dict()
    assert saved["tasks"][EMBED_SPARSE]["variants"]["fp32"]["passed"]
    assert not (repo / task_report_file(EMBED_SPARSE)).exists() and (repo / task_report_file(CLASSIFY)).is_file()
