"""Build what a run needs from a recipe: device, threads, store, model, inference.

Names are looked up in the registries (``seqvi.registry``: seqvi's own, installed
plugins' entry points, or an import path); nothing here branches on a model or a
data set. The data supplies the model's ``x_dim`` and ``likelihood`` (from the
store's attributes), the recipe every other constructor argument.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
import torch

from seqvi.config import Recipe, check_kwargs
from seqvi.data.manifest import store_path
from seqvi.data.store import Store
from seqvi.errors import DataError, RecipeError, SeqviError
from seqvi.inference import INFERENCE, Inference
from seqvi.models import DATA_ARGS, MODELS
from seqvi.models.base import LIKELIHOODS, SequentialModel
from seqvi import registry

DEFAULT_THREADS = 1  # measured: see README "Threads" and bench/run.py


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads from the argument, else $SEQVI_THREADS, else the default."""
    if threads is None:
        env = os.environ.get("SEQVI_THREADS")
        threads = int(env) if env and env.isdigit() and int(env) > 0 else DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SeqviError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    if device != "cpu" and not device.startswith("cuda"):
        raise SeqviError(f"--device {device}: expected auto, cpu or cuda[:N]")
    return torch.device(device)


@dataclass(frozen=True)
class DataSpec:
    """What the model needs to know about the data; stored in every checkpoint."""
    dataset: str
    store: str
    x_dim: int
    likelihood: str
    adapter: str = "midi"
    steps_per_beat: int = 1
    frame_shape: tuple = ()
    input_dim: int = 0           # per-step inputs (actions) the store carries, 0: none

    @classmethod
    def from_store(cls, store: Store, dataset: str) -> "DataSpec":
        if store.likelihood not in LIKELIHOODS:
            raise DataError(f"{store.path}: store attribute likelihood = {store.likelihood!r} is not one of "
                            f"{', '.join(LIKELIHOODS)}; run `seqvi preprocess` again")
        x_dim = 1
        for s in store.frame_shape:
            x_dim *= s
        return cls(dataset, str(store.path), x_dim, store.likelihood,
                   str(store.attrs.get("adapter", "midi")), int(store.attrs.get("steps_per_beat", 1)),
                   tuple(store.frame_shape), int(store.attrs.get("input_dim", 0)))


def open_store(recipe: Recipe) -> Store:
    return Store(store_path(recipe.data.dataset, recipe.data.root))


def validate_sections(recipe: Recipe, source: str = "<recipe>") -> None:
    """Check the open sections against the registries (names, keys and types)."""
    build_kwargs(recipe, source)


def _check_class(obj, base: type, key: str, source: str) -> None:
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        text = (f"'{key}' names {registry.describe(obj)}, which is not a subclass of "
                f"{base.__module__}.{base.__qualname__}")
        raise RecipeError(f"{source}: {text}", key=key, detail=text)


def build_kwargs(recipe: Recipe, source: str = "<recipe>") -> tuple[type, dict, type, dict]:
    model_kwargs = dict(recipe.model)
    model_cls = registry.resolve("models", model_kwargs.pop("name"), MODELS, "model.name", source)
    _check_class(model_cls, SequentialModel, "model.name", source)
    model_kwargs = check_kwargs(model_cls.__init__, model_kwargs, "model", source, skip=("self",) + DATA_ARGS)
    inf_kwargs = dict(recipe.inference)
    inf_cls = registry.resolve("inference", inf_kwargs.pop("name"), INFERENCE, "inference.name", source)
    _check_class(inf_cls, Inference, "inference.name", source)
    inf_kwargs = check_kwargs(inf_cls.__init__, inf_kwargs, "inference", source, skip=("self", "model"))
    return model_cls, model_kwargs, inf_cls, inf_kwargs


def build(recipe: Recipe, spec: DataSpec, device: torch.device, source: str = "<recipe>"):
    """(model, inference) on ``device``, initialized from ``recipe.seed``; ``source`` names the recipe in errors."""
    model_cls, model_kwargs, inf_cls, inf_kwargs = build_kwargs(recipe, source)
    torch.manual_seed(recipe.seed)
    accepted = inspect.signature(model_cls.__init__).parameters
    data_kwargs = {k: getattr(spec, k) for k in DATA_ARGS if k in accepted}
    try:
        model = model_cls(**data_kwargs, **model_kwargs)
        inference = inf_cls(model, **inf_kwargs)
    except (ValueError, TypeError, RuntimeError, MemoryError) as err:  # e.g. a negative or absurd size
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise RecipeError(f"{source}: model/inference settings rejected ({first})") from None
    if recipe.objective.overshooting and (recipe.objective.bound != "elbo" or not getattr(model, "rowwise", False)):
        text = (f"objective.overshooting needs objective.bound 'elbo' and a row-wise model such as rssm "
                f"(got bound {recipe.objective.bound!r}, model {type(model).__name__})")
        raise RecipeError(f"{source}: {text}", key="objective.overshooting", detail=text)
    return model.to(device), inference.to(device)


def catalog() -> list:
    """Every registered model, inference and data adapter (``seqvi models``): ``registry.Listing`` rows."""
    from seqvi.data.prepare import ADAPTERS, ADAPTER_ARGS

    return (registry.listing("models", MODELS, skip=("self",) + DATA_ARGS)
            + registry.listing("inference", INFERENCE, skip=("self", "model"))
            + registry.listing("adapters", ADAPTERS, skip=ADAPTER_ARGS))
