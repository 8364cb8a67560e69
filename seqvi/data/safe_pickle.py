"""Load the Boulanger-Lewandowski (2012) polyphonic-music pickles safely.

The published files (JSB Chorales, MuseData, Nottingham, Piano-midi.de) are
Python 2 pickles of ``{'train': [...], 'valid': [...], 'test': [...]}``: each
split is a list of sequences, each sequence a list of time steps, each step a
list (or tuple) of the MIDI note numbers sounding, as ints or integral floats
such as ``60.0``.

A pickle can run any importable callable while loading, so this loader
refuses every global (``find_class``) and every persistent id: plain
containers, numbers and strings need neither, so a genuine file loads and a
crafted one fails before any code runs. Python 2 ``str`` objects are decoded
as latin-1. The loaded object is then checked step by step; a wrong shape is
reported with its path, e.g. ``train[3][17]``. Only the three splits are
kept; other top-level keys are ignored. Notes come back as Python ints.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from seqvi.errors import DataError

SPLITS = ("train", "valid", "test")
# A pickle can refer to one list many times (memo), so a few KB can stand for billions of steps
# ("billion laughs"). Every step and note of a genuine file costs at least one byte of it.
EXPANSION = 8


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler that knows no classes or functions at all."""

    def __init__(self, data: bytes, name: str):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self._name = name

    def find_class(self, module, name):
        raise DataError(
            f"{self._name}: refused to load the global {module}.{name}; a note pickle holds only "
            "lists of numbers, so this file is not one (or was tampered with): get it from the manifest's URL"
        )

    def persistent_load(self, pid):
        raise DataError(f"{self._name}: refused a persistent id in the pickle; this is not a note pickle")


def _note(value, name: str, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise DataError(f"{name}: {where} is {value!r}, expected an integer MIDI note number")


def _check_list(value, name: str, where: str, expected: str, allow_tuple: bool = False) -> None:
    kinds = (list, tuple) if allow_tuple else (list,)
    if not isinstance(value, kinds):
        raise DataError(f"{name}: {where} is a {type(value).__name__}, expected {expected}")


def _validate(obj, name: str, budget: int | None = None) -> dict[str, list[list[list[int]]]]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise DataError(f"{name}: the pickle holds a {type(obj).__name__}, expected a dict with str keys {SPLITS}")
    missing = [s for s in SPLITS if s not in obj]
    if missing:
        raise DataError(f"{name}: the pickle has no split {missing[0]!r} (keys: {sorted(obj)}); expected {SPLITS}")
    corpus = {}
    work = 0
    for split in SPLITS:
        _check_list(obj[split], name, split, "a list of sequences")
        sequences = []
        for i, sequence in enumerate(obj[split]):
            _check_list(sequence, name, f"{split}[{i}]", "a list of time steps")
            steps = []
            for t, step in enumerate(sequence):
                where = f"{split}[{i}][{t}]"
                _check_list(step, name, where, "a list of MIDI note numbers", allow_tuple=True)
                work += 1 + len(step)
                if budget is not None and work > budget:
                    raise DataError(f"{name}: the pickle expands past {budget:,} steps and notes at {where} "
                                    f"(shared references: a decompression bomb, not a note pickle); refusing it")
                steps.append([_note(n, name, f"{where}[{j}]") for j, n in enumerate(step)])
            sequences.append(steps)
        corpus[split] = sequences
    return corpus


def load_note_pickle(path: str | Path) -> dict[str, list[list[list[int]]]]:
    """Load and check a note pickle: ``{split: [sequence: [step: [note, ...]]]}``.

    Raises DataError (one line, naming the file) for a refused global, a
    truncated or garbled pickle, or a wrong structure.
    """
    path = Path(path)
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{name}: cannot read the file ({e.strerror or e}); check the path") from e
    try:
        obj = _NoGlobalsUnpickler(data, name).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, RecursionError, ...
        detail = " ".join(str(e).split())
        raise DataError(
            f"{name}: not a readable pickle ({type(e).__name__}{': ' + detail if detail else ''}); "
            "the file is truncated or corrupt, download it again"
        ) from e
    return _validate(obj, name, budget=EXPANSION * len(data) + 100_000)
