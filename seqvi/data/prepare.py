"""``download`` and ``preprocess``: the two data commands, as library functions.

Downloaders and adapters are found through the registries by the manifest's
``download`` and ``adapter`` fields (an adapter may also come from an installed
package's ``seqvi.adapters`` entry point or an import path: ``seqvi.registry``); nothing branches on a data set's name.
An option that only some of them take (``--pixels``: render frames of
interaction data) is passed to those whose signature has it and refused,
in one line, for the others.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable

from seqvi.data.chorales import export_bach_chorales
from seqvi.data.control import download_control, preprocess_control
from seqvi.data.download import fetch_files
from seqvi.data.kth import preprocess_kth
from seqvi.data.manifest import load_manifest, manifest_dir, raw_dir, store_path
from seqvi.data.polyphonic import preprocess_midi
from seqvi.data.synthetic import download_synthetic, preprocess_synthetic
from seqvi.data.timit import preprocess_timit
from seqvi import registry
from seqvi.errors import DataError, RecipeError, SeqviError

Progress = Callable[[str, int, int | None], None]


def _download_http(manifest, raw: Path, progress: Progress | None, limit: int | None = None):
    return fetch_files(list(manifest.files), raw, progress=progress, dataset=manifest.name)


def _download_music21(manifest, raw: Path, progress: Progress | None, limit: int | None = None):
    return export_bach_chorales(raw, progress=progress, limit=limit)


def _download_manual(manifest, raw: Path, progress: Progress | None, limit: int | None = None):
    terms = " ".join(manifest.licence.split()).split(". ")[0].rstrip(".")
    raise SeqviError(f"{terms}. Obtain it from there, then run `seqvi preprocess {manifest.name} "
                     f"--source PATH` (PATH: the corpus folder or a zip of it)")


DOWNLOADERS = {"http": _download_http, "music21": _download_music21, "manual": _download_manual,
               "synthetic": download_synthetic, "gymnasium": download_control}
ADAPTERS = {"midi": preprocess_midi, "timit": preprocess_timit, "kth": preprocess_kth, "synthetic": preprocess_synthetic,
            "control": preprocess_control}
# What ``preprocess`` passes every adapter: adapter(manifest, source, out_path, *, strict, max_steps, progress).
ADAPTER_ARGS = ("manifest", "source", "out_path", "strict", "max_steps", "progress")


def _checked(name: str, kind: str, value: str, known: dict) -> str:
    if value not in known:
        raise RecipeError(f"{manifest_dir() / name}.yaml: unknown {kind} {value!r} (known: {', '.join(known)})")
    return value


def _options(fn: Callable, name: str, kind: str, **asked) -> dict:
    """The options set in ``asked`` (truthy) that ``fn`` takes; one that it does not take is an error."""
    given = {key: value for key, value in asked.items() if value}
    for key in given:
        if key not in inspect.signature(fn).parameters:
            raise SeqviError(f"--{key} does not apply to '{name}' ({kind}); it is for interaction data "
                             f"generated from a simulator")
    return given


def download(name: str, root: str | None = None, progress: Progress | None = None,
             limit: int | None = None, pixels: bool = False):
    """Fetch (or export, or generate) a data set's raw files into ``<root>/raw/NAME``; returns (folder, result).

    A failed call removes the folders it created that are still empty (``raw/NAME``,
    and ``raw/`` and the root when it made them); a partial ``.part`` download is kept
    (a rerun resumes it), and so is anything that was there before.
    """
    manifest = load_manifest(name)
    _checked(name, "download", manifest.download, DOWNLOADERS)
    fn = DOWNLOADERS[manifest.download]
    options = _options(fn, name, f"download kind '{manifest.download}'", pixels=pixels)
    raw = raw_dir(name, root)
    created = [folder for folder in (raw, raw.parent, raw.parent.parent) if not folder.exists()]
    raw.mkdir(parents=True, exist_ok=True)
    try:
        return raw, fn(manifest, raw, progress, limit, **options)
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) that are empty; a folder with anything in it stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (a resumable .part, a file of the user's) or already gone
            return


def find_source(name: str, root: str | None = None) -> Path:
    """The raw source to preprocess: a downloaded zip, else a pickle, else the raw folder."""
    manifest = load_manifest(name)
    raw = raw_dir(name, root)
    if sum(e["name"].lower().endswith(".zip") for e in manifest.files) > 1 and raw.is_dir() and any(raw.iterdir()):
        return raw  # several archives (KTH's six zips): the adapter reads the whole folder
    for suffixes in ((".zip",), (".pickle", ".pkl")):
        for entry in manifest.files:
            path = raw / entry["name"]
            if path.suffix.lower() in suffixes and path.exists():
                return path
    if raw.is_dir() and any(p.is_file() and p.suffix != ".part" and p.name != "SHA256SUMS" for p in raw.rglob("*")):
        return raw
    raise DataError(f"{raw}: no raw files for '{name}'; run `seqvi download {name}` "
                    f"or pass --source PATH (a zip, a folder or a .pickle)")


def preprocess(name: str, root: str | None = None, source: str | Path | None = None, *,
               strict: bool = False, max_steps: int = 100_000, progress: Progress | None = None,
               pixels: bool = False):
    manifest = load_manifest(name)
    fn = registry.resolve("adapters", manifest.adapter, ADAPTERS, "adapter", f"{manifest_dir() / name}.yaml")
    options = _options(fn, name, f"adapter '{manifest.adapter}'", pixels=pixels)
    src = Path(source).expanduser() if source else find_source(name, root)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder (--source)")
    return fn(manifest, src, store_path(name, root), strict=strict, max_steps=max_steps, progress=progress,
              **options)
