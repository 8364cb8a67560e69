"""Interaction episodes: the raw format of the ``control`` data sets, one ``.npz`` file per episode.

Alignment, PlaNet's (Hafner et al., ICML 2019): stored step t holds what
arrives together at step t::

    obs     (T, D) float32         o_t, the observation (a state vector)
    action  (T, A) float32         a_{t-1}, the action that led to o_t; zeros at t = 0
    reward  (T,)   float32         r_t, the reward received with o_t; 0 at t = 0
    frames  (T, H, W, 3) uint8     optional: the rendered image of o_t (RGB, 64x64 when generated)

so the store's per-step input u_t = a_{t-1} conditions p(z_t | h_{t-1}, a_{t-1})
and r_t is predicted from the state at t. With an action repeat R, one stored
step is R environment steps with the same action, and r_t is the sum of
their R rewards. An episode of E environment steps is 1 + E / R stored steps.

``read_episode`` loads a file with ``allow_pickle=False`` and refuses, with
one reason each (the adapter skips and counts the file): a file that is not
an npz, a pickled object array, a missing or non-numeric array, wrong
dimensions, arrays of different lengths, fewer than 2 steps, NaN or inf, and
a first row whose action or reward is not zero (the mark of data stored
with a_t instead of a_{t-1} in row t).

``find_episodes`` lists a folder's episodes: in ``{train,valid,test}/``
subfolders (searched recursively, case-insensitive), or, in a flat folder,
every ``.npz`` split by ``plain_split`` (a stable hash of its relative path).
``EPISODES.json`` beside them (written by ``seqvi download``; optional in a
folder of your own) may name ``env``, ``action_repeat``, ``action_low``,
``action_high`` and ``fps``.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqvi.data.sources import plain_split
from seqvi.data.store import SPLITS
from seqvi.data.video import resize_area
from seqvi.errors import DataError

FRAME_SIZE = (64, 64)
INFO_FILE = "EPISODES.json"
KEYS = ("obs", "action", "reward")


@dataclass
class Episode:
    """One episode in the stored alignment (see the module docstring)."""
    obs: np.ndarray                     # (T, D) float32
    action: np.ndarray                  # (T, A) float32, action[0] = 0
    reward: np.ndarray                  # (T,) float32, reward[0] = 0
    frames: np.ndarray | None = None    # (T, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.obs)

    @property
    def total_reward(self) -> float:
        return float(self.reward.sum(dtype=np.float64))


def state_observations(episode: Episode) -> np.ndarray:
    """The state vectors, (T, D) float32."""
    return np.asarray(episode.obs, dtype=np.float32)


def pixel_observations(episode: Episode) -> np.ndarray:
    """The frames as the store keeps them, (T, 3, 64, 64) uint8 (area-resized when not 64x64)."""
    if episode.frames is None:
        raise DataError("no 'frames' array (pixel observations need rendered frames)")
    return to_chw64(episode.frames)


#: observation kind -> (episode -> store frames, store dtype, value_scale)
OBSERVATIONS = {
    "state": (state_observations, "float32", 1.0),
    "pixels": (pixel_observations, "uint8", 1.0 / 255.0),
}


def to_chw64(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB -> (T, 3, 64, 64) uint8, by area averaging when H, W differ from 64."""
    t, height, width, channels = frames.shape
    chw = np.ascontiguousarray(frames.transpose(0, 3, 1, 2))
    if (height, width) == FRAME_SIZE:
        return chw
    small = resize_area(chw.reshape(t * channels, height, width), FRAME_SIZE)
    return small.reshape(t, channels, *FRAME_SIZE)


