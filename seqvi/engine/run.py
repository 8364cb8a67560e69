"""Load a trained run from its directory (or a checkpoint file) for eval and sample."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqvi.config import Recipe, recipe_from_dict
from seqvi.data.store import Store
from seqvi.engine import checkpoint
from seqvi.engine.setup import DataSpec, build, resolve_device
from seqvi.errors import CheckpointError, RecipeError


@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    recipe: Recipe
    spec: DataSpec
    model: Any
    inference: Any
    device: torch.device
    epoch: int
    step: int

    def open_store(self) -> Store:
        """The run's store, refused if its frames are not the shape the checkpoint was trained on."""
        store = Store(self.spec.store)
        want, have = tuple(self.spec.frame_shape), tuple(store.frame_shape)
        if (want and have != want) or math.prod(have) != self.spec.x_dim:  # older checkpoints: x_dim only
            store.close()
            raise CheckpointError(f"{self.checkpoint}: trained on frames of shape {want or (self.spec.x_dim,)}, "
                                  f"but the store {self.spec.store} holds {have}; preprocess the data set again "
                                  f"or use a matching run")
        return store


def load_run(path: str | Path, device: str = "auto") -> LoadedRun:
    ckpt_path = checkpoint.resolve(path)
    dev = resolve_device(device)
    state = checkpoint.load(ckpt_path, map_location=dev)
    try:
        recipe = recipe_from_dict(state["config"], source=str(ckpt_path))
        data = dict(state["data"])
        data["frame_shape"] = tuple(data.get("frame_shape", ()))
        spec = DataSpec(**data)
        epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
    except (KeyError, TypeError, ValueError, RecipeError) as err:
        detail = str(err).removeprefix(f"{ckpt_path}: ")
        raise CheckpointError(f"{ckpt_path}: checkpoint config is unusable ({detail})") from None
    model, inference = build(recipe, spec, dev, str(ckpt_path))
    try:
        model.load_state_dict(state["model"])
        inference.load_state_dict(state["inference"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{ckpt_path}: weights do not fit the model in its config "
                              f"({checkpoint.reason(err)})") from None
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return LoadedRun(run_dir, ckpt_path, recipe, spec, model, inference, dev, epoch, step)
