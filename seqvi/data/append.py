"""Append sequences to an existing store's split, crash-safe: the data side of ``seqvi collect``.

    append_sequences(path, split, source, [(name, frames, inputs, rewards), ...]) -> AppendResult

The new sequences go to the end of ``split`` under a NEW source name (their
names are ``<source>/...``; a source already in the store is refused, so a
repeated call cannot add the same episodes twice). The sequences already in
the store keep their bytes, order and names, and the statistics ``mean`` /
``std`` stay those of the original training split: a model trained on the
store sees the same normalization before and after.

Crash safety. HDF5 has no journal: a process killed while it changes a file
in place can leave the file's metadata (chunk B-trees, object headers)
half written and the whole file unreadable. So the append never writes to
the store itself. It

1. takes an exclusive lock on ``NAME.h5.lock`` (two collectors cannot lose
   each other's episodes; the lock dies with its process),
2. checks every new sequence against the store (frame shape and dtype,
   inputs width, rewards, finite values) before writing anything,
3. copies the store byte for byte to ``NAME.h5.append.tmp`` (a kernel copy:
   the existing sequences are not decoded or re-encoded),
4. appends to the copy's resizable datasets, grows ``offsets`` / ``names`` in
   place and records the source in the ``sources`` and ``collected``
   attributes,
5. fsyncs the copy, renames it over the store (``os.replace``, atomic) and
   fsyncs the folder.

A kill before step 5 leaves the store exactly as it was (and a stale
``.append.tmp``, removed by the next append); after it, the new store is
complete. A reader that has the store open keeps reading the old file (its
inode) until it opens the store again. The price is one copy of the store
per append: O(store size) of sequential I/O (about 0.1 s per 100 MB here),
small beside the training between two collections in PlaNet's schedule.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from seqvi.data.atomic import fsync_dir
from seqvi.data.store import Store, SplitData, store_lock, write_index
from seqvi.errors import DataError

Sequence = tuple  # (name, frames (T, *frame_shape), inputs (T, A) or None, rewards (T,) or None)


@dataclass
class AppendResult:
    path: Path
    split: str
    source: str
    sequences: int
    steps: int
    first: int        # index of the first new sequence in the split


def append_sequences(path: str | Path, split: str, source: str, sequences: list[Sequence]) -> AppendResult:
    """Append ``sequences`` to ``split`` of the store at ``path`` under ``source`` (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".append.tmp")
    check_sequences(path, split, source, sequences)     # before the lock: a clear error without waiting
    with store_lock(path, wait=True):
        checked = check_sequences(path, split, source, sequences)   # again under the lock: the store may have grown
        tmp.unlink(missing_ok=True)          # left by an append that was killed
        try:
            shutil.copyfile(path, tmp)
            first = _append(tmp, split, source, checked)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    return AppendResult(path, split, source, len(checked), sum(len(c[1]) for c in checked), first)


def check_sequences(path: str | Path, split: str, source: str, sequences: list[Sequence]) -> list[Sequence]:
    """Every check of ``append_sequences`` without writing: the sequences cast to the store's dtypes."""
    path = Path(path)
    if not source or any(c in source for c in "\n\r\0") or source != source.strip():
        raise DataError(f"{path}: source name {source!r} must be a non-empty single line without outer spaces")
    if not sequences:
        raise DataError(f"{path}: nothing to append under source '{source}'")
    if not path.exists():
        raise DataError(f"{path}: no processed store; run `seqvi preprocess NAME` first")
    with Store(path) as store:
        data = store.split(split)
        checked = [_check(store, data, source, item) for item in sequences]
        _check_new_source(store, data, source)
    return checked


def _check_new_source(store: Store, data: SplitData, source: str) -> None:
    sources = store.attrs.get("sources") or {}
    collected = [c.get("source") for c in store.attrs.get("collected") or [] if isinstance(c, dict)]
    if source in sources or source in collected or any(n.startswith(source + "/") for n in data.names):
        raise DataError(f"{store.path}: source '{source}' is already in the store; "
                        f"name each collection anew (e.g. with its iteration number)")