def write_episode(path: Path, episode: Episode) -> Path:
    """Write ``path`` (compressed npz) under a temporary name, then rename: never a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"obs": np.asarray(episode.obs, np.float32), "action": np.asarray(episode.action, np.float32),
              "reward": np.asarray(episode.reward, np.float32)}
    if episode.frames is not None:
        arrays["frames"] = np.asarray(episode.frames, np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)
    return path


def read_episode(path: Path, name: str | None = None, max_steps: int = 100_000,
                 need_frames: bool = False) -> Episode:
    """Load and check one episode file; a bad one is a DataError '<name>: <reason>'."""
    name = name or Path(path).name
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic != b"PK\x03\x04":   # an npz is a zip; np.load would try anything else as a pickle
            raise DataError(f"{name}: not an .npz file (no zip signature)")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS + (("frames",) if need_frames else ()) if k not in data.files]
            if missing:
                raise DataError(f"{name}: no '{missing[0]}' array (has: {', '.join(data.files) or 'none'})")
            arrays = {k: data[k] for k in KEYS + ("frames",) if k in data.files}
    except DataError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataError(f"{name}: holds a pickled object array (refused: files are loaded "
                            f"with allow_pickle=False)") from None
        raise DataError(f"{name}: not a readable .npz ({_first_line(err)})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise DataError(f"{name}: not a readable .npz ({_first_line(err)})") from None
    return check_episode(arrays, name, max_steps)


def check_episode(arrays: dict, name: str, max_steps: int = 100_000) -> Episode:
    """The checks of ``read_episode`` on arrays already in memory."""
    for key in KEYS + ("frames",):
        value = arrays.get(key)
        if value is not None and value.dtype.kind not in ("f", "i", "u"):
            raise DataError(f"{name}: '{key}' has dtype {value.dtype}, expected numbers")
    obs, action, reward, frames = (arrays.get(k) for k in KEYS + ("frames",))
    for key, value, dims, ndim in (("obs", obs, "(T, D)", 2), ("action", action, "(T, A)", 2),
                                   ("reward", reward, "(T,)", 1)):
        if value.ndim != ndim:
            raise DataError(f"{name}: '{key}' has shape {value.shape}, expected {dims}")
    if frames is not None and (frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8):
        raise DataError(f"{name}: 'frames' has shape {frames.shape} and dtype {frames.dtype}, "
                        f"expected (T, H, W, 3) uint8")
    lengths = {k: len(v) for k, v in (("obs", obs), ("action", action), ("reward", reward), ("frames", frames))
               if v is not None}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{name}: arrays of different lengths ({', '.join(f'{k} {n}' for k, n in lengths.items())})")
    steps = len(obs)
    if steps < 2:
        raise DataError(f"{name}: {steps} steps; an episode needs at least 2")
    if steps > max_steps:
        raise DataError(f"{name}: {steps} steps, more than the cap of {max_steps}; raise --max-steps to keep it")
    if obs.shape[1] < 1 or action.shape[1] < 1:
        raise DataError(f"{name}: 'obs' {obs.shape} and 'action' {action.shape} need at least one column")
    for key, value in (("obs", obs), ("action", action), ("reward", reward)):
        if not np.all(np.isfinite(value)):
            raise DataError(f"{name}: non-finite values (NaN or inf) in '{key}'")
    if np.any(action[0] != 0) or reward[0] != 0:
        raise DataError(f"{name}: row 0 must hold a zero action and reward (row t holds a_(t-1) and r_t; "
                        f"see seqvi/data/episodes.py)")
    return Episode(obs.astype(np.float32), action.astype(np.float32), reward.astype(np.float32), frames)


def find_episodes(source: Path) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str]], str]:
    """``[(split, name, path)]`` sorted by name, ``[(name, reason)]`` refused, and the layout
    ("split folders" or "hash split"); ``name`` is the path relative to ``source``."""
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: expected a folder of .npz episodes (in train/, valid/, test/ or flat)")
    paths = sorted((p for p in source.rglob("*.npz") if p.is_file()), key=lambda p: p.relative_to(source).as_posix())
    folders = any(p.is_dir() and p.name.lower() in SPLITS for p in source.iterdir())
    found, refused = [], []
    for path in paths:
        name = path.relative_to(source).as_posix()
        if not folders:
            found.append((plain_split(name), name, path))
        elif path.relative_to(source).parts[0].lower() in SPLITS and len(path.relative_to(source).parts) > 1:
            found.append((path.relative_to(source).parts[0].lower(), name, path))
        else:
            refused.append((name, "not under a train/, valid/ or test/ folder"))
    if not found:
        raise DataError(f"{source}: no .npz episodes found (expected {{train,valid,test}}/*.npz or a flat folder)")
    empty = [split for split in SPLITS if not any(f[0] == split for f in found)]
    if not folders and empty:
        raise DataError(f"{source}: without train/, valid/, test/ folders, files are split 80/10/10 by a hash of "
                        f"their path; {len(found)} files left split '{empty[0]}' empty (use more files or the folders)")
    return found, refused, "split folders" if folders else "hash split"


def read_info(source: Path) -> dict:
    """``EPISODES.json`` of a folder as a dict; empty when absent."""
    path = Path(source) / INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not readable JSON ({_first_line(err)}); fix or delete it") from None
    if not isinstance(info, dict):
        raise DataError(f"{path}: expected a JSON object of fields, got {type(info).__name__}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
    checks = {"env": (lambda v: isinstance(v, str), "a string"),
              "action_repeat": (count, "a positive integer"), "obs_dim": (count, "a positive integer"),
              "action_dim": (count, "a positive integer"), "fps": (lambda v: v is None or number(v), "a number"),
              "action_low": (lambda v: isinstance(v, list) and v and all(map(number, v)), "a list of numbers"),
              "action_high": (lambda v: isinstance(v, list) and v and all(map(number, v)), "a list of numbers")}
    for key, (ok, what) in checks.items():
        if key in info and not ok(info[key]):
            raise DataError(f"{path}: '{key}' must be {what}, got {info[key]!r}; fix or delete it")
    if ("action_low" in info) != ("action_high" in info) or ("action_low" in info and (
            len(info["action_low"]) != len(info["action_high"])
            or not all(a < b for a, b in zip(info["action_low"], info["action_high"]))
            or len(info["action_low"]) != info.get("action_dim", len(info["action_low"])))):
        raise DataError(f"{path}: 'action_low' and 'action_high' must be given together, one number per action "
                        f"dimension, low < high")
    return info


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:160] if text else type(err).__name__
