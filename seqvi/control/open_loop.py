"""Open-loop prediction on interaction data: how far ahead a world model's imagination stays right.

For each sequence of the split with at least ``context + horizon`` steps
(the first ones in store order, up to ``max_sequences``), N = ``samples``
copies run::

    t = 1..C   (context):  state = condition(state, u_t);  z_t ~ q(z_t | x_t, h_t);  state = advance(state, x_t, z_t)
    t = C+1..C+H (open loop, the recorded actions u_t, no observation):
               state = condition(state, u_t);  z_t ~ p(z_t | h_t)
               x_hat_t = E[x_t | h_t, z_t],  r_hat_t = E[r_t | h_t, z_t]
               state = advance(state, x_hat_t or None, z_t)

which is exactly what the planner imagines (``seqvi.control.plan.imagined_returns``)
for the actions that were really taken. Reported per predicted step k = 1..H,
over sequences (obs in the store's units times ``value_scale``: pixels in [0, 1])::

    obs RMSE_k      = sqrt(mean over sequences and features of (mean_N x_hat - x)^2)    the predictive mean
    sample RMSE_k   = the same for single samples (mean over the N copies of the squared error)
    last RMSE_k     = the same for "nothing moves" (the last context observation)        a reference
    reward RMSE_k   = sqrt(mean over sequences of (mean_N r_hat - r)^2)
    return error    = mean over sequences of |sum_k mean_N r_hat_k - sum_k r_k|           (the planner's target)

For frames (C, H, W), ``frames`` keeps the first sequence's real frames and its
first copy's imagined ones (one sample, as the planner sees them), (2, H, C, H', W'),
for the strip ``seqvi predict`` draws beside the curves.

Reproducible: chunk j of sequences is generated under seed ``seed + j``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from seqvi.data.batches import pad
from seqvi.data.store import SplitData
from seqvi.errors import SeqviError


@dataclass
class OpenLoopResult:
    split: str
    context: int
    horizon: int
    samples: int
    num_sequences: int = 0
    obs_rmse: np.ndarray = field(default_factory=lambda: np.zeros(0))      # (H,)
    sample_rmse: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (H,)
    last_rmse: np.ndarray = field(default_factory=lambda: np.zeros(0))     # (H,)
    reward_rmse: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (H,)
    return_error: float = float("nan")
    mean_return: float = float("nan")                                      # mean real return over the H steps
    frames: Optional[np.ndarray] = None    # frames only: (2, H, C, H', W'): [real, imagined] of sequence 0, copy 0
    kind: str = "control"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "split": self.split, "context": self.context, "horizon": self.horizon,
                "samples": self.samples, "num_sequences": self.num_sequences, "obs_rmse": self.obs_rmse.tolist(),
                "sample_rmse": self.sample_rmse.tolist(), "last_rmse": self.last_rmse.tolist(),
                "reward_rmse": self.reward_rmse.tolist(), "return_error": self.return_error,
                "mean_return": self.mean_return,
                "summary": {"obs_rmse": float(self.obs_rmse.mean()), "reward_rmse": float(self.reward_rmse.mean()),
                            "return_error": self.return_error}}


@torch.no_grad()
def _rollout(model: Any, inference: Any, x: torch.Tensor, u: torch.Tensor, context: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_hat (M, H, *X), r_hat (M, H)) for M rows of x (M, C+H, *X), u (M, C+H, U) (module docstring)."""
    state, q_state = model.initial_state(len(x)), inference.initial_state(len(x), x[:, :context])
    obs, rewards = [], []
    for t in range(x.shape[1]):
        state = model.condition(state, u[:, t])
        if t < context:
            state = model.observe(state, x[:, t])
            with torch.enable_grad():            # AVF differentiates F_t inside posterior
                q = inference.posterior(model, x[:, t], state, model.prior(state), q_state)
            z, q_state = q.q_z.sample(), q.q_state
            state = model.advance(model.transit(state, z), x[:, t], z)
        else:
            z = model.prior(state).sample()
            state = model.transit(state, z)
            obs.append(model.emission(z, state).mean)
            rewards.append(model.reward(z, state).mean)
            state = model.advance_imagined(state, z, obs[-1])
    return torch.stack(obs, 1), torch.stack(rewards, 1)


