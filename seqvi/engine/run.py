"""Load a trained run from its directory (or a checkpoint file) for eval and sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seqvi.config import Recipe, recipe_from_dict
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


def load_run(path: str | Path, device: str = "auto") -> LoadedRun:
    ckpt_path = checkpoint.resolve(path)
    dev = resolve_device(device)
    state = checkpoint.load(ckpt_path, map_location=dev)
    try:
        recipe = recipe_from_dict(state["config"], source=str(ckpt_path))
        data = dict(state["data"])
        data["frame_shape"] = tuple(data.get("frame_shape", ()))
        spec = DataSpec(**data)
    except (KeyError, TypeError, RecipeError) as err:
        raise CheckpointError(f"{ckpt_path}: checkpoint config is unusable ({err})") from None
    model, inference = build(recipe, spec, dev)
    try:
        model.load_state_dict(state["model"])
        inference.load_state_dict(state["inference"])
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160]
        raise CheckpointError(f"{ckpt_path}: weights do not fit the model in its config ({first})") from None
    run_dir = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else ckpt_path.parent
    return LoadedRun(run_dir, ckpt_path, recipe, spec, model, inference, dev,
                     int(state.get("epoch", 0)), int(state.get("step", 0)))
