"""Speed kernels: hand-written backward passes, cached transposes, fused products (torch only).

On a CPU at filtering batch sizes (16-64 rows) a training step is a few
hundred small operators, so what costs is autograd's bookkeeping per step,
products with a transposed right operand, and weight gradients formed as one
outer product per step. The kernels in this package remove those costs
without changing the mathematics:

    linear.py          ``Linear`` / ``Fused``: graph-free products with a cached contiguous W^T
    lstm.py            one LSTM step whose weight gradients are formed once per sequence
    elman.py           an Elman RNN over a whole sequence with back-propagation through time by hand
    combiner_path.py   the combiner's whole sampling path as one node (models Markov in z)
    mlp_grad.py        the input gradient of an MLP of Linear layers and pointwise activations, by hand
    highway.py         an ELU highway MLP with fused heads: graph-free forward that keeps its
                       activations, and a batched backward by hand

Each kernel has a readable reference path (plain torch operators under
autograd) and a test that both agree in values and gradients
(tests/test_fast_path.py). One switch forces the reference path everywhere:
the environment variable ``SEQVI_REFERENCE=1`` (read at import) or the
context manager ``reference()``. Callers ask one of two questions:

    enabled(t)         the kernels apply to tensors like t: not forced off, and t lives on the CPU
    graph_free(*ts)    enabled, and no autograd graph is recorded through any of ts

Nothing in this package imports seqvi; every cache lives in the kernel
object that owns it.
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from typing import Iterator

import torch

_FORCED: ContextVar[bool | None] = ContextVar("seqvi_reference", default=None)
_ENV_REFERENCE = os.environ.get("SEQVI_REFERENCE", "").strip() not in ("", "0")


def reference_forced() -> bool:
    """True where every caller must take the readable reference path."""
    forced = _FORCED.get()
    return _ENV_REFERENCE if forced is None else forced


@contextlib.contextmanager
def reference(on: bool = True) -> Iterator[None]:
    """Within this block every kernel's readable reference path runs (``on=False``: the kernels)."""
    token = _FORCED.set(on)
    try:
        yield
    finally:
        _FORCED.reset(token)


def enabled(t: torch.Tensor) -> bool:
    """The kernels apply to ``t``: the switch is not forcing the reference, and ``t`` is on the CPU."""
    return t.device.type == "cpu" and not reference_forced()


def graph_free(*tensors: torch.Tensor) -> bool:
    """``enabled`` for the first tensor, and autograd records no graph through any of them."""
    if not enabled(tensors[0]):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
