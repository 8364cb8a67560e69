"""Interaction data (observations, actions, rewards): the ``control`` adapter and the ``gymnasium`` downloader.

``seqvi download pendulum [--pixels]`` (downloader ``gymnasium``) generates
episodes OFFLINE, nothing is fetched: for each split, the manifest's number of
episodes (``--limit N`` caps each split at N) of ``episode_steps``
environment steps of ``env``, with actions drawn uniformly in the action box
and held for ``action_repeat`` steps (``seqvi.data.environment.rollout``).
Episode e of split s resets with the seed ``SeedSequence([seed, s, e])`` and
draws its actions from ``default_rng([seed, s, e])``: the same manifest gives
the same files. They are written as ``<root>/raw/NAME/<split>/ep_XXXX.npz``
in the stored alignment (``seqvi.data.episodes``: row t holds o_t, a_{t-1},
r_t), with ``EPISODES.json`` (the settings, bounds, each file's sha256,
``complete``). A second run with the same settings and intact files does
nothing; other settings regenerate the files (and remove stale ones).

Frames are recorded only with ``--pixels``. Rendering costs ~4.3 ms per
frame here (Pendulum: 2.7 ms to draw 500x500, 1.8 ms to area-resize to
64x64; ``seqvi.data.environment``), about 120 environment steps: the 140
state-only Pendulum episodes take about 1 s, with frames about a minute,
and the frames are nearly all of the raw bytes. A state-vector model should
not pay for them; a pixel model (PlaNet's setting) asks for them.

``seqvi preprocess NAME [--pixels]`` (adapter ``control``) turns a folder of
episodes (the raw folder, or ``--source FOLDER`` of your own, from any
simulator: ``{train,valid,test}/*.npz`` or a flat folder split by a hash of
each file's path) into the store: frames = the observations, the state
vectors (D,) float32 or, with ``--pixels``, the frames (3, 64, 64) uint8 with
``value_scale`` 1/255; ``/<split>/inputs`` (T, A) the actions a_{t-1} and
``/<split>/rewards`` (T,) the rewards r_t, row-aligned. Attributes:
``observation`` ("state" | "pixels"), ``input_dim``, ``input_low`` /
``input_high`` (the action box: from ``EPISODES.json``, else the range seen
in the data, ``input_bounds`` saying which), ``env``, ``action_repeat``,
``fps`` (stored steps per second, when known), likelihood ``gaussian``. A bad
file is skipped, listed with its reason and counted (``--strict``: fatal);
so is an episode whose widths differ from the data set's (``EPISODES.json``'s,
else the first good episode's).

``collect(name, root, split, source, episodes)`` appends episodes (e.g. from
the planner in the real environment) to the store without rewriting it
(``seqvi.data.append``) and keeps a raw copy under
``raw/NAME/<split>/<source>/`` so that a later ``preprocess`` includes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from seqvi.data.append import AppendResult, append_sequences, check_sequences
from seqvi.data.download import sha256_of
from seqvi.data.environment import Simulator, import_gymnasium, rollout, uniform_policy
from seqvi.data.episodes import (INFO_FILE, OBSERVATIONS, Episode, check_episode, find_episodes, read_episode,
                                 read_info, write_episode)
from seqvi.data.manifest import Manifest, manifest_dir, raw_dir, store_path
from seqvi.data.sources import PreprocessReport, skip
from seqvi.data.store import SPLITS, Store, StoreWriter
from seqvi.errors import DataError, RecipeError

ADAPTER_VERSION = "1"
Progress = Callable[[str, int, int | None], None]
_EPISODE_FILE = re.compile(r"ep_\d{4,}\.npz(\.tmp)?")


@dataclass
class GeneratedEpisodes:
    """What ``seqvi download`` did for an interaction data set."""
    raw: Path
    env: str
    episodes: dict = field(default_factory=dict)     # split -> episodes
    steps: dict = field(default_factory=dict)        # split -> stored steps
    pixels: bool = False
    seconds: float = 0.0
    render_ms_per_frame: float | None = None
    already_done: bool = False


def episode_plan(manifest: Manifest, limit: int | None = None) -> dict[str, int]:
    """Episodes per split from the manifest, checked (RecipeError naming the manifest and key)."""
    where = f"{manifest_dir() / manifest.name}.yaml"
    if not manifest.env:
        raise RecipeError(f"{where}: 'env' (a gymnasium environment id) is required for download 'gymnasium'")
    if manifest.episode_steps < 1 or manifest.episode_steps % manifest.action_repeat:
        raise RecipeError(f"{where}: 'episode_steps' must be a positive multiple of 'action_repeat' "
                          f"({manifest.action_repeat}), got {manifest.episode_steps}")
    counts = {}
    for split in SPLITS:
        n = manifest.splits.get(split)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise RecipeError(f"{where}: 'splits.{split}' must be a positive number of episodes, got {n!r}")
        counts[split] = min(n, limit) if limit else n
    return counts


def download_control(manifest: Manifest, raw: Path, progress: Progress | None = None,
                     limit: int | None = None, pixels: bool = False) -> GeneratedEpisodes:
    """Generate the random-action episodes of ``manifest`` into ``raw`` (see the module docstring)."""
    started = time.perf_counter()
    counts = episode_plan(manifest, limit)
    gym = import_gymnasium()
    settings = {"env": manifest.env, "seed": manifest.seed, "episode_steps": manifest.episode_steps,
                "action_repeat": manifest.action_repeat, "episodes": counts, "pixels": pixels,
                "policy": "uniform", "gymnasium": gym.__version__, "adapter_version": ADAPTER_VERSION}
    result = GeneratedEpisodes(raw, manifest.env, pixels=pixels)
    if _already_generated(raw, settings):
        info = read_info(raw)
        result.episodes, result.steps, result.already_done = info["counts"], info["steps"], True
        return result
    _write_info(raw, {**settings, "complete": False})
    files: dict[str, str] = {}
    with Simulator(manifest.env, manifest.action_repeat, render=pixels) as sim:
        limit_steps = sim.max_episode_steps
        if limit_steps is not None and manifest.episode_steps > limit_steps:
            raise RecipeError(f"{manifest_dir() / manifest.name}.yaml: 'episode_steps' {manifest.episode_steps} "
                              f"is longer than {manifest.env}'s time limit of {limit_steps} steps")
        for s, split in enumerate(SPLITS):
            _remove_stale(raw / split, counts[split])
            for e in range(counts[split]):
                seed = int(np.random.SeedSequence([manifest.seed, s, e]).generate_state(1)[0])
                policy = uniform_policy(sim, np.random.default_rng([manifest.seed, s, e]))
                episode = rollout(sim, policy, manifest.episode_steps, seed, record_frames=pixels)
                path = write_episode(raw / split / f"ep_{e:04d}.npz", episode)
                files[f"{split}/{path.name}"] = sha256_of(path)
                result.episodes[split] = e + 1
                result.steps[split] = result.steps.get(split, 0) + len(episode)
                if progress:
                    progress(split, e + 1, counts[split])
        if sim.rendered:
            result.render_ms_per_frame = 1e3 * sim.render_seconds / sim.rendered
        bounds = {"action_low": sim.low.tolist(), "action_high": sim.high.tolist(), "obs_dim": sim.obs_dim,
                  "action_dim": sim.action_dim, "fps": sim.fps}
    _write_info(raw, {**settings, **bounds, "counts": result.episodes, "steps": result.steps,
                      "render_ms_per_frame": result.render_ms_per_frame, "files": files, "complete": True})
    result.seconds = time.perf_counter() - started
    return result


def preprocess_control(manifest: Manifest, source: Path, out_path: Path, *, strict: bool = False,
                       max_steps: int = 100_000, progress: Progress | None = None,
                       pixels: bool = False) -> PreprocessReport:
    """Episodes under the folder ``source`` -> the store at ``out_path`` (see the module docstring)."""
    started = time.perf_counter()
    report = PreprocessReport(manifest.name)
    info = read_info(source)
    if info.get("complete") is False:
        raise DataError(f"{source}: the episodes' generation did not finish; run `seqvi download "
                        f"{manifest.name}{' --pixels' if info.get('pixels') else ''}` again")
    if pixels and info.get("pixels") is False:
        raise DataError(f"{source}: these episodes have no frames; run `seqvi download {manifest.name} --pixels`")
    kind = "pixels" if pixels else "state"
    to_frames, dtype, value_scale = OBSERVATIONS[kind]
    found, refused, layout = find_episodes(source)
    for name, reason in refused:
        skip(report, name, reason, strict)
    widths = (info["obs_dim"], info["action_dim"]) if "obs_dim" in info and "action_dim" in info else None
    first = None
    writer: StoreWriter | None = None
    low = high = None
    digest = hashlib.sha256()
    try:
        for done, (split, name, path) in enumerate(found, 1):
            if progress:
                progress(Path(source).name, done, len(found))
            try:
                episode = read_episode(path, name, max_steps, need_frames=pixels)
                if widths is None:
                    widths, first = (episode.obs.shape[1], episode.action.shape[1]), name
                if (episode.obs.shape[1], episode.action.shape[1]) != tuple(widths):
                    raise DataError(f"{name}: obs has {episode.obs.shape[1]} and action {episode.action.shape[1]} "
                                    f"columns, the data set's episodes {widths[0]} and {widths[1]} "
                                    f"({first or INFO_FILE})")
                frames = to_frames(episode)
            except DataError as err:
                skip(report, name, str(err).removeprefix(f"{name}: "), strict, error=err)
                continue
            if writer is None:
                writer = StoreWriter(out_path, frames.shape[1:], dtype)
            writer.add(split, name, frames, inputs=episode.action, rewards=episode.reward)
            digest.update(name.encode() + b"\0" + sha256_of(path).encode())
            low = episode.action[1:].min(0) if low is None else np.minimum(low, episode.action[1:].min(0))
            high = episode.action[1:].max(0) if high is None else np.maximum(high, episode.action[1:].max(0))
            report.sequences[split] = report.sequences.get(split, 0) + 1
            report.steps[split] = report.steps.get(split, 0) + len(frames)
        if writer is None:
            first_skip = f"; first: {report.skipped[0][0]}: {report.skipped[0][1]}" if report.skipped else ""
            raise DataError(f"{source}: no readable episodes ({len(report.skipped)} skipped{first_skip})")
        report.sources[f"{Path(source).name}/*.npz"] = digest.hexdigest()
        known = "action_low" in info and "action_high" in info
        report.path = writer.close({
            "dataset": manifest.name, "adapter": "control", "adapter_version": ADAPTER_VERSION,
            "likelihood": "gaussian", "observation": kind, "value_scale": value_scale,
            "env": str(info.get("env") or manifest.env), "action_repeat": int(info.get("action_repeat") or
                                                                               manifest.action_repeat),
            "input_low": [float(v) for v in (info["action_low"] if known else low)],
            "input_high": [float(v) for v in (info["action_high"] if known else high)],
            "input_bounds": "environment" if known else "observed",
            **({"fps": float(info["fps"])} if info.get("fps") else {}), "layout": layout,
            "alignment": "row t: o_t, a_(t-1) (zeros at t=0), r_t (0 at t=0; the sum over the action repeat)",
            "resolution": manifest.resolution, "sources": report.sources,
            "skipped": [list(s) for s in report.skipped],
        })
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    return report


def collect(name: str, root: str | None, split: str, source: str, episodes: list[Episode],
            keep_raw: bool = True) -> AppendResult:
    """Append ``episodes`` (stored alignment) to ``split`` of NAME's store under the new ``source``.

    The store's observation kind says which arrays become frames (state
    vectors, or the frames for a pixel store). Each episode is checked as a
    file would be (``check_episode``); a bad one is a DataError and nothing
    is written. With ``keep_raw``, the checked episodes are also written to
    ``raw/NAME/<split>/<source>/ep_XXXX.npz`` before the append, so that a
    later ``preprocess`` includes them (rewriting an existing copy is harmless).
    """
    path = store_path(name, root)
    with Store(path) as store:
        kind = str(store.attrs.get("observation", "state"))
    if kind not in OBSERVATIONS:
        raise DataError(f"{path}: attribute observation = {kind!r} is not one of {', '.join(OBSERVATIONS)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", source):
        raise DataError(f"source name {source!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    sequences = []
    for i, episode in enumerate(episodes):
        label = f"{source}/ep_{i:04d}"
        arrays = {"obs": np.asarray(episode.obs), "action": np.asarray(episode.action),
                  "reward": np.asarray(episode.reward)}
        if episode.frames is not None:
            arrays["frames"] = np.asarray(episode.frames)
        checked = check_episode(arrays, label)
        sequences.append((f"ep_{i:04d}", OBSERVATIONS[kind][0](checked), checked.action, checked.reward))
    check_sequences(path, split, source, sequences)     # nothing is written for a refused collection
    if keep_raw:
        for i, episode in enumerate(episodes):
            write_episode(raw_dir(name, root) / split / source / f"ep_{i:04d}.npz", episode)
    return append_sequences(path, split, source, sequences)


def _already_generated(raw: Path, settings: dict) -> bool:
    try:
        info = read_info(raw)
    except DataError:
        return False
    if not info.get("complete") or any(info.get(k) != v for k, v in settings.items()):
        return False
    files = info.get("files") or {}
    return all((raw / rel).is_file() and sha256_of(raw / rel) == digest for rel, digest in files.items())


def _remove_stale(folder: Path, count: int) -> None:
    """Episode files of an earlier generation beyond ``count`` (and partial ones) in ``folder``."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and _EPISODE_FILE.fullmatch(path.name) and (
                path.name.endswith(".tmp") or int(path.name[3:].split(".")[0]) >= count):
            path.unlink()


def _write_info(raw: Path, info: dict) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    tmp = raw / (INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
    os.replace(tmp, raw / INFO_FILE)
