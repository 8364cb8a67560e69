"""Interaction data: generated Pendulum episodes, their alignment, the store, npz sources, collect.

Everything runs the real gymnasium Pendulum-v1 offline; episodes of our own
making (numpy arrays) stand in for "any simulator".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest

from seqvi.data.control import collect
from seqvi.data.episodes import Episode, read_episode, to_chw64, write_episode
from seqvi.data.prepare import download, preprocess
from seqvi.data.sources import plain_split
from seqvi.data.store import Store
from seqvi.errors import DataError

PEND3 = """\
name: pend3
title: Pendulum-v1 with an action repeat of 3, for tests
adapter: control
download: gymnasium
env: Pendulum-v1
seed: 7
episode_steps: {steps}
action_repeat: {repeat}
splits: {{train: 3, valid: 2, test: 2}}
files: []
"""


@pytest.fixture
def pend3(manifests):
    (manifests / "pend3.yaml").write_text(PEND3.format(steps=30, repeat=3))
    return "pend3"


def replay(env_id: str, seed: int, actions: np.ndarray, repeat: int):
    """Observations and summed rewards of ``actions`` (row t = a_{t-1}) replayed in a fresh environment."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    observations, rewards = [obs], [0.0]
    for action in actions[1:]:
        total = 0.0
        for _ in range(repeat):
            obs, reward, *_ = env.step(action)
            total += reward
        observations.append(obs)
        rewards.append(total)
    env.close()
    return np.asarray(observations), np.asarray(rewards)


