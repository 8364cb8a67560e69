"""The cross-entropy method over action sequences: PlaNet's planner (Hafner et al., ICML 2019, sec. 3).

The search distribution is a time-varying diagonal Gaussian over sequences
of H actions of size A::

    q(a_{1:H}) = prod_k N(a_k | mean_k, diag(std_k^2)),    mean, std: (H, A)

Each of ``iterations`` rounds draws N candidates as ONE tensor (N, H, A),
clamps them into the action box [low, high] (per dimension), scores them
all at once with ``objective: (N, H, A) -> (N,)`` (higher is better: a
predicted return) and refits mean and std to the ``top_k`` best by maximum
likelihood (the elites' mean and their standard deviation with 1/k). The
plan is the final mean; model-predictive control executes its first action
and plans again at the next step.

Defaults are PlaNet's: H = 12, N = 1,000, top 100, 10 iterations. The first
round is centred in the box with std half its width (PlaNet: N(0, I) for
actions in [-1, 1]). Randomness comes only from ``generator``: with the
same generator state and objective, a plan is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]   # (N, H, A) candidates -> (N,) scores, higher is better


@dataclass(frozen=True)
class CEMConfig:
    horizon: int = 12
    candidates: int = 1000
    top_k: int = 100
    iterations: int = 10

    def __post_init__(self):
        if min(self.horizon, self.candidates, self.top_k, self.iterations) < 1 or self.top_k > self.candidates:
            raise ValueError(f"CEM needs horizon, candidates, top_k, iterations >= 1 and top_k <= candidates, "
                             f"got {self}")


@dataclass
class Plan:
    mean: Tensor          # (H, A) the plan: the final refit mean
    std: Tensor           # (H, A) the final refit standard deviation
    elite_score: float    # mean score of the last round's elites


def cem(objective: Objective, low: Tensor, high: Tensor, config: CEMConfig = CEMConfig(),
        generator: Optional[torch.Generator] = None) -> Plan:
    """Maximize ``objective`` over action sequences in the box [low, high] (A,) by CEM."""
    if low.shape != high.shape or low.dim() != 1 or not bool((low < high).all()):
        raise ValueError(f"action bounds must be two (A,) tensors with low < high, got {low} and {high}")
    shape = (config.horizon, low.shape[0])
    mean = ((low + high) / 2).expand(shape).clone()               # (H, A)
    std = ((high - low) / 2).expand(shape).clone()                # (H, A)
    score = torch.tensor(float("nan"))
    for _ in range(config.iterations):
        noise = torch.randn((config.candidates, *shape), generator=generator, device=low.device, dtype=low.dtype)
        candidates = torch.clamp(mean + std * noise, low, high)   # (N, H, A)
        scores = objective(candidates)                            # (N,)
        if scores.shape != (config.candidates,):
            raise ValueError(f"objective returned shape {tuple(scores.shape)}, expected ({config.candidates},)")
        top, index = scores.topk(config.top_k)
        elites = candidates[index]                                # (k, H, A)
        mean, std = elites.mean(0), elites.std(0, unbiased=False)
        score = top.mean()
    return Plan(mean, std, float(score))
