"""Filtering in two parts: sample the path step by step, then score every step at once on stacked rows.

Only q, the sample and ``advance`` decide the next step, so only they run
inside the time loop (``sample_path``)::

    for t = 1..T:
        h      <- observe(condition(h, u_t), x_t)
        p_z    =  prior(h)                 (only if q reads it; without a graph unless q differentiates it)
        q      =  posterior(x_t, h, p_z)
        z_t    =  loc + scale * eps_t      (the same draws, in the same order, as the per-step loop)
        h~     =  transit(h, z_t)          (kept for the emission, when the model has the hook)
        h      <- advance(h~, x_t, z_t)

and the prior, the emission and the terms of F_t (``seqvi.free_energy.score``)
run once after the loop on the real steps' rows ``b * T + t`` (N rows:
``rows``), large matrix products instead of T small ones. It needs a model
whose ``prior`` and ``emission`` are row-wise functions of (z, state)
(``SequentialModel.rowwise``). An inference may run the whole path at once
(its optional ``sample_path`` hook: the combiner's kernel on a model Markov
in z). ``seqvi.objectives`` chooses between this and its per-step loop; both
give the same numbers up to the order of float additions
(tests/test_fast_path.py).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor
from torch.distributions import Normal

from seqvi.free_energy import StepTerms, map_state, reparameterize, score


class Path(NamedTuple):
    """The sampling path, per step t (lists of length T): the state q and the prior saw (after
    ``condition`` and ``observe``), q's parameters, the sample, q's own loss (AVF's earlier iterates),
    if any, and the state the emission reads (after ``transit``; None: the same as ``states``)."""
    states: list
    locs: list
    scales: list
    zs: list
    aux: list
    emitting: Optional[list] = None

    def after_transit(self) -> list:
        return self.states if self.emitting is None else self.emitting


def sample_path(model: Any, inference: Any, x: Tensor, state: Any, q_state: Any,
                inputs: Optional[Tensor] = None) -> Path:
    """Run q, the sample and ``advance`` over x (B, T, *X) (with inputs u (B, T, U), if any)."""
    whole = getattr(inference, "sample_path", None)
    path = whole(model, x, state, q_state) if whole is not None and inputs is None else None
    if path is not None:   # the inference ran the whole path at once
        return Path(*path)
    reads_prior = getattr(inference, "reads_prior", True)
    prior_graph = getattr(inference, "prior_graph", True)
    transits = model.has("transit")
    path = Path([], [], [], [], [], [] if transits else None)
    for t in range(x.shape[1]):
        x_t = x[:, t]
        state = model.observe(model.condition(state, None if inputs is None else inputs[:, t]), x_t)
        p_z = None
        if reads_prior:   # the KL's prior is recomputed after the loop, with its graph
            with torch.set_grad_enabled(prior_graph and torch.is_grad_enabled()):
                p_z = model.prior(state)
        q = inference.posterior(model, x_t, state, p_z, q_state)
        z = reparameterize(q.q_z)
        for store, value in zip(path, (state, q.q_z.loc, q.q_z.scale, z)):
            store.append(value)
        if q.aux is not None:
            path.aux.append(q.aux)
        emitting = model.transit(state, z)
        if transits:
            path.emitting.append(emitting)
        state, q_state = model.advance(emitting, x_t, z), q.q_state
    return path


def real_rows(mask: Tensor) -> Optional[Tensor]:
    """Indices of the real steps among the rows b * T + t, or None when every step is real."""
    flat = mask.reshape(-1) > 0
    return None if bool(flat.all()) else flat.nonzero().squeeze(1)


def rows(per_step: list, keep: Optional[Tensor]) -> Any:
    """T per-step values (states or tensors with B rows) -> the real steps' rows b * T + t."""
    stacked = map_state(lambda *steps: torch.stack(steps, 1).flatten(0, 1), *per_step)
    return stacked if keep is None else map_state(lambda s: s.index_select(0, keep), stacked)


def put(values: Tensor, keep: Optional[Tensor], mask: Tensor) -> Tensor:
    """(real rows, ...) -> (B, T, ...), zero on padding."""
    shape = (*mask.shape, *values.shape[1:])
    if keep is None:
        return values.view(shape) * mask.view(*mask.shape, *[1] * (values.dim() - 1))
    return values.new_zeros(mask.numel(), *values.shape[1:]).index_put((keep,), values).view(shape)


def score_path(model: Any, path: Path, x: Tensor, mask: Tensor, *, log_weights: bool = False,
               bin_width: float | None = None, rewards: Optional[Tensor] = None, kl_groups: int = 0) -> StepTerms:
    """``seqvi.free_energy.score`` on every real step of the path at once -> terms (B, T) (or (B, T, G)),
    0 on padding."""
    keep = real_rows(mask)
    state = rows(path.states, keep)
    emitting = state if path.emitting is None else rows(path.emitting, keep)
    q_z = Normal(rows(path.locs, keep), rows(path.scales, keep), validate_args=False)
    flat = lambda v: v.flatten(0, 1) if keep is None else v.flatten(0, 1).index_select(0, keep)  # noqa: E731
    terms = score(model, emitting, rows(path.zs, keep), q_z, model.prior(state), flat(x),
                  log_weights=log_weights, bin_width=bin_width, rewards=None if rewards is None else flat(rewards),
                  kl_groups=kl_groups)
    return StepTerms(*(None if v is None else put(v, keep, mask) for v in terms))
