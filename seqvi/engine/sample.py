"""Sampling sequences from a trained model, optionally primed by real data.

Unprimed: z_t ~ p(z_t | h_{t-1}), h~ = transit(h_{t-1}, z_t), x_t ~ p(x_t | z_t, h~),
h_t = advance(observe(h~, x_t), x_t, z_t) (the step order of ``seqvi.models.base``).
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

A call is all or nothing. The files are written into a staging folder
inside the output folder (``.seqvi-samples.<random>.tmp/``) and moved into
place only when all are written; before the move the record lists the
previous call's files and this call's, after it this call's. So a full disk
(one line, exit 2), SIGTERM / SIGUSR1 (exit 75) or Ctrl-C (exit 130; the
same signal handling as ``train``: a flag, acted on between two files)
leaves the folder as it was, and a call killed outright (SIGKILL) leaves
only its staging folder, which the next call removes. One call at a time
writes a folder (``.seqvi-samples.lock``, ``flock``); another is refused in
one line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from seqvi.config import read_config_text
from seqvi.engine.lifecycle import StopFlag
from seqvi.errors import SeqviError

RECORD = ".seqvi-samples.json"
LOCK = ".seqvi-samples.lock"
STAGING_PREFIX = ".seqvi-samples."
STAGING_GLOB = ".seqvi-samples.*.tmp"
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
            if t < primed:
                x_t = prime[:, t].to(device)
                state = model.observe(state, x_t)
                q = inference.posterior(model, x_t, state, model.prior(state), q_state)
                z, q_state = q.q_z.sample(), q.q_state
                state = model.transit(state, z)
            else:
                z = model.prior(state).sample()
                state = model.transit(state, z)
                p_x = model.emission(z, state)
                x_t = p_x.mean if use_mean else p_x.sample()
                state = model.observe(state, x_t)
            frames.append(x_t)
            state = model.advance(state, x_t, z)
    return torch.stack(frames, 1)


def sample_run(run: Any, *, num: int = 4, length: int = 128, prime: int = 0, out: Path | None = None,
               seed: int = 0, mean: bool | None = None, picture: Picture | None = None) -> SampleResult:
    """Sample ``num`` sequences from a loaded run and write them (and ``picture``'s PNG) to ``out``."""
    from seqvi.data.atomic import write_text_atomic
    from seqvi.data.batches import pad
    from seqvi.data.samples import SAMPLE_MEAN, SAMPLE_WRITERS, write_npz

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
    out_dir = Path(out) if out is not None else run.run_dir / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir), StopFlag() as stop:
        for stale in out_dir.glob(STAGING_GLOB):      # left by a call that was killed outright
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out_dir.glob(f".{RECORD}.*.tmp"):
            stale.unlink(missing_ok=True)
        x = sample_sequences(run.model, run.inference, num, length, prime=prime_x, seed=seed,
                             use_mean=use_mean).cpu().numpy()
        before = _previous_files(out_dir, legacy=out is None)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=out_dir))
        try:
            count = [0]

            def check(path: Path) -> None:   # before each file: a signal stops the call here
                stop.stopped(f"after {count[0]} files of this call; nothing was replaced in {out_dir} "
                             f"(rerun to write them)")
                count[0] += 1

            staged = list(SAMPLE_WRITERS.get(run.spec.adapter, write_npz)(x, staging, run.spec, truth=truth, before=check))
            if picture is not None:
                check(staging / "samples.png")
                staged.append(picture(run.spec.adapter, x, staging / "samples.png", prime))
            check(out_dir / RECORD)
            written = [Path(p).name for p in staged]
            settings = {"checkpoint": str(run.checkpoint), "num": num, "length": length, "prime": prime,
                        "seed": seed, "mean": use_mean}
            # the record covers every file that may be in the folder while they move (a kill mid-way)
            write_text_atomic(out_dir / RECORD, json.dumps({"files": sorted(before | set(written)),
                                                            "complete": False, **settings}, indent=1))
            result = SampleResult(out_dir)
            for name in written:
                os.replace(staging / name, out_dir / name)
                result.paths.append(out_dir / name)
            for name in sorted(before - set(written)):
                (out_dir / name).unlink(missing_ok=True)
                result.removed.append(out_dir / name)
            write_text_atomic(out_dir / RECORD, json.dumps({"files": sorted(written), "complete": True,
                                                            **settings}, indent=1))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return result


@contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    import fcntl   # POSIX only: imported here so that the module loads everywhere

    with open(out_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SeqviError(f"{out_dir}: another `seqvi sample` is writing this folder ({LOCK}); wait for it "
                             f"or give another --out") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _previous_files(out_dir: Path, legacy: bool) -> set[str]:
    """Names the previous call into ``out_dir`` wrote (plain names inside the folder only)."""
    try:
        names = json.loads(read_config_text(out_dir / RECORD, what="a samples record"))["files"]
        return {n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n
                and n not in (".", "..", RECORD, LOCK)}
    except FileNotFoundError:
        if legacy and out_dir.is_dir():
            return {p.name for p in out_dir.iterdir() if p.is_file() and LEGACY_NAMES.fullmatch(p.name)}
        return set()
    except (OSError, ValueError, KeyError, TypeError, SeqviError):
        return set()   # an unreadable record: remove nothing
