"""Amortized variational filtering (AVF): iterative inference that works for any model.

Marino, Cvitkovic & Yue, "A General Method for Amortizing Variational
Filtering", NeurIPS 2018 (arXiv 1811.05090). At every step t, with the
model's prior p(z_t | h) = N(mu_p, sigma_p) over (B, Z) and
lambda = (mu, logvar)::

    lambda^0     = (mu_p, log sigma_p^2)                          (detached)
    g^k          = grad_lambda F_t(lambda^k)     one reparameterized sample eps^k, analytic KL;
                                                 an input, not differentiated (``free_energy_gradient``)
    lambda^{k+1} = update(lambda^k, g^k),        k = 0 .. K-1
    q(z_t | .)   = N(mu^K, exp(logvar^K / 2))

The update, written once (``AVF.update``)::

    u          = [LN(g_mu), LN(g_logvar), LN(mu), LN(logvar)]      (B, 4Z), LN per vector, no affine
    [out, gate] = net(u)                                            (B, 2Z) each; net: an ELU layer, highway
                                                                    layers, four linear heads (seqvi.nn.highway)
    s = sigmoid(gate),  prev = [mu, logvar]
    highway:   new = s * prev + (1 - s) * out
    sgd:       new = prev - s * [g_mu, g_logvar] + out             (the AVF code's learned SGD)
    lambda'    = clamp(new):  mu to [-50, 50],  logvar to [-15, 5]

By default the network sees only distribution parameters and gradients,
never x, so one module serves every model; ``inputs`` may add the
observation (through the model's own ``features``) and the errors, and
``init`` may start from an encoder instead of the prior (``AVF``'s options).
``iterates`` gives lambda^0 .. lambda^K for the per-iteration curve;
``iterate`` is the same loop with any gradient and update (per-step
refinement uses it with plain gradient descent).

Training. theta learns from F_t(lambda^K), the objective itself. phi learns
from F_t at every iterate k = 1..K: through lambda^K by the objective, and
through lambda^k (k < K) by q's own loss ``aux_t = sum_{k<K} F_t(lambda^k)``,
whose gradient in lambda^k is g^k (the same sample), so that
d aux / d phi = sum_k g^k d lambda^k / d phi. The earlier iterates' losses
are local to their step: the history h is a constant for them, so they
train phi and never theta. (Departure from seqvi before this revision,
where their gradient also ran through h into earlier steps' q, which needed
a second backward pass through the model's retained graph.)

Two paths compute the same gradients (tests/test_fast_path.py):

* reference (``seqvi.nn.reference``, other devices): the chain with a graph
  at every step; ``aux`` = F_t(lambda^k) + <lambda^k - stop(lambda^k), g^k>
  (value F_t, gradient g^k in lambda^k, nothing else);
* kernels (CPU, training, starting from the prior; an encoder's start
  depends on theta through the features, so it takes the reference path):
  the chain runs without a graph inside the loop,
  keeping the network's activations; q's parameters enter the model through
  one autograd node per step (``_Iterate``), whose backward only records
  dL/dlambda^K_t on the pass's ``_Tape`` (carried as ``q_state``), and
  ``aux`` through a node (``_Aux``) that records its weight. The node of the
  first step runs last (every later step depends on its sample); its
  backward replays the chain on all B*T rows at once from the kept
  activations (the network's backward by hand, ``seqvi.nn.highway``), with
  cotangents dL/dlambda^K and w_t g^k, and returns phi's gradient. So the
  training step makes one ``loss.backward()`` and knows nothing of this.
  This needs what every sequential model in seqvi satisfies: a step's state
  depends on the previous step's sample.

Departures: sizes are configurable (paper: 2 x 1,024 ELU units); the first
layer is a plain ELU layer, the following ones highway layers.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from seqvi.free_energy import free_energy_gradient, standard_normal
from seqvi.inference.base import Inference, Posterior
from seqvi.models.base import GaussianHead, mlp
from seqvi.nn import enabled
from seqvi.nn.highway import HighwayMLP
from seqvi.nn.linear import Linear

LOGVAR_MIN, LOGVAR_MAX = -15.0, 5.0
LOC_LIMIT = 50.0      # |mu| bound of the AVF code's gradient inference
UPDATES = ("highway", "sgd")
INPUTS = ("gradients", "parameters", "observation", "errors")
INITS = ("prior", "encoder")


def layer_norm(v: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalize each example over its last dimension, no affine parameters: (..., Z) -> (..., Z)."""
    return nn.functional.layer_norm(v, v.shape[-1:], eps=eps)


