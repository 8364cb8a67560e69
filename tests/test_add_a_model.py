"""A model in a researcher's own package, outside seqvi's tree: one model file and one entry point.

The package is written into a temporary folder (its module and a ``dist-info`` with the entry point,
as ``pip install`` leaves them) and put on PYTHONPATH; real ``seqvi`` processes find it: ``train``
(by the entry-point name, and by an import path in a recipe), ``eval``, ``sample`` and ``models``. It
passes ``seqvi.testing.check_model``. docs/extending.md walks through it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqvi import registry
from seqvi.models import MODELS
from seqvi.testing import check_model

from conftest import REPO, tiny_recipe

MODEL_FILE = '''
"""A small state-space model on a GRU (p only)::

    p(z_t | h_{t-1})       = N(MLP(h_{t-1}))                       prior
    p(x_t | z_t, h_{t-1})  = Bernoulli / N(MLP([z_t, h_{t-1}]))    emission (MLPEmission: z columns first)
    h_t                    = GRU(h_{t-1}, [x_t, z_t])              transition
"""
from typing import NamedTuple

import torch
from torch import nn

from seqvi.models.base import GaussianHead, MLPEmission, SequentialModel, mlp


class GRUState(NamedTuple):
    h: torch.Tensor   # (B, H) h_{t-1}


class GRUSSM(SequentialModel):
    rowwise = True   # prior and emission are row-wise in (z, state): the stacked pass may batch them over time
    TEST_CONFIG = dict(x_dim=5, hidden_size=8, z_size=3)   # tiny, for seqvi.testing.check_model

    def __init__(self, x_dim: int, likelihood: str = "bernoulli", hidden_size: int = 8, z_size: int = 3):
        super().__init__()
        self.x_dim, self.z_dim, self.feature_size = x_dim, z_size, x_dim + hidden_size
        self.prior_net = nn.Sequential(mlp([hidden_size, 8]), GaussianHead(8, z_size))   # p(z_t | h_{t-1})
        self.decoder = MLPEmission(z_size, hidden_size, [8], x_dim, likelihood)         # p(x_t | z_t, h_{t-1})
        self.cell = nn.GRUCell(x_dim + z_size, hidden_size)                             # h_t = f(h_{t-1}, x_t, z_t)
        self.hidden_size = hidden_size

    def initial_state(self, batch_size):
        return GRUState(torch.zeros(batch_size, self.hidden_size, device=self.device))

    def prior(self, state):
        return self.prior_net(state.h)

    def emission(self, z, state):
        return self.decoder(z, state.h)

    def emission_grad(self, z, state, x, value=True):   # optional: AVF's gradient input by hand
        return self.decoder.recon_grad(z, state.h, x, value)

    def advance(self, state, x, z):
        return GRUState(self.cell(torch.cat([x, z], -1), state.h))

    def features(self, x, state):   # what the direct encoder q(z_t | x_t, h_{t-1}) sees
        return torch.cat([x, state.h], -1)
'''


@pytest.fixture
def plugin(tmp_path):
    """A folder holding the package ``gru_plugin`` and its dist-info (entry point ``gru_ssm``)."""
    site = tmp_path / "site"
    (site / "gru_plugin").mkdir(parents=True)
    (site / "gru_plugin" / "__init__.py").write_text("")
    (site / "gru_plugin" / "model.py").write_text(MODEL_FILE)
    info = site / "gru_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gru-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[seqvi.models]\ngru_ssm = gru_plugin.model:GRUSSM\n")
    yield site
    for name in [m for m in sys.modules if m.split(".")[0] == "gru_plugin"]:   # imported in-process: forget it
        del sys.modules[name]


def seqvi(site: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "SEQVI_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "seqvi", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def write_recipe(path: Path, store: Path, model: dict, inference: dict) -> Path:
    raw = tiny_recipe(store, epochs=2)
    raw["model"], raw["inference"] = model, inference
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_plugin_model_trains_evaluates_and_samples_through_the_cli(plugin, tiny_store, tmp_path):
    recipe = write_recipe(tmp_path / "gru.yaml", tiny_store, {"name": "gru_ssm", "hidden_size": 8, "z_size": 3},
                          {"name": "avf", "iterations": 2, "hidden_size": 16})
    trained = seqvi(plugin, "train", recipe, "--run-dir", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["model"]["name"] == "gru_ssm"
    evaluated = seqvi(plugin, "eval", "--checkpoint", tmp_path / "run", "--bound", "all", "--particles", "4",
                      "--device", "cpu", "--json", tmp_path / "eval.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    columns = json.loads((tmp_path / "eval.json").read_text())["columns"]
    assert {"-ELBO", "-IWAE(4)", "-FIVO(4)"} <= set(columns)
    sampled = seqvi(plugin, "sample", "--checkpoint", tmp_path / "run", "--num", "2", "--length", "6",
                    "--device", "cpu", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    assert len(list((tmp_path / "run" / "samples").glob("sample_*.mid"))) == 2
    # Without the package on the path, the run's model is one line with the way out.
    env_less = subprocess.run([sys.executable, "-m", "seqvi", "eval", "--checkpoint", str(tmp_path / "run")],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                              cwd=tmp_path, timeout=600)
    assert env_less.returncode == 2 and "Traceback" not in env_less.stderr
    assert "unknown 'model.name' 'gru_ssm'" in env_less.stderr and "seqvi models" in env_less.stderr


def test_seqvi_models_lists_the_plugin_with_its_package_and_options(plugin, tmp_path):
    listed = seqvi(plugin, "models", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if "gru_ssm" in line)
    assert "entry point of gru-plugin 0.1" in line and "gru_plugin.model:GRUSSM" in line
    assert "hidden_size=8" in line and "z_size=3" in line and "x_dim" not in line   # the data gives x_dim
    assert any([cell.strip() for cell in line.split("│")[1:3]] == ["vrnn", "seqvi"]
               for line in listed.stdout.splitlines())


def test_an_import_path_in_a_recipe_names_the_class_without_an_entry_point(plugin, tiny_store, tmp_path):
    (plugin / "gru_plugin-0.1.dist-info" / "entry_points.txt").unlink()   # only the module is left
    recipe = write_recipe(tmp_path / "gru.yaml", tiny_store, {"name": "gru_plugin.model:GRUSSM", "z_size": 2},
                          {"name": "direct", "hidden_sizes": [8]})
    trained = seqvi(plugin, "train", recipe, "--run-dir", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["name"] == "gru_plugin.model:GRUSSM"
    bad = seqvi(plugin, "train", recipe, "model.name=gru_plugin.modle:GRUSSM", "--run-dir", tmp_path / "r2",
                cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("error:") and "gru_plugin.modle:GRUSSM" in line and "cannot import it" in line


def test_an_override_to_a_plugin_model_says_which_recipe_keys_it_dropped(plugin, tiny_store, tmp_path):
    recipe = write_recipe(tmp_path / "vrnn.yaml", tiny_store, {"name": "vrnn", "hidden_size": 8, "z_size": 3},
                          {"name": "direct", "hidden_sizes": [8]})
    trained = seqvi(plugin, "train", recipe, "model.name=gru_plugin.model:GRUSSM", "model.z_size=2", "train.epochs=1",
                    "--run-dir", tmp_path / "run", "--device", "cpu", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert ("warning: override 'model.name=gru_plugin.model:GRUSSM' starts 'model' afresh: dropped the recipe's "
            "model.hidden_size, model.z_size") in " ".join(trained.stderr.split())
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"] == {
        "name": "gru_plugin.model:GRUSSM", "z_size": 2}


def test_the_plugin_passes_the_conformance_check(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin))
    cls = registry.resolve("models", "gru_ssm", MODELS, "model.name")
    assert cls.__module__ == "gru_plugin.model"
    assert registry.entries("models", MODELS)["gru_ssm"].origin == "entry point of gru-plugin 0.1"
    check_model(cls)


def test_a_name_that_resolves_to_nothing_is_one_line_with_a_did_you_mean(plugin, monkeypatch):
    from seqvi.errors import RecipeError

    monkeypatch.syspath_prepend(str(plugin))
    with pytest.raises(RecipeError, match=r"unknown 'model.name' 'gru_sm'; did you mean 'gru_ssm'\?"):
        registry.resolve("models", "gru_sm", MODELS, "model.name")
    with pytest.raises(RecipeError, match="no such attribute"):
        registry.resolve("models", "gru_plugin.model:GRU", MODELS, "model.name")
    (plugin / "gru_plugin" / "broken.py").write_text("raise RuntimeError('the plugin is broken')\n")
    with pytest.raises(RecipeError, match="importing it failed .RuntimeError: the plugin is broken"):
        registry.resolve("models", "gru_plugin.broken:X", MODELS, "model.name")


@pytest.mark.parametrize("adapter", ["my_midi", "gru_plugin.adapters:preprocess"])
def test_a_data_adapter_comes_from_a_plugin_by_entry_point_or_import_path(plugin, manifests, tmp_path, monkeypatch,
                                                                           adapter):
    from seqvi.data.prepare import preprocess
    from seqvi.data.store import Store

    from conftest import TINY_MANIFEST, make_corpus

    (plugin / "gru_plugin" / "adapters.py").write_text(
        "from seqvi.data.polyphonic import preprocess_midi\n\n\n"
        "def preprocess(manifest, source, out_path, **options):   # a researcher's adapter: MIDI, counted\n"
        "    preprocess.calls = getattr(preprocess, 'calls', 0) + 1\n"
        "    return preprocess_midi(manifest, source, out_path, **options)\n")
    (plugin / "gru_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[seqvi.adapters]\nmy_midi = gru_plugin.adapters:preprocess\n")
    monkeypatch.syspath_prepend(str(plugin))
    (manifests / "mine.yaml").write_text(TINY_MANIFEST.replace("name: tiny", "name: mine")
                                         .replace("adapter: midi", f"adapter: {adapter}"))
    root = tmp_path / "data"
    make_corpus(root / "raw" / "mine")
    report = preprocess("mine", str(root))
    import gru_plugin.adapters

    assert gru_plugin.adapters.preprocess.calls == 1
    with Store(report.path) as store:
        assert len(store.split("train")) == 8
