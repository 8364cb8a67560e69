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
with 1 on real steps; padding is always at the end of a sequence. A store of
interaction sequences also gives per-step ``inputs`` (B, T, U) (the actions)
and ``rewards`` (B, T), padded with zeros; a sequence's first reward (stored
as 0: no reward arrives with the first observation) is NaN, "not observed".
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from seqvi.data.store import SplitData

BUCKET_JITTER = 0.1   # log-scale jitter of lengths when bucketing (about ±10%)


class Batch(NamedTuple):
    x: torch.Tensor                          # (B, T, *X)
    mask: torch.Tensor                       # (B, T)
    inputs: Optional[torch.Tensor] = None    # (B, T, U) per-step inputs (actions), if the store has them
    rewards: Optional[torch.Tensor] = None   # (B, T), if the store has them; NaN where none was observed
    indices: Optional[np.ndarray] = None     # the sequences' indices in the split

    def to(self, device) -> "Batch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.x), move(self.mask), move(self.inputs), move(self.rewards), self.indices)


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
               epoch: int, batch: int, rows: slice = slice(None)) -> Batch:
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
    return read_batch(split, windows[rows], padded)


def whole_batches(split: SplitData, batch_size: int) -> Iterator[Batch]:
    """Every sequence once, whole, in batches of similar length (for evaluation)."""
    order = np.argsort(split.lengths, kind="stable")
    order = order[split.lengths[order] > 0]
    for i in range(0, len(order), batch_size):
        indices = order[i:i + batch_size]
        windows = [(int(j), 0, int(split.lengths[j])) for j in indices]
        yield read_batch(split, windows, max(w[2] for w in windows))._replace(indices=indices)


def read_batch(split: SplitData, windows: list[tuple[int, int, int]], length: int) -> Batch:
    """The windows (sequence, start, stop) of a split, padded to ``length`` steps, with the store's
    per-step inputs and rewards when it has them."""
    if not windows:   # a share can be empty when the batch is smaller than the number of processes
        return Batch(torch.zeros(0, length, *split.frames.shape[1:]), torch.zeros(0, length))
    x, mask = pad([split.read(i, start, stop) for i, start, stop in windows], split.value_scale, length)
    inputs = rewards = None
    if getattr(split, "has_inputs", False):
        inputs, _ = pad([split.read_inputs(i, start, stop) for i, start, stop in windows], 1.0, length)
    if getattr(split, "has_rewards", False):
        rewards, _ = pad([split.read_rewards(i, start, stop) for i, start, stop in windows], 1.0, length)
        first = torch.tensor([start == 0 for _, start, _ in windows])
        rewards[first, 0] = float("nan")   # a sequence's first reward is a fill: nothing arrived with o_0
    return Batch(x, mask, inputs, rewards)


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
