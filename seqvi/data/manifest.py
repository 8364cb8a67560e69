"""Data set manifests (``datasets/NAME.yaml``) and where data lives on disk.

A manifest names the adapter that turns raw files into a store, how to obtain
the raw files (``http``: listed URLs with mirrors; ``music21``: export from an
installed package), the time resolution and the licence. The data root holds
``raw/NAME/`` and ``processed/NAME.h5``; it is ``--root``, else ``$SEQVI_DATA``,
else the repository's ``datasets/`` folder (next to the manifests).
"""

from __future__ import annotations

import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from seqvi.config import coerce, did_you_mean, read_yaml
from seqvi.errors import RecipeError, SeqviError

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "datasets"


def manifest_dir() -> Path:
    """``$SEQVI_MANIFESTS`` (extra or private data sets), else the repository's ``datasets/``."""
    env = os.environ.get("SEQVI_MANIFESTS")
    return Path(env).expanduser() if env else MANIFEST_DIR


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    adapter: str
    download: str
    steps_per_beat: int = 1
    resolution: str = ""
    licence: str = ""
    layout: str = ""
    splits: dict = field(default_factory=dict)
    files: tuple = ()


def available() -> list[str]:
    return sorted(p.stem for p in manifest_dir().glob("*.yaml"))


def load_manifest(name: str) -> Manifest:
    path = manifest_dir() / f"{name}.yaml"
    if not path.exists():
        raise SeqviError(f"unknown data set '{name}'{did_you_mean(name, available())} "
                         f"(known: {', '.join(available())})")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a manifest must be a mapping of fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(Manifest)
    for key, value in raw.items():
        if key in hints and key != "files":
            coerce(value, hints[key], key, str(path))
    if raw.get("steps_per_beat", 1) < 1:
        raise RecipeError(f"{path}: 'steps_per_beat' must be at least 1, got {raw['steps_per_beat']}")
    try:
        files = tuple(
            {"name": str(f["name"]), "urls": [str(u) for u in f.get("urls", [])],
             "sha256": f.get("sha256")}
            for f in raw.pop("files", []) or []
        )
        return Manifest(files=files, **raw)
    except (TypeError, KeyError) as err:
        raise RecipeError(f"{path}: malformed manifest ({err})") from None


def data_root(root: str | Path | None = None) -> Path:
    if root:
        return Path(root).expanduser()
    env = os.environ.get("SEQVI_DATA")
    return Path(env).expanduser() if env else MANIFEST_DIR


def raw_dir(name: str, root: str | Path | None = None) -> Path:
    return data_root(root) / "raw" / name


def store_path(name: str, root: str | Path | None = None) -> Path:
    return data_root(root) / "processed" / f"{name}.h5"
