"""The run's runtime: device, DDP rank/world (torchrun's environment switches DDP on) and agreed precision."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

import torch

from bertforge.config import ConfigError
from train.config import LoopConfig
from train.precision import choose_precision


def start_runtime(loop: LoopConfig) -> TrainingRuntime:
    """Pick the device and precision; join the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    # Device
    if loop.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    use_cuda = loop.device == "cuda" or (loop.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if loop.precision == "fp16" and not use_cuda:
        raise ConfigError("train.precision = 'fp16' needs CUDA (GradScaler); use 'fp32' or 'bf16' on CPU")
    # Process group: nccl on CUDA, gloo on CPU
    distributed = world_size > 1
    if distributed:
        torch.distributed.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world_size, timeout=timedelta(minutes=30)
        )
    # Precision: bf16 autocast where it is supported (CUDA) or measured faster (CPU), else fp32
    precision, reason = _agreed_precision(loop.precision, use_cuda, rank, distributed, device)
    return TrainingRuntime(device=device, precision=precision, rank=rank, world_size=world_size,
                           distributed=distributed, precision_reason=reason)


@dataclass
class TrainingRuntime:
    """Device, precision and the process group of one training process."""

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    distributed: bool = False
    precision_reason: str = ""  # why this precision (train/precision.py), logged at start

    def autocast(self):
        if self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return nullcontext()

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self.distributed:
            torch.distributed.all_reduce(tensor)

    def any_rank(self, flag: bool) -> bool:
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def agreed_max(self, value: float) -> float:
        """The largest of the ranks' values: each rank reads its own clock, but they must share one LR."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return tensor.item()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def print(self, message: str) -> None:
        if self.rank == 0:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _agreed_precision(requested: str, use_cuda: bool, rank: int, distributed: bool, device) -> tuple[str, str]:
    """choose_precision, measured once on rank 0 when it is a CPU measurement: all ranks must agree."""
    if not (distributed and requested == "auto" and not use_cuda):
        return choose_precision(requested, use_cuda)
    precision, reason = choose_precision(requested, use_cuda) if rank == 0 else ("", "")
    flag = torch.tensor([1.0 if precision == "bf16" else 0.0], device=device)
    torch.distributed.broadcast(flag, src=0)
    if rank == 0:
        return precision, reason
    return ("bf16" if flag.item() > 0 else "fp32"), "auto: rank 0's measurement"
