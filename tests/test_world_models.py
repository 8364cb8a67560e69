"""The world-model workflow through the CLI on a tiny trained RSSM in the real Pendulum-v1: plan, collect (and a
retrain that reads the new episodes), open-loop predict, their bad inputs (one line, exit 2, nothing lost), the
RSSM's contract with actions and rewards under direct and AVF filtering, and a bitwise resume of an RSSM run."""

from __future__ import annotations

import json
import sys

import av
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.config import recipe_from_dict
from seqvi.data.store import Store
from seqvi.engine import checkpoint
from seqvi.engine.train import train
from seqvi.inference import INFERENCE
from seqvi.models.rssm import RSSM
from seqvi.objectives import filter_sequence, training_loss

from conftest import REPO, one_line_error, tiny_recipe

runner = CliRunner()
TINY_PLAN = ["--horizon", "4", "--candidates", "16", "--top-k", "4", "--iterations", "2", "--env-steps", "40"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])




def rssm_recipe(root, **train_cfg) -> dict:
    return {"seed": 0,
            "data": {"dataset": "pendulum", "root": str(root), "batch_size": 2, "crop_length": 10, "eval_batch_size": 4},
            "model": {"name": "rssm", "deter_size": 8, "z_size": 3, "hidden_size": 8, "obs_scale": 0.1},
            "inference": {"name": "direct", "hidden_sizes": [8]},
            "train": {"epochs": 2, "lr": 0.003, "log_every": 1, **train_cfg}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A data root with 3 random Pendulum episodes per split, and a tiny RSSM trained on it by the CLI."""
    base = tmp_path_factory.mktemp("world")
    root = base / "data"
    assert run("download", "pendulum", "--root", root, "--limit", "3").exit_code == 0
    assert run("preprocess", "pendulum", "--root", root).exit_code == 0
    recipe = base / "planet.yaml"
    recipe.write_text(yaml.safe_dump(rssm_recipe(root)))
    result = run("train", recipe, "--run-dir", base / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return {"root": root, "run": base / "run", "recipe": recipe, "base": base}


def frames_of(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_plan_end_to_end(world):
    result = run("plan", "--checkpoint", world["run"], "--episodes", "2", *TINY_PLAN, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "return" in result.output and "ms per planning step" in result.output
    saved = json.loads((world["run"] / "plan" / "returns.json").read_text())
    returns = saved["returns"]
    assert len(returns) == 2 and saved["steps"] == [20, 20]            # 40 environment steps, repeat 2
    worst = -(np.pi ** 2 + 0.1 * 8 ** 2 + 0.001 * 4) * 40                # Pendulum's lowest reward per step
    assert all(worst <= r <= 0 for r in returns) and saved["mean"] == pytest.approx(np.mean(returns))
    assert saved["config"]["candidates"] == 16 and saved["config"]["action_repeat"] == 2
    assert frames_of(world["run"] / "plan" / "episode.mp4") == 21       # o_0 and one frame per stored step
    again = run("plan", "--checkpoint", world["run"], "--episodes", "2", *TINY_PLAN, "--no-video")
    assert json.loads((world["run"] / "plan" / "returns.json").read_text())["returns"] == returns   # seeded
    other = run("plan", "--checkpoint", world["run"], "--episodes", "2", *TINY_PLAN, "--no-video", "--seed", "1")
    assert again.exit_code == other.exit_code == 0
    assert json.loads((world["run"] / "plan" / "returns.json").read_text())["returns"] != returns


def test_collect_appends_episodes_that_a_retrain_reads(world, tmp_path):
    store_file = world["root"] / "processed" / "pendulum.h5"
    with Store(store_file) as store:
        before = store.split("train")
        names, first = list(before.names), before.read(0)
    result = run("collect", "--checkpoint", world["run"], "--episodes", "2", *TINY_PLAN)
    assert result.exit_code == 0, result.output
    assert "appended 2 episodes" in result.output and "'planner-1'" in result.output
    with Store(store_file) as store:
        after = store.split("train")
        assert list(after.names[:len(names)]) == names and np.array_equal(after.read(0), first)   # untouched
        assert len(after) == len(names) + 2 and all(n.startswith("planner-1/") for n in after.names[len(names):])
        new = after.read_inputs(len(names))
        assert len(after.read(len(names))) == 21 and np.abs(new).max() <= 2.0 and np.abs(new[1:]).max() > 0
    assert (world["root"] / "raw" / "pendulum" / "train" / "planner-1" / "ep_0001.npz").exists()
    # a fresh run on the grown store: 5 training episodes in batches of 2 are 2 steps an epoch (2 + 3: a last
    # batch of one joins the one before); the 3 random ones alone made 1 (the fixture's run: step 2 after 2 epochs)
    recipe = tmp_path / "again.yaml"
    recipe.write_text(yaml.safe_dump(rssm_recipe(world["root"], epochs=1)))
    result = run("train", recipe, "--run-dir", tmp_path / "again", "--device", "cpu")
    assert result.exit_code == 0 and "trained to epoch 1 (step 2)" in result.output, result.output
    assert checkpoint.load(world["run"] / "checkpoints" / "last.pt")["step"] == 2
    # the name is taken now: refused before any episode is played, nothing written
    refused = run("collect", "--checkpoint", world["run"], "--episodes", "1", "--source", "planner-1", *TINY_PLAN)
    one_line_error(refused, "source 'planner-1' is already in the store")
    with Store(store_file) as store:
        assert len(store.split("train")) == len(names) + 2


def test_predict_open_loop_on_a_control_run(world):
    result = run("predict", "--checkpoint", world["run"], "--context", "5", "--horizon", "30", "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "open-loop prediction" in result.output
    saved = json.loads((world["run"] / "eval" / "predict_test.json").read_text())
    assert saved["kind"] == "control" and saved["num_sequences"] == 3
    for key in ("obs_rmse", "sample_rmse", "last_rmse", "reward_rmse"):
        assert len(saved[key]) == 30 and all(np.isfinite(saved[key]))
    # the 'nothing moves' reference: zero error at no step after the context (the pendulum moves)
    assert min(saved["last_rmse"]) > 0 and saved["sample_rmse"][0] >= saved["obs_rmse"][0] - 1e-6
    assert (world["run"] / "eval" / "predict_test.png").exists()


@pytest.fixture(scope="module")
def midi_run(tmp_path_factory):
    """A VRNN run on a tiny MIDI corpus: a run without actions."""
    from conftest import make_corpus
    from seqvi.data.prepare import preprocess

    base = tmp_path_factory.mktemp("midi")
    manifests = base / "manifests"
    manifests.mkdir()
    from conftest import TINY_MANIFEST
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    patch = pytest.MonkeyPatch()
    patch.setenv("SEQVI_MANIFESTS", str(manifests))
    try:
        make_corpus(base / "data" / "raw" / "tiny")
        preprocess("tiny", str(base / "data"))
        train(recipe_from_dict(tiny_recipe(base / "data", epochs=1)), base / "run", device="cpu")
    finally:
        patch.undo()
    return base / "run"


@pytest.mark.parametrize("command", ["plan", "collect"])
def test_plan_and_collect_refuse_a_run_without_actions(midi_run, command):
    one_line_error(run(command, "--checkpoint", midi_run, *TINY_PLAN),
                   "planning needs a run trained on interaction data (actions and rewards)")


def test_predict_refuses_what_it_cannot_score(world, midi_run):
    one_line_error(run("predict", "--checkpoint", world["run"], "--context", "80", "--horizon", "30"),
                   "no sequence has context + horizon = 110 steps (longest: 101)")
    one_line_error(run("predict", "--checkpoint", midi_run), "predict scores video frames")


def test_plan_bad_options_and_a_missing_environment(world, monkeypatch):
    one_line_error(run("plan", "--checkpoint", world["run"], "--candidates", "10", "--top-k", "20"),
                   "--top-k 20 must not exceed --candidates 10")
    listed = sorted(p.name for p in (world["run"]).iterdir())
    monkeypatch.setitem(sys.modules, "gymnasium", None)      # as if the extra were not installed
    one_line_error(run("plan", "--checkpoint", world["run"], *TINY_PLAN),
                   "needs gymnasium, which is not installed: pip install 'seqvi[control]'")
    assert sorted(p.name for p in (world["run"]).iterdir()) == listed


@pytest.mark.parametrize("inf", [{"name": "direct", "hidden_sizes": [8]},
                                 {"name": "avf", "iterations": 2, "hidden_size": 8}])
def test_rssm_contract_with_actions_and_rewards(inf):
    """F = recon (observation and reward) + KL under either q; the reward's NLL is part of recon; gradients
    reach every parameter of p (the GRU, prior, decoder, reward head, encoder where q reads it)."""
    torch.manual_seed(0)
    model = RSSM(x_dim=3, frame_shape=(3,), input_dim=1, deter_size=7, z_size=3, hidden_size=6, obs_scale=0.1)
    kwargs = {k: v for k, v in inf.items() if k != "name"}
    inference = INFERENCE[inf["name"]](model, **kwargs)
    x, u, r = torch.randn(4, 6, 3), torch.rand(4, 6, 1) * 4 - 2, -torch.rand(4, 6) * 10
    r[:, 0] = float("nan")                                          # nothing arrives with o_0
    mask = torch.ones(4, 6)
    mask[1, 4:] = 0
    torch.manual_seed(1)
    with_r = filter_sequence(model, inference, x, mask, inputs=u, rewards=r)
    torch.manual_seed(1)
    without = filter_sequence(model, inference, x, mask, inputs=u)
    assert with_r.reward_nll.shape == (4, 6) and bool((with_r.reward_nll[:, 0] == 0).all())
    torch.testing.assert_close(with_r.recon, without.recon + with_r.reward_nll)
    assert torch.isfinite(with_r.free_energy).all() and bool((with_r.kl[mask > 0] >= 0).all())
    training_loss(with_r).backward()
    skip = ("encoder",) if inf["name"] == "avf" else ()              # AVF never reads features
    for name, p in model.named_parameters():
        if not name.startswith(skip):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rssm_run_with_overshooting_resumes_bitwise(world, tmp_path):
    def crash(kind, info):
        if kind == "step" and info["step"] == 3:
            raise RuntimeError("crash")

    raw = rssm_recipe(world["root"], epochs=2, checkpoint_every=1)
    raw["objective"] = {"overshooting": 3, "overshooting_weight": 0.5}
    recipe = recipe_from_dict(raw)
    train(recipe, tmp_path / "a", device="cpu")
    with pytest.raises(RuntimeError, match="crash"):
        train(recipe, tmp_path / "b", device="cpu", events=crash)
    assert train(recipe, tmp_path / "b", device="cpu").resumed_step == 2
    a, b = (checkpoint.load(tmp_path / n / "checkpoints" / "last.pt") for n in ("a", "b"))
    for part in ("model", "inference"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), key


def test_the_model_based_loop_continues_from_its_last_finished_round(tmp_path):
    from seqvi.control.cem import CEMConfig
    from seqvi.control.mbrl import LoopSettings, model_based_loop

    recipe = recipe_from_dict(rssm_recipe("unused", epochs=1))          # the loop sets its own data root
    tiny = dict(test_episodes=1, collect_episodes=2, plan=CEMConfig(4, 16, 4, 2), random_episodes=3, env_steps=20)
    seen = []
    first = model_based_loop(recipe, tmp_path / "loop", LoopSettings(rounds=1, **tiny),
                             events=lambda kind, info: seen.append(kind))
    assert [r["round"] for r in first.rounds] == [0] and first.rounds[0]["episodes"] == 3
    assert (tmp_path / "loop" / "data" / "processed" / "pendulum.h5").exists() and "data" in seen
    trained = (tmp_path / "loop" / "round-0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = model_based_loop(recipe, tmp_path / "loop", LoopSettings(rounds=2, **tiny))
    assert [r["round"] for r in again.rounds] == [0, 1]
    assert again.rounds[0]["returns"] == first.rounds[0]["returns"]                     # not replayed
    assert (tmp_path / "loop" / "round-0" / "checkpoints" / "last.pt").stat().st_mtime_ns == trained   # not retrained
    assert again.rounds[1]["episodes"] == 3 + 2 and len(again.rounds[0]["collected_returns"]) == 2
    saved = json.loads((tmp_path / "loop" / "returns.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [0, 1] and saved["seconds"] > 0
    third = model_based_loop(recipe, tmp_path / "loop", LoopSettings(rounds=2, **tiny))   # nothing left to do
    assert third.rounds[1]["episodes"] == 5 and third.rounds[1]["returns"] == again.rounds[1]["returns"]
    # the script behind `make planet`, on the finished loop: the table and the plot of returns per round
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import planet_loop
    finally:
        sys.path.pop(0)
    path = tmp_path / "planet.yaml"
    path.write_text(yaml.safe_dump(rssm_recipe("unused", epochs=1)))
    args = [str(path), "--out", str(tmp_path / "loop"), "--rounds", "2", "--test-episodes", "1", "--collect", "2",
            "--horizon", "4", "--candidates", "16", "--top-k", "4", "--iterations", "2", "--random-episodes", "3",
            "--env-steps", "20"]
    assert planet_loop.main(args) == 0
    assert (tmp_path / "loop" / "returns.png").stat().st_size > 1000
    assert planet_loop.main(args[:1] + ["--out", str(tmp_path / "loop"), "model.nope=1"]) == 2     # one-line error


def test_open_loop_prediction_with_the_true_dynamics_is_exact(world):
    """Pendulum-v1's own dynamics as the model (tests/test_planning.py): rolled open loop with the recorded
    actions from filtered real states, it predicts the stored observations and rewards, so the
    protocol's alignment (condition, prior, emission and reward, advance) is the store's."""
    from seqvi.control.open_loop import predict_open_loop
    from test_planning import ReadTheState, TruePendulum

    with Store(world["root"] / "processed" / "pendulum.h5") as store:
        result = predict_open_loop(TruePendulum(2), ReadTheState(), store.split("test"), "test", context=5,
                                   horizons=(10, 30), samples=2)
    assert result.num_sequences == 3 and result.horizon == 30
    # float32 and the model's 1e-4 prior noise drift slowly; a step out of alignment would be off by ~1
    assert result.obs_rmse.max() < 5e-3 and result.reward_rmse[:5].max() < 5e-3 and result.reward_rmse.max() < 0.05
    assert result.return_error < 0.1 < abs(result.mean_return)
    assert result.last_rmse.min() > 0.05                 # the reference does move away


def test_a_tiny_pixel_world_trains_predicts_with_a_frame_strip_and_plans(tmp_path):
    """Issue 21's smoke path on real rendered Pendulum frames: download --pixels -> train a tiny pixel RSSM ->
    predict (curves, the 'nothing moves' reference and a real-against-imagined strip) -> plan one episode."""
    root = tmp_path / "data"
    assert run("download", "pendulum", "--root", root, "--limit", "2", "--pixels").exit_code == 0
    assert run("preprocess", "pendulum", "--root", root, "--pixels").exit_code == 0
    recipe = rssm_recipe(root)
    recipe["model"].update({"channels": 2, "embed_size": 8, "obs_scale": None, "pixel_scale": 0.1,
                            "pixel_link": "shifted"})
    recipe["train"]["epochs"] = 1
    (tmp_path / "pixels.yaml").write_text(yaml.safe_dump(recipe))
    result = run("train", tmp_path / "pixels.yaml", "--run-dir", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 0, result.output
    result = run("predict", "--checkpoint", tmp_path / "run", "--context", "3", "--horizon", "6", "--samples", "2")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "eval" / "predict_test.json").read_text())
    assert saved["kind"] == "control" and len(saved["obs_rmse"]) == len(saved["last_rmse"]) == 6
    assert min(saved["last_rmse"]) > 0                                    # the rod moves after the context
    strip = tmp_path / "run" / "eval" / "predict_test_frames.png"
    assert "real against imagined frames" in result.output and strip.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from seqvi.control.open_loop import predict_open_loop
    from seqvi.engine.run import load_run

    loaded = load_run(tmp_path / "run", "cpu")
    with loaded.open_store() as store:
        split = store.split("test")
        strip_of = predict_open_loop(loaded.model, loaded.inference, split, "test", context=3, horizons=(6,),
                                     samples=2)
        real = split.read(0, 3, 9) * split.value_scale                     # sequence 0 after its context
    assert strip_of.frames.shape == (2, 6, 3, 64, 64)
    np.testing.assert_allclose(strip_of.frames[0], real, atol=1e-6)
    assert 0 <= strip_of.frames[1].min() and strip_of.frames[1].max() <= 1 and not np.allclose(strip_of.frames[1], real)
    result = run("plan", "--checkpoint", tmp_path / "run", "--episodes", "1", *TINY_PLAN, "--device", "cpu")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "plan" / "returns.json").read_text())
    assert len(saved["returns"]) == 1 and saved["steps"] == [20]