class Iterate(NamedTuple):
    loc: Tensor                      # (B, Z) lambda^k
    logvar: Tensor
    g_loc: Optional[Tensor]          # grad_lambda F_t at lambda^k (None for the last iterate)
    g_logvar: Optional[Tensor]
    value: Optional[Tensor]          # F_t(lambda^k) (B,), where the gradient function gives it


def iterate(loc: Tensor, logvar: Tensor, gradient: Callable, update: Callable, steps: int) -> Iterator[Iterate]:
    """lambda^{k+1} = update(k, lambda^k, g^k) with (g^k, F_t(lambda^k)) = gradient(k, lambda^k), k < steps;
    yields every iterate with its gradient, then the last one."""
    for k in range(steps):
        g_loc, g_logvar, value = gradient(k, loc, logvar)
        yield Iterate(loc, logvar, g_loc, g_logvar, value)
        loc, logvar = update(k, loc, logvar, g_loc, g_logvar)
    yield Iterate(loc, logvar, None, None, None)


class HighwayLayer(nn.Module):
    """The two layers of one highway layer, h <- g * h + (1 - g) * ELU(W h), g = sigmoid(V h)
    (computed by ``seqvi.nn.highway``)."""

    def __init__(self, size: int):
        super().__init__()
        self.transform = Linear(size, size)
        self.gate = Linear(size, size)


