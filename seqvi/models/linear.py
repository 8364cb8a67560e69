"""``Linear``: ``nn.Linear`` whose gradient-free CPU forward multiplies by a contiguous W^T.

``nn.Linear`` stores W as (out, in) and computes x W^T + b, which hands the
BLAS a transposed right operand. On CPU at the batch sizes of a filtering
loop (16-20 rows) that product measured 1.4-1.8x slower than the same
product with W^T stored contiguously (``bench/run.py``'s machine; MKL and
oneDNN alike). Where nothing records a graph — AVF's in-loop prior, its
gradient input and its deferred update, evaluation, bounds, sampling — this
class multiplies inputs of up to ``SMALL_BATCH`` rows by a cached contiguous
copy of W^T, rebuilt whenever the weight changes (its version counter:
optimizer steps and ``load_state_dict`` both bump it). With a graph, on other devices, or for inputs that are not
matrices, it is ``nn.Linear`` unchanged. Parameters and state dicts are
``nn.Linear``'s, so checkpoints do not see the difference.

``fused_linear`` does the same for several layers that read one input
(AVF's four heads, the DMM transition's first layers): one product with
their concatenated W^T, cached on the module that owns them.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn


SMALL_BATCH = 32   # rows up to which the W^T copy paid; at 64 and 1,024 rows evaluation measured no gain


def versioned(owner: nn.Module, name: str, params: Sequence[Tensor], build: Callable[[], Any]) -> Any:
    """``build()``, cached on ``owner`` as attribute ``name`` until any of ``params`` changes
    (storage or version counter: optimizer steps and ``load_state_dict`` bump it)."""
    key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
    cached = getattr(owner, name, None)
    if cached is None or cached[0] != key:
        cached = (key, build())
        setattr(owner, name, cached)
    return cached[1]


class Linear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if x.dim() != 2 or x.shape[0] > SMALL_BATCH or weight.device.type != "cpu" or self.bias is None or (
                torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
            return nn.functional.linear(x, weight, self.bias)
        return fused_linear(self, "_transposed", (self,), x)

    def __getstate__(self) -> dict:   # copies and pickles leave the cache behind
        state = self.__dict__.copy()
        state.pop("_transposed", None)
        return state


def fused_linear(owner: nn.Module, name: str, layers: Sequence[nn.Linear], x: Tensor) -> Tensor:
    """[x W_1^T + b_1, ..., x W_n^T + b_n] (B, sum of outputs) as one product, for graph-free CPU use,
    with the concatenated (in, sum of outputs) W^T and bias ``versioned`` on ``owner`` as ``name``."""
    params = [p for layer in layers for p in (layer.weight, layer.bias)]
    weight_t, bias = versioned(owner, name, params, lambda: (
        torch.cat([layer.weight.detach() for layer in layers]).t().contiguous(),
        torch.cat([layer.bias.detach() for layer in layers])))
    return torch.addmm(bias, x, weight_t)