def predict_open_loop(model: Any, inference: Any, split: SplitData, name: str, *, context: int = 5,
                      horizons: tuple[int, ...] = (30,), samples: int = 100, max_sequences: Optional[int] = None,
                      batch_size: int = 100, seed: int = 0,
                      progress: Optional[Callable[[int, int], None]] = None) -> OpenLoopResult:
    """Per-step open-loop errors of observations and rewards over ``split`` (module docstring), for
    H = max(``horizons``) steps (every shorter horizon is a prefix of the per-step curves)."""
    horizon = max(int(h) for h in horizons) if horizons else 0
    if not (getattr(split, "has_inputs", False) and getattr(split, "has_rewards", False)):
        raise SeqviError(f"{split.path}: open-loop prediction needs actions and rewards in the store "
                         f"(interaction data)")
    if not model.has("reward"):
        raise SeqviError(f"{split.path}: open-loop prediction needs a model with a reward head (model.name: rssm)")
    if context < 1 or horizon < 1 or samples < 1:
        raise SeqviError(f"predict: need context, horizon and samples >= 1 (got {context}, {horizon}, {samples})")
    total = context + horizon
    picks = [i for i in range(len(split)) if split.lengths[i] >= total]
    picks = picks[:max_sequences] if max_sequences else picks
    if not picks:
        raise SeqviError(f"{split.path}: split '{name}': no sequence has context + horizon = {total} steps "
                         f"(longest: {int(split.lengths.max()) if len(split) else 0})")
    model.eval()
    inference.eval()
    result = OpenLoopResult(name, context, horizon, samples)
    sq = {"mean": np.zeros(horizon), "sample": np.zeros(horizon), "last": np.zeros(horizon),
          "reward": np.zeros(horizon)}
    return_error = real_return = 0.0
    per_chunk = max(1, batch_size // samples)
    device = model.device
    for j, start in enumerate(range(0, len(picks), per_chunk)):
        chunk = picks[start:start + per_chunk]
        x, _ = pad([split.read(i, 0, total) for i in chunk], split.value_scale)              # (S, L, *X)
        u, _ = pad([split.read_inputs(i, 0, total) for i in chunk], 1.0)                     # (S, L, U)
        r, _ = pad([split.read_rewards(i, 0, total) for i in chunk], 1.0)                    # (S, L)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + j)
            x_hat, r_hat = _rollout(model, inference, x.repeat_interleave(samples, 0).to(device),
                                    u.repeat_interleave(samples, 0).to(device), context)
        S, truth = len(chunk), x[:, context:]
        x_hat = x_hat.cpu().view(S, samples, horizon, *truth.shape[2:])                    # (S, N, H, *X)
        if j == 0 and truth.dim() == 5:
            result.frames = torch.stack([truth[0], x_hat[0, 0]]).clamp(0, 1).numpy()       # (2, H, C, H', W')
        r_hat = r_hat.cpu().view(S, samples, horizon)
        features = tuple(range(2, truth.dim()))
        sq["mean"] += ((x_hat.mean(1) - truth) ** 2).mean(features).sum(0).double().numpy()
        sq["sample"] += ((x_hat - truth.unsqueeze(1)) ** 2).mean((1,) + tuple(f + 1 for f in features)).sum(0).double().numpy()
        last = x[:, context - 1:context]
        sq["last"] += ((last - truth) ** 2).mean(features).sum(0).double().numpy()
        r_mean, r_true = r_hat.mean(1), r[:, context:]
        sq["reward"] += ((r_mean - r_true) ** 2).sum(0).double().numpy()
        return_error += float((r_mean.sum(1) - r_true.sum(1)).abs().sum())
        real_return += float(r_true.sum())
        result.num_sequences += S
        if progress:
            progress(result.num_sequences, len(picks))
    n = result.num_sequences
    result.obs_rmse, result.sample_rmse = np.sqrt(sq["mean"] / n), np.sqrt(sq["sample"] / n)
    result.last_rmse, result.reward_rmse = np.sqrt(sq["last"] / n), np.sqrt(sq["reward"] / n)
    result.return_error, result.mean_return = return_error / n, real_return / n
    return result


def predict_split(model: Any, inference: Any, split: SplitData, name: str, **options: Any) -> Any:
    """``seqvi predict``: open loop (above) for interaction data, the engine's SVG protocol for video, by what
    the split holds (``seqvi.engine.predict.protocol_of``), with the command's options."""
    from seqvi.engine.predict import predict, protocol_of

    protocols = {"video": predict, "control": predict_open_loop}
    return protocols[protocol_of(split)](model, inference, split, name, **options)
