"""The inference contract: one filtering step of q, for any model.

    initial_state(batch_size, x=None, mask=None) -> q_state   q's own recurrence (None if stateless)
    posterior(model, x_t, state, p_z, q_state)    -> Posterior(q_z, q_state, aux)

``q_z`` is a Normal over (B, Z). ``q_state`` carries what q alone remembers
(e.g. SVG's posterior LSTM over frames); it is a tuple of batch-first tensors
or None. ``x`` (B, T, *X) is the whole observed sequence: a filtering
procedure must ignore it; only a smoothing procedure (labelled as such, e.g.
SRNN's backward RNN) may read ahead, by precomputing into ``q_state``;
``mask`` (B, T) tells it where each sequence really ends.
``aux`` is an optional (B,) loss that trains only q's parameters
(AVF: the free energy at every iteration before the last), or None.

A filtering procedure may also precompute, in ``initial_state``, what it
computes from x causally and independently of z (the combiner's forward RNN:
h_t from x_{<=t}), for the whole sequence in one call, and consume it one
step at a time: the same numbers, one large operation instead of T small ones.

Two optional hooks serve the fast filtering loop (``seqvi.objectives``):
``sample_path(model, x, state, q_state)`` may return the whole sampling
path at once (per-step lists of states, q locs, q scales, samples, aux) or
None to be stepped (the combiner on a DMM: one autograd node with a
hand-written backward); ``deferred_update()`` is a context manager under
which q may keep its own network out of the loop's graph and put its
gradient in place afterwards (AVF in training; see ``filter_sequence``'s
``defer``).

``reads_prior`` (class attribute, default True) says whether ``posterior``
uses ``p_z``. A procedure that sets it False (direct encoders, the combiner)
receives ``p_z=None`` from the fast filtering loop, which then evaluates the
prior for all steps at once after the loop instead of inside it.
``prior_graph`` (default True) says whether anything of q's differentiates
through ``p_z``; when False (AVF with one iteration, or in evaluation) the
fast loop computes the in-loop prior without recording its graph (the KL
that trains the model uses the prior recomputed after the loop).
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
    #: posterior() uses p_z; False lets the fast filtering loop defer the prior (see above)
    reads_prior = True
    #: posterior() differentiates through p_z (see above)
    prior_graph = True
    eval_iterations: Optional[int] = None

    def initial_state(self, batch_size: int, x: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Any:
        return None

    def posterior(self, model: Any, x: Tensor, state: Any, p_z: Normal, q_state: Any = None) -> Posterior:
        raise NotImplementedError
