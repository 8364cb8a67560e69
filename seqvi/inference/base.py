"""The inference contract: one filtering step of q, for any model (q only).

    initial_state(batch_size, x=None, mask=None, kl_weight=1.0) -> q_state   q's own recurrence (or None)
    posterior(model, x_t, state, p_z, q_state)    -> Posterior(q_z, q_state, aux)

``q_z`` is a Normal over (B, Z). ``q_state`` carries what q alone remembers
(e.g. SVG's posterior LSTM over frames); it is a tuple of batch-first
tensors (other leaves pass through ``map_state`` untouched) or None. ``x``
(B, T, *X) is the whole observed sequence: a filtering procedure must ignore
it; only a smoothing procedure (labelled as such, e.g. SRNN's backward RNN)
may read ahead, by precomputing into ``q_state``; ``mask`` (B, T) tells it
where each sequence really ends; ``kl_weight`` is the objective's KL weight
beta (annealing), for a procedure whose own loss should use it (AVF with
``anneal``). ``aux`` is an optional (B,) loss that
trains only q's parameters (AVF: the free energy at every iteration before
the last), or None.

A filtering procedure may also precompute, in ``initial_state``, what it
computes from x causally and independently of z (the combiner's forward RNN:
h_t from x_{<=t}), for the whole sequence in one call, and consume it one
step at a time: the same numbers, one large operation instead of T small ones.

Optional hooks:

* ``reads_prior`` (class attribute, default True): whether ``posterior``
  uses ``p_z``. A procedure that sets it False (direct encoders, the
  combiner) receives ``p_z=None`` from the stacked filtering pass
  (``seqvi.stacked``), which then evaluates the prior for all steps at once
  after the loop instead of inside it.
* ``prior_graph`` (class attribute, default True): whether ``posterior``
  differentiates through ``p_z`` (SRNN's smoothing q adds the prior's mean).
  When False (AVF, which starts from the detached prior) the stacked pass
  computes the in-loop prior without recording its graph.
* ``sample_path(model, x, state, q_state) -> seqvi.stacked.Path | None``:
  the whole sampling path at once (the combiner on a model Markov in z: one
  autograd node with a hand-written backward), or None to be stepped.
* ``iterative`` (class attribute) and ``eval_iterations``: an iterative
  procedure (AVF) may run another number of iterations in evaluation.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

from torch import Tensor, nn
from torch.distributions import Normal


class Posterior(NamedTuple):
    q_z: Normal
    q_state: Any = None
    aux: Optional[Tensor] = None   # (B,) extra loss for q's parameters only


class Inference(nn.Module):
    #: iterative procedures take another number of iterations for evaluation
    iterative = False
    #: posterior() uses p_z; False lets the stacked filtering pass skip the in-loop prior
    reads_prior = True
    #: posterior() differentiates through p_z; False lets the stacked pass compute it without a graph
    prior_graph = True
    eval_iterations: Optional[int] = None
    #: A tiny configuration for the conformance check (``seqvi.testing.check_inference``): constructor
    #: keywords after ``model``; and the registered model it is checked on.
    TEST_CONFIG: dict = {}
    TEST_MODEL: str = "vrnn"

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None,
                      kl_weight: float = 1.0) -> Any:
        return None

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        raise NotImplementedError
