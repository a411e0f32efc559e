"""Data-parallel training across the tasks of one job (several GPUs, several nodes).

A cell runs as one process per task. The process group is found, in this order, from
1. ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` already in the environment (torchrun, a test);
2. a submitit job with several tasks (``submitit.helpers.TorchDistributedEnvironment`` exports the same variables);
otherwise the cell runs in a single process and nothing here costs anything.

Every rank draws the same global batch from the same seeded sampler and keeps its own contiguous slice
(:func:`shard`); gradients are averaged by DDP, and the loss is normalised by the token count of the *global* batch, so
an update equals the single-process update on the whole batch up to float summation order. Only rank 0 logs, writes
checkpoints and decodes the test set.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist
import submitit
from submitit.helpers import TorchDistributedEnvironment
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _export_submitit_environment() -> None:
    """Inside a submitit job of several tasks, set the env:// variables torch.distributed reads."""
    if "RANK" in os.environ:
        return
    try:

        job_env = submitit.JobEnvironment()
    except (ImportError, RuntimeError):  # not a submitit job
        return
    if job_env.num_tasks > 1:
        # Keep every GPU visible and pick ours by local rank, so NCCL can see its peers on the node.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an integer, got {value!r}") from None


# TF32 policy: fp32 matmuls of training and decoding jobs on Ampere or newer GPUs use TF32 (10-bit mantissa products,
# fp32 accumulation; several times faster), as the paper's TPU runs used bf16 matmuls. The parity tests switch it off
# (tests/test_cuda.py); runs record it as the tag tf32 (experiments.tracking.runs.environment_tags).
USE_TF32 = True


def init_distributed(device: str | None = None, timeout_s: int = 1800) -> DistributedContext:
    """Join (or reuse) the process group this job's tasks form; a single-process context when there is none.

    ``device`` forces "cpu" or "cuda"; by default CUDA is used when available, with the GPU of this local rank.
    """
    _export_submitit_environment()
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        torch_device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.matmul.allow_tf32 = USE_TF32
        torch.backends.cudnn.allow_tf32 = USE_TF32
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"environment variable {name}: required when WORLD_SIZE={world_size}")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=torch_device)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous slice of a global batch; sizes differ by at most one and every item is used once."""
    n = len(items)
    start = rank * n // world_size
    stop = (rank + 1) * n // world_size
    return list(items[start:stop])


def split_micro_batches(items: Sequence[T], count: int) -> list[list[T]]:
    """``count`` contiguous, non-empty micro-batches (fewer when there are fewer items) for gradient accumulation."""
    count = max(1, min(count, len(items)))
    return [shard(items, i, count) for i in range(count)]


def all_reduce_sum(value: float | int, ctx: DistributedContext) -> float:
    """Sum of ``value`` over ranks (the value itself when not distributed)."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64,
                          device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.item()


def all_gather_objects(obj: Any, ctx: DistributedContext) -> list[Any]:
    """Every rank's ``obj``, rank 0 first (``[obj]`` when not distributed)."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistributedContext) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def wrap_model(model: torch.nn.Module, ctx: DistributedContext, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DDP around ``model`` when there are several ranks (the model itself otherwise)."""
    if not ctx.enabled:
        return model

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def destroy(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
