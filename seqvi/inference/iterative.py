"""Amortized variational filtering (AVF): iterative inference that works for any model.

Marino, Cvitkovic & Yue, "A General Method for Amortizing Variational
Filtering", NeurIPS 2018 (arXiv 1811.05090). At every step t, with the
model's prior p(z_t | h_{t-1}) = N(mu_p, sigma_p) over (B, Z)::

    lambda_t^0 = (mu_p, log sigma_p^2)                      (detached)
    for k = 0 .. K-1:
        g^k      = grad_lambda F_t(lambda^k)                (one reparameterized sample,
                                                            analytic KL; an input, not differentiated)
        u        = [LN(g_mu), LN(g_logvar), LN(mu), LN(logvar)]          (B, 4Z)
        h        = highway ELU network(u)                   (B, H)
        highway: mu <- s * mu + (1 - s) * W_mu h,   s = sigmoid(V_mu h)
                 logvar likewise; mu clamped to [-50, 50], logvar to [-15, 5]
        sgd:     mu <- mu - sigmoid(V_mu h) * g_mu + W_mu h
    q(z_t | .) = N(mu^K, exp(logvar^K / 2))

LN normalizes each vector per example over its features (no affine). The
network sees only distribution parameters and gradients, never x, so one
module serves every model. Training (``aux``): phi learns from F_t at every
iterate (F_t(lambda^1..K-1) are returned as ``aux``; F_t(lambda^K) is the
objective itself), theta from F_t at the final iterate only; the engine
keeps ``aux`` away from theta's gradients.

The gradient input g^k needs no autograd through the KL or the sampling:
with z = mu + sigma * eps and the Gaussian KL in closed form::

    g_mu     = dR/dz + (mu - mu_p) / sigma_p^2
    g_logvar = dR/dz * (sigma * eps) / 2 + (sigma^2 / sigma_p^2 - 1) / 2,     R = -log p(x_t | z, h)

so autograd runs backward through the emission to z only (not to its
weights, nor to h): the same numbers as differentiating F_t, at half the cost.
Where F_t's graph is not kept (every iterate in evaluation, the first in
training) and the model computes the emission's input gradient by hand
(``emission_recon_grad``: MLP emissions, ``seqvi.models.vjp``), autograd is
not used at all: at filtering batch sizes the engine's bookkeeping per step
cost about as much as the products.

Deferred update (training, the engine's fast loop): every input of the
update chain lambda^{k+1}_t = f_phi(lambda^k_t, g^k_t) apart from phi is a
constant — lambda^0_t is the prior's parameters and every g^k_t the
gradient, both detached — so lambda^K_t is a function of phi alone. Inside
the time loop the chain runs without a graph and lambda^K_t enters the model
as a leaf. After the loss's backward has left dL/dlambda^K_t on the leaves,
``DeferredUpdate.backward`` recomputes the chain on all (N = real B*T)
stacked rows at once and back-propagates into phi. With K > 1 it also
evaluates the earlier iterates' free energies (``aux``: F_t(lambda^k), k < K,
with the loop's own noise) on the stacked states, sends their gradient
through the states to the leaves of earlier steps, and then everything into
phi: the same gradient as the per-step graph, with batched passes through
the network and the emission instead of T * K recorded ones.

Departures: sizes are configurable (paper: 2 x 1,024 ELU units); the first
layer is a plain ELU layer, the following ones highway layers.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.free_energy import gaussian_kl, log_likelihood, standard_normal
from seqvi.inference.avf_trace import trace_backward, traced_update
from seqvi.inference.base import Inference, Posterior
from seqvi.models.linear import Linear
from seqvi.models.lstm import inputs_only

LOGVAR_MIN, LOGVAR_MAX = -15.0, 5.0
LOC_LIMIT = 50.0      # |mu| bound of the AVF code's gradient inference
UPDATES = ("highway", "sgd")


def layer_norm(v: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalize each example over its last dimension, no affine parameters: (..., Z) -> (..., Z)."""
    return nn.functional.layer_norm(v, v.shape[-1:], eps=eps)


