"""Recipes: strict, typed, immutable experiment configuration.

A recipe is a YAML mapping with the sections below. Every key has a default in
the dataclasses of this module (the one place that lists them, as DreamerV3's
``defaults`` block does). A recipe may say ``extends: other.yaml`` to stack on
another recipe, and ``key.path=value`` overrides from the command line are
applied last (overriding ``model.name`` or ``inference.name`` with another
name starts that section afresh, and ``load_recipe``'s ``warn`` hears which of the
recipe's keys it dropped). Unknown keys and wrong types fail with the key's path
(and a "did you mean" when a known key is close); an error in a key that an
override set names the override, not the recipe file.

The ``model`` and ``inference`` sections are open: besides ``name`` their keys
are the keyword arguments of the registered constructor, checked against its
signature and annotations (``check_kwargs``) when the registry is at hand.

This module must not import torch at module load (``--help`` stays instant).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from seqvi.errors import RecipeError



@dataclass(frozen=True)
class DataConfig:
    dataset: str = "bach-chorales"
    root: Optional[str] = None       # data root; default $SEQVI_DATA, else seqvi.data.manifest.default_data_root()
    batch_size: int = 16
    crop_length: int = 25            # training crops; 0 = whole sequences
    min_length: int = 0              # drop shorter training sequences (AVF drops < 25)
    bucket: bool = False             # batch sequences of similar length (less padding; see seqvi/data/batches.py)
    eval_batch_size: int = 32


@dataclass(frozen=True)
class ObjectiveConfig:
    kl_anneal_epochs: int = 0        # linear KL weight from kl_start to 1 over these epochs
    kl_start: float = 0.0
    bound: str = "elbo"              # elbo (analytic KL) | iwae | fivo
    particles: int = 1               # K for iwae / fivo training
    free_bits: float = 0.0           # lambda: each latent group's KL per step counts as max(lambda, KL); 0 = off
    free_bits_groups: int = 1        # the z dimensions split into this many equal groups, lambda each
    overshooting: int = 0            # latent overshooting distance D (PlaNet sec. 4; seqvi/overshooting.py); 0 = off
    overshooting_weight: float = 1.0  # weight of the overshooting KL (averaged over d = 1..D) in the loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    inference_lr: Optional[float] = None   # q's parameters (AVF paper: separate Adam); None = lr
    inference_clip_grad: Optional[float] = None   # q's gradient norm clipped on its own to this; None = one joint norm
    lr_decay: float = 1.0            # multiplicative, once per epoch
    clip_grad: float = 10.0          # max global grad norm; 0 disables
    log_every: int = 10              # steps between metrics lines
    checkpoint_every: int = 0        # steps between checkpoints; 0 = each epoch only
    skip_nonfinite: bool = False     # skip a batch whose loss is NaN/inf instead of stopping
    valid_split: str = "valid"
    patience: int = 0                # stop after this many epochs without a better valid; 0 = never
    max_minutes: float = 0.0         # wall-clock budget of one `train` call; 0 = none (see engine/train.py)
    tensorboard: bool = False        # also write TensorBoard events to RUN/tensorboard/ (the tensorboard extra)


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=lambda: {"name": "vrnn"})
    inference: dict = field(default_factory=lambda: {"name": "direct"})
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


OPEN_SECTIONS = ("model", "inference")

# Lower bounds of the numeric keys that have one (a batch of 0 or log_every 0 means nothing).
MINIMUM = {"data.batch_size": 1, "data.eval_batch_size": 1, "data.crop_length": 0, "data.min_length": 0,
           "objective.kl_anneal_epochs": 0, "objective.particles": 1, "objective.free_bits": 0,
           "objective.free_bits_groups": 1, "objective.overshooting": 0, "objective.overshooting_weight": 0,
           "train.epochs": 1, "train.inference_clip_grad": 0,
           "train.log_every": 1, "train.checkpoint_every": 0, "train.clip_grad": 0, "train.patience": 0,
           "train.max_minutes": 0}


def did_you_mean(word: str, choices, cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices`` to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""


def _error(source: str, path: str, text: str) -> RecipeError:
    """A RecipeError about the key ``path``, told as ``source``'s (a recipe file)."""
    return RecipeError(f"{source}: {text}", key=path, detail=text)


# --------------------------------------------------------------------------- YAML


MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, memo: dict) -> int:
    """Number of nodes once every alias is expanded (memoized: shared nodes count each time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 0  # a recursive alias counts once
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(v, memo) for v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_YAML_NODES + 1)
    return memo[key]


def read_yaml(path: str | Path) -> Any:
    """Load one YAML document with the capped safe loader; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such file{did_you_mean(path, _near_files(path))}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{path}: cannot read ({err})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise RecipeError(f"{path}: YAML expands to more than {MAX_YAML_NODES:,} nodes "
                              f"(alias bomb?); refusing to load it")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}:{where} invalid YAML ({problem})") from None
    finally:
        loader.dispose()


