"""An ELU highway MLP with fused output heads: a graph-free forward that keeps its activations,
and a batched backward by hand.

For u (N, I), an input layer, L highway layers of width H and n linear heads::

    h_0 = ELU(u W_in^T + b_in)                                              (N, H)
    e_l = ELU(h_{l-1} W_t^T + b_t),   g_l = sigmoid(h_{l-1} W_g^T + b_g)
    h_l = g_l * h_{l-1} + (1 - g_l) * e_l  =  lerp(e_l, h_{l-1}, g_l)        (N, H)
    y   = h_L [W_1; ...; W_n]^T + [b_1, ..., b_n]                           (N, sum of head sizes)

``HighwayMLP(first, layers, heads)`` is held by the module that owns those
``nn.Linear`` layers (AVF's update network) and is called as ``net(u)``:

* reference path (``seqvi.nn.reference``, other devices): the formulas above
  with plain operators under autograd;
* no graph recorded: the heads as one product with a cached W^T (``Fused``),
  the mixture as one ``lerp``; ``net.run(u)`` also returns the activations
  (a flat tuple of (N, .) tensors, which a caller may concatenate over many
  calls);
* with a graph: one autograd node whose forward is the graph-free one (or
  re-uses activations kept earlier: ``net(u, trace=...)``, no recomputation)
  and whose backward is the chain rule below, every product over all N rows
  at once::

    d_heads = dL/dy;   dW_heads = d_heads^T h_L;   d_h = d_heads W_heads
    per layer, last first:  d_t = ELU'(.) * d_h * (1 - g),  d_g = sigmoid'(.) * d_h * (h_{l-1} - e)
                            dW_t = d_t^T h_{l-1},  dW_g = d_g^T h_{l-1},  d_h <- d_h * g + d_t W_t + d_g W_g
    d_a = ELU'(.) * d_h;   dW_in = d_a^T u;   dL/du = d_a W_in        (only if u needs it)

Values and gradients equal the reference path's up to float rounding
(tests/test_fast_path.py).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from seqvi.nn import enabled, graph_free
from seqvi.nn.linear import Fused

_elu_backward = torch.ops.aten.elu_backward
_sigmoid_backward = torch.ops.aten.sigmoid_backward


class HighwayMLP:
    """``y = net(u)``: the network above over the given layers (owned by the caller's module)."""

    def __init__(self, first: nn.Linear, layers: Sequence[tuple[nn.Linear, nn.Linear]], heads: Sequence[nn.Linear]):
        self.first, self.layers, self.heads = first, list(layers), list(heads)
        self._heads = Fused(*heads)

    def params(self) -> list[Tensor]:
        linears = [self.first] + [lin for pair in self.layers for lin in pair] + self.heads
        return [p for lin in linears for p in (lin.weight, lin.bias)]

    def __call__(self, u: Tensor, trace: tuple[Tensor, ...] | None = None) -> Tensor:
        if not enabled(u):
            return self.reference(u)
        params = self.params()
        if graph_free(u, *params):
            return trace[-1] if trace is not None else self.run(u)[0]
        return _HighwayNode.apply(u, trace, self, *params)

    def reference(self, u: Tensor) -> Tensor:
        """The readable path: plain operators, autograd records what it needs."""
        h = nn.functional.elu(self.first(u))
        for transform, gate in self.layers:
            g = torch.sigmoid(gate(h))
            h = g * h + (1 - g) * nn.functional.elu(transform(h))
        return torch.cat([head(h) for head in self.heads], -1)

    @torch.no_grad()
    def run(self, u: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Graph-free forward: (y, activations (u, h_0, e_1, g_1, h_1, ..., y))."""
        h = nn.functional.elu(self.first(u))
        trace: list[Tensor] = [u, h]
        for transform, gate in self.layers:
            e = nn.functional.elu(transform(h))
            g = torch.sigmoid(gate(h))
            h = torch.lerp(e, h, g)
            trace += [e, g, h]
        y = self._heads(h)
        trace.append(y)
        return y, tuple(trace)

    @torch.no_grad()
    def backward(self, trace: tuple[Tensor, ...], d_y: Tensor, input_grad: bool) -> tuple[Tensor | None, list[Tensor]]:
        """(dL/du or None, [dL/dparam for ``params()``]) from the activations and dL/dy (N, out)."""
        u, h0 = trace[0], trace[1]
        layers = [trace[2 + 3 * i: 5 + 3 * i] for i in range(len(self.layers))]           # (e, g, h_out)
        h_last = layers[-1][2] if layers else h0
        grads_heads = []
        w_heads = torch.cat([head.weight for head in self.heads])
        weight_grad = d_y.t() @ h_last
        bias_grad = d_y.sum(0)
        for w, b in zip(weight_grad.split(self._heads.sizes), bias_grad.split(self._heads.sizes)):
            grads_heads += [w, b]
        d_h = d_y @ w_heads                                                                 # (N, H)
        grads_layers: list[Tensor] = []
        for i in range(len(self.layers) - 1, -1, -1):
            (transform, gate), (e, g, _) = self.layers[i], layers[i]
            h_in = layers[i - 1][2] if i > 0 else h0
            d_t = _elu_backward(d_h * (1 - g), 1.0, 1.0, 1.0, True, e)
            d_g = _sigmoid_backward(d_h * (h_in - e), g)
            grads_layers = [d_t.t() @ h_in, d_t.sum(0), d_g.t() @ h_in, d_g.sum(0)] + grads_layers
            d_h = d_h * g + d_t @ transform.weight + d_g @ gate.weight
        d_a = _elu_backward(d_h, 1.0, 1.0, 1.0, True, h0)
        d_u = d_a @ self.first.weight if input_grad else None
        return d_u, [d_a.t() @ u, d_a.sum(0)] + grads_layers + grads_heads

    def __getstate__(self) -> dict:
        return {"first": self.first, "layers": self.layers, "heads": self.heads, "_heads": Fused(*self.heads)}


class _HighwayNode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u: Tensor, trace: tuple[Tensor, ...] | None, net: HighwayMLP, *params: Tensor) -> Tensor:
        y, trace = (trace[-1].detach(), trace) if trace is not None else net.run(u)
        ctx.net, ctx.trace = net, trace
        return y

    @staticmethod
    def backward(ctx, d_y: Tensor):
        d_u, grads = ctx.net.backward(ctx.trace, d_y.contiguous(), ctx.needs_input_grad[0])
        return (d_u, None, None, *grads)
