"""One LSTM step with a hand-written backward whose weight gradients are formed once per sequence.

For input x_t (B, I), state (h, c) (B, H) and torch's gate order (i, f, g, o)::

    [i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh                  (B, 4H)
    c' = sigmoid(f) * c + sigmoid(i) * tanh(g),    h' = sigmoid(o) * tanh(c')

Autograd through ``torch.lstm_cell`` forms dW_ih = d_t^T x_t and
dW_hh = d_t^T h_{t-1} at every step, outer products with an inner dimension
of B, and adds each into the (4H, I + H) gradient: at the VRNN's TIMIT sizes
(H 2,000, B 64) those two steps were a third of the training step, running
at a fraction of the matmul rate and moving the whole gradient through
memory twice per step. Here each step's backward returns only the
gradients of (x, h, c) and keeps d_t (the gates' gradient) on a per-sequence
``Tape``; the backward of the sequence's FIRST step, which autograd runs
last (every later step depends on its output), forms every weight gradient
as one product over all (B * T) rows. The tape travels on the step's output
tensor, so a state produced by anything else (the initial state, a
re-indexed particle state) starts a new one. A backward pass that stops
before a tape's first step (one that asks for other inputs only) leaves
entries that the next pass discards.

The forward multiplies by contiguous copies of W_ih^T and W_hh^T made once
per tape (CPU products with a transposed right operand measured 1.2-1.8x
slower at these batch sizes). Values and gradients are ``torch.lstm_cell``'s
up to float rounding (tests/test_fast_path.py); on other devices callers use
``torch.lstm_cell`` itself, and so does every step taken without a graph
(measured as fast at batch 64 and 15% faster at 1,024 rows).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator, Optional

import torch
from torch import Tensor

from seqvi.models.linear import versioned

_INPUTS_ONLY: ContextVar[bool] = ContextVar("lstm_inputs_only", default=False)


@contextlib.contextmanager
def inputs_only() -> Iterator[None]:
    """Within this block, backward passes form no LSTM weight gradients (a pass that asks for other
    inputs only, e.g. AVF's deferred aux towards its leaves): autograd would discard them."""
    token = _INPUTS_ONLY.set(True)
    try:
        yield
    finally:
        _INPUTS_ONLY.reset(token)


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
        if any(ctx.needs_input_grad[3:7]) and not _INPUTS_ONLY.get():
            tape.add(ctx.index, d_gates, x, h)
            if ctx.index == 0:                                                   # the sequence's first step: last here
                g_ih, g_hh, g_b = tape.weight_grads()
                weights = (g_ih, g_hh, g_b, g_b)
        return d_x, d_h_prev, d_c * f, *weights, None, None


def lstm_step(owner: torch.nn.Module, x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """(h', c') for one step of ``owner``'s LSTM weights; on CPU through ``_LSTMStep`` (module
    docstring), with W^T cached on ``owner`` while the weights are unchanged; else ``torch.lstm_cell``."""
    if x.device.type != "cpu" or not torch.is_grad_enabled():   # without a graph torch's cell is as fast or faster
        return torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    versions = (w_ih._version, w_hh._version)
    tape: Optional[Tape] = getattr(h, "_seqvi_lstm_tape", None)
    if tape is None or tape.versions != versions:
        w_ih_t, w_hh_t = versioned(owner, "_seqvi_lstm_t", (w_ih, w_hh), lambda: (
            w_ih.detach().t().contiguous(), w_hh.detach().t().contiguous()))
        tape = Tape(w_ih_t, w_hh_t, versions)
    h_new, c_new = _LSTMStep.apply(x, h, c, w_ih, w_hh, b_ih, b_hh, tape, tape.steps)
    tape.steps += 1
    h_new._seqvi_lstm_tape = tape
    return h_new, c_new
