"""Registries that other installed packages extend: the one place a recipe's name becomes an object.

Three registries take plugins, each with its own entry-point group:

    group              built-ins                       a recipe names it in
    seqvi.models       seqvi.models.MODELS             model.name
    seqvi.inference    seqvi.inference.INFERENCE       inference.name
    seqvi.adapters     seqvi.data.prepare.ADAPTERS     a manifest's ``adapter``

A name resolves, in this order:

1. an import path ``package.module:Attr`` (Hydra's ``_target_`` convention; ``package.module.Attr``
   works too): the object is imported from there;
2. seqvi's own registry (a built-in name cannot be shadowed by a plugin);
3. an entry point of that name in the group, declared by an installed package::

       [project.entry-points."seqvi.models"]
       storn = "mypkg.storn:STORN"

A name that resolves to nothing, or an import that fails, is one ``RecipeError`` line naming the key,
with a did-you-mean over every known name. The built-in dictionaries are passed in by their owners, so
this module imports no model, inference or data code (no import circle) and no torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from seqvi.config import did_you_mean
from seqvi.errors import RecipeError

GROUPS = {"models": "seqvi.models", "inference": "seqvi.inference", "adapters": "seqvi.adapters"}


@dataclass
class Entry:
    """One registered name: where it comes from and how to get the object (``load``)."""
    name: str
    origin: str                                   # "seqvi", "entry point of mypkg 0.1", "import path"
    target: str                                   # "module:attr"
    load: Callable[[], Any] = field(repr=False)


def describe(obj: Any) -> str:
    """``module:QualName`` of a class or function (what an import path to it reads)."""
    if inspect.ismodule(obj):
        return f"the module {obj.__name__}"
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


def _entry_points(group: str) -> list:
    eps = metadata.entry_points()
    found = eps.select(group=group) if hasattr(eps, "select") else eps.get(group, [])
    unique = {}
    for ep in found:   # the same distribution seen twice on sys.path: keep the first
        unique.setdefault(ep.name, ep)
    return list(unique.values())


def _plugin_origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "entry point"
    return f"entry point of {dist.metadata['Name'] or dist.name} {dist.version}"


def entries(kind: str, builtins: dict) -> dict[str, Entry]:
    """Every name of registry ``kind`` (a key of ``GROUPS``): seqvi's first, then installed plugins'."""
    out = {name: Entry(name, "seqvi", describe(obj), (lambda obj=obj: obj)) for name, obj in builtins.items()}
    for ep in _entry_points(GROUPS[kind]):
        if ep.name not in out:
            out[ep.name] = Entry(ep.name, _plugin_origin(ep), ep.value, ep.load)
    return out


def import_path(path: str) -> Any:
    """The object at ``package.module:Attr`` (or ``package.module.Attr``); ImportError/AttributeError if none."""
    module, sep, attr = path.partition(":")
    if not sep:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ImportError(f"{path!r} is not an import path of the form package.module:Attr")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def is_import_path(name: str) -> bool:
    return isinstance(name, str) and (":" in name or "." in name)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def resolve(kind: str, name: Any, builtins: dict, key: str, source: str = "<recipe>") -> Any:
    """The object registered (or importable) as ``name`` in registry ``kind``; ``key`` names the recipe key."""
    def fail(text: str):
        return RecipeError(f"{source}: {text}", key=key, detail=text)

    if not isinstance(name, str) or not name:
        raise fail(f"'{key}' must be a name or an import path (package.module:Attr), got {name!r}")
    if name in builtins:
        return builtins[name]
    if is_import_path(name):
        try:
            return import_path(name)
        except ImportError as err:   # ModuleNotFoundError too
            missing = getattr(err, "name", None)
            hint = did_you_mean(name, list(entries(kind, builtins))) if missing else ""
            raise fail(f"'{key}' {name!r}: cannot import it ({_first_line(err)}){hint}") from None
        except AttributeError as err:
            raise fail(f"'{key}' {name!r}: no such attribute ({_first_line(err)})") from None
        except Exception as err:   # the plugin's own module raised while importing
            raise fail(f"'{key}' {name!r}: importing it failed ({_first_line(err)})") from None
    known = entries(kind, builtins)
    if name not in known:
        raise fail(f"unknown '{key}' {name!r}{did_you_mean(name, known)} (known: {', '.join(known)}; "
                   f"or an import path package.module:Attr; `seqvi models` lists them)")
    entry = known[name]
    try:
        return entry.load()
    except Exception as err:
        raise fail(f"'{key}' {name!r} ({entry.origin}, {entry.target}): importing it failed "
                   f"({_first_line(err)})") from None


@dataclass
class Listing:
    """One row of ``seqvi models``: a registered name, where it comes from, its constructor options."""
    kind: str
    name: str
    origin: str
    target: str
    options: list = field(default_factory=list)   # [(name, default as text or None: required, annotation)]
    problem: str = ""                              # why it could not be loaded, if it could not


def options_of(obj: Any, skip: tuple = ()) -> list:
    """(name, default, annotation) of the keyword options of ``obj``'s constructor (or of ``obj``, a function)."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    out = []
    for p in params:
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is p.empty else repr(p.default)
        annotation = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                          else getattr(p.annotation, "__name__", str(p.annotation)))
        out.append((p.name, default, annotation))
    return out


def listing(kind: str, builtins: dict, skip: tuple = ()) -> list[Listing]:
    """Every entry of registry ``kind`` with its options; a plugin that fails to load says why."""
    rows = []
    for entry in entries(kind, builtins).values():
        try:
            obj = entry.load()
        except Exception as err:
            rows.append(Listing(kind, entry.name, entry.origin, entry.target, [], _first_line(err)))
            continue
        rows.append(Listing(kind, entry.name, entry.origin, entry.target, options_of(obj, skip)))
    return rows
