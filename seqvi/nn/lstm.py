"""One LSTM step with a hand-written backward whose weight gradients are formed once per sequence.

For input x_t (B, I), state (h, c) (B, H) and torch's gate order (i, f, g, o)::

    [i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh                  (B, 4H)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g),    h' = sigmoid(o) * tanh(c')

Autograd through ``torch.lstm_cell`` forms dW_ih = d_t^T x_t and
dW_hh = d_t^T h_{t-1} at every step: outer products with an inner dimension
of B, each added into the (4H, I + H) gradient. Here each step's backward
returns only the gradients of (x, h, c) and keeps d_t (the gates' gradient)
on a per-sequence ``Tape``; the backward of the sequence's FIRST step, which
autograd runs last (every later step depends on its output), forms every
weight gradient as one product over all (B * T) rows. The tape travels on
the step's output tensor, so a state produced by anything else (the initial
state, a re-indexed particle state) starts a new one. A backward pass that
stops before a tape's first step leaves entries that the next pass discards.

The forward multiplies by contiguous copies of W_ih^T and W_hh^T made once
per tape. Reference path: ``torch.lstm_cell``, which also runs on other
devices and wherever no graph is recorded (as fast there). Values and
gradients agree up to float rounding (tests/test_fast_path.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqvi.nn import enabled
from seqvi.nn.linear import VersionedCache


class Tape:
    """One sequence's LSTM steps: the weights' transposes, and the gates' gradients of the steps
    whose backward has run in the current pass (the latest step first)."""

    def __init__(self, w_ih_t: Tensor, w_hh_t: Tensor, versions: tuple[int, int]):
        self.w_ih_t, self.w_hh_t, self.versions = w_ih_t, w_hh_t, versions
        self.steps = 0
        self.entries: list[tuple[int, Tensor, Tensor, Tensor]] = []   # (index, d_gates, x, h_prev)

    def add(self, index: int, d_gates: Tensor, x: Tensor, h_prev: Tensor) -> None:
        if self.entries and index >= self.entries[-1][0]:   # a new backward pass: drop a pruned one's
            self.entries = []
        self.entries.append((index, d_gates, x, h_prev))

    def weight_grads(self) -> tuple[Tensor, Tensor, Tensor]:
        d = torch.cat([e[1] for e in self.entries])
        grads = d.t() @ torch.cat([e[2] for e in self.entries]), d.t() @ torch.cat([e[3] for e in self.entries])
        self.entries = []
        return grads[0], grads[1], d.sum(0)


class _LSTMStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                tape: Tape, index: int):
        gates = torch.addmm(torch.addmm(b_ih + b_hh, x, tape.w_ih_t), h, tape.w_hh_t)
        i, f, g, o = gates.chunk(4, 1)
        i, f, o, g = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
        c_new = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(c_new)
        h_new = o * tanh_c
        ctx.tape, ctx.index = tape, index
        ctx.save_for_backward(x, h, c, w_ih, w_hh, i, f, g, o, tanh_c)
        return h_new, c_new

    @staticmethod
    def backward(ctx, d_h: Tensor, d_c: Tensor):
        x, h, c, w_ih, w_hh, i, f, g, o, tanh_c = ctx.saved_tensors
        d_c = torch.addcmul(d_c, d_h * o, 1 - tanh_c * tanh_c)                  # dL/dc' through h' too
        d_gates = torch.cat([d_c * g * i * (1 - i), d_c * c * f * (1 - f), d_c * i * (1 - g * g),
                             d_h * tanh_c * o * (1 - o)], 1)                     # (B, 4H)
        d_x = d_gates @ w_ih if ctx.needs_input_grad[0] else None
        d_h_prev = d_gates @ w_hh
        tape, weights = ctx.tape, (None, None, None, None)
        if any(ctx.needs_input_grad[3:7]):
            tape.add(ctx.index, d_gates, x, h)
            if ctx.index == 0:                                                   # the sequence's first step: last here
                g_ih, g_hh, g_b = tape.weight_grads()
                weights = (g_ih, g_hh, g_b, g_b)
        return d_x, d_h_prev, d_c * f, *weights, None, None


class LSTMStep:
    """One step of an LSTM cell's weights, ``(h', c') = step(x, h, c)``, held by the module that owns
    the cell; ``names`` are the cell's weight attributes (``nn.LSTM`` layer 0: suffix ``_l0``)."""

    def __init__(self, cell: nn.Module, suffix: str = ""):
        self.cell, self.suffix = cell, suffix
        self._transposes = VersionedCache()

    def weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return tuple(getattr(self.cell, f"{name}{self.suffix}") for name in ("weight_ih", "weight_hh",
                                                                             "bias_ih", "bias_hh"))

    def __call__(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        w_ih, w_hh, b_ih, b_hh = self.weights()
        if not (torch.is_grad_enabled() and enabled(x)):   # reference; also where no graph is recorded
            return torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        versions = (w_ih._version, w_hh._version)
        tape: Tape | None = getattr(h, "_seqvi_lstm_tape", None)
        if tape is None or tape.versions != versions:
            w_ih_t, w_hh_t = self._transposes.get((w_ih, w_hh), lambda: (
                w_ih.detach().t().contiguous(), w_hh.detach().t().contiguous()))
            tape = Tape(w_ih_t, w_hh_t, versions)
        h_new, c_new = _LSTMStep.apply(x, h, c, w_ih, w_hh, b_ih, b_hh, tape, tape.steps)
        tape.steps += 1
        h_new._seqvi_lstm_tape = tape
        return h_new, c_new

    def __getstate__(self) -> dict:
        return {"cell": self.cell, "suffix": self.suffix, "_transposes": VersionedCache()}
