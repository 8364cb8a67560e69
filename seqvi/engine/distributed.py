"""Data parallelism across processes (torchrun): NCCL on CUDA, gloo on CPU.

Every rank runs the same recipe. A global batch of B sequences (the recipe's
``data.batch_size``, whatever the number of processes) is split by rows:
rank r takes rows r, r + W, r + 2W, ... Each rank pads to the global
batch's length and draws the reparameterization noise of the whole global
batch from the same RNG stream, keeping only its rows
(``seqvi.free_energy.noise_shard``), so W processes compute the same
mathematics as one process; only the order of float additions differs.

Gradients: each rank back-propagates its share of the global loss (its sum
divided by the global number of real steps) and the gradients are summed
with one all-reduce over a flat buffer. Rank 0 alone writes logs, metrics,
checkpoints and samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: str) -> Dist:
    """Join the process group that torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local)


def device_for(d: Dist, device: str) -> str:
    """Each rank on its own GPU when CUDA is used."""
    if d.active and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return device


def rows(d: Dist, batch: int) -> slice:
    return slice(d.rank, batch, d.world)


def all_reduce_sum(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    if d.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(d: Dist, tensor: torch.Tensor) -> torch.Tensor:
    if d.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_gradients(d: Dist, params: list[torch.nn.Parameter]) -> None:
    """Sum gradients over ranks in one flat buffer (missing gradients count as zero)."""
    if not d.active:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist, together: bool = False) -> None:
    """Leave the process group. ``together`` (every rank finished normally): meet at a barrier
    first, so no rank tears down while rank 0, which hosts the store, is still writing its
    last checkpoint; a rank that exits early would otherwise lose its peer mid-destroy and
    abort (SIGABRT in gloo). After a failure there is no barrier: the peers may be gone."""
    if d.active and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
