"""The combiner's whole sampling path with a hand-written backward, for models Markov in z (the DMM).

When the model's state is z_{t-1} alone (``model.markov_in_z``), the only
sequential part of filtering with Krishnan's combiner is, for t = 1..T, with
h_t (B, R) the RNN over x (computed before, ``seqvi.inference.elman``)::

    a_t   = z_{t-1} W_z^T + b_z                     (B, R)
    c_t   = (tanh(a_t) + h_t) / 2                   (B, R)   the combiner (time-major: h is (T, B, R))
    loc_t = c_t W_l^T + b_l,   u_t = c_t W_s^T + b_s            (B, Z)
    s_t   = softplus(u_t) + s_min
    z_t   = loc_t + s_t * eps_t,   eps_t = noise(like (B, Z))  (drawn step by step, as the generic loop does)

The forward runs it without a graph. Given dL/dz_t, dL/dloc_t, dL/ds_t from
everything computed after the loop (transition, emission, KL on stacked
rows), the backward keeps only the chain through z::

    g_t    = dL/dz_t + carry_{t+1}
    d_loc  = dL/dloc_t + g_t,       d_u = (dL/ds_t + g_t * eps_t) * sigmoid(u_t)
    d_c    = [d_loc, d_u] [W_l; W_s]
    dL/dh_t = d_c / 2,              d_a = d_c / 2 * (1 - tanh(a_t)^2),    carry_t = d_a W_z

and forms the weight gradients afterwards as one product over all (B*T)
rows each. The reference path is the generic per-step loop over the
combiner's ``posterior``; both give the same numbers up to float rounding
(tests/test_fast_path.py). ``noise`` and ``s_min`` come from the caller, so
that the draws follow the caller's noise stream (e.g. data-parallel shards).
"""

from __future__ import annotations

import torch
from torch import Tensor



class _CombinerPath(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, z_0: Tensor, w_z: Tensor, b_z: Tensor, w_l: Tensor, b_l: Tensor,
                w_s: Tensor, b_s: Tensor, noise, s_min: float):
        steps, batch, size = h.shape                                             # h: (T, B, R)
        zdim = w_l.shape[0]
        w_z_t, w_ls_t = w_z.t().contiguous(), torch.cat([w_l, w_s]).t().contiguous()
        b_ls = torch.cat([b_l, b_s])
        half_h = h * 0.5
        tanh = h.new_empty(steps, batch, size)
        comb = torch.empty_like(tanh)
        out = h.new_empty(steps, batch, 2 * zdim)                                # [loc_t, u_t]
        eps, zs, scales = (h.new_empty(steps, batch, zdim) for _ in range(3))
        z = z_0
        for t in range(steps):
            a = torch.addmm(b_z, z, w_z_t, out=tanh[t]).tanh_()
            c = torch.add(half_h[t], a, alpha=0.5, out=comb[t])
            o = torch.addmm(b_ls, c, w_ls_t, out=out[t])
            scale = torch._C._nn.softplus(o[:, zdim:], 1.0, 20.0, out=scales[t]).add_(s_min)
            draw = eps[t]
            draw.copy_(noise(draw))                                  # (B, Z), as the loop draws it
            z = torch.addcmul(o[:, :zdim], scale, draw, out=zs[t])
        ctx.save_for_backward(z_0, w_z, w_l, w_s, tanh, comb, out, eps, zs)
        return zs, out[:, :, :zdim], scales

    @staticmethod
    def backward(ctx, grad_z: Tensor, grad_loc: Tensor, grad_scale: Tensor):
        z_0, w_z, w_l, w_s, tanh, comb, out, eps, zs = ctx.saved_tensors
        steps, batch, size = tanh.shape
        zdim = w_l.shape[0]
        grad_z, grad_loc, grad_scale = (g.contiguous() for g in (grad_z, grad_loc, grad_scale))   # (T, B, Z)
        w_ls = torch.cat([w_l, w_s])                                             # (2Z, R)
        sig_u = torch.sigmoid(out[:, :, zdim:])
        half_dtanh = (1 - tanh.square()).mul_(0.5)
        d_out = torch.empty_like(out)
        d_c = torch.empty_like(tanh)
        d_a = torch.empty_like(tanh)
        for t in range(steps - 1, -1, -1):
            g = grad_z[t] if t == steps - 1 else torch.addmm(grad_z[t], d_a[t + 1], w_z)   # dL/dz_t, all paths
            torch.add(grad_loc[t], g, out=d_out[t, :, :zdim])
            torch.addcmul(grad_scale[t], g, eps[t], out=d_out[t, :, zdim:]).mul_(sig_u[t])
            torch.mm(d_out[t], w_ls, out=d_c[t])                                 # dL/dc_t (B, R)
            torch.mul(d_c[t], half_dtanh[t], out=d_a[t])
        carry = d_a[0] @ w_z
        rows = steps * batch
        previous = torch.cat([z_0.unsqueeze(0), zs[:-1]]).view(rows, zdim)
        flat_a, flat_out = d_a.view(rows, size), d_out.view(rows, 2 * zdim)
        grad_w_z, grad_b_z = flat_a.t() @ previous, flat_a.sum(0)
        grad_w_ls, grad_b_ls = flat_out.t() @ comb.view(rows, size), flat_out.sum(0)
        return (d_c.mul_(0.5), carry, grad_w_z, grad_b_z, grad_w_ls[:zdim], grad_b_ls[:zdim],
                grad_w_ls[zdim:], grad_b_ls[zdim:], None, None)


def combiner_path(h: Tensor, z_0: Tensor, z_to_hidden, loc, scale, noise, s_min: float
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """(z, loc, scale), each (T, B, Z), for the RNN outputs h (T, B, R) and z_0 (B, Z); the three
    layers are the combiner's ``z_to_hidden``, ``loc`` and ``scale`` (``nn.Linear``); ``noise(like)``
    draws eps_t, ``s_min`` is the scale's floor."""
    return _CombinerPath.apply(h, z_0, z_to_hidden.weight, z_to_hidden.bias, loc.weight, loc.bias,
                               scale.weight, scale.bias, noise, s_min)