def free_energy_gradient(model: Any, x: Tensor, state: Any, p_z: Normal, loc: Tensor, logvar: Tensor,
                         keep_graph: bool = False, at_prior: bool = False,
                         eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(grad_loc F_t, grad_logvar F_t) at q = N(loc, exp(logvar / 2)), one reparameterized sample.

    Autograd runs through the emission to z only; the sampling and the Gaussian KL are
    differentiated by hand (module docstring). Both gradients are detached. With
    ``keep_graph``, also F_t itself (B,), differentiable in (loc, logvar) (AVF's ``aux``).
    ``at_prior``: q is the prior itself (AVF's first iterate), where the KL's gradient is zero.
    ``eps``: the standard normal draw to use (default: a new one).
    """
    scale = (0.5 * logvar).exp()
    noise = scale * (standard_normal(loc) if eps is None else eps)        # sigma * eps
    by_hand = None if keep_graph else model.emission_recon_grad((loc + noise).detach(), state, x, value=False)
    if by_hand is not None:
        recon, grad_z = by_hand
    else:
        z = loc + noise if keep_graph else (loc + noise).detach().requires_grad_(True)
        recon = -log_likelihood(model.emission(z, state), x)               # (B,)
        (grad_z,) = torch.autograd.grad(recon.sum(), z, retain_graph=keep_graph)
    with torch.no_grad():
        grad_loc, grad_logvar = grad_z, 0.5 * grad_z * noise
        if not at_prior:
            prior_var = p_z.scale.pow(2)
            grad_loc = grad_loc + (loc - p_z.loc) / prior_var
            grad_logvar = grad_logvar + 0.5 * (logvar.exp() / prior_var - 1)
    f = recon + gaussian_kl(Normal(loc, scale, validate_args=False), p_z) if keep_graph else None
    return grad_loc.detach(), grad_logvar.detach(), f


class HighwayLayer(nn.Module):
    """h <- g * h + (1 - g) * ELU(W h),  g = sigmoid(V h)."""

    def __init__(self, size: int):
        super().__init__()
        self.transform = Linear(size, size)
        self.gate = Linear(size, size)

    def forward(self, h: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate(h))
        return g * h + (1 - g) * nn.functional.elu(self.transform(h))


class DeferredStep(NamedTuple):
    """What one loop step leaves for ``DeferredUpdate.backward``; every tensor (B, .) and detached."""
    loc: Tensor                          # lambda^0: the prior's parameters
    logvar: Tensor
    grads: list[tuple[Tensor, Tensor]]   # (g_loc^k, g_logvar^k), k = 0 .. K-1
    noises: list[Tensor]                 # eps^k of iterations 1 .. K-1 (aux)
    trace: Optional[tuple[Tensor, ...]]  # K = 1 on CPU: the update's activations (avf_trace)


class DeferredUpdate:
    """Records AVF's update inputs during one filtering pass; ``backward`` puts phi's gradient in place.

    Per step a ``DeferredStep`` and the leaves (loc^K, logvar^K); ``attach`` (from the fast loop)
    gives the rows of the real steps, their stacked states, priors and data. A traced step (K = 1 on
    CPU) is back-propagated by hand (``seqvi.inference.avf_trace``), the others recomputed.
    """

    def __init__(self, avf: "AVF", iterations: int):
        self.avf, self.iterations = avf, iterations
        self.steps: list[DeferredStep] = []
        self.leaves: list[tuple[Tensor, Tensor]] = []
        self.context: tuple | None = None

    @property
    def retain_graph(self) -> bool:
        """aux (K > 1) differentiates through the loop's states: the loss's graph must survive its backward."""
        return self.iterations > 1

    def record(self, step: DeferredStep, loc: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        loc, logvar = loc.requires_grad_(True), logvar.requires_grad_(True)
        self.steps.append(step)
        self.leaves.append((loc, logvar))
        return loc, logvar

    def attach(self, model: Any, rows: Any, state: Any, p_z: Normal, x: Tensor) -> None:
        """``rows(per-step list) -> (N, ...)`` real-step rows; state, p_z and x on those rows."""
        self.context = (model, rows, state, p_z, x)

    def backward(self, aux_weight: float = 1.0) -> None:
        """After ``loss.backward()`` (which must retain its graph if ``retain_graph``): accumulate
        dL/dphi, with ``aux_weight`` on the earlier iterates' free energies (the loss's normalizer)."""
        if not self.steps or self.context is None:
            return
        model, rows, state, p_z, x = self.context
        K = self.iterations
        leaf_grads = [rows([leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
                            for leaf in (pair[i] for pair in self.leaves)]) for i in (0, 1)]
        if self.steps[0].trace is not None:   # back-propagate through the kept activations
            traces = [s.trace for s in self.steps]
            trace_backward(self.avf, tuple(rows([t[i] for t in traces]) for i in range(len(traces[0]))),
                           *leaf_grads)
            self.steps, self.leaves, self.context = [], [], None
            return
        loc, logvar = rows([s.loc for s in self.steps]), rows([s.logvar for s in self.steps])
        iterates = []
        for k in range(K):
            g_loc, g_logvar = rows([s.grads[k][0] for s in self.steps]), rows([s.grads[k][1] for s in self.steps])
            loc, logvar = self.avf._update(loc, logvar, g_loc, g_logvar)     # (N, Z), graph to phi
            iterates.append((loc, logvar))
        outputs, grads = [loc, logvar], list(leaf_grads)
        if K > 1:
            aux = 0.0
            for k in range(1, K):
                loc_k, logvar_k = iterates[k - 1]
                scale_k = (0.5 * logvar_k).exp()
                z_k = loc_k + scale_k * rows([s.noises[k - 1] for s in self.steps])
                aux = aux + (-log_likelihood(model.emission(z_k, state), x)
                             + gaussian_kl(Normal(loc_k, scale_k, validate_args=False), p_z))
            aux = aux.sum() * aux_weight
            # aux reaches earlier steps' leaves through the states: route that part through the chain too
            leaves = [leaf for pair in self.leaves for leaf in pair]
            with inputs_only():
                through = torch.autograd.grad(aux, leaves, retain_graph=True, allow_unused=True)
            extra = [rows([g if g is not None else torch.zeros_like(leaf)
                           for g, leaf in zip(through[i::2], leaves[i::2])]) for i in (0, 1)]
            grads = [grads[0] + extra[0], grads[1] + extra[1]]
            outputs.append(aux)
            grads.append(torch.ones_like(aux))
        phi = [p for p in self.avf.parameters() if p.requires_grad]
        torch.autograd.backward(outputs, grads, inputs=phi)
        self.steps, self.leaves, self.context = [], [], None


class AVF(Inference):
    """Iterative amortized filtering; ``iterations`` K per step (eval may set another K)."""

    iterative = True

    def __init__(self, model: Any, iterations: int = 1, hidden_size: int = 1024, layers: int = 2,
                 update: str = "highway"):
        super().__init__()
        if iterations < 1:
            raise ValueError("inference.iterations must be at least 1")
        if update not in UPDATES:
            raise ValueError(f"inference.update must be one of {UPDATES}")
        if layers < 1:
            raise ValueError("inference.layers must be at least 1")
        z = model.z_dim
        self.iterations, self.update = iterations, update
        self.eval_iterations: Optional[int] = None     # set by `seqvi eval --iterations`
        self._deferred: Optional[DeferredUpdate] = None
        self._bounds: Optional[Tensor] = None         # see update_bounds
        self.input = nn.Sequential(Linear(4 * z, hidden_size), nn.ELU())
        self.highway = nn.Sequential(*[HighwayLayer(hidden_size) for _ in range(layers - 1)])
        self.loc_out = Linear(hidden_size, z)
        self.loc_gate = Linear(hidden_size, z)
        self.logvar_out = Linear(hidden_size, z)
        self.logvar_gate = Linear(hidden_size, z)
        for gate in (self.loc_gate, self.logvar_gate):
            nn.init.constant_(gate.bias, 1.0 if update == "highway" else -2.0)

    @property
    def prior_graph(self) -> bool:
        """Only the aux terms of iterations after the first differentiate through p_z."""
        return self.training and self.steps() > 1 and self._deferred is None

    def steps(self) -> int:
        if not self.training and self.eval_iterations is not None:
            return self.eval_iterations
        return self.iterations

    @contextlib.contextmanager
    def deferred_update(self) -> Iterator[Optional[DeferredUpdate]]:
        """Within this block (one filtering pass), the update in training is deferred (module
        docstring); yields the recorder whose ``backward`` must follow the loss's, or None."""
        deferring = self.training and torch.is_grad_enabled()
        self._deferred = DeferredUpdate(self, self.steps()) if deferring else None
        try:
            yield self._deferred
        finally:
            self._deferred = None

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        loc = p_z.loc.detach()
        logvar = (2 * p_z.scale.log()).detach()
        aux = []
        K = self.steps()
        if self._deferred is not None:
            return self._deferred_posterior(model, x, state, p_z, q_state, loc, logvar, K)
        with torch.enable_grad():  # the gradient inputs are needed in evaluation too
            for k in range(K):
                keep = k > 0 and self.training     # F_t(lambda^k) trains phi (aux): keep its graph
                grad_loc, grad_logvar, f_k = free_energy_gradient(model, x, state, p_z, loc, logvar, keep,
                                                                  at_prior=k == 0)
                if keep:
                    aux.append(f_k)
                loc, logvar = self._update(loc, logvar, grad_loc, grad_logvar)
        q_z = Normal(loc, (0.5 * logvar).exp(), validate_args=False)
        return Posterior(q_z, q_state, torch.stack(aux).sum(0) if aux else None)

    def _deferred_posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any,
                            loc: Tensor, logvar: Tensor, K: int) -> Posterior:
        """The K iterations without a graph; lambda^K becomes a leaf of the recorder (module docstring).
        The noise is drawn in the same order as ``posterior``'s, so both give the same numbers."""
        start, grads, noises, trace = (loc, logvar), [], [], None
        for k in range(K):   # p_z has no graph here (prior_graph is False while deferring)
            eps = standard_normal(loc)
            grad_loc, grad_logvar, _ = free_energy_gradient(model, x, state, p_z, loc, logvar,
                                                            at_prior=k == 0, eps=eps)
            grads.append((grad_loc, grad_logvar))
            if k > 0:
                noises.append(eps)
            if K == 1 and loc.device.type == "cpu":   # keep the activations: backward by hand (avf_trace)
                loc, logvar, trace = traced_update(self, loc, logvar, grad_loc, grad_logvar)
            else:
                with torch.no_grad():
                    loc, logvar = self._update(loc, logvar, grad_loc, grad_logvar)
        loc, logvar = self._deferred.record(DeferredStep(*start, grads, noises, trace), loc, logvar)
        return Posterior(Normal(loc, (0.5 * logvar).exp(), validate_args=False), q_state)

    def _update(self, loc: Tensor, logvar: Tensor, g_loc: Tensor, g_logvar: Tensor) -> tuple[Tensor, Tensor]:
        if not torch.is_grad_enabled() and loc.device.type == "cpu":   # fused graph-free form (avf_trace)
            return traced_update(self, loc, logvar, g_loc, g_logvar)[:2]
        u = layer_norm(torch.stack([g_loc, g_logvar, loc, logvar], 1)).flatten(1)   # (B, 4Z), each part normalized
        h = self.highway(self.input(u))                                        # (B, H)
        if self.update == "highway":
            s_loc, s_lv = torch.sigmoid(self.loc_gate(h)), torch.sigmoid(self.logvar_gate(h))
            loc = s_loc * loc + (1 - s_loc) * self.loc_out(h)
            logvar = s_lv * logvar + (1 - s_lv) * self.logvar_out(h)
        else:
            loc = loc - torch.sigmoid(self.loc_gate(h)) * g_loc + self.loc_out(h)
            logvar = logvar - torch.sigmoid(self.logvar_gate(h)) * g_logvar + self.logvar_out(h)
        return loc.clamp(-LOC_LIMIT, LOC_LIMIT), logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def update_bounds(self, z: int, like: Tensor) -> Tensor:
        """(2, 2Z): the clamp's low and high bounds for [loc, logvar], on ``like``'s device and dtype."""
        bounds = self._bounds
        if bounds is None or bounds.shape[1] != 2 * z or bounds.dtype != like.dtype or bounds.device != like.device:
            limits = torch.tensor([[-LOC_LIMIT, LOGVAR_MIN], [LOC_LIMIT, LOGVAR_MAX]], dtype=like.dtype,
                                  device=like.device)
            bounds = self._bounds = limits.repeat_interleave(z, dim=1)
        return bounds