def _near_files(path: Path) -> list[str]:
    """Files a mistyped path may have meant: its folder's files of the same suffix, and ./recipes/'s."""
    folders = [path.parent] + ([Path("recipes")] if path.parent == Path(".") else [])
    pattern = f"*{path.suffix or '.yaml'}"
    found = []
    for folder in folders:
        try:
            found += [str(p) for p in sorted(folder.glob(pattern))[:500]]
            found += [str(p) for p in sorted(folder.glob(f"*/{pattern}"))[:500]] if folder.name == "recipes" else []
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------- loading


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                check: Callable[[Recipe, str], None] | None = None,
                warn: Callable[[str], None] | None = None) -> Recipe:
    """Read a recipe (following ``extends``), apply ``a.b=value`` overrides, validate.

    ``check(recipe, source)`` validates further (the open sections against the
    registries). An error about a key that an override set names that override.
    ``warn(line)`` hears what an override did silently: a ``model.name`` /
    ``inference.name`` override that starts its section afresh drops the recipe's
    other keys of that section, and the line names them.
    """
    raw = _read_stacked(Path(path), seen=())
    # A new model.name / inference.name starts that section afresh (its old keys
    # belong to another constructor); the section's other overrides then apply.
    names = [o for o in overrides if o.split("=", 1)[0].strip() in {f"{s}.name" for s in OPEN_SECTIONS}]
    for item in names:
        section, value = item.split(".", 1)[0], yaml.safe_load(item.split("=", 1)[1])
        if not isinstance(raw.get(section), dict) or raw[section].get("name") != value:
            dropped = [f"{section}.{k}" for k in (raw.get(section) or {}) if k != "name"] \
                if isinstance(raw.get(section), dict) else []
            if dropped and warn is not None:
                warn(f"override '{item.strip()}' starts '{section}' afresh: dropped the recipe's "
                     f"{', '.join(dropped)} (set them again as overrides to keep them)")
            raw[section] = {}
    for item in names + [o for o in overrides if o not in names]:
        _apply_override(raw, item)
    try:
        recipe = recipe_from_dict(raw, source=str(path))
        if check is not None:
            check(recipe, str(path))
    except RecipeError as err:
        item = _override_of(err.key, overrides)
        if item is None or err.detail is None:
            raise
        raise RecipeError(f"override '{item}': {err.detail}", key=err.key, detail=err.detail) from None
    return recipe


def _override_of(key: str | None, overrides) -> str | None:
    """The last override that set ``key`` (or a section or list holding it), if any."""
    if not key:
        return None
    found = None
    for item in overrides:
        name = item.split("=", 1)[0].strip()
        if key == name or key.startswith((name + ".", name + "[")):
            found = item
    return found


def recipe_from_dict(raw: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections")
    return _build(Recipe, raw, prefix="", source=source)


def _read_stacked(path: Path, seen: tuple) -> dict:
    if path.resolve() in seen:
        raise RecipeError(f"{path}: 'extends' forms a cycle")
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"{path}: 'extends' must be a file name")
    parent = _read_stacked(path.parent / base, seen + (path.resolve(),))
    return _merge(parent, data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            # A different model/inference name starts that section afresh.
            if key in OPEN_SECTIONS and value.get("name", out[key].get("name")) != out[key].get("name"):
                out[key] = dict(value)
            else:
                out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise RecipeError(f"override {item!r}: expected key.path=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise RecipeError(f"override {item!r}: empty key in path")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override {item!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- validation


def _build(cls, raw: dict, prefix: str, source: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if not isinstance(key, str):
            raise RecipeError(f"{source}: key {key!r}{' in ' + repr(prefix[:-1]) if prefix else ''} "
                              f"is not a name (keys are strings such as 'train')")
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        path = prefix + unknown[0]
        hint = did_you_mean(path, [prefix + f for f in fields])
        raise _error(source, path, f"unknown key '{path}'{hint} (known: {', '.join(sorted(fields))})")
    values = {}
    for name, value in raw.items():
        path = prefix + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise _error(source, path, f"'{path}' must be a section (mapping)")
            values[name] = _build(hint, value, path + ".", source)
        elif name in OPEN_SECTIONS:
            values[name] = _open_section(value, path, source)
        else:
            values[name] = coerce(value, hint, path, source)
            if path in MINIMUM and values[name] is not None and values[name] < MINIMUM[path]:
                raise _error(source, path, f"'{path}' must be at least {MINIMUM[path]}, got {value!r}")
    return cls(**values)


def _open_section(value: Any, path: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise _error(source, path, f"'{path}' must be a section (mapping) with a 'name'")
    if not isinstance(value.get("name"), str):
        raise _error(source, f"{path}.name", f"'{path}.name' is required and must be a string")
    for key in value:
        if not isinstance(key, str):
            raise RecipeError(f"{source}: '{path}' has a non-string key {key!r}")
    return dict(value)


def coerce(value: Any, hint: Any, path: str, source: str = "<recipe>") -> Any:
    """Check ``value`` against a type annotation; ints widen to float. Returns the value."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, path, source)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _error(source, path, f"'{path}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [coerce(v, inner, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise _error(source, path, f"'{path}' must be {name}, got {value!r}")


def check_kwargs(fn: Callable, kwargs: dict, path: str, source: str = "<recipe>",
                 skip: tuple[str, ...] = ()) -> dict:
    """Validate ``kwargs`` against ``fn``'s signature: unknown keys and wrong types fail."""
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # pragma: no cover - unresolvable annotations: check names only
        hints = {}
    params = {n: p for n, p in sig.parameters.items()
              if n not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out = {}
    for key, value in kwargs.items():
        if key not in params:
            hint = did_you_mean(f"{path}.{key}", [f"{path}.{p}" for p in params])
            raise _error(source, f"{path}.{key}",
                         f"unknown key '{path}.{key}'{hint} (known: {', '.join(sorted(params)) or 'none'})")
        out[key] = coerce(value, hints.get(key, Any), f"{path}.{key}", source)
    return out
