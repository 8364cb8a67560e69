"""Video prediction, the SVG protocol (Denton & Fergus 2018): best of N samples by PSNR and SSIM.

For each sequence of the split with at least ``context + max(horizons)``
frames (its first frames, in store order, up to ``max_sequences``):

1. N = ``samples`` copies filter the ``context`` real frames with the run's
   inference (z_t ~ q), then continue from the prior for H = max(horizons)
   frames, each frame the emission's mean fed back (``sample_sequences``
   with ``use_mean``), so the copies differ only through z;
2. each predicted frame t = 1..H is scored against the real one:
   PSNR and SSIM (``seqvi.metrics``), (N, H) per sequence;
3. for each horizon h, the copy with the best mean SSIM over frames 1..h is
   kept and its per-frame SSIM recorded, and separately the copy with the
   best mean PSNR for PSNR.

Reported: per-frame means over sequences of the best-of-N curves, one pair
per horizon, and the mean over all copies (what one random sample scores).
Reproducible: chunk k of copies is generated under seed ``seed + k``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from seqvi.data.batches import pad
from seqvi.data.store import SplitData
from seqvi.engine.sample import sample_sequences
from seqvi.errors import SeqviError
from seqvi.metrics import WINDOW, psnr, ssim


@dataclass
class PredictResult:
    kind = "video"          # which protocol made it (``PROTOCOLS``); the report renders by it
    split: str
    context: int
    horizons: list
    samples: int
    num_sequences: int = 0
    best_psnr: dict = field(default_factory=dict)   # horizon -> (h,) per-frame mean of best-of-N PSNR
    best_ssim: dict = field(default_factory=dict)   # horizon -> (h,)
    mean_psnr: np.ndarray | None = None             # (H,) mean over all copies
    mean_ssim: np.ndarray | None = None

    def to_dict(self) -> dict:
        return {
            "split": self.split, "context": self.context, "horizons": list(self.horizons),
            "samples": self.samples, "num_sequences": self.num_sequences,
            "best_psnr": {str(h): v.tolist() for h, v in self.best_psnr.items()},
            "best_ssim": {str(h): v.tolist() for h, v in self.best_ssim.items()},
            "mean_psnr": self.mean_psnr.tolist(), "mean_ssim": self.mean_ssim.tolist(),
            "summary": {str(h): {"psnr": float(self.best_psnr[h].mean()), "ssim": float(self.best_ssim[h].mean())}
                        for h in self.horizons},
        }


def eligible_sequences(split: SplitData, frames: int, max_sequences: int | None = None) -> list[int]:
    picks = [i for i in range(len(split)) if split.lengths[i] >= frames]
    return picks[:max_sequences] if max_sequences else picks


def predict(model: Any, inference: Any, split: SplitData, name: str, *, context: int = 10,
            horizons: tuple[int, ...] = (10, 30), samples: int = 100, max_sequences: int | None = None,
            batch_size: int = 100, seed: int = 0,
            progress: Callable[[int, int], None] | None = None) -> PredictResult:
    """Best-of-``samples`` PSNR/SSIM per predicted frame, averaged over the split's sequences."""
    horizons = sorted(set(int(h) for h in horizons))
    if context < 1 or not horizons or horizons[0] < 1 or samples < 1:
        raise SeqviError(f"predict: need context >= 1, horizons >= 1 and samples >= 1 "
                         f"(got {context}, {horizons}, {samples})")
    frame_shape = tuple(split.frames.shape[1:])
    if len(frame_shape) != 3 or min(frame_shape[-2:]) < WINDOW:
        raise SeqviError(f"{split.path}: predict scores video frames (C, H, W) of at least {WINDOW}x{WINDOW} "
                         f"pixels by PSNR and SSIM; this data set's frames have shape {frame_shape} "
                         f"(use `seqvi eval` or `seqvi sample` for it)")
    total = context + horizons[-1]
    picks = eligible_sequences(split, total, max_sequences)
    if not picks:
        raise SeqviError(f"{split.path}: split '{name}': no sequence has context + horizon = {total} frames "
                         f"(longest: {int(split.lengths.max()) if len(split) else 0})")
    result = PredictResult(name, context, horizons, samples)
    sums = {key: np.zeros(h) for h in horizons for key in (("psnr", h), ("ssim", h))}
    mean_sums = {"psnr": np.zeros(horizons[-1]), "ssim": np.zeros(horizons[-1])}
    per_chunk = max(1, batch_size // samples)
    device = model.device
    for k, start in enumerate(range(0, len(picks), per_chunk)):
        chunk = picks[start:start + per_chunk]
        x, _ = pad([split.read(i, 0, total) for i in chunk], split.value_scale)   # (S, L, *X)
        prime = x[:, :context].repeat_interleave(samples, 0).to(device)           # (S*N, context, *X)
        generated = sample_sequences(model, inference, len(prime), total, prime=prime, seed=seed + k, use_mean=True)
        pred = generated[:, context:].clamp(0, 1).cpu()                           # (S*N, H, *X)
        truth = x[:, context:].repeat_interleave(samples, 0)
        scores = {"psnr": psnr(pred, truth).view(len(chunk), samples, -1).double().numpy(),
                  "ssim": ssim(pred, truth).view(len(chunk), samples, -1).double().numpy()}   # (S, N, H)
        for metric, values in scores.items():
            mean_sums[metric] += values.mean(1).sum(0)
            for h in horizons:
                best = values[:, :, :h].mean(2).argmax(1)                           # (S,) best copy
                sums[(metric, h)] += values[np.arange(len(chunk)), best, :h].sum(0)
        result.num_sequences += len(chunk)
        if progress:
            progress(result.num_sequences, len(picks))
    n = result.num_sequences
    result.best_psnr = {h: sums[("psnr", h)] / n for h in horizons}
    result.best_ssim = {h: sums[("ssim", h)] / n for h in horizons}
    result.mean_psnr, result.mean_ssim = mean_sums["psnr"] / n, mean_sums["ssim"] / n
    return result


def protocol_of(split: SplitData) -> str:
    """Which prediction protocol fits a split: open loop for interaction data (actions and rewards in the
    store), the SVG protocol otherwise."""
    return "control" if getattr(split, "has_inputs", False) and getattr(split, "has_rewards", False) else "video"