class AVF(Inference):
    """Iterative amortized filtering; ``iterations`` K per step (eval may set another K).

    Options (each a recipe key, defaults as in the AVF paper):

    * ``inputs``: what the update network reads, any of ``gradients`` (g_mu, g_logvar), ``parameters``
      (mu, logvar), ``observation`` (the model's own features(x_t, h), as a direct encoder sees them;
      the AVF paper's SRNN-TIMIT network "additionally encodes the data observation") and ``errors``
      (x_t - E[x_t | z^k] at the gradient's sample: the error encoding of Marino, Yue & Mandt 2018).
      Each part is layer-normalized on its own; all are inputs, never differentiated.
    * ``init``: lambda^0 from the ``prior`` (detached), or from an ``encoder`` q_0(z_t | x_t, h) on the
      model's features, then K updates (semi-amortized, Kim et al. 2018, in filtering): the chain is
      differentiated into the encoder (and through the features into the model, as direct filtering
      is); K = 0 is direct filtering. ``encoder_sizes``: its hidden layers (default: the direct encoder's).
    * ``anneal``: the free energy AVF reads (its gradient input, and its earlier iterates' loss) uses the
      objective's KL weight beta, as the objective does (default: beta = 1 for q, as before).
    """
    #: a tiny configuration, for the conformance check (seqvi.testing)
    TEST_CONFIG = dict(iterations=2, hidden_size=16)

    iterative = True
    prior_graph = False   # lambda^0 is the detached prior (or the encoder's, which does not read it)

    def __init__(self, model: Any, iterations: int = 1, hidden_size: int = 1024, layers: int = 2,
                 update: str = "highway", inputs: Optional[list[str]] = None, init: str = "prior",
                 encoder_sizes: Optional[list[int]] = None, anneal: bool = False):
        super().__init__()
        inputs = list(inputs) if inputs is not None else ["gradients", "parameters"]
        if init not in INITS:
            raise ValueError(f"inference.init must be one of {INITS}, got {init!r}")
        if iterations < (0 if init == "encoder" else 1):
            raise ValueError("inference.iterations must be at least 1 (0 only with init: encoder)")
        if update not in UPDATES:
            raise ValueError(f"inference.update must be one of {UPDATES}")
        if layers < 1:
            raise ValueError("inference.layers must be at least 1")
        unknown = sorted(set(inputs) - set(INPUTS))
        if unknown or not inputs or len(set(inputs)) != len(inputs):
            raise ValueError(f"inference.inputs must be distinct names from {INPUTS}, got {inputs}")
        z = model.z_dim
        self.iterations, self.update_rule, self.init, self.anneal = iterations, update, init, anneal
        self.inputs = [name for name in INPUTS if name in inputs]
        self.eval_iterations: Optional[int] = None     # set by `seqvi eval --iterations`
        size = 2 * z * sum(name in self.inputs for name in ("gradients", "parameters"))
        size += model.feature_size if "observation" in self.inputs else 0
        size += model.x_dim if "errors" in self.inputs else 0
        self.input = nn.Sequential(Linear(size, hidden_size), nn.ELU())
        self.highway = nn.Sequential(*[HighwayLayer(hidden_size) for _ in range(layers - 1)])
        self.loc_out = Linear(hidden_size, z)
        self.loc_gate = Linear(hidden_size, z)
        self.logvar_out = Linear(hidden_size, z)
        self.logvar_gate = Linear(hidden_size, z)
        for gate in (self.loc_gate, self.logvar_gate):
            nn.init.constant_(gate.bias, 1.0 if update == "highway" else -2.0)
        if init == "encoder":
            sizes = list(encoder_sizes) if encoder_sizes is not None else [model.feature_size // 2 or 1]
            self.encoder = nn.Sequential(mlp([model.feature_size] + sizes),
                                         GaussianHead(sizes[-1] if sizes else model.feature_size, z))  # q_0(z_t | x_t, h)
        self._net = HighwayMLP(self.input[0], [(layer.transform, layer.gate) for layer in self.highway],
                               [self.loc_out, self.logvar_out, self.loc_gate, self.logvar_gate])
        self._bounds: dict = {}

    def steps(self) -> int:
        if not self.training and self.eval_iterations is not None:
            return self.eval_iterations
        return self.iterations

    # ------------------------------------------------------------------ the update rule

    def update(self, loc: Tensor, logvar: Tensor, g_loc: Tensor, g_logvar: Tensor, extra: Optional[Tensor] = None,
               trace: Optional[tuple] = None, keep: bool = False):
        """lambda' = update(lambda, g) (module docstring) -> (loc', logvar'); ``extra``: the other inputs
        (observation, errors), already normalized; with ``keep`` (graph-free) also the network's
        activations; ``trace``: activations kept earlier for these inputs."""
        core = ([g_loc, g_logvar] if "gradients" in self.inputs else []) + (
            [loc, logvar] if "parameters" in self.inputs else [])
        parts = [layer_norm(torch.stack(core, 1)).flatten(1)] if core else []     # (B, 2Z per part)
        u = torch.cat(parts + [extra], 1) if extra is not None else parts[0]
        if keep:
            y, trace = self._net.run(u)
        else:
            y = self._net(u, trace)
        out, gate = y.chunk(2, 1)                                                    # (B, 2Z) each
        s, previous = torch.sigmoid(gate), torch.cat([loc, logvar], 1)
        if self.update_rule == "highway":
            new = torch.lerp(out, previous, s)                                       # s * prev + (1 - s) * out
        else:
            new = previous + out - s * torch.cat([g_loc, g_logvar], 1)
        low, high = self._limits(loc.shape[1], new)
        loc, logvar = torch.clamp(new, low, high).chunk(2, 1)
        return (loc, logvar, trace) if keep else (loc, logvar)

    def _limits(self, z: int, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (z, like.dtype, like.device)
        if key not in self._bounds:
            limits = torch.tensor([[-LOC_LIMIT, LOGVAR_MIN], [LOC_LIMIT, LOGVAR_MAX]], dtype=like.dtype,
                                  device=like.device).repeat_interleave(z, dim=1)
            self._bounds[key] = (limits[0], limits[1])
        return self._bounds[key]

    def _start(self, model: Any, x: Tensor, state: Any, p_z: Normal) -> tuple[Tensor, Tensor, Optional[Normal]]:
        """lambda^0: the detached prior, or the encoder's q_0 (with its graph), which is also returned."""
        if self.init == "prior":
            return p_z.loc.detach(), (2 * p_z.scale.log()).detach(), None
        q_0 = self.encoder(model.features(x, state))
        return q_0.loc, 2 * q_0.scale.log(), q_0

    def _chain(self, model: Any, x: Tensor, state: Any, p_z: Normal, steps: int, *, values: bool = False,
               update: Optional[Callable] = None, beta: float = 1.0, extras: Optional[list] = None,
               start: Optional[tuple] = None) -> Iterator[Iterate]:
        """AVF's iterates at one step (one gradient sample per iteration); the network's other inputs
        of each iteration are appended to ``extras``."""
        extras = [] if extras is None else extras
        with torch.no_grad():
            observation = layer_norm(model.features(x, state).flatten(1)) if "observation" in self.inputs else None
        start = start or self._start(model, x, state, p_z)[:2]

        def gradient(k: int, loc: Tensor, logvar: Tensor):
            eps = standard_normal(loc)
            out = free_energy_gradient(model, loc, logvar, p_z, x, state, eps, value=values and k > 0,
                                       at_prior=k == 0 and self.init == "prior", kl_weight=beta)
            extras.append(self._extra(model, x, state, loc, logvar, eps, observation))
            return out

        def step(k: int, loc: Tensor, logvar: Tensor, g_loc: Tensor, g_logvar: Tensor):
            if update is not None:
                return update(k, loc, logvar, g_loc, g_logvar, extras[k])
            return self.update(loc, logvar, g_loc, g_logvar, extras[k])

        return iterate(*start, gradient, step, steps)

    @torch.no_grad()
    def _extra(self, model: Any, x: Tensor, state: Any, loc: Tensor, logvar: Tensor, eps: Tensor,
               observation: Optional[Tensor]) -> Optional[Tensor]:
        """The network's inputs besides gradients and parameters, normalized: (B, F + D) or None."""
        parts = [] if observation is None else [observation]
        if "errors" in self.inputs:
            z = loc + (0.5 * logvar).exp() * eps
            parts.append(layer_norm((x - model.emission(z, state).mean).flatten(1)))
        return torch.cat(parts, 1) if parts else None

    def iterates(self, model: Any, x: Tensor, state: Any, p_z: Normal,
                 iterations: Optional[int] = None) -> list[tuple[Tensor, Tensor]]:
        """lambda^0 .. lambda^K at one step, each (loc, logvar) (B, Z) (the per-iteration curve)."""
        steps = self.steps() if iterations is None else iterations
        return [(it.loc, it.logvar) for it in self._chain(model, x, state, p_z, steps)]

    # ------------------------------------------------------------------ the inference contract

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      kl_weight: float = 1.0):
        """A ``_Tape`` for this pass where the kernel path trains (module docstring), else the KL weight
        q reads (``anneal``), or None."""
        beta = kl_weight if self.anneal else 1.0
        if (self.training and torch.is_grad_enabled() and x is not None and enabled(x)
                and self.init == "prior"):
            return _Tape(self, beta)
        return AVFState(beta) if beta != 1.0 else None

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        K = self.steps()
        beta = q_state.beta if isinstance(q_state, (_Tape, AVFState)) else 1.0
        if isinstance(q_state, _Tape):
            return self._taped_posterior(model, x, state, p_z, q_state, K)
        *start, q_0 = self._start(model, x, state, p_z)
        if K == 0:
            return Posterior(q_0, q_state)
        if not (self.training and torch.is_grad_enabled()):
            *_, last = self._chain(model, x, state, p_z, K, beta=beta, start=start)
            return Posterior(_normal(last.loc, last.logvar), q_state)
        extras: list = []                                        # the reference path (module docstring)
        chain = list(self._chain(model, x, state, p_z, K, values=True, beta=beta, start=start, extras=extras))
        return Posterior(_normal(chain[-1].loc, chain[-1].logvar), q_state, self._aux(chain, extras))

    def _aux(self, chain: list[Iterate], extras: list) -> Optional[Tensor]:
        """q's own loss from the earlier iterates, sum_{0<k<K} F_t(lambda^k), as a surrogate whose gradient
        in lambda^k is g^k. It trains the update network only: from an encoder's lambda^0 the chain is
        replayed from the detached start, so that neither the encoder nor (through the features) the
        model learns from it."""
        if len(chain) < 3:
            return None
        lambdas = [(it.loc, it.logvar) for it in chain[1:-1]]
        if self.init == "encoder":
            lam, lambdas = (chain[0].loc.detach(), chain[0].logvar.detach()), []
            for k in range(len(chain) - 2):
                lam = self.update(*lam, chain[k].g_loc, chain[k].g_logvar, extras[k])
                lambdas.append(lam)
        aux = None
        for (loc, logvar), it in zip(lambdas, chain[1:-1]):
            surrogate = it.value + ((loc - loc.detach()) * it.g_loc + (logvar - logvar.detach()) * it.g_logvar).sum(1)
            aux = surrogate if aux is None else aux + surrogate
        return aux

    def _taped_posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, tape: "_Tape", K: int) -> Posterior:
        traces: list[tuple] = []
        extras: list = []

        def update(k, loc, logvar, g_loc, g_logvar, extra):
            loc, logvar, trace = self.update(loc, logvar, g_loc, g_logvar, extra, keep=True)
            traces.append(trace)
            return loc, logvar

        with torch.no_grad():
            chain = list(self._chain(model, x, state, p_z, K, values=True, update=update, beta=tape.beta,
                                     extras=extras))
        t = tape.record(chain, traces, extras)
        phi = tape.phi
        lam = _Iterate.apply(torch.cat([chain[-1].loc, chain[-1].logvar], 1), tape, t, *phi)
        aux = None
        if K > 1:
            aux = _Aux.apply(torch.stack([it.value for it in chain[1:-1]]).sum(0), tape, t, lam)
        loc, logvar = lam.chunk(2, 1)
        return Posterior(_normal(loc, logvar), tape, aux)


