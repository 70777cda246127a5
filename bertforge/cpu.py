"""Which int8 GEMM kernel ONNX Runtime runs on this CPU, and whether it can saturate.

ONNX Runtime's CPU int8 GEMMs (MLAS) pick a kernel from the instruction sets at run time:

| kernel        | needs                          | u8 x s8 products                                          |
|---------------|--------------------------------|-----------------------------------------------------------|
| `amx`         | AMX-INT8 (Sapphire Rapids on)  | exact int32 accumulation                                  |
| `avx512-vnni` | AVX512-VNNI                    | exact (vpdpbusd)                                          |
| `avx-vnni`    | AVX-VNNI (256-bit)             | exact (vpdpbusd)                                          |
| `avx512`      | AVX512-BW without VNNI         | pairs summed in 16-bit lanes (vpmaddubsw): can saturate   |
| `avx2`        | AVX2 without VNNI              | pairs summed in 16-bit lanes (vpmaddubsw): can saturate   |

Two u8 x s8 products of at most 255 x 127 each add up to 64,770, beyond int16's 32,767: on the last two kernels
an int8 graph can differ from what the same graph gives on a VNNI CPU. Two ways out (ONNX Runtime's
quantization docs): 7-bit weights (`reduce_range`: 2 x 255 x 64 = 32,640 fits) or u8 weights (the u8 x u8
kernel widens to 16 bits before multiplying). `export.quantize.search_recipes` tries those first on such CPUs.

Flags come from /proc/cpuinfo (Linux; elsewhere the kernel is `unknown`). Whether the kernel saturates is also
measured where ONNX Runtime is installed (`measure_int8_saturation`: one tiny MatMulInteger whose pair sums exceed
int16, about 10 ms), and the measurement wins: under an emulator, or a hypervisor that hides VNNI, /proc/cpuinfo
and the instructions ONNX Runtime can really run disagree.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CpuInfo", "detect_cpu", "measure_int8_saturation", "int8_portability_warning", "SATURATING_KERNELS"]

# the flags that decide ONNX Runtime's int8 kernel (and bf16, for the report), as Linux names them
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
                  "amx_tile")
SATURATING_KERNELS = ("avx512", "avx2", "unknown")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset[str]
    measured_saturation: bool | None = None  # ONNX Runtime's kernel measured (None: not measured)

    @property
    def int8_kernel(self) -> str:
        """The int8 GEMM kernel ONNX Runtime uses here (see the module's table)."""
        by_flags = self._kernel_by_flags()
        if self.measured_saturation is not None and self.measured_saturation != (by_flags in SATURATING_KERNELS):
            return "saturating (measured)" if self.measured_saturation else "exact (measured)"
        return by_flags

    @property
    def int8_saturates(self) -> bool:
        """True where u8 x s8 int8 GEMMs sum in 16-bit lanes (no VNNI/AMX): s8-weight int8 can lose accuracy."""
        if self.measured_saturation is not None:
            return self.measured_saturation
        return self._kernel_by_flags() in SATURATING_KERNELS

    def _kernel_by_flags(self) -> str:
        if {"amx_int8", "amx_tile"} <= self.flags:
            return "amx"
        if "avx512_vnni" in self.flags:
            return "avx512-vnni"
        if "avx_vnni" in self.flags:
            return "avx-vnni"
        if {"avx512f", "avx512bw"} <= self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "unknown"

    def summary(self) -> dict[str, Any]:
        """What an export report and serving.json record of the CPU a gate ran on."""
        return {"model": self.model, "int8_kernel": self.int8_kernel, "int8_saturates": self.int8_saturates,
                "saturation_measured": self.measured_saturation is not None,
                "flags": sorted(self.flags & set(RELEVANT_FLAGS))}

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> CpuInfo:
        measured = summary.get("int8_saturates") if summary.get("saturation_measured") else None
        return cls(model=str(summary.get("model", "")), flags=frozenset(summary.get("flags", ())),
                   measured_saturation=measured)


def int8_portability_warning(gate_cpu: dict[str, Any] | None, weights: str | None, here: CpuInfo) -> str | None:
    """Why an int8 graph gated on `gate_cpu` may answer differently on `here` (None: it cannot).

    Only s8 weights (`weights` "int8") depend on the kernel; a graph gated where u8 x s8 sums were exact but
    served where they saturate can differ from what the gate measured. The serving image has no PyTorch to
    re-run the gate's reference, so serve says so and names the fix (re-export on this CPU)."""
    if weights != "int8" or here.measured_saturation is False or not here.int8_saturates:
        return None
    if gate_cpu is None:
        return (f"this CPU's int8 kernel ({here.int8_kernel}) can saturate u8 x s8 sums and the export did not record "
                "the CPU its gate ran on; re-export here (`bertforge export --precision auto`) to gate it on this CPU")
    gated = CpuInfo.from_summary(gate_cpu)
    if gated.int8_saturates:
        return None  # gated under the same saturating arithmetic
    return (f"the int8 graph was gated on {gated.model or 'another CPU'} (int8 kernel {gated.int8_kernel}, exact), "
            f"but this CPU's kernel ({here.int8_kernel}) sums u8 x s8 pairs in 16-bit lanes, which can saturate: "
            "its answers may differ from what the gate measured. Re-export on this CPU (`bertforge export "
            "--precision auto`: saturation-free recipes are tried first here), export with `--set "
            "int8_portable=true` (7-bit or u8 weights only, exact everywhere), or serve fp32")


@functools.cache
def detect_cpu(cpuinfo: str | Path = "/proc/cpuinfo", measure: bool = True) -> CpuInfo:
    """This machine's CPU model and instruction-set flags (the first processor's; they are all alike), with
    the int8 kernel's saturation measured when `measure` and ONNX Runtime is installed. Once per process: the
    export's report and every int8 search of it ask, and the CPU does not change."""
    model, flags = _read_cpuinfo(Path(cpuinfo))
    return CpuInfo(model=model, flags=flags, measured_saturation=measure_int8_saturation() if measure else None)


def measure_int8_saturation() -> bool | None:
    """Run one u8 x s8 MatMulInteger whose pair sums exceed int16 on ONNX Runtime's CPU provider: True when its
    answer is wrong (a saturating kernel), None when ONNX Runtime is not installed."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    depth, width = 64, 16
    activations = np.full((4, depth), 250, np.uint8)  # 250 x 120 x 2 = 60,000 > 32,767 per pair
    weights = np.full((depth, width), 120, np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "W"], ["Y"])], "saturation_probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, depth])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, width])],
                              [numpy_helper.from_array(weights, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    answer = session.run(None, {"A": activations})[0]
    return bool((answer != activations.astype(np.int64) @ weights.astype(np.int64)).any())


def _read_cpuinfo(path: Path) -> tuple[str, frozenset[str]]:
    try:
        text = path.read_text()
    except OSError:
        import platform

        return platform.processor() or platform.machine(), frozenset()
    model, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags
