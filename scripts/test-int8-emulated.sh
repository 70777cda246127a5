#!/usr/bin/env bash
# The tests that depend on ONNX Runtime's int8 GEMM kernel (`pytest -m int8_kernel`), run under emulated CPUs, so a
# test that only holds on the developer's own kernel (VNNI, say) is caught where it is written.
#
#   bash scripts/test-int8-emulated.sh                          # EPYC (AVX2, no VNNI), then Skylake-Server-noTSX-IBRS
#   bash scripts/test-int8-emulated.sh EPYC -- -k row_scaling    # one CPU model, extra pytest arguments after --
#
# Needs Debian's qemu-user (`apt-get install qemu-user`) and the venv of scripts/setup.sh. Emulation runs about 50x
# slower than the host, so the marked tests bound their int8 searches by a count of candidates, never by seconds
# (tests/conftest.py COUNTED_SEARCH). Before the tests, each CPU is checked for what the emulator really gives: QEMU's
# TCG (7.2 in Debian 12) implements AVX2 but not AVX-512, so a Skylake-Server model runs as AVX2 there; the script
# prints that instead of claiming an AVX-512 run. Only the pytest process is emulated: a subprocess it starts (the
# training CLI of tests/train, tritonserver and its python stubs) runs natively.
set -euo pipefail
cd "$(dirname "$0")/.."
CPUS=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do CPUS+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
[ ${#CPUS[@]} -eq 0 ] && CPUS=(EPYC Skylake-Server-noTSX-IBRS)
command -v qemu-x86_64 >/dev/null || { echo "test-int8-emulated: needs qemu-x86_64 (apt-get install qemu-user)" >&2; exit 2; }
[ -x .venv/bin/python ] || bash scripts/setup.sh

FAILED=0
for cpu in "${CPUS[@]}"; do
  echo "== $cpu: what the emulator provides"
  # torch's dispatch level (AVX2 / AVX512) and ONNX Runtime's int8 kernel, measured inside the emulator
  qemu-x86_64 -cpu "$cpu" .venv/bin/python -c '
import torch
from bertforge.cpu import measure_int8_saturation
sums = "saturate (no VNNI)" if measure_int8_saturation() else "exact (VNNI/AMX)"
print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}; ONNX Runtime int8 u8 x s8 sums {sums}")' 2>&1 | grep -v "^qemu-x86_64: warning"
  echo "== $cpu: pytest -m int8_kernel $*"
  started=$(date +%s)
  # pytest's per-test hang guard (pyproject: 900 s) scaled by the emulator's slowdown
  if qemu-x86_64 -cpu "$cpu" .venv/bin/python -m pytest -q -p no:cacheprovider -m int8_kernel --timeout=45000 -rfE "$@" 2> >(grep -v "^qemu-x86_64: warning" >&2); then
    echo "== $cpu: passed in $(( $(date +%s) - started )) s"
  else
    echo "== $cpu: FAILED after $(( $(date +%s) - started )) s"
    FAILED=1
  fi
done
exit $FAILED