class AVFState(NamedTuple):
    """q's state outside the taped path: the KL weight q reads (``anneal``)."""
    beta: float


def _normal(loc: Tensor, logvar: Tensor) -> Normal:
    return Normal(loc, (0.5 * logvar).exp(), validate_args=False)


class _Tape:
    """One training pass of AVF on the kernel path: per step, the chain's inputs (lambda^0, g^k) and the
    network's activations; during the backward, dL/dlambda^K_t and the weights w_t of ``aux``."""

    def __init__(self, avf: AVF, beta: float = 1.0):
        self.avf, self.beta = avf, beta
        self.phi = [p for p in avf.parameters() if p.requires_grad]
        self.steps: list[tuple] = []   # (lambda^0, [g^k], [activations^k], [other inputs^k])
        self.final: dict[int, Tensor] = {}
        self.weights: dict[int, Tensor] = {}

    def record(self, chain: list[Iterate], traces: list[tuple], extras: list) -> int:
        start = torch.cat([chain[0].loc, chain[0].logvar], 1)
        grads = [torch.cat([it.g_loc, it.g_logvar], 1) for it in chain[:-1]]
        self.steps.append((start, grads, traces, extras))
        return len(self.steps) - 1

    def phi_grads(self) -> list[Optional[Tensor]]:
        """Replay the chain on all steps' rows at once and back-propagate into phi."""
        steps, n = self.steps, len(self.steps)
        like = steps[0][0]
        final = torch.cat([self.final.get(t, torch.zeros_like(steps[t][0])) for t in range(n)])
        weights = [self.weights.get(t) for t in range(n)]
        w = None if all(v is None for v in weights) else torch.cat(
            [v if v is not None else like.new_zeros(len(steps[t][0])) for t, v in enumerate(weights)]).unsqueeze(1)
        self.final, self.weights = {}, {}
        with torch.enable_grad():
            loc, logvar = torch.cat([s[0] for s in steps]).chunk(2, 1)
            outputs, cotangents = [], []
            K = len(steps[0][1])
            for k in range(K):
                g = torch.cat([s[1][k] for s in steps])
                trace = tuple(torch.cat(parts) for parts in zip(*(s[2][k] for s in steps)))
                extra = None if steps[0][3][k] is None else torch.cat([s[3][k] for s in steps])
                loc, logvar = self.avf.update(loc, logvar, *g.chunk(2, 1), extra, trace=trace)
                if k + 1 < K and w is None:
                    continue
                outputs.append(torch.cat([loc, logvar], 1))
                cotangents.append(final if k + 1 == K else w * torch.cat([s[1][k + 1] for s in steps]))
            return list(torch.autograd.grad(outputs, self.phi, cotangents, allow_unused=True))


