"""An Elman RNN over a whole sequence with a hand-written backward (CPU), for x-only recurrences.

For x (B, T, D), h_0 (B, R) and act = relu or tanh::

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh,    h_t = act(a_t)        -> H (B, T, R)

Forward: the input products for all steps in one (B*T, D) x (D, R) product,
then T products h_{t-1} W_hh^T (with W_hh^T stored contiguously), no graph.
Backward, given dL/dH, back-propagation through time keeps only what is
sequential::

    d_t     = (dL/dh_t + d_{t+1} W_hh) * act'(a_t)     (act' from h_t: h_t > 0, or 1 - h_t^2)
    dL/dh_0 = d_1 W_hh

and forms every weight gradient afterwards as one product over all (B*T)
rows (dW_hh = sum_t d_t^T h_{t-1}, dW_ih = sum_t d_t^T x_t, db = sum_t d_t)
instead of T small outer products accumulated one by one, which is what
autograd does through ``torch.rnn_relu`` on CPU. Reference path:
``torch.rnn_relu`` / ``torch.rnn_tanh`` (``rnn_reference``); the numbers
agree up to float rounding (tests/test_fast_path.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from seqvi.nn import enabled


class _Elman(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, h_0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
                relu: bool) -> Tensor:
        batch, steps, _ = x.shape
        inputs = torch.addmm(b_ih + b_hh, x.transpose(0, 1).reshape(steps * batch, -1), w_ih.t())
        inputs = inputs.view(steps, batch, -1)                                   # (T, B, R)
        w_hh_t = w_hh.t().contiguous()
        hidden = torch.empty_like(inputs)
        h = h_0
        for t in range(steps):
            h = torch.addmm(inputs[t], h, w_hh_t, out=hidden[t])
            h = h.relu_() if relu else h.tanh_()
        ctx.relu = relu
        ctx.save_for_backward(x, h_0, w_ih, w_hh, hidden)
        return hidden.transpose(0, 1)                                             # (B, T, R), a view

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, h_0, w_ih, w_hh, hidden = ctx.saved_tensors
        steps, batch, size = hidden.shape
        grad = grad_out.transpose(0, 1).contiguous()                               # (T, B, R)
        act_grad = hidden.sign() if ctx.relu else 1 - hidden.square()            # act'(a_t) from h_t (h >= 0 for relu)
        deltas = torch.empty_like(hidden)
        d = None
        for t in range(steps - 1, -1, -1):
            g = grad[t] if d is None else torch.addmm(grad[t], d, w_hh)           # dL/dh_t + d_{t+1} W_hh
            d = torch.mul(g, act_grad[t], out=deltas[t])
        carry = d @ w_hh
        flat_d = deltas.view(steps * batch, size)
        # dW_hh = sum_t d_t^T h_{t-1}: steps 2..T against h_{1..T-1}, plus step 1 against h_0
        grad_w_hh = torch.addmm(deltas[0].t() @ h_0, deltas[1:].view(-1, size).t(), hidden[:-1].view(-1, size))
        x_rows = x.transpose(0, 1).reshape(steps * batch, -1)
        grad_b = flat_d.sum(0)
        grad_x = (flat_d @ w_ih).view(steps, batch, -1).transpose(0, 1) if ctx.needs_input_grad[0] else None
        return (grad_x, carry if ctx.needs_input_grad[1] else None, flat_d.t() @ x_rows, grad_w_hh,
                grad_b, grad_b, None)


def elman_rnn(x: Tensor, h_0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
              nonlinearity: str = "relu") -> Tensor:
    """H = h_{1:T} (B, T, R) for x (B, T, D) from h_0 (B, R); ``nonlinearity`` "relu" or "tanh".
    The kernel where ``seqvi.nn.enabled``, else the reference ``rnn_reference``."""
    if nonlinearity not in ("relu", "tanh"):
        raise ValueError(f"nonlinearity must be relu or tanh, got {nonlinearity!r}")
    if not enabled(x):
        return rnn_reference(x, h_0, (w_ih, w_hh, b_ih, b_hh), nonlinearity)
    return _Elman.apply(x, h_0, w_ih, w_hh, b_ih, b_hh, nonlinearity == "relu")


RUNS = {"relu": torch.rnn_relu, "tanh": torch.rnn_tanh, "gru": torch.gru}


def rnn_reference(x: Tensor, h_0: Tensor, weights: tuple, cell: str, training: bool = False) -> Tensor:
    """torch's own single-layer RNN (``cell``: relu, tanh or gru) over x (B, T, D) -> (B, T, R)."""
    h, _ = RUNS[cell](x, h_0.unsqueeze(0).contiguous(), list(weights), True, 1, 0.0, training, False, True)
    return h
