"""The processed corpus: one HDF5 file per data set, read lazily.

Layout of ``<root>/processed/NAME.h5``::

    /<split>/frames   (N_frames, *frame_shape)  all sequences of the split, concatenated
    /<split>/offsets  (N_seq + 1,) int64        sequence i is frames[offsets[i]:offsets[i+1]]
    /<split>/names    (N_seq,) utf-8            source member each sequence came from
    attrs (file)      dataset, adapter, adapter_version, frame_shape, dtype,
                      likelihood ("bernoulli" | "gaussian"), resolution text,
                      steps_per_beat, sources (JSON: file -> sha256), skipped (JSON),
                      mean / std (per feature, from the training split),
                      value_scale (optional: batches multiply stored values by it,
                      e.g. 1/255 for uint8 video)

The writer streams sequence by sequence into resizable chunked datasets, so
memory does not grow with the corpus, and writes under a temporary name that
is renamed only when complete: an interrupted preprocess leaves the previous
store intact. The reader keeps the file open and slices one sequence (or one
crop of it) at a time; nothing reads a whole split into memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from seqvi.errors import DataError

SPLITS = ("train", "valid", "test")


class StoreWriter:
    """Stream sequences into a new store; ``close()`` makes it visible atomically."""

    def __init__(self, path: str | Path, frame_shape: tuple[int, ...], dtype: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.file = h5py.File(self.tmp, "w")
        self.counts: dict[str, int] = {}
        self._offsets: dict[str, list[int]] = {}
        self._names: dict[str, list[str]] = {}
        self._sum: np.ndarray | None = None
        self._sumsq: np.ndarray | None = None
        self._n = 0

    def add(self, split: str, name: str, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.shape[1:] != self.frame_shape:
            raise DataError(f"{name}: frame shape {frames.shape[1:]} != store's {self.frame_shape}")
        if split not in self._offsets:
            group = self.file.create_group(split)
            chunk = (max(1, min(4096, (1 << 16) // max(1, int(np.prod(self.frame_shape))))),)
            group.create_dataset(
                "frames", shape=(0, *self.frame_shape), maxshape=(None, *self.frame_shape),
                dtype=self.dtype, chunks=chunk + self.frame_shape, compression="lzf",
            )
            self._offsets[split] = [0]
            self._names[split] = []
        data = self.file[split]["frames"]
        start = self._offsets[split][-1]
        data.resize(start + len(frames), axis=0)
        data[start:] = frames.astype(self.dtype, copy=False)
        self._offsets[split].append(start + len(frames))
        self._names[split].append(name)
        if split == "train":
            flat = frames.reshape(len(frames), -1).astype(np.float64)
            if self._sum is None:
                self._sum = np.zeros(flat.shape[1])
                self._sumsq = np.zeros(flat.shape[1])
            self._sum += flat.sum(0)
            self._sumsq += (flat ** 2).sum(0)
            self._n += len(frames)

    def close(self, attrs: dict[str, Any]) -> Path:
        for split in SPLITS:
            if split not in self._offsets or len(self._names[split]) == 0:
                self.abort()
                skipped = attrs.get("skipped") or []
                why = (f" ({len(skipped)} files skipped; first: {skipped[0][0]}: "
                       f"{str(skipped[0][1]).removeprefix(str(skipped[0][0]) + ': ')})" if skipped else "")
                raise DataError(f"{self.path}: split '{split}' is empty after preprocessing{why}; "
                                f"the previous store, if any, is unchanged")
        for split, offsets in self._offsets.items():
            group = self.file[split]
            group.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
            group.create_dataset("names", data=np.asarray(self._names[split], dtype=object),
                                 dtype=h5py.string_dtype())
        mean = self._sum / max(self._n, 1)
        std = np.sqrt(np.maximum(self._sumsq / max(self._n, 1) - mean ** 2, 0.0))
        self.file.attrs["frame_shape"] = np.asarray(self.frame_shape, dtype=np.int64)
        self.file.attrs["dtype"] = self.dtype.name
        self.file.attrs["mean"] = mean.astype(np.float32)
        self.file.attrs["std"] = std.astype(np.float32)
        for key, value in attrs.items():
            self.file.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        self.file.flush()
        self.file.close()
        with open(self.tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class SplitData:
    """One split of an open store: lengths up front, frames read on demand."""

    def __init__(self, group: h5py.Group, path: Path, split: str, value_scale: float = 1.0,
                 frame_shape: tuple[int, ...] | None = None):
        self.value_scale = float(value_scale)  # multiplies stored values when batches are made
        self.path, self.split = path, split
        try:
            self.frames = group["frames"]
            self.offsets = np.asarray(group["offsets"][:], dtype=np.int64)
            self.names = [n.decode() if isinstance(n, bytes) else str(n) for n in group["names"][:]]
        except (KeyError, OSError, ValueError, TypeError, AttributeError) as err:
            raise DataError(f"{path}: split '{split}' is incomplete ({err})") from None
        if frame_shape is not None and tuple(self.frames.shape[1:]) != tuple(frame_shape):
            raise DataError(f"{path}: split '{split}' frames have shape {tuple(self.frames.shape[1:])}, "
                            f"the store's frame_shape attribute says {tuple(frame_shape)}")
        if (self.offsets.ndim != 1 or len(self.offsets) != len(self.names) + 1 or self.offsets[0] != 0
                or np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != self.frames.shape[0]):
            raise DataError(f"{path}: split '{split}' offsets do not match its frames")
        self.lengths = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def read(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` of sequence ``i`` (clipped to its length)."""
        length = int(self.lengths[i])
        stop = length if stop is None else min(stop, length)
        base = int(self.offsets[i])
        try:
            return self.frames[base + start: base + stop]
        except OSError as err:  # a corrupt chunk: h5py reads lazily, so it shows only here
            raise DataError(f"{self.path}: split '{self.split}' sequence {i} ({self.names[i]}) is unreadable "
                            f"({' '.join(str(err).split())[:160]}); run `seqvi preprocess` again") from None


class Store:
    """An open ``NAME.h5``; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            name = self.path.name.removesuffix(".h5")
            raise DataError(f"{self.path}: no processed store; run `seqvi download {name}` and `seqvi preprocess "
                            f"{name}` first (or point data.root / $SEQVI_DATA at the data root that has it)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as err:
            raise DataError(f"{self.path}: not a readable HDF5 store ({err})") from None
        try:
            self.attrs = {k: _decode_attr(v) for k, v in self.file.attrs.items()}
            self.frame_shape = tuple(int(s) for s in self.attrs["frame_shape"])
        except (KeyError, OSError, ValueError) as err:
            self.file.close()
            raise DataError(f"{self.path}: store attributes are missing or corrupt ({err})") from None
        self._splits: dict[str, SplitData] = {}

    @property
    def likelihood(self) -> str:
        return str(self.attrs.get("likelihood", "gaussian"))

    @property
    def splits(self) -> list[str]:
        return [s for s in self.file.keys()]

    def split(self, name: str) -> SplitData:
        if name not in self._splits:
            if name not in self.file:
                raise DataError(f"{self.path}: no split '{name}' (has: {', '.join(self.splits)})")
            self._splits[name] = SplitData(self.file[name], self.path, name,
                                           float(self.attrs.get("value_scale", 1.0)), self.frame_shape)
        return self._splits[name]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
