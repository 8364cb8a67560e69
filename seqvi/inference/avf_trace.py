"""AVF's graph-free update with its activations kept, and its backward by hand.

``traced_update`` is also how AVF updates wherever nothing records a graph
on CPU (evaluation, the deferred loop): the four heads as one product
(``fused_linear``), the highway mixture as one ``lerp``, one clamp.

AVF(1) in training defers its update (``seqvi.inference.iterative``): inside
the loop lambda = f_phi(u) runs without a graph; after the loss's backward
the leaves hold dL/dlambda, which must reach phi. Instead of running f_phi a
second time with a graph on the stacked rows, the loop keeps f_phi's
activations (``traced_update``) and ``trace_backward`` back-propagates
through them by hand, every product over all N stacked rows at once. With
the input layer a = W_in u + b_in, h = ELU(a), highway layers
h' = lerp(ELU(W_t h + b_t), h, sigmoid(W_g h + b_g)), heads [out, gate]
(B, 2Z each) and prev = [loc, logvar]::

    highway update:  new = lerp(out, prev, s),           s = sigmoid(gate)
    sgd update:      new = prev - s * [g_loc, g_logvar] + out
    lambda = clamp(new, low, high)

The backward is the chain rule through exactly these operations (clamp
passes the gradient where low <= new <= high, as ``torch.clamp`` does); u
and prev are constants, so nothing flows past the input layer. The result is
autograd's gradient up to float rounding (tests/test_fast_path.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqvi.models.linear import fused_linear

_elu_backward = torch.ops.aten.elu_backward
_sigmoid_backward = torch.ops.aten.sigmoid_backward


def _heads(avf: Any) -> tuple[nn.Linear, ...]:
    return (avf.loc_out, avf.logvar_out, avf.loc_gate, avf.logvar_gate)


@torch.no_grad()
def traced_update(avf: Any, loc: Tensor, logvar: Tensor, g_loc: Tensor, g_logvar: Tensor
                  ) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """``avf._update`` without a graph -> (loc, logvar, trace); ``trace`` is a flat tuple of (B, .)
    tensors (so a caller can stack it over steps) for ``trace_backward``."""
    from seqvi.inference.iterative import layer_norm   # here: iterative imports this module

    u = layer_norm(torch.stack([g_loc, g_logvar, loc, logvar], 1)).flatten(1)      # (B, 4Z)
    h = avf.input(u)                                                              # (B, H), ELU output
    trace: list[Tensor] = [u, h]
    for layer in avf.highway:
        e = nn.functional.elu(layer.transform(h))
        g = torch.sigmoid(layer.gate(h))
        trace += [e, g]
        h = torch.lerp(e, h, g)
        trace.append(h)
    out, gate = fused_linear(avf, "_heads", _heads(avf), h).chunk(2, 1)           # (B, 2Z) each
    s = torch.sigmoid(gate)
    previous = torch.cat([loc, logvar], 1)
    if avf.update == "highway":
        new = torch.lerp(out, previous, s)
    else:
        new = (previous + out).addcmul_(s, torch.cat([g_loc, g_logvar], 1), value=-1.0)
    bounds = avf.update_bounds(loc.shape[1], new)
    trace += [out, s, previous, new, torch.cat([g_loc, g_logvar], 1)]
    loc, logvar = torch.clamp(new, bounds[0], bounds[1]).chunk(2, 1)
    return loc.contiguous(), logvar.contiguous(), tuple(trace)


@torch.no_grad()
def trace_backward(avf: Any, trace: tuple[Tensor, ...], d_loc: Tensor, d_logvar: Tensor) -> None:
    """Accumulate dL/dphi into ``.grad`` of AVF's parameters, given stacked traces (N, .) and
    dL/dloc, dL/dlogvar (N, Z) of the update's outputs."""
    u, h0 = trace[0], trace[1]
    layers = list(avf.highway)
    per_layer = [trace[2 + 3 * i: 5 + 3 * i] for i in range(len(layers))]          # (e, g, h_out)
    out, s, previous, new, g_all = trace[2 + 3 * len(layers):]
    low, high = avf.update_bounds(d_loc.shape[1], new)
    d_new = torch.cat([d_loc, d_logvar], 1) * ((new >= low) & (new <= high))
    if avf.update == "highway":
        d_out, d_s = d_new * (1 - s), d_new * (previous - out)
    else:
        d_out, d_s = d_new, -d_new * g_all
    d_heads = torch.cat([d_out, _sigmoid_backward(d_s, s)], 1)                      # (N, 4Z)
    h = per_layer[-1][2] if layers else h0
    grads: dict[nn.Parameter, Tensor] = {}
    heads = _heads(avf)
    weight_grad, bias_grad = d_heads.t() @ h, d_heads.sum(0)
    rows = [head.out_features for head in heads]
    for head, w, b in zip(heads, weight_grad.split(rows), bias_grad.split(rows)):
        grads[head.weight], grads[head.bias] = w, b
    d_h = d_heads @ torch.cat([head.weight for head in heads])                      # (N, H)
    for i in range(len(layers) - 1, -1, -1):
        layer, (e, g, _) = layers[i], per_layer[i]
        h_in = per_layer[i - 1][2] if i > 0 else h0
        d_t = _elu_backward(d_h * (1 - g), 1.0, 1.0, 1.0, True, e)
        d_g = _sigmoid_backward(d_h * (h_in - e), g)
        grads[layer.transform.weight], grads[layer.transform.bias] = d_t.t() @ h_in, d_t.sum(0)
        grads[layer.gate.weight], grads[layer.gate.bias] = d_g.t() @ h_in, d_g.sum(0)
        d_h = d_h * g + d_t @ layer.transform.weight + d_g @ layer.gate.weight
    first = avf.input[0]
    d_a = _elu_backward(d_h, 1.0, 1.0, 1.0, True, h0)
    grads[first.weight], grads[first.bias] = d_a.t() @ u, d_a.sum(0)
    for param, grad in grads.items():
        if param.requires_grad:
            param.grad = grad if param.grad is None else param.grad + grad
