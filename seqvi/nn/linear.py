"""Graph-free products with a cached contiguous W^T: ``Linear`` and ``Fused``.

``nn.Linear`` stores W as (out, in) and computes x W^T + b, which hands the
BLAS a transposed right operand; at filtering batch sizes on a CPU that
product is slower than the same product with W^T stored contiguously (the
README's Performance section has the figures). Where no graph is recorded
(``seqvi.nn.graph_free``: AVF's in-loop prior and gradient input,
evaluation, bounds, sampling), ``Linear`` multiplies matrices of up to
``SMALL_BATCH`` rows by a cached W^T, rebuilt whenever the weight changes
(its storage or version counter: optimizer steps and ``load_state_dict``
both bump it). Otherwise it is ``nn.Linear`` unchanged, which is also the
reference path. Parameters and state dicts are ``nn.Linear``'s.

``Fused(*layers)`` computes several layers that read one input as one
product with their concatenated W^T (graph-free), else as ``torch.cat`` of
the layers' own outputs (the reference path):

    Fused(a, b)(x) = [x W_a^T + b_a, x W_b^T + b_b]          (B, out_a + out_b)

A ``Fused`` is a plain object held by the module that owns the layers; it
keeps its cache itself.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from seqvi.nn import graph_free

SMALL_BATCH = 32   # rows up to which the W^T copy paid (README, Performance)


class VersionedCache:
    """``build()`` kept until any of the watched tensors changes (storage, version counter or dtype)."""

    def __init__(self):
        self._key: tuple | None = None
        self._value: Any = None

    def get(self, params: Sequence[Tensor], build: Callable[[], Any]) -> Any:
        key = tuple((p.data_ptr(), p._version, p.dtype) for p in params)
        if key != self._key:
            self._key, self._value = key, build()
        return self._value


class Linear(nn.Linear):
    """``nn.Linear`` whose graph-free CPU product of a small matrix uses a cached contiguous W^T."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() == 2 and x.shape[0] <= SMALL_BATCH and self.bias is not None
                and graph_free(x, self.weight)):
            weight_t = self._cache().get((self.weight,), lambda: self.weight.detach().t().contiguous())
            return torch.addmm(self.bias, x, weight_t)
        return nn.functional.linear(x, self.weight, self.bias)

    def _cache(self) -> VersionedCache:
        cache = self.__dict__.get("_wt_cache")
        if cache is None:
            cache = self.__dict__["_wt_cache"] = VersionedCache()
        return cache

    def __getstate__(self) -> dict:   # copies and pickles leave the cache behind
        state = self.__dict__.copy()
        state.pop("_wt_cache", None)
        return state


class Fused:
    """Several layers reading one input, as one product where no graph is recorded."""

    def __init__(self, *layers: nn.Linear):
        self.layers = layers
        self.sizes = [layer.out_features for layer in layers]
        self._cache = VersionedCache()

    def __call__(self, x: Tensor) -> Tensor:
        weights = [layer.weight for layer in self.layers]
        if x.dim() == 2 and graph_free(x, *weights):
            params = [p for layer in self.layers for p in (layer.weight, layer.bias)]
            weight_t, bias = self._cache.get(params, lambda: (
                torch.cat([w.detach() for w in weights]).t().contiguous(),
                torch.cat([layer.bias.detach() for layer in self.layers])))
            return torch.addmm(bias, x, weight_t)
        return torch.cat([layer(x) for layer in self.layers], -1)

    def __getstate__(self) -> dict:
        return {"layers": self.layers, "sizes": self.sizes, "_cache": VersionedCache()}
