"""A tiny data root, manifest folder, recipe and trained run for the fault probes of breaks 8-13.

Built once per test module (``tiny_setup``): the corpus of tests/conftest.py, preprocessed through the
real adapter, and one 2-epoch run trained by a real ``seqvi train`` process. The probes then run
``python -m seqvi`` as real processes with ``SEQVI_MANIFESTS`` pointing at the manifest folder.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from conftest import REPO, TINY_MANIFEST, make_corpus, tiny_recipe
from faults.conftest import run_seqvi, seqvi_env


@dataclass
class Tiny:
    folder: Path
    root: Path          # data root with raw/tiny and processed/tiny.h5
    manifests: Path
    recipe: Path        # the tiny recipe, data.root pointing at root
    run_dir: Path       # a finished 2-epoch run of the recipe (seed 0)

    def env(self, **extra: str) -> dict:
        return seqvi_env(**{"SEQVI_MANIFESTS": str(self.manifests), "SEQVI_DATA": str(self.root), **extra})

    def seqvi(self, *args, **kw):
        kw.setdefault("env", self.env())
        kw.setdefault("cwd", self.folder)
        return run_seqvi(*args, **kw)

    def copy_run(self, dest: Path, seed: int | None = None) -> Path:
        """A copy of the trained run (optionally claiming another seed in its config.yaml)."""
        shutil.copytree(self.run_dir, dest, symlinks=True)
        if seed is not None:
            config = yaml.safe_load((dest / "config.yaml").read_text())
            config["seed"] = seed
            (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return dest


def build_tiny(folder: Path, train: bool = True) -> Tiny:
    folder.mkdir(parents=True, exist_ok=True)
    manifests = folder / "manifests"
    manifests.mkdir(exist_ok=True)
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        (manifests / path.name).write_text(path.read_text())
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    root = folder / "data"
    make_corpus(root / "raw" / "tiny")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root)))
    tiny = Tiny(folder, root, manifests, recipe, folder / "runs" / "trained")
    done = tiny.seqvi("preprocess", "tiny", "--root", root)
    assert done.returncode == 0, done.stdout
    if train:
        done = tiny.seqvi("train", recipe, "--run-dir", tiny.run_dir, "--device", "cpu")
        assert done.returncode == 0, done.stdout
    return tiny
