"""Checkpoints: atomic writes, safe loads, and every RNG state for exact resume.

A checkpoint is a dict of tensors and plain containers only, so it loads with
``torch.load(weights_only=True)``::

    format, version, config (resolved recipe dict), data (DataSpec dict),
    model, inference, optimizer, scheduler (state dicts),
    epoch, batch (next batch index within epoch), step, best (valid nats/step),
    rng: {torch: ByteTensor, cuda: [ByteTensor, ...]}

Writes go to a temporary file in the same folder, are fsynced, then renamed
over the old file: a crash at any point leaves the previous checkpoint whole,
and a full disk is one line naming the space needed, nothing partial left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqvi.data.atomic import atomic_output
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
    """Write ``payload`` to ``path`` atomically (``seqvi.data.atomic``), refusing first where the disk is short.

    The space needed is the payload's tensor bytes plus torch's framing; a full disk is one line
    (``DiskFull``) and leaves no temporary file, the previous checkpoint whole. A temporary file
    of a write that was killed (SIGKILL) is removed here: one process trains a run (its lock).
    """
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    with atomic_output(path, needed=payload_bytes(payload), what=f"checkpoint {path.name}") as handle:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)


def payload_bytes(payload: Any) -> int:
    """About the bytes ``torch.save`` writes for ``payload``: each storage once with its zip entry, plus 8 kB."""
    seen: dict[tuple, int] = {}

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            storage = obj.untyped_storage()
            seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes() + 64 + 192  # data + alignment + entry
        elif isinstance(obj, dict):
            for value in obj.values():
                walk(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                walk(value)

    walk(payload)
    return sum(seen.values()) + (8 << 10)


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
