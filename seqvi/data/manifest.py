"""Data set manifests (``seqvi/data/manifests/NAME.yaml``) and where data lives on disk.

A manifest names the adapter that turns raw files into a store, how to obtain
the raw files (``http``: listed URLs with mirrors; ``music21``: export from an
installed package; ``synthetic``: sampled from a fixed system; ``gymnasium``:
episodes generated offline in a simulator), the time resolution and the licence.
Interaction data sets (adapter ``control``) also name the simulator ``env`` (a
gymnasium id), the ``seed`` of the generated episodes, their length
``episode_steps`` in environment steps and the ``action_repeat`` R (one stored
step is R environment steps with the same action); ``splits`` then maps each
split to its number of episodes. The manifests are package data: they ship
inside the installed package (wheel or source checkout alike);
``$SEQVI_MANIFESTS`` points at a folder of other manifests instead (extra or
private data sets).

The data root holds ``raw/NAME/`` and ``processed/NAME.h5``. It is ``--root``
(or a recipe's ``data.root``), else ``$SEQVI_DATA``, else:

* in a source checkout (the package imported from a clone, ``pip install -e``):
  the repository's ``datasets/`` folder, wherever the command runs;
* in an installed package: ``./datasets`` of the current directory, the way
  runs go to ``./runs``. Set ``$SEQVI_DATA`` once to use one data root from
  every directory.
"""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from seqvi.config import coerce, did_you_mean, read_yaml
from seqvi.errors import RecipeError, SeqviError

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
_REPO = Path(__file__).resolve().parents[2]


def manifest_dir() -> Path:
    """``$SEQVI_MANIFESTS`` (extra or private data sets), else the manifests shipped with the package."""
    env = os.environ.get("SEQVI_MANIFESTS")
    return Path(env).expanduser() if env else MANIFEST_DIR


def source_checkout() -> Path | None:
    """The repository this package is imported from, if it is a source checkout (not site-packages)."""
    if (_REPO / "pyproject.toml").is_file() and (_REPO / "seqvi" / "data" / "manifest.py").is_file():
        return _REPO
    return None


def default_data_root() -> Path:
    checkout = source_checkout()
    return checkout / "datasets" if checkout is not None else Path("datasets")


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
    env: str = ""              # gymnasium environment id (interaction data)
    seed: int = 0              # seed of generated episodes
    episode_steps: int = 0     # environment steps per generated episode
    action_repeat: int = 1     # environment steps per stored step (same action, rewards summed)


MINIMA = {"steps_per_beat": 1, "seed": 0, "episode_steps": 0, "action_repeat": 1}


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
    for key, least in MINIMA.items():
        if raw.get(key, least) < least:
            raise RecipeError(f"{path}: '{key}' must be at least {least}, got {raw[key]}")
    files = tuple(_file_entry(entry, f"files[{i}]", path) for i, entry in enumerate(_files_list(raw, path)))
    raw.pop("files", None)
    try:
        return Manifest(files=files, **raw)
    except (TypeError, KeyError) as err:
        raise RecipeError(f"{path}: malformed manifest ({err})") from None


def _files_list(raw: dict, path: Path) -> list:
    files = raw.get("files")
    if files is None:
        return []
    if not isinstance(files, list):
        raise RecipeError(f"{path}: 'files' must be a list of {{name, urls, sha256}} entries, got {files!r:.60}")
    return files


def _file_entry(entry, key: str, path: Path) -> dict:
    """One ``files`` entry, type-checked: an unquoted all-digit sha256 is a YAML integer, not a hash."""
    if not isinstance(entry, dict):
        raise RecipeError(f"{path}: '{key}' must be a mapping with name, urls and sha256, got {entry!r:.60}")
    unknown = sorted(set(map(str, entry)) - {"name", "urls", "sha256"})
    if unknown:
        raise RecipeError(f"{path}: unknown key '{key}.{unknown[0]}' (known: name, sha256, urls)")
    if not isinstance(entry.get("name"), str) or not entry["name"]:
        raise RecipeError(f"{path}: '{key}.name' is required and must be a string, got {entry.get('name')!r}")
    urls = entry.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise RecipeError(f"{path}: '{key}.urls' must be a list of strings, got {urls!r:.80}")
    digest = entry.get("sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
        hint = (" (YAML reads unquoted digits as a number: put the hash in quotes)"
                if isinstance(digest, (int, float)) and not isinstance(digest, bool) else "")
        raise RecipeError(f"{path}: '{key}.sha256' must be a string of 64 hex digits, got "
                          f"{type(digest).__name__} {digest!r:.70}{hint}")
    return {"name": entry["name"], "urls": list(urls), "sha256": digest}


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$SEQVI_DATA``, else the default (see the module docstring)."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("SEQVI_DATA")
    return Path(env).expanduser() if env else default_data_root()


def raw_dir(name: str, root: str | Path | None = None) -> Path:
    return data_root(root) / "raw" / name


def store_path(name: str, root: str | Path | None = None) -> Path:
    return data_root(root) / "processed" / f"{name}.h5"