@pytest.mark.parametrize("manifest, repeat, length", [("pendulum", 2, 101), ("pend3", 3, 11)])
def test_generated_episodes_replay_in_gymnasium_with_the_stored_alignment(tmp_path, pend3, manifest, repeat, length):
    """Row t holds o_t, a_{t-1} and the sum of the R rewards that came with o_t; seeds as documented."""
    raw, result = download(manifest, str(tmp_path), limit=2)
    info = json.loads((raw / "EPISODES.json").read_text())
    assert info["complete"] and info["action_repeat"] == repeat and info["action_low"] == [-2.0]
    assert result.episodes == {"train": 2, "valid": 2, "test": 2} and not result.already_done
    seed = info["seed"]
    for s, split in enumerate(("train", "valid", "test")):
        for e in range(2):
            episode = read_episode(raw / split / f"ep_{e:04d}.npz")
            assert len(episode) == length and episode.frames is None
            assert np.all(episode.action[0] == 0) and episode.reward[0] == 0
            assert np.all(np.abs(episode.action) <= 2) and np.std(episode.action[1:]) > 0.5   # uniform in [-2, 2]
            reset_seed = int(np.random.SeedSequence([seed, s, e]).generate_state(1)[0])
            obs, rewards = replay("Pendulum-v1", reset_seed, episode.action, repeat)
            np.testing.assert_allclose(episode.obs, obs, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(episode.reward, rewards, rtol=1e-5, atol=1e-5)
    # the same manifest gives the same episodes; a second run does nothing
    _, again = download(manifest, str(tmp_path), limit=2)
    assert again.already_done
    raw2, _ = download(manifest, str(tmp_path / "other"), limit=2)
    np.testing.assert_array_equal(read_episode(raw2 / "valid/ep_0001.npz").action,
                                  read_episode(raw / "valid/ep_0001.npz").action)
    # fewer episodes: the extra files of the earlier run go
    download(manifest, str(tmp_path), limit=1)
    assert sorted(p.name for p in (raw / "train").iterdir()) == ["ep_0000.npz"]


def test_preprocess_writes_aligned_inputs_and_rewards_with_offsets(tmp_path, pend3):
    raw, _ = download("pend3", str(tmp_path))
    report = preprocess("pend3", str(tmp_path))
    assert report.sequences == {"train": 3, "valid": 2, "test": 2} and report.skipped == []
    with Store(report.path) as store:
        attrs = store.attrs
        assert store.frame_shape == (3,) and attrs["dtype"] == "float32"
        assert attrs["input_dim"] == 1 and attrs["input_low"] == [-2.0] and attrs["input_high"] == [2.0]
        assert attrs["env"] == "Pendulum-v1" and attrs["action_repeat"] == 3 and attrs["observation"] == "state"
        assert attrs["likelihood"] == "gaussian" and attrs["value_scale"] == 1.0 and attrs["input_bounds"] == "environment"
        assert attrs["fps"] == pytest.approx(1 / (0.05 * 3))
        train_obs = []
        for split in ("train", "valid", "test"):
            data = store.split(split)
            with h5py.File(report.path) as f:   # the concatenated arrays line up row for row with offsets
                offsets = f[split]["offsets"][:]
                inputs, rewards, frames = f[split]["inputs"][:], f[split]["rewards"][:], f[split]["frames"][:]
            assert len(inputs) == len(rewards) == len(frames) == offsets[-1]
            for i, name in enumerate(data.names):
                episode = read_episode(raw / name)
                lo, hi = offsets[i], offsets[i + 1]
                np.testing.assert_array_equal(frames[lo:hi], episode.obs)
                np.testing.assert_array_equal(inputs[lo:hi], episode.action)
                np.testing.assert_array_equal(rewards[lo:hi], episode.reward)
                np.testing.assert_array_equal(data.read_inputs(i, 2, 5), episode.action[2:5])
                assert inputs[lo].tolist() == [0.0] and rewards[lo] == 0.0      # each sequence starts afresh
                if split == "train":
                    train_obs.append(episode.obs)
        np.testing.assert_allclose(attrs["mean"], np.concatenate(train_obs).mean(0), rtol=1e-5)


def test_pixels_are_recorded_only_when_asked_and_show_the_stored_angle(tmp_path, manifests):
    (manifests / "pend3.yaml").write_text(PEND3.format(steps=12, repeat=2))
    raw, result = download("pend3", str(tmp_path), limit=1, pixels=True)
    assert result.render_ms_per_frame > 0
    report = preprocess("pend3", str(tmp_path), pixels=True)
    with Store(report.path) as store:
        assert store.frame_shape == (3, 64, 64) and store.attrs["dtype"] == "uint8"
        assert store.attrs["value_scale"] == pytest.approx(1 / 255) and store.attrs["observation"] == "pixels"
        data = store.split("train")
        episode = read_episode(raw / data.names[0])
        x = data.read(0)
        np.testing.assert_array_equal(x, to_chw64(episode.frames))
        np.testing.assert_array_equal(data.read_inputs(0), episode.action)
    for frame, obs in zip(x, episode.obs):      # frame t shows o_t: the red rod points at angle theta_t
        red = (frame[0].astype(int) - frame[1] > 60)
        rows, cols = np.nonzero(red)
        up, left = 31.5 - rows.mean(), 31.5 - cols.mean()          # theta = 0 is up, counter-clockwise
        theta = np.arctan2(obs[1], obs[0])
        assert abs(np.angle(np.exp(1j * (np.arctan2(left, up) - theta)))) < 0.2
    # state-only download of the same manifest: no frames, and --pixels says how to get them
    download("pend3", str(tmp_path), limit=1)
    assert read_episode(raw / "train/ep_0000.npz").frames is None
    with pytest.raises(DataError, match=r"no frames; run `seqvi download pend3 --pixels`"):
        preprocess("pend3", str(tmp_path), pixels=True)


def test_rollout_gives_the_policy_each_stored_observation_before_it_acts():
    from seqvi.data.environment import Simulator, rollout

    for observation in ("state", "pixels"):
        seen = []

        def policy(x):
            seen.append(x.copy())
            return np.array([1.5 * (-1) ** len(seen)], np.float32)

        with Simulator("Pendulum-v1", action_repeat=2, render=True) as sim:
            episode = rollout(sim, policy, env_steps=10, seed=4, observation=observation, record_frames=True)
        assert len(episode) == 6 and len(seen) == 5
        expected = to_chw64(episode.frames[:5]) if observation == "pixels" else episode.obs[:5]
        np.testing.assert_array_equal(np.stack(seen), expected)          # x_t, then a_t lands in row t + 1
        np.testing.assert_array_equal(episode.action[1:, 0], [-1.5, 1.5, -1.5, 1.5, -1.5])
        assert seen[0].dtype == (np.uint8 if observation == "pixels" else np.float32)


# --------------------------------------------------------------------------- episodes from elsewhere


def good_episode(rng: np.random.Generator, steps: int = 9, obs_dim: int = 3) -> dict:
    action = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
    reward = rng.normal(size=steps).astype(np.float32)
    action[0], reward[0] = 0, 0
    return {"obs": rng.normal(size=(steps, obs_dim)).astype(np.float32), "action": action, "reward": reward}


def bad_files(folder: Path, rng) -> dict[str, str]:
    """One file per kind of bad input, under ``folder``; returns {name: expected reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "text.npz").write_text("not an npz at all")
    np.savez(folder / "pickled.npz", obs=np.array([{"a": 1}, None], dtype=object), action=np.zeros((2, 2)),
             reward=np.zeros(2))
    e = good_episode(rng)
    np.savez(folder / "lengths.npz", **{**e, "action": e["action"][:-1]})
    e = good_episode(rng)
    e["reward"][3] = np.nan
    np.savez(folder / "nan.npz", **e)
    e = good_episode(rng)
    e["obs"][2, 1] = np.inf
    np.savez(folder / "inf.npz", **e)
    np.savez(folder / "dims.npz", **{**good_episode(rng), "obs": np.zeros(9)})
    np.savez(folder / "width.npz", **good_episode(rng, obs_dim=4))
    np.savez(folder / "missing.npz", **{k: v for k, v in good_episode(rng).items() if k != "reward"})
    e = good_episode(rng)
    e["action"][0] = 0.5
    np.savez(folder / "misaligned.npz", **e)
    np.savez(folder / "short.npz", **good_episode(rng, steps=1))
    np.savez(folder / "strings.npz", **{**good_episode(rng), "reward": np.array(["a"] * 9)})
    whole = folder / "whole.npz"
    np.savez(whole, **good_episode(rng))
    (folder / "truncated.npz").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return {"text.npz": "not an .npz file", "pickled.npz": "pickled object array",
            "lengths.npz": "arrays of different lengths (obs 9, action 8, reward 9)",
            "nan.npz": "non-finite values (NaN or inf) in 'reward'", "inf.npz": "non-finite values (NaN or inf) in 'obs'",
            "dims.npz": "'obs' has shape (9,), expected (T, D)",
            "width.npz": "obs has 4 and action 2 columns, the data set's episodes 3 and 2",
            "missing.npz": "no 'reward' array", "misaligned.npz": "row 0 must hold a zero action and reward",
            "short.npz": "1 steps; an episode needs at least 2", "strings.npz": "'reward' has dtype <U1",
            "truncated.npz": "not a readable .npz"}


def test_npz_source_skips_and_counts_each_kind_of_bad_file(tmp_path, manifests):
    rng = np.random.default_rng(0)
    source = tmp_path / "rollouts"
    good = {}
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        (source / split).mkdir(parents=True)
        for i in range(n):
            good[f"{split}/a{i}.npz"] = good_episode(rng, steps=5 + i)
            np.savez(source / f"{split}/a{i}.npz", **good[f"{split}/a{i}.npz"])
    expected = bad_files(source / "train" / "zz_bad", rng)
    np.savez(source / "stray.npz", **good_episode(rng))
    report = preprocess("pendulum", str(tmp_path / "data"), source)
    reasons = dict(report.skipped)
    assert len(report.skipped) == len(expected) + 1
    assert "not under a train/, valid/ or test/ folder" in reasons["stray.npz"]
    for name, reason in expected.items():
        assert reason in reasons[f"train/zz_bad/{name}"], (name, reasons[f"train/zz_bad/{name}"])
    assert report.sequences == {"train": 4, "valid": 2, "test": 2}
    with Store(report.path) as store:
        assert store.attrs["input_dim"] == 2 and store.attrs["input_bounds"] == "observed"
        assert len(store.attrs["skipped"]) == len(expected) + 1
        train = store.split("train")
        for i, name in enumerate(train.names):
            np.testing.assert_array_equal(train.read(i), good[name]["obs"])
            np.testing.assert_array_equal(train.read_rewards(i), good[name]["reward"])
        actions = np.concatenate([e["action"][1:] for e in good.values()])
        np.testing.assert_allclose(store.attrs["input_high"], actions.max(0), rtol=1e-6)
    with pytest.raises(DataError, match="stray.npz: not under a train/"):
        preprocess("pendulum", str(tmp_path / "data"), source, strict=True)
    (source / "stray.npz").unlink()
    with pytest.raises(DataError, match="dims.npz: 'obs' has shape"):
        preprocess("pendulum", str(tmp_path / "data"), source, strict=True)


def test_flat_folder_is_split_by_a_stable_hash_of_the_file_name(tmp_path, manifests):
    rng = np.random.default_rng(1)
    source = tmp_path / "flat"
    (source / "deeper").mkdir(parents=True)
    names = [f"run{i:02d}.npz" for i in range(60)] + ["deeper/x.npz"]
    for name in names:
        np.savez(source / name, **good_episode(rng))
    report = preprocess("pendulum", str(tmp_path / "data"), source)
    with Store(report.path) as store:
        for split in ("train", "valid", "test"):
            stored = store.split(split).names
            assert stored and all(plain_split(n) == split for n in stored)
        assert store.attrs["layout"] == "hash split"
    assert sum(report.sequences.values()) == len(names)
    few = tmp_path / "few"
    few.mkdir()
    for name in ("a.npz", "b.npz"):
        np.savez(few / name, **good_episode(rng))
    with pytest.raises(DataError, match="split 80/10/10 by a hash of their path; 2 files left split '.*' empty"):
        preprocess("pendulum", str(tmp_path / "data"), few)


# --------------------------------------------------------------------------- collect


def small_store(tmp_path, manifests) -> tuple[str, Path]:
    (manifests / "pend3.yaml").write_text(PEND3.format(steps=12, repeat=2))
    root = str(tmp_path / "data")
    download("pend3", root)
    return root, preprocess("pend3", root).path


def test_collect_appends_without_touching_other_sequences(tmp_path, manifests):
    root, path = small_store(tmp_path, manifests)
    with h5py.File(path) as f:
        before = {s: {k: f[s][k][:] for k in ("frames", "inputs", "rewards", "offsets", "names")} for s in f}
        attrs = {k: f.attrs[k] for k in ("mean", "std")}
    rng = np.random.default_rng(3)
    new = [Episode(**{**good_episode(rng, steps=n), "action": np.zeros((n, 1), np.float32)}) for n in (4, 6)]
    new[1].action[1:, 0] = [0.5, -1.5, 2.0, 0.25, -0.125]
    result = collect("pend3", root, "train", "planner-001", new)
    assert (result.sequences, result.steps, result.first) == (2, 10, 3)
    with h5py.File(path) as f:
        for split, arrays in before.items():
            n = len(arrays["frames"])
            for key in ("frames", "inputs", "rewards"):
                np.testing.assert_array_equal(f[split][key][:n], arrays[key])
            np.testing.assert_array_equal(f[split]["offsets"][: len(arrays["offsets"])], arrays["offsets"])
        np.testing.assert_array_equal(f.attrs["mean"], attrs["mean"])
        np.testing.assert_array_equal(f.attrs["std"], attrs["std"])
    with Store(path) as store:
        train = store.split("train")
        assert train.names[3:] == ["planner-001/ep_0000", "planner-001/ep_0001"]
        for i, e in enumerate(new):
            np.testing.assert_array_equal(train.read(3 + i), e.obs)
            np.testing.assert_array_equal(train.read_inputs(3 + i), e.action)
            np.testing.assert_array_equal(train.read_rewards(3 + i), e.reward)
        assert "planner-001" in store.attrs["sources"] and store.attrs["collected"][0]["steps"] == 10
        assert len(store.split("valid")) == 2
    # a raw copy, so that preprocessing again includes the collected episodes
    copy = read_episode(Path(root) / "raw/pend3/train/planner-001/ep_0001.npz")
    np.testing.assert_array_equal(copy.obs, new[1].obs)
    assert preprocess("pend3", root).sequences["train"] == 5
    with Store(path) as store:
        assert "planner-001/ep_0000.npz" in " ".join(store.split("train").names)


def test_collect_refuses_bad_episodes_and_a_reused_source_and_writes_nothing(tmp_path, manifests):
    root, path = small_store(tmp_path, manifests)
    rng = np.random.default_rng(4)
    episode = Episode(**{**good_episode(rng), "action": np.zeros((9, 1), np.float32)})
    collect("pend3", root, "valid", "round-1", [episode])
    before = path.read_bytes()
    with pytest.raises(DataError, match="source 'round-1' is already in the store"):
        collect("pend3", root, "valid", "round-1", [episode], keep_raw=False)
    wide = Episode(**{**good_episode(rng), "action": np.zeros((9, 2), np.float32)})
    with pytest.raises(DataError, match=r"inputs of shape \(9, 2\), expected \(9, 1\)"):
        collect("pend3", root, "valid", "round-2", [episode, wide])
    assert not (Path(root) / "raw/pend3/valid/round-2").exists()      # no raw copy of a refused collection
    nan = Episode(**{**good_episode(rng), "action": np.zeros((9, 1), np.float32)})
    nan.obs[4, 0] = np.nan
    with pytest.raises(DataError, match="round-3/ep_0000: non-finite values"):
        collect("pend3", root, "valid", "round-3", [nan], keep_raw=False)
    with pytest.raises(DataError, match="no split 'dev'"):
        collect("pend3", root, "dev", "round-4", [episode], keep_raw=False)
    assert path.read_bytes() == before


KILLER = textwrap.dedent("""
    import sys, numpy as np
    from seqvi.data.append import append_sequences
    path, big, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    frames = np.random.default_rng(first).integers(0, 256, (big, 3, 64, 64), dtype=np.uint8)
    for k in range(first, first + 1000):
        u = np.full((big, 1), k, np.float32)
        append_sequences(path, "train", f"round-{k:04d}", [("a", frames, u, np.zeros(big, np.float32)),
                                                           ("b", frames[:7], u[:7], np.ones(7, np.float32))])
        print(k, flush=True)
""")


def test_a_killed_append_leaves_the_store_as_it_was(tmp_path):
    """SIGKILL a real process in the middle of appends: the store always opens, whole rounds only."""
    from seqvi.data.store import StoreWriter

    path = tmp_path / "big.h5"
    rng = np.random.default_rng(0)
    writer = StoreWriter(path, (3, 64, 64), "uint8")
    originals = {}
    for split in ("train", "valid", "test"):
        for i in range(2):
            frames = rng.integers(0, 256, (300, 3, 64, 64), dtype=np.uint8)      # ~3.7 MB each, incompressible
            originals[(split, i)] = frames
            writer.add(split, f"{split}{i}", frames, inputs=np.zeros((300, 1)), rewards=np.zeros(300))
    writer.close({"likelihood": "gaussian"})
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    interrupted = 0
    for attempt, delay in enumerate((0.05, 0.13, 0.21, 0.33, 0.4, 0.5)):
        child = subprocess.Popen([sys.executable, str(script), str(path), "200", str(1000 * attempt)],
                                 stdout=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        child.stdout.readline()                 # one round done: the next append is under way
        time.sleep(delay)
        tmp_exists = path.with_name(path.name + ".append.tmp").exists()
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        interrupted += tmp_exists
        with Store(path) as store:              # opens, validates offsets against frames
            train = store.split("train")
            for (split, i), frames in originals.items():
                np.testing.assert_array_equal(store.split(split).read(i), frames)
            rounds = {}
            for j, name in enumerate(train.names[2:], 2):
                round_, member = name.split("/")
                rounds.setdefault(round_, []).append(member)
                assert float(train.read_inputs(j)[0, 0]) == int(round_[-4:])
            assert all(members == ["a", "b"] for members in rounds.values())      # no half-appended round
            assert len(rounds) == len(store.attrs["collected"]) >= attempt + 1
    assert interrupted >= 3        # most kills landed inside an append
    from seqvi.data.append import append_sequences
    append_sequences(path, "test", "after", [("x", originals[("test", 0)][:5], np.zeros((5, 1)), np.zeros(5))])
    assert not path.with_name(path.name + ".append.tmp").exists()     # the stale copy was cleared
    with Store(path) as store:
        assert store.split("test").names[-1] == "after/x"


def test_samples_of_interaction_data_are_written_and_drawn_by_their_kind(tmp_path):
    from seqvi.data.samples import SAMPLE_WRITERS
    from seqvi.report import SAMPLE_PLOTS

    states, frames = np.random.default_rng(0).normal(size=(2, 5, 3)), np.random.default_rng(0).random((1, 4, 3, 64, 64))
    assert [p.name for p in SAMPLE_WRITERS["control"](states, tmp_path / "s", None)] == ["samples.npz"]
    assert np.load(tmp_path / "s" / "samples.npz")["x"].shape == (2, 5, 3)
    assert sorted(p.suffix for p in SAMPLE_WRITERS["control"](frames, tmp_path / "f", None)) == [".gif", ".mp4"]
    for x, name in ((states, "s.png"), (frames, "f.png")):
        assert SAMPLE_PLOTS["control"](x, tmp_path / name).stat().st_size > 1000


@pytest.mark.parametrize("info, needle", [
    ({"action_low": [-1], "action_high": "2"}, "'action_high' must be a list of numbers"),
    ({"action_low": [1.0], "action_high": [0.0]}, "low < high"),
    ({"action_low": [-1.0]}, "must be given together"),
    ({"action_repeat": 0}, "'action_repeat' must be a positive integer"),
    ({"obs_dim": "3"}, "'obs_dim' must be a positive integer"),
])
def test_a_bad_episodes_json_is_one_data_error(tmp_path, manifests, info, needle):
    source = tmp_path / "mine"
    for split in ("train", "valid", "test"):
        (source / split).mkdir(parents=True)
        np.savez(source / split / "a.npz", **good_episode(np.random.default_rng(0)))
    (source / "EPISODES.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="EPISODES.json: " + ".*" + needle.replace("(", r"\(")):
        preprocess("pendulum", str(tmp_path / "data"), source)
    (source / "EPISODES.json").write_text(json.dumps({"action_low": [-1, -1], "action_high": [1, 1], "env": "mine"}))
    with Store(preprocess("pendulum", str(tmp_path / "data"), source).path) as store:
        assert store.attrs["input_low"] == [-1.0, -1.0] and store.attrs["input_bounds"] == "environment"
        assert store.attrs["env"] == "mine"


class Unbounded(gym.Env):
    """A real (if pointless) gymnasium environment whose actions are unbounded."""
    action_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


def test_an_unbounded_action_box_is_one_error():
    from seqvi.data.environment import Simulator
    from seqvi.errors import SeqviError

    gym.register(id="SeqviUnbounded-v0", entry_point=Unbounded, max_episode_steps=10)
    try:
        with pytest.raises(SeqviError, match="environment 'SeqviUnbounded-v0': its action box .* is unbounded"):
            Simulator("SeqviUnbounded-v0")
    finally:
        gym.registry.pop("SeqviUnbounded-v0")
