"""train.precision = "auto": bf16 autocast where it pays, fp32 elsewhere, decided on the machine at hand.

CUDA: bf16 when the GPU supports it. CPU: a short matmul micro-benchmark at start measures how much
faster bf16 autocast is than fp32 (oneDNN runs bf16 on AMX or avx512_bf16; elsewhere it is emulated
and slower). CPU flags are not trusted: virtual machines of one kind differ, and a flag says nothing
about the library's kernels. The measurement runs once per process and is logged.

Whether a fast bf16 matmul makes "auto" pick bf16 on CPU is CPU_AUTO_PICKS_BF16, set from the demo's
same-run side-by-side (README, "Precision on CPU"): on an AMX CPU whose probe matmul ran 3-5x faster
in bf16, the demo's whole training step gained only ~3% (median windows; the tiny model's step is not
matmul-bound), held-out accuracy at equal steps matched within 0.002, and over the 7-minute budget bf16
ended lower (fewer steps on a machine loaded by other work). Not a measured win, so auto stays fp32
on CPU and says what `train.precision = "bf16"` would get; bf16 on CPU is there for whoever asks. While it is
off, "auto" measures nothing on CPU: the probe cost 40-76 s in every training process where bf16 is emulated
(an AVX2-only Zen 1, where the 256-wide screen measured 0.16, above its conclusive bound).
"""

from __future__ import annotations

import functools
import time

import torch

# bf16 autocast must beat fp32 by this factor on the probe matmul to be picked: a margin well above
# timing noise (AMX measured ~3-4x, avx512_bf16 without AMX ~2x, AVX2-only CPUs below 1x)
CPU_BF16_MIN_SPEEDUP = 1.3
CPU_AUTO_PICKS_BF16 = False  # see the module docstring: re-measure the side-by-side before turning on
PROBE_SIZE = 1024  # (1024 x 1024) @ (1024 x 1024): 2 GFLOP, a few ms on a modern core
PROBE_REPEATS = 20  # interleaved; the fastest of each counts: other processes only ever add time
# Where bf16 is emulated (AVX2-only CPUs: about 1 GFLOP/s against ~70 fp32) the full probe would take ~40 s
# in every training process. A small screen first; below SCREEN_CONCLUSIVE_BELOW its figure is the answer.
# At this size autocast's casts weigh more than at the full size: native bf16 (avx512_bf16, Zen 4) measured
# 0.51 on the screen and 1.1-2.3 on the full probe, emulated bf16 is ~0.014 of fp32 at any size. 0.1 sits 5x
# from each, so neither timing noise nor the size changes the decision.
SCREEN_SIZE = 256  # 34 MFLOP: ~30 ms emulated, well under 1 ms with native bf16
SCREEN_REPEATS = 3
SCREEN_CONCLUSIVE_BELOW = 0.1


def choose_precision(requested: str, use_cuda: bool) -> tuple[str, str]:
    """(precision, why) for train.precision = requested on this device."""
    if requested != "auto":
        return requested, f"train.precision = {requested!r}"
    if use_cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: the GPU supports bf16"
        return "fp32", "auto: the GPU lacks bf16"
    if not CPU_AUTO_PICKS_BF16:  # nothing to measure: auto is fp32 on every CPU until the side-by-side says otherwise
        return "fp32", ("auto: fp32 on CPU (bf16 autocast gained ~3% on the demo's step even where bf16 matmuls run "
                        "3-5x faster); train.precision = 'bf16' to use it")
    speedup = cpu_bf16_speedup()
    measured = f"bf16 autocast matmul runs {speedup:.2f}x fp32 on this CPU ({torch.get_num_threads()} threads)"
    if speedup < CPU_BF16_MIN_SPEEDUP:
        return "fp32", f"auto: {measured}; bf16 needs >= {CPU_BF16_MIN_SPEEDUP}x"
    return "bf16", f"auto: {measured}"


@functools.cache
def cpu_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of a square matmul on this CPU (fastest of interleaved repeats): a small
    screen, conclusive where bf16 is emulated, else the full-size probe."""
    screen = _matmul_speedup(SCREEN_SIZE, SCREEN_REPEATS)
    if screen < SCREEN_CONCLUSIVE_BELOW:
        return screen
    return _matmul_speedup(PROBE_SIZE, PROBE_REPEATS)


def _matmul_speedup(size: int, repeats: int) -> float:
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    fp32, bf16 = [], []
    for repeat in range(repeats + 1):  # the first round warms up both kernels and is dropped
        fp32_s = _seconds(lambda: left @ right)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_s = _seconds(lambda: left @ right)
        if repeat:
            fp32.append(fp32_s)
            bf16.append(bf16_s)
    return min(fp32) / min(bf16)


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started