def _check(store: Store, data: SplitData, source: str, item: Sequence) -> Sequence:
    """One sequence checked and cast to the store's dtypes: (name, frames, inputs, rewards)."""
    name, frames, inputs, rewards = item
    where = f"{store.path}: appended sequence '{source}/{name}'"
    frames = np.asarray(frames)
    if frames.ndim < 1 or frames.shape[1:] != store.frame_shape or len(frames) == 0:
        raise DataError(f"{where} has frames of shape {frames.shape}, the store's are (T, "
                        f"{', '.join(map(str, store.frame_shape))})")
    dtype = np.dtype(str(store.attrs.get("dtype", data.frames.dtype)))
    if dtype.kind in "ui" and frames.dtype != dtype:
        raise DataError(f"{where} has frames of dtype {frames.dtype}, the store's are {dtype}")
    controls = []
    for key, values, present, shape in (("inputs", inputs, data.has_inputs,
                                         (len(frames), data.inputs.shape[1]) if data.has_inputs else None),
                                        ("rewards", rewards, data.has_rewards, (len(frames),))):
        if (values is not None) != present:
            raise DataError(f"{where} {'has no' if present else 'has'} {key}, the store "
                            f"{'has' if present else 'has none'}")
        if values is not None:
            values = np.asarray(values, dtype=np.float32)
            if values.shape != shape:
                raise DataError(f"{where} has {key} of shape {values.shape}, expected {shape}")
            if not np.all(np.isfinite(values)):
                raise DataError(f"{where} has non-finite {key}")
        controls.append(values)
    if frames.dtype.kind == "f" and not np.all(np.isfinite(frames)):
        raise DataError(f"{where} has non-finite frames")
    return f"{source}/{name}", frames.astype(dtype, copy=False), controls[0], controls[1]


def _append(path: Path, split: str, source: str, checked: list[Sequence]) -> int:
    digest = hashlib.sha256()
    with h5py.File(path, "r+") as f:
        group = f[split]
        offsets = [int(o) for o in group["offsets"][:]]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group["names"][:]]
        first = len(names)
        for name, frames, inputs, rewards in checked:
            start = offsets[-1]
            for key, values in (("frames", frames), ("inputs", inputs), ("rewards", rewards)):
                if values is not None:
                    group[key].resize(start + len(frames), axis=0)
                    group[key][start:] = values
                    digest.update(np.ascontiguousarray(values).tobytes())
            offsets.append(start + len(frames))
            names.append(name)
        write_index(group, np.asarray(offsets, dtype=np.int64), names)
        sources = _json_attr(f, "sources", {})
        sources[source] = digest.hexdigest()
        collected = _json_attr(f, "collected", [])
        collected.append({"source": source, "split": split, "sequences": len(checked),
                          "steps": int(sum(len(c[1]) for c in checked))})
        f.attrs["sources"] = json.dumps(sources)
        f.attrs["collected"] = json.dumps(collected)
    return first


def _json_attr(f: h5py.File, key: str, default):
    value = f.attrs.get(key)
    if value is None:
        return default
    try:
        return json.loads(value.decode() if isinstance(value, bytes) else str(value))
    except json.JSONDecodeError:
        return default


def used_sources(path: str | Path, split: str) -> set[str]:
    """Source names already in ``split`` of the store at ``path`` (preprocessed and collected):
    ``append_sequences`` refuses them, so a caller can pick a new one, or skip a collection it made."""
    with Store(Path(path)) as store:
        data = store.split(split)
        sources = set(store.attrs.get("sources") or {})
        sources |= {c.get("source") for c in store.attrs.get("collected") or [] if isinstance(c, dict)}
        sources |= {n.split("/", 1)[0] for n in data.names if "/" in n}
    return sources
