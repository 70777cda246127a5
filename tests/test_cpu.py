"""The int8 kernel ONNX Runtime runs on this CPU: detection agrees with what the kernel does, the saturation-free
weights are exact here, and the recipe set and serve-time warning follow the CPU (bertforge/cpu.py)."""

from __future__ import annotations

import numpy as np
import pytest

from bertforge.cpu import CpuInfo, detect_cpu, int8_portability_warning, measure_int8_saturation

AVX2 = CpuInfo("AMD EPYC (Zen 1)", frozenset({"avx2", "fma"}))
AVX512 = CpuInfo("Xeon (Skylake-SP)", frozenset({"avx2", "fma", "avx512f", "avx512bw"}))
VNNI = CpuInfo("AMD EPYC (Zen 4)", frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}))
AMX = CpuInfo("Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8", "amx_tile"}))


def _matmul_integer(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "W"], ["Y"])], "g",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, activations.shape[1]])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, weights.shape[1]])],
                              [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": activations})[0]


@pytest.mark.int8_kernel
def test_flags_and_the_measured_kernel_agree_on_this_cpu():
    cpu = detect_cpu()
    assert cpu.measured_saturation is not None  # onnxruntime is installed here
    assert cpu.int8_kernel in ("amx", "avx512-vnni", "avx-vnni", "avx512", "avx2")  # not a measured disagreement
    assert cpu.summary()["int8_saturates"] == measure_int8_saturation()


@pytest.mark.parametrize("weights", ["int8-7bit", "uint8"])
@pytest.mark.int8_kernel
def test_saturation_free_weights_are_exact_on_this_cpu(weights):
    """The worst case for 16-bit pair sums (every activation 255, every weight at its extreme) stays exact with
    7-bit or u8 weights, whatever kernel this CPU has; with s8 weights it is exact only where the kernel is."""
    rng = np.random.default_rng(0)
    activations = np.concatenate([np.full((2, 96), 255, np.uint8), rng.integers(0, 256, (6, 96), dtype=np.uint8)])
    if weights == "uint8":
        extreme = np.full((96, 24), 255, np.uint8)
    else:
        extreme = np.where(rng.random((96, 24)) < 0.5, -64, 63).astype(np.int8)
    exact = activations.astype(np.int64) @ extreme.astype(np.int64)
    np.testing.assert_array_equal(_matmul_integer(activations, extreme), exact)
    s8 = np.full((96, 24), 127, np.int8)
    s8_exact = bool((_matmul_integer(activations, s8) == activations.astype(np.int64) @ s8.astype(np.int64)).all())
    assert s8_exact == (not detect_cpu().int8_saturates)


@pytest.mark.parametrize("cpu, kernel, saturates", [(AVX2, "avx2", True), (AVX512, "avx512", True),
                                                    (VNNI, "avx512-vnni", False), (AMX, "amx", False),
                                                    (CpuInfo("?", frozenset()), "unknown", True)])
def test_kernel_from_flags(cpu, kernel, saturates):
    assert (cpu.int8_kernel, cpu.int8_saturates) == (kernel, saturates)
    assert CpuInfo.from_summary(cpu.summary()) == cpu


def test_a_measurement_overrides_the_flags():
    """Under an emulator /proc/cpuinfo shows the host's VNNI while the kernel saturates: the measurement wins."""
    emulated = CpuInfo(VNNI.model, VNNI.flags, measured_saturation=True)
    assert emulated.int8_saturates and emulated.int8_kernel == "saturating (measured)"
    assert CpuInfo.from_summary(emulated.summary()).int8_saturates


def test_recipe_set_follows_the_cpu():
    from export.int8_search import recipe_set_reason
    from export.quantize import (
        SEARCH_RECIPES,
        SENSITIVITY_BASES,
        search_recipes,
        search_tiers,
        sensitivity_bases,
    )

    for exact_cpu in (VNNI, AMX):
        assert search_recipes(exact_cpu) == SEARCH_RECIPES and sensitivity_bases(exact_cpu) == SENSITIVITY_BASES
        assert "exactly" in recipe_set_reason(exact_cpu)
    for saturating in (AVX2, AVX512):
        recipes = search_recipes(saturating)
        free = [recipe for recipe in recipes if recipe.saturation_free]
        assert recipes[:len(free)] == tuple(free) and len(free) >= 2  # tried first
        assert {recipe.weights for recipe in free} == {"int8-7bit", "uint8"}
        assert recipes[len(free):] == SEARCH_RECIPES and search_tiers(saturating) == (tuple(free), SEARCH_RECIPES)
        assert all(base.saturation_free for base in sensitivity_bases(saturating))
        assert "saturate" in recipe_set_reason(saturating) and saturating.int8_kernel in recipe_set_reason(saturating)


def test_serve_warns_only_where_the_gate_arithmetic_differs():
    vnni, avx2 = VNNI.summary(), AVX2.summary()
    warning = int8_portability_warning(vnni, "int8", AVX2)
    assert warning and "avx2" in warning and "re-export" in warning.lower()
    assert int8_portability_warning(vnni, "uint8", AVX2) is None  # saturation-free weights are exact anywhere
    assert int8_portability_warning(vnni, "int8-7bit", AVX2) is None
    assert int8_portability_warning(avx2, "int8", AVX2) is None  # gated under the same arithmetic
    assert int8_portability_warning(avx2, "int8", VNNI) is None  # served where sums are exact
    assert int8_portability_warning(None, "int8", AVX2)  # an export that did not record its CPU
    assert int8_portability_warning(None, None, AVX2) is None  # fp32


def test_local_error_ranks_seven_bit_weights_below_eight():
    from export.quantize import _fake_quantize_weight

    weights = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
    error = {kind: float(((_fake_quantize_weight(weights, kind) - weights) ** 2).mean())
             for kind in ("int8", "int8-7bit", "uint8")}
    assert error["int8-7bit"] > 2 * error["int8"] and error["uint8"] < 2 * error["int8"]


def test_serve_names_the_int8_models_gated_under_other_arithmetic(tmp_path, monkeypatch):
    """`bertforge serve` prints one warning per int8 model whose gate CPU summed exactly where this one saturates."""
    import serve.cli
    from bertforge.served_model import ServedModelDir, ServingSettings

    def exported(task: str, precision: str, weights: str) -> None:
        model = ServedModelDir.in_repo(tmp_path, task)
        model.write(ServingSettings(task=task, precision=precision),
                    info={"precision": precision, "recipe": {"name": "r", "weights": weights}, "gate_cpu": VNNI.summary()})
        model.onnx_file.write_bytes(b"graph")

    exported("embed", "int8", "int8")
    exported("fill_mask", "int8", "uint8")
    monkeypatch.setattr("bertforge.cpu.detect_cpu", lambda: AVX2)
    warnings = serve.cli.int8_warnings(tmp_path)
    assert len(warnings) == 1 and warnings[0].startswith("embed: ") and "avx2" in warnings[0]
    monkeypatch.setattr("bertforge.cpu.detect_cpu", lambda: VNNI)
    assert serve.cli.int8_warnings(tmp_path) == []


@pytest.mark.parametrize("passing, tried_second_tier", [({"dynamic-per-channel-u8u8"}, False),
                                                        ({"dynamic-per-channel"}, True)])
def test_s8_recipes_run_only_when_no_saturation_free_recipe_passes(tmp_path, monkeypatch, passing, tried_second_tier):
    """On a saturating CPU the whole first tier is tried (the fastest passing one wins); the s8-weight tier
    only when none of it passed. Graph building and timing are replaced: this is the search's order alone."""
    import export.int8_search as search
    from export.quantize import SEARCH_RECIPES, search_tiers

    monkeypatch.setattr(search.quantize, "quantize", lambda fused, target, recipe, feeds: target.write_bytes(b""))
    monkeypatch.setattr(search, "measure_latency", lambda path, feeds: 1.0)
    result = search.search_int8(tmp_path / "fused.onnx", tmp_path / "work",
                                lambda path: ({}, [] if path.stem in passing else ["missed"], 0.0), [], {}, cpu=AVX2)
    tried = [candidate["name"] for candidate in result.candidates]
    first = [recipe.name for recipe in search_tiers(AVX2)[0]]
    assert tried[:len(first)] == first
    assert (tried[len(first):] == [recipe.name for recipe in SEARCH_RECIPES]) == tried_second_tier
    assert len(tried) == len(first) + (len(SEARCH_RECIPES) if tried_second_tier else 0)
    assert result.recipe.name in passing and "saturate" in result.summary()["recipe_set"]


def test_int8_portable_tries_only_recipes_exact_on_every_cpu(tmp_path, monkeypatch):
    """export --set int8_portable=true on a VNNI machine: only 7-bit/u8 weights, so the serve warning never fires."""
    import export.int8_search as search
    from export.config import ExportConfig
    from export.quantize import search_recipes, sensitivity_bases

    assert ExportConfig().int8_portable is False
    for cpu in (VNNI, AMX, AVX2):
        assert all(recipe.saturation_free for recipe in search_recipes(cpu, portable=True))
        assert all(base.saturation_free for base in sensitivity_bases(cpu, portable=True))
    monkeypatch.setattr(search.quantize, "quantize", lambda fused, target, recipe, feeds: target.write_bytes(b""))
    monkeypatch.setattr(search, "measure_latency", lambda path, feeds: 1.0)
    result = search.search_int8(tmp_path / "fused.onnx", tmp_path / "work", lambda path: ({}, [], 0.0), [], {},
                                cpu=VNNI, portable=True)
    assert result.recipe.saturation_free and "int8_portable" in result.summary()["recipe_set"]
    assert int8_portability_warning(VNNI.summary(), result.recipe.weights, AVX2) is None
