"""Evaluation: the free energy of a whole split, per time step and in total.

Every sequence is filtered whole (no crops), one reparameterized sample per
step, under a fixed seed so that a number can be reproduced. Per-step sums
over sequences are accumulated, so the report can show F_t, its
reconstruction and KL parts, and how many sequences are still active at t.

Units: nats per time step = sum of F over the split / number of real steps;
nats per sequence = the same sum / number of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from seqvi.data.batches import whole_batches
from seqvi.data.store import SplitData
from seqvi.objectives import filter_sequence


@dataclass
class EvalResult:
    split: str
    recon: np.ndarray = field(default_factory=lambda: np.zeros(0))   # (T_max,) sum over sequences
    kl: np.ndarray = field(default_factory=lambda: np.zeros(0))      # (T_max,)
    active: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (T_max,) sequences with step t
    num_sequences: int = 0

    @property
    def steps(self) -> int:
        return int(self.active.sum())

    @property
    def total(self) -> float:
        return float(self.recon.sum() + self.kl.sum())

    @property
    def nats_per_step(self) -> float:
        return self.total / max(self.steps, 1)

    @property
    def nats_per_sequence(self) -> float:
        return self.total / max(self.num_sequences, 1)

    def add(self, recon: np.ndarray, kl: np.ndarray, mask: np.ndarray) -> None:
        length = recon.shape[1]
        if length > len(self.recon):
            grow = length - len(self.recon)
            self.recon, self.kl, self.active = (np.pad(a, (0, grow)) for a in (self.recon, self.kl, self.active))
        self.recon[:length] += recon.sum(0)
        self.kl[:length] += kl.sum(0)
        self.active[:length] += mask.sum(0)
        self.num_sequences += recon.shape[0]

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "nats_per_step": self.nats_per_step,
            "nats_per_sequence": self.nats_per_sequence,
            "recon_per_step": float(self.recon.sum()) / max(self.steps, 1),
            "kl_per_step": float(self.kl.sum()) / max(self.steps, 1),
            "num_sequences": self.num_sequences,
            "num_steps": self.steps,
            "per_step": {
                "recon": self.recon.tolist(),
                "kl": self.kl.tolist(),
                "active": self.active.astype(int).tolist(),
            },
        }


@torch.no_grad()
def evaluate(model: Any, inference: Any, split: SplitData, name: str, *, batch_size: int,
             device: torch.device, seed: int = 0,
             progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Free energy of every sequence of ``split``; the global RNG is left untouched."""
    result = EvalResult(name)
    was_training = model.training, inference.training
    model.eval()
    inference.eval()
    devices = [device.index or 0] if device.type == "cuda" else []
    total = len(split)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for _, x, mask in whole_batches(split, batch_size):
            terms = filter_sequence(model, inference, x.to(device), mask.to(device))
            result.add(terms.recon.double().cpu().numpy(), terms.kl.double().cpu().numpy(),
                       mask.double().numpy())
            if progress:
                progress(result.num_sequences, total)
    model.train(was_training[0])
    inference.train(was_training[1])
    return result
