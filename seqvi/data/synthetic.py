"""Synthetic corpus: sequences sampled from the fixed linear-Gaussian system ``LGSSM_SYSTEM``.

``seqvi download lgssm`` (downloader ``synthetic``) samples the raw file
``<root>/raw/lgssm/lgssm.npz`` from ``seqvi.systems.LGSSM_SYSTEM`` with a
fixed seed: for each split (counts from the manifest's ``splits``, by
default 500 / 100 / 100; ``--limit N`` caps each split at N) an array
``x_<split>`` (N, 50, 3) of observations and ``z_<split>`` (N, 50, 2) of the
latent states that produced them, plus ``system`` (JSON) and ``seed``. The
same seed and counts always give the same arrays.

``seqvi preprocess lgssm`` (adapter ``synthetic``) writes the store: frame
shape (3,), float32, likelihood "gaussian", and NO normalization, so the
system in the store's ``system`` attribute (JSON: A, C, q, r, mu0, s0) is
exactly the one that generated the frames and the LGSSM's Kalman
log-likelihood under it is the true one. A sequence with a non-finite value
(or longer than ``max_steps``) is skipped and counted. The source is the npz
or the folder that holds it. ``write_npz`` writes generated samples.

50 steps of a 2-D rotation by 0.32 rad per step cover about 2.5 turns,
enough for a learned model to have to find the dynamics; 500 training
sequences train a small model in seconds on a CPU.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from seqvi.data.manifest import Manifest
from seqvi.data.download import sha256_of
from seqvi.data.sources import PreprocessReport, skip
from seqvi.data.atomic import atomic_output
from seqvi.data.store import SPLITS, StoreWriter
from seqvi.errors import DataError
from seqvi.systems import LGSSM_SYSTEM

ADAPTER_VERSION = "1"
FILE_NAME = "lgssm.npz"
LENGTH = 50
SEED = 0
DEFAULT_COUNTS = {"train": 500, "valid": 100, "test": 100}
Progress = Callable[[str, int, int | None], None]


def sample_lgssm(system: dict, num: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``num`` sequences of ``length`` steps: x (N, T, X) and z (N, T, Z), float64."""
    A, C = np.asarray(system["A"], float), np.asarray(system["C"], float)
    q, r = np.sqrt(np.asarray(system["q"], float)), np.sqrt(np.asarray(system["r"], float))
    mu0, s0 = np.asarray(system["mu0"], float), np.sqrt(np.asarray(system["s0"], float))
    z = np.empty((num, length, A.shape[0]))
    z[:, 0] = mu0 + s0 * rng.standard_normal((num, A.shape[0]))
    for t in range(1, length):
        z[:, t] = z[:, t - 1] @ A.T + q * rng.standard_normal((num, A.shape[0]))
    x = z @ C.T + r * rng.standard_normal((num, length, C.shape[0]))
    return x, z


def download_synthetic(manifest: Manifest, raw: Path, progress: Progress | None = None,
                       limit: int | None = None) -> dict[str, str]:
    """Write ``raw/lgssm.npz``; returns {file name: sha256} like the HTTP downloader."""
    counts = {split: int(manifest.splits.get(split, DEFAULT_COUNTS[split])) for split in SPLITS}
    if limit:
        counts = {split: min(n, limit) for split, n in counts.items()}
    arrays: dict[str, np.ndarray] = {}
    for i, split in enumerate(SPLITS):
        x, z = sample_lgssm(LGSSM_SYSTEM, counts[split], LENGTH, np.random.default_rng([SEED, i]))
        arrays[f"x_{split}"], arrays[f"z_{split}"] = x, z
        if progress:
            progress(FILE_NAME, i + 1, len(SPLITS))
    arrays["system"] = np.asarray(json.dumps(LGSSM_SYSTEM, sort_keys=True))
    arrays["seed"] = np.asarray(SEED)
    path = raw / FILE_NAME
    with atomic_output(path) as handle:
        np.savez(handle, **arrays)
    return {FILE_NAME: sha256_of(path)}


def preprocess_synthetic(manifest: Manifest, source: Path, out_path: Path, *, strict: bool = False,
                         max_steps: int = 100_000, progress: Progress | None = None) -> PreprocessReport:
    """Copy the npz's observations into the store at ``out_path``, unnormalized."""
    started = time.perf_counter()
    report = PreprocessReport(manifest.name)
    path = _npz_of(source)
    report.sources[path.name] = sha256_of(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz ({err}); run `seqvi download {manifest.name}` again") from None
    missing = [k for k in [f"x_{s}" for s in SPLITS] + ["system"] if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)}; run `seqvi download {manifest.name}` again")
    try:
        system = json.loads(str(arrays["system"]))
        x_dim = len(system["C"])
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: array 'system' is not the JSON of a system with a matrix C ({err}); "
                        f"run `seqvi download {manifest.name}` again") from None
    writer = StoreWriter(out_path, (x_dim,), "float32")
    try:
        total = sum(len(arrays[f"x_{s}"]) for s in SPLITS)
        done = 0
        for split in SPLITS:
            x = arrays[f"x_{split}"]
            if x.ndim != 3 or x.shape[2] != x_dim:
                raise DataError(f"{path}: x_{split} has shape {x.shape}, expected (N, T, {x_dim})")
            for i, seq in enumerate(x):
                name = f"{split}/{i:04d}"
                done += 1
                if progress:
                    progress(path.name, done, total)
                if not np.all(np.isfinite(seq)):
                    skip(report, name, "non-finite values", strict)
                    continue
                if len(seq) > max_steps:
                    skip(report, name, f"{len(seq)} steps > --max-steps {max_steps}", strict)
                    continue
                writer.add(split, name, seq)
                report.sequences[split] = report.sequences.get(split, 0) + 1
                report.steps[split] = report.steps.get(split, 0) + len(seq)
        report.path = writer.close({
            "dataset": manifest.name,
            "adapter": "synthetic",
            "adapter_version": ADAPTER_VERSION,
            "likelihood": "gaussian",
            "resolution": manifest.resolution,
            "normalization": "none",
            "system": system,
            "seed": int(arrays.get("seed", -1)),
            "sources": report.sources,
            "skipped": [list(s) for s in report.skipped],
        })
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


def write_npz(x: np.ndarray, out_dir: Path, spec: object, truth: np.ndarray | None = None,
              before: Callable[[Path], None] | None = None) -> list[Path]:
    """Generated sequences (N, T, X) as ``samples.npz`` (array ``x``): the sample writer for this adapter."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "samples.npz"
    if before:
        before(path)
    with atomic_output(path) as handle:
        np.savez(handle, x=np.asarray(x, dtype=np.float32))
    return [path]


def _npz_of(source: Path) -> Path:
    if source.is_dir():
        found = sorted(source.glob("*.npz"))
        if not found:
            raise DataError(f"{source}: no .npz file in this folder")
        return source / FILE_NAME if (source / FILE_NAME).exists() else found[0]
    if source.suffix.lower() != ".npz":
        raise DataError(f"{source}: expected a .npz file or a folder holding one")
    return source
