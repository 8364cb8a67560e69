"""The input gradient of an MLP of Linear layers and pointwise activations, by hand.

AVF's gradient input needs, at every step and iteration, the gradient of the
emission's negative log-likelihood with respect to its INPUT only, never its
weights. Autograd gets it by recording the graph and running the engine once
per step; at filtering batch sizes that bookkeeping costs about as much as
the arithmetic. For an ``nn.Sequential`` of ``nn.Linear`` layers and
pointwise activations the chain rule is a handful of products::

    forward:   a_l = h_{l-1} W_l^T + b_l,   h_l = act_l(a_l)
    backward:  g_{l-1} = (g_l * act_l'(a_l)) W_l

``forward(net, h)`` runs the network without autograd and returns
``(output, tape)``; ``tape.backward(g, columns)`` maps dR/d(output) to
dR/d(input), optionally for some input columns only. A network with any
other module gives ``None``: the caller then uses autograd (the reference
path), with the same numbers up to float rounding (tests/test_fast_path.py).
``register_derivative`` teaches it another pointwise activation.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

# activation -> g * act'(a), from (module, g, pre-activation a, output y): autograd's own backward kernels
_VJPS: dict[type, Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]] = {
    nn.ReLU: lambda m, g, a, y: torch.ops.aten.threshold_backward(g, y, 0.0),
    nn.ELU: lambda m, g, a, y: torch.ops.aten.elu_backward(g, m.alpha, 1.0, 1.0, True, y),
    nn.Tanh: lambda m, g, a, y: torch.ops.aten.tanh_backward(g, y),
    nn.Sigmoid: lambda m, g, a, y: torch.ops.aten.sigmoid_backward(g, y),
    nn.LeakyReLU: lambda m, g, a, y: torch.ops.aten.leaky_relu_backward(g, a, m.negative_slope, False),
}


def register_derivative(module_type: type, derivative: Callable[[nn.Module, Tensor, Tensor], Tensor]) -> None:
    """Let ``forward`` differentiate another pointwise activation: ``derivative(module, a, y)`` is
    act'(a) (y = act(a))."""
    _VJPS[module_type] = lambda m, g, a, y: g * derivative(m, a, y)


class Tape:
    """What ``backward`` needs from one forward pass: per module, its (pre-activation, output)."""

    def __init__(self, modules: list[nn.Module], records: list[tuple[Tensor, Tensor] | None]):
        self.modules, self.records = modules, records

    @torch.no_grad()
    def backward(self, g: Tensor, columns: Optional[slice] = None) -> Tensor:
        """g = dR/d(output) -> dR/d(input); ``columns`` keeps only those input columns
        (the first layer's product then only runs over them)."""
        for i in range(len(self.modules) - 1, -1, -1):
            module = self.modules[i]
            if isinstance(module, nn.Linear):
                weight = module.weight if i > 0 or columns is None else module.weight[:, columns]
                g = g @ weight
            else:
                a, y = self.records[i]
                g = _VJPS[type(module)](module, g, a, y)
        if columns is not None and not (self.modules and isinstance(self.modules[0], nn.Linear)):
            g = g[:, columns]
        return g


def flatten(net: nn.Module) -> Optional[list[nn.Module]]:
    """The leaf modules of nested Sequentials, or None if any is not differentiable here."""
    if isinstance(net, nn.Sequential):
        out: list[nn.Module] = []
        for child in net:
            sub = flatten(child)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(net, nn.Linear) or type(net) in _VJPS:
        return [net]
    return None


@torch.no_grad()
def forward(net: nn.Module, h: Tensor) -> Optional[tuple[Tensor, Tape]]:
    """Run ``net`` on h (B, in) without autograd; (output, tape), or None if unsupported."""
    modules = flatten(net)
    if modules is None:
        return None
    records: list[tuple[Tensor, Tensor] | None] = []
    for module in modules:
        if isinstance(module, nn.Linear):
            h = module(h)
            records.append(None)
        else:
            a, h = h, module(h)
            records.append((a, h))
    return h, Tape(modules, records)
