"""Sampling sequences from a trained model, optionally primed by real data.

Unprimed: z_t ~ p(z_t | h_{t-1}), x_t ~ p(x_t | z_t, h_{t-1}), h_t = advance.
Primed by x_{1:P}: the first P steps are filtered (z_t ~ q(z_t | x_t, h_{t-1})
with the run's inference), their frames kept as given, then generation
continues from the prior. Per-step inputs u (N, length, U) (actions), when
given, condition every step (``model.condition``). Output x is
(N, length, *X); ``primed`` steps are the real ones.

``sample_run`` is the ``seqvi sample`` command: it primes from test
sequences, writes the files (``seqvi.data.samples.SAMPLE_WRITERS``) and a
picture, and leaves in the folder exactly the files of this call. It records
their names in ``.seqvi-samples.json`` there and removes the files the
previous call recorded that this one did not write (``--num 2`` after
``--num 4`` leaves two samples, not four); files it never wrote (the user's)
are left alone. In a run's own ``samples/`` folder written before the record
existed, the files named like seqvi's (``sample_NN.*``, ``samples.*``) count
as the previous call's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from seqvi.errors import SeqviError

RECORD = ".seqvi-samples.json"
LEGACY_NAMES = re.compile(r"sample_\d{2,}\.(mid|wav|mp4|gif)|samples\.(npz|png)")
Picture = Callable[[str, Any, Path, int], Path]   # (adapter, x, path, primed) -> path written


@dataclass
class SampleResult:
    out_dir: Path
    paths: list = field(default_factory=list)     # files written, the picture last
    removed: list = field(default_factory=list)   # files of the previous call that this one did not write


@torch.no_grad()
def sample_sequences(model: Any, inference: Any, num: int, length: int, *,
                     prime: Tensor | None = None, seed: int = 0, use_mean: bool = False,
                 inputs: Tensor | None = None) -> Tensor:
    model.eval()
    inference.eval()
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        state = model.initial_state(num)
        q_state = inference.initial_state(num, prime)
        frames = []
        primed = 0 if prime is None else prime.shape[1]
        for t in range(length):
            state = model.condition(state, None if inputs is None else inputs[:, t].to(device))
            p_z = model.prior(state)
            if t < primed:
                x_t = prime[:, t].to(device)
                q = inference.posterior(model, x_t, state, p_z, q_state)
                z, q_state = q.q_z.sample(), q.q_state
            else:
                z = p_z.sample()
                p_x = model.emission(z, state)
                x_t = p_x.mean if use_mean else p_x.sample()
            frames.append(x_t)
            state = model.advance(state, x_t, z)
    return torch.stack(frames, 1)


def sample_run(run: Any, *, num: int = 4, length: int = 128, prime: int = 0, out: Path | None = None,
               seed: int = 0, mean: bool | None = None, picture: Picture | None = None) -> SampleResult:
    """Sample ``num`` sequences from a loaded run and write them (and ``picture``'s PNG) to ``out``."""
    from seqvi.data.batches import pad
    from seqvi.data.samples import SAMPLE_MEAN, SAMPLE_WRITERS, write_npz
    from seqvi.engine.runs import write_text_atomic

    prime_x, truth = None, None
    if prime:
        if prime >= length:
            raise SeqviError(f"--prime {prime} must be shorter than --length {length}")
        with run.open_store() as store:
            test = store.split("test")
            picks = [i for i in range(len(test)) if test.lengths[i] >= prime][:num]
            if len(picks) < num:
                raise SeqviError(f"only {len(picks)} test sequences have {prime} steps to prime from")
            prime_x, _ = pad([test.read(i, 0, prime) for i in picks], test.value_scale)
            truth, _ = pad([test.read(i, 0, length) for i in picks], test.value_scale, length)
            truth = truth.numpy()
    use_mean = SAMPLE_MEAN.get(run.spec.adapter, False) if mean is None else mean
    x = sample_sequences(run.model, run.inference, num, length, prime=prime_x, seed=seed,
                         use_mean=use_mean).cpu().numpy()
    out_dir = Path(out) if out is not None else run.run_dir / "samples"
    before = _previous_files(out_dir, legacy=out is None)
    result = SampleResult(out_dir, list(SAMPLE_WRITERS.get(run.spec.adapter, write_npz)(x, out_dir, run.spec, truth=truth)))
    if picture is not None:
        result.paths.append(picture(run.spec.adapter, x, out_dir / "samples.png", prime))
    written = {p.name for p in result.paths if Path(p).parent == out_dir}
    for name in sorted(before - written):
        (out_dir / name).unlink(missing_ok=True)
        result.removed.append(out_dir / name)
    write_text_atomic(out_dir / RECORD, json.dumps({
        "files": sorted(written), "checkpoint": str(run.checkpoint), "num": num, "length": length,
        "prime": prime, "seed": seed, "mean": use_mean}, indent=1))
    return result


def _previous_files(out_dir: Path, legacy: bool) -> set[str]:
    """Names the previous call into ``out_dir`` wrote (plain names inside the folder only)."""
    try:
        names = json.loads((out_dir / RECORD).read_text(encoding="utf-8"))["files"]
        return {n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n
                and n not in (".", "..", RECORD)}
    except FileNotFoundError:
        if legacy and out_dir.is_dir():
            return {p.name for p in out_dir.iterdir() if p.is_file() and LEGACY_NAMES.fullmatch(p.name)}
        return set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()   # an unreadable record: remove nothing
