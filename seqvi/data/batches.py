"""Mini-batches from a store split: random crops for training, whole padded sequences for evaluation.

Training order is a pure function of ``(seed, epoch)`` and each batch's crops
of ``(seed, epoch, batch index)``. No sampler state needs saving: resuming at
``(epoch, batch)`` replays exactly what an uninterrupted run would have seen.

With ``bucket=True`` (recipe ``data.bucket``), each batch holds sequences of
similar length, so the filtering loop (as long as the batch's longest
sequence) is not multiplied by padding: whole-sequence training on the Bach
chorales runs 977-1,015 loop steps per epoch instead of ~1,930. Lengths are
jittered by up to ±10% before sorting so that batches change from epoch to
epoch; the order of the batches is shuffled. Still a pure function of
``(seed, epoch)``.

Shapes: ``x`` is ``(B, T, *frame_shape)`` float32, ``mask`` ``(B, T)`` float32
with 1 on real steps; padding is always at the end of a sequence.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from seqvi.data.store import SplitData

BUCKET_JITTER = 0.1   # log-scale jitter of lengths when bucketing (about ±10%)


def epoch_order(split: SplitData, batch_size: int, seed: int, epoch: int,
                min_length: int = 0, bucket: bool = False) -> list[np.ndarray]:
    """The sequence indices of each training batch of ``epoch`` (last batch may be short)."""
    eligible = np.flatnonzero(split.lengths >= max(min_length, 1))
    rng = np.random.default_rng([seed, epoch, 0])
    perm = eligible[rng.permutation(len(eligible))]
    if bucket:
        jittered = split.lengths[perm] * np.exp(rng.uniform(-BUCKET_JITTER, BUCKET_JITTER, len(perm)))
        perm = perm[np.argsort(jittered, kind="stable")]
    batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        # a batch of one breaks batch normalization (SVG): the last sequence joins the one before
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def crop_batch(split: SplitData, indices: np.ndarray, crop_length: int, seed: int,
               epoch: int, batch: int, rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """One random window of ``crop_length`` steps per sequence (0 = whole sequence).

    ``rows`` selects this process's share of the batch; the crops and the
    padded length are those of the whole batch, so shares fit together.
    """
    rng = np.random.default_rng([seed, epoch, batch + 1])
    windows = []
    for i in indices:
        length = int(split.lengths[i])
        if crop_length and length > crop_length:
            start = int(rng.integers(0, length - crop_length + 1))
            windows.append((int(i), start, start + crop_length))
        else:
            windows.append((int(i), 0, length))
    padded = max(stop - start for _, start, stop in windows)
    pieces = [split.read(i, start, stop) for i, start, stop in windows[rows]]
    if not pieces:  # a share can be empty when the batch is smaller than the number of processes
        return torch.zeros(0, padded, *split.frames.shape[1:]), torch.zeros(0, padded)
    return pad(pieces, split.value_scale, padded)


def whole_batches(split: SplitData, batch_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Every sequence once, whole, in batches of similar length (for evaluation)."""
    order = np.argsort(split.lengths, kind="stable")
    order = order[split.lengths[order] > 0]
    for i in range(0, len(order), batch_size):
        indices = order[i:i + batch_size]
        x, mask = pad([split.read(int(j)) for j in indices], split.value_scale)
        yield indices, x, mask


def pad(pieces: list[np.ndarray], value_scale: float = 1.0,
        length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p) for p in pieces) if length is None else length
    frame_shape = pieces[0].shape[1:]
    x = np.zeros((len(pieces), length, *frame_shape), dtype=np.float32)
    mask = np.zeros((len(pieces), length), dtype=np.float32)
    for b, piece in enumerate(pieces):
        x[b, :len(piece)] = piece
        mask[b, :len(piece)] = 1.0
    if value_scale != 1.0:
        x *= value_scale
    return torch.from_numpy(x), torch.from_numpy(mask)
