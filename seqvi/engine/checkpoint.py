"""Checkpoints: atomic writes, safe loads, and every RNG state for exact resume.

A checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(weights_only=True)``::

    format, version, config (resolved recipe dict), data (DataSpec dict),
    model, inference, optimizer, scheduler (state dicts),
    epoch, batch (next batch index within epoch), step, best (valid nats/step),
    rng: {torch: ByteTensor, cuda: [ByteTensor, ...]}

Writes go to a temporary file in the same folder, are fsynced, then renamed
over the old file: a crash at any point leaves the previous checkpoint whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from seqvi.errors import CheckpointError

FORMAT = "seqvi-checkpoint"
VERSION = 1
_WHERE = "seqvi checkpoints are written by `seqvi train` into RUN/checkpoints/"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def load(path: Path, map_location: Any = "cpu") -> dict:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_file() and (kind := torch_file_kind(path)) and "TorchScript" in kind:
        raise CheckpointError(f"{path}: not a seqvi checkpoint ({kind}; {_WHERE})")  # torch.load would warn first
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        if "GLOBAL" in str(err):  # the weights-only unpickler met a class or function: possibly code
            raise CheckpointError(f"{path}: refused by the weights-only loader ({reason(err)}); a seqvi "
                                  f"checkpoint holds only tensors and plain containers, so nothing in it "
                                  f"was run") from None
        kind = torch_file_kind(path)
        if kind:
            raise CheckpointError(f"{path}: not a seqvi checkpoint ({kind}; {_WHERE})") from None
        raise CheckpointError(f"{path}: not a loadable seqvi checkpoint (truncated or corrupt: {reason(err)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seqvi checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})"
        )
    return payload


def torch_file_kind(path: Path) -> str | None:
    """What a complete torch file that ``load`` refused is ("a TorchScript archive", ...), else None.

    torch's own format is a zip holding ``<name>/data.pkl``; a TorchScript archive also holds
    ``<name>/constants.pkl`` and code. A truncated file has no readable central directory and
    gives None, so "truncated or corrupt" stays for the files that are.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "a TorchScript archive (torch.jit.save)"
    if any(n.endswith("/data.pkl") for n in names):
        return "a torch file that is not a seqvi checkpoint"
    return None


def reason(err: BaseException) -> str:
    """The informative line of an exception from torch (which wraps the cause in advice), shortened."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation",
              "Error(s) in loading state_dict")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boiler)] or lines or [type(err).__name__]
    text = useful[0].removeprefix("WeightsUnpickler error:").strip() or type(err).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def resolve(path: str | Path) -> Path:
    """A run directory (best.pt, else last.pt) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            candidate = path / "checkpoints" / name
            if candidate.exists():
                return candidate
        raise CheckpointError(f"{path}: run directory has no checkpoints/best.pt or last.pt")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run directory or checkpoint")
    return path