class _Iterate(torch.autograd.Function):
    """lambda^K_t entering the model: records dL/dlambda^K_t; at the first step, phi's gradient."""

    @staticmethod
    def forward(ctx, lam: Tensor, tape: _Tape, t: int, *phi: Tensor) -> Tensor:
        ctx.tape, ctx.t = tape, t
        return lam.clone()

    @staticmethod
    def backward(ctx, d_lam: Tensor):
        tape, t = ctx.tape, ctx.t
        tape.final[t] = d_lam
        grads = tape.phi_grads() if t == 0 else [None] * len(tape.phi)
        return (None, None, None, *grads)


class _Aux(torch.autograd.Function):
    """aux_t = sum_{k<K} F_t(lambda^k) (B,): its value, and its weight in the loss recorded for the replay.
    Its input ``lam`` (the step's ``_Iterate`` output, zero gradient) puts the replay after it, also in a
    backward pass of ``aux`` alone."""

    @staticmethod
    def forward(ctx, value: Tensor, tape: _Tape, t: int, lam: Tensor) -> Tensor:
        ctx.tape, ctx.t = tape, t
        ctx.lam_shape = lam.shape
        return value.clone()

    @staticmethod
    def backward(ctx, weight: Tensor):
        ctx.tape.weights[ctx.t] = weight
        return None, None, None, weight.new_zeros(ctx.lam_shape)
