"""An epoch's training figures, accumulated step by step (the epoch lines of ``metrics.jsonl``).

Loss, reconstruction and KL are sums over the real (unpadded) time steps of
the epoch's batches divided by their number: nats per time step, the unit of
the validation figure. The gradient norm is the global norm before clipping,
averaged (and maximized) over the epoch's steps. Batches with a non-finite
loss (skipped under ``train.skip_nonfinite``) are counted, not averaged.

The tally is in ``last.pt``, so an epoch interrupted mid-way and resumed
reports what an uninterrupted one does; only the wall-clock figures
(``WALL_CLOCK_KEYS``) differ between two runs of the same recipe.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields

# metrics.jsonl keys that measure wall time: they differ between two runs of the same recipe.
WALL_CLOCK_KEYS = frozenset({"time", "epoch_seconds", "valid_seconds", "steps_per_second"})


def number(value: float) -> float | None:
    """``value`` for metrics.jsonl: None where it is NaN or infinite (JSON has no NaN)."""
    return value if math.isfinite(value) else None


@dataclass
class EpochTally:
    loss: float = 0.0          # sums over the real time steps of finite batches
    recon: float = 0.0
    kl: float = 0.0
    time_steps: int = 0
    batches: int = 0           # finite batches
    nonfinite: int = 0         # batches skipped for a non-finite loss
    grad_sum: float = 0.0
    grad_max: float = 0.0
    kl_weight: float = math.nan   # at the epoch's last step
    seconds: float = 0.0       # training time of the epoch before the running clock (earlier calls)
    _clock: float | None = None

    def start_clock(self) -> None:
        self._clock = time.perf_counter()

    def train_seconds(self) -> float:
        """Training wall time of this epoch so far, across interrupted and resumed calls."""
        return self.seconds + (time.perf_counter() - self._clock if self._clock is not None else 0.0)

    def add(self, loss: float, recon: float, kl: float, steps: int, finite: bool, grad_norm: float,
            kl_weight: float) -> None:
        """One training step: ``loss``, ``recon`` and ``kl`` are the batch's sums over its ``steps``."""
        self.kl_weight = kl_weight
        if not finite:
            self.nonfinite += 1
            return
        self.loss, self.recon, self.kl = self.loss + loss, self.recon + recon, self.kl + kl
        self.time_steps += steps
        self.batches += 1
        self.grad_sum += grad_norm
        self.grad_max = max(self.grad_max, grad_norm)

    def summary(self, seconds: float | None = None) -> dict:
        """The epoch's figures, keyed as in metrics.jsonl (None where undefined, e.g. recon under IWAE);
        ``seconds``: its training time (default: ``train_seconds()`` now)."""
        steps = max(self.time_steps, 1)
        seconds = self.train_seconds() if seconds is None else seconds
        out = {"train_loss": number(self.loss / steps), "train_recon": number(self.recon / steps),
               "train_kl": number(self.kl / steps), "kl_weight": number(self.kl_weight),
               "grad_norm_mean": number(self.grad_sum / self.batches) if self.batches else None,
               "grad_norm_max": number(self.grad_max) if self.batches else None,
               "time_steps": self.time_steps, "steps_per_second": self.time_steps / max(seconds, 1e-9)}
        if self.nonfinite:
            out["nonfinite_batches"] = self.nonfinite
        return out

    def state(self) -> dict:
        """For the checkpoint (plain numbers: ``torch.load(weights_only=True)`` reads them)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        out["seconds"] = self.train_seconds()
        return out

    @classmethod
    def from_state(cls, state: dict | None) -> "EpochTally":
        """The tally a checkpoint holds; a fresh one for checkpoints from before the tally."""
        if not isinstance(state, dict):
            return cls()
        known = {k: v for k, v in state.items() if k in asdict(cls()) and not k.startswith("_")}
        return cls(**known)
