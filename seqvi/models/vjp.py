"""Hand-written input gradients of small MLP emissions, for AVF's gradient input.

AVF needs, at every step and iteration, ``grad_z R`` with
``R = -log p(x_t | z, h)`` (B,) and z (B, Z) — the gradient with respect to
the emission's INPUT only, never its weights. Autograd gets it by recording
the emission's graph and running the engine once per step; at the batch
sizes of filtering (16-64 rows) that bookkeeping costs about as much as the
arithmetic. For an ``nn.Sequential`` of ``Linear`` layers and pointwise
activations the chain rule is a handful of products::

    forward:   a_l = h_{l-1} W_l^T + b_l,   h_l = act_l(a_l)
    backward:  g_{l-1} = (g_l * act_l'(a_l)) W_l

and the likelihood heads have closed-form derivatives in their parameters::

    Bernoulli(logits):   R = BCE(logits, x),                          dR/dlogits = sigmoid(logits) - x
    Normal(loc, s),      s = softplus(u) + s_min:
                         R = log s + (x - loc)^2 / (2 s^2) + log(2 pi) / 2
                         dR/dloc = -(x - loc) / s^2,   dR/du = (1 / s - (x - loc)^2 / s^3) * sigmoid(u)

Everything runs under ``no_grad``. A network with any other module returns
``None`` from ``forward``, and callers fall back to autograd; the results
are the same numbers up to float rounding (tests/test_fast_path.py).
"""

from __future__ import annotations

import math
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


@torch.no_grad()
def head_recon_grad(head: nn.Module, h: Tensor, x: Tensor, value: bool = True) -> Optional[tuple]:
    """For ``seqvi.models.base.EmissionHead`` on features h (B, F) and data x (B, D):
    (R = -log p(x | h) (B,), dR/dh (B, F)), or None for another head; R is None unless ``value``."""
    from seqvi.models.base import MIN_SCALE, EmissionHead

    if not isinstance(head, EmissionHead) or x.dim() != 2:
        return None
    if head.likelihood == "bernoulli":
        logits = head.logits(h)
        recon = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1) if value else None
        return recon, (torch.sigmoid(logits) - x) @ head.logits.weight
    gauss = head.gaussian
    loc, u = gauss.loc(h), gauss.scale(h)
    scale = nn.functional.softplus(u) + MIN_SCALE
    diff, inv = x - loc, scale.reciprocal()
    sq = (diff * inv).square()
    recon = (scale.log() + 0.5 * sq + 0.5 * math.log(2 * math.pi)).sum(1) if value else None
    g_loc = -diff * inv * inv
    g_u = (inv - sq * inv) * torch.sigmoid(u)
    return recon, g_loc @ gauss.loc.weight + g_u @ gauss.scale.weight


def mlp_emission_grad(body: nn.Module, head: nn.Module, inp: Tensor, x: Tensor,
                      columns: Optional[slice] = None, value: bool = True) -> Optional[tuple]:
    """(R (B,), dR/d(inp[:, columns])) for the emission head(body(inp)); None if unsupported;
    R is None unless ``value``."""
    fwd = forward(body, inp)
    if fwd is None:
        return None
    h, tape = fwd
    out = head_recon_grad(head, h, x, value)
    if out is None:
        return None
    recon, g_h = out
    with torch.no_grad():
        return recon, tape.backward(g_h, columns)
