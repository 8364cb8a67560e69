"""Rough edges users met in daily use, each checked through the command or function they used.

File modes follow the umask; a failed download leaves no folder it made; hints
name the data set; override typos name the override, with "did you mean";
``train.epochs=0`` is refused before a run exists; a torch file that is not a
seqvi checkpoint is called that; TIMIT names why every file was skipped;
``--version``, shell completion and the data set names in ``download --help``.
"""

from __future__ import annotations

import io
import os
import socket
import stat

import numpy as np
import pytest
import torch
import yaml
from scipy.io import wavfile
from typer.testing import CliRunner

from seqvi.cli import app

from conftest import tiny_recipe

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


# --------------------------------------------------------------------------- file modes


def test_written_files_get_the_umask_mode_not_0600(tmp_path, umask_027):
    from seqvi.data.audio_samples import _write_atomic
    from seqvi.data.download import _write_sums
    from seqvi.data.midi import roll_to_midi

    roll = np.zeros((4, 88), np.uint8)
    roll[1:3, 40] = 1
    roll_to_midi(roll, tmp_path / "a.mid", 1)
    _write_atomic(tmp_path / "a.wav", 16000, np.zeros(10, np.int16))
    _write_sums(tmp_path, {"x.zip": "0" * 64})
    for name in ("a.mid", "a.wav", "SHA256SUMS"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == umask_027, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SHA256SUMS", "a.mid", "a.wav"]  # no temporaries


# --------------------------------------------------------------------------- downloads


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/corpus.zip"


def test_failed_download_names_the_data_set_and_removes_only_the_folders_it_made(tmp_path, manifests):
    (manifests / "deadset.yaml").write_text(yaml.safe_dump({
        "name": "deadset", "title": "t", "adapter": "midi", "download": "http",
        "files": [{"name": "corpus.zip", "sha256": None, "urls": [dead_url()]}]}))
    root = tmp_path / "fresh_root"
    line = one_error(run("download", "deadset", "--root", root))
    assert "seqvi preprocess deadset --source PATH" in line and "NAME" not in line
    assert not root.exists()                                   # root, raw/ and raw/deadset/ were all made by the call

    kept = tmp_path / "data" / "raw" / "deadset"
    kept.mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    one_error(run("download", "deadset", "--root", tmp_path / "data"))
    assert (kept / "notes.txt").read_text() == "mine"          # what was there stays

    (tmp_path / "data2" / "raw").mkdir(parents=True)
    one_error(run("download", "deadset", "--root", tmp_path / "data2"))
    assert (tmp_path / "data2" / "raw").is_dir() and not (tmp_path / "data2" / "raw" / "deadset").exists()


def test_manual_download_hint_names_the_data_set_and_leaves_no_folder(tmp_path):
    line = one_error(run("download", "timit", "--root", tmp_path / "d"))
    assert "seqvi preprocess timit --source PATH" in line
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- recipes and overrides


@pytest.fixture
def recipe(tmp_path, tiny_store):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=1)))
    return path


@pytest.mark.parametrize("override, needle", [
    ("model.hiden_size=3", "unknown key 'model.hiden_size'; did you mean 'model.hidden_size'?"),
    ("train.lerning_rate=3", "unknown key 'train.lerning_rate'"),
    ("train.epochs=0", "'train.epochs' must be at least 1, got 0"),
    ("train.lr=fast", "'train.lr' must be float, got 'fast'"),
    ("model.name=vrn", "unknown 'model.name' 'vrn'; did you mean 'vrnn'?"),
    ("inference.hidden_sizes=[8, x]", "'inference.hidden_sizes[1]' must be int"),
])
def test_a_bad_override_is_named_not_the_recipe_file(tmp_path, recipe, override, needle):
    line = one_error(run("train", recipe, override, "--run-dir", tmp_path / "run"))
    assert line.startswith(f"error: override '{override}': "), line
    assert needle in line and "r.yaml" not in line
    assert not (tmp_path / "run").exists()                    # refused before a run directory exists


def test_a_bad_key_in_the_recipe_file_still_names_the_file(tmp_path, tiny_store):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=0)))
    line = one_error(run("train", path, "train.lr=0.1", "--run-dir", tmp_path / "run"))
    assert "r.yaml: 'train.epochs' must be at least 1, got 0" in line
    assert not (tmp_path / "run").exists()
    raw = tiny_recipe(tiny_store)
    raw["train"]["patiense"] = 3
    path.write_text(yaml.safe_dump(raw))
    line = one_error(run("train", path))
    assert "r.yaml: unknown key 'train.patiense'; did you mean 'train.patience'?" in line


def test_did_you_mean_for_data_sets_and_recipe_paths(tmp_path, monkeypatch):
    assert "did you mean 'bach-chorales'?" in one_error(run("download", "bach-chorals"))
    assert "did you mean 'jsb-chorales'?" in one_error(run("preprocess", "jsb-chorale"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "quickstart.yaml").write_text("seed: 0\n")
    line = one_error(run("train", "recipes/quickstrat.yaml"))
    assert "recipes/quickstrat.yaml: no such file; did you mean 'recipes/quickstart.yaml'?" in line
    line = one_error(run("train", "quickstart.yaml"))
    assert "did you mean 'recipes/quickstart.yaml'?" in line
    assert "did you mean" not in one_error(run("train", "zzz_nothing_like_it.yaml"))


# --------------------------------------------------------------------------- checkpoints and TIMIT


def test_a_torch_file_that_is_not_seqvi_s_is_not_called_corrupt(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "scripted.pt")
    line = one_error(run("eval", "--checkpoint", tmp_path / "scripted.pt", "--device", "cpu"))
    assert "scripted.pt: not a seqvi checkpoint (a TorchScript archive" in line and "corrupt" not in line
    data = (tmp_path / "scripted.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    assert "truncated or corrupt" in one_error(run("sample", "--checkpoint", tmp_path / "cut.pt"))


def test_timit_with_every_file_skipped_names_the_first_reason(tmp_path):
    for split, speaker in (("TRAIN", "MAB0"), ("TRAIN", "MCD0"), ("TEST", "MEF0")):
        folder = tmp_path / "TIMIT" / split / "DR1" / speaker
        folder.mkdir(parents=True)
        buf = io.BytesIO()
        wavfile.write(buf, 8000, np.zeros(400, np.int16))
        (folder / "SX1.WAV").write_bytes(buf.getvalue())
    line = one_error(run("preprocess", "timit", "--source", tmp_path / "TIMIT", "--root", tmp_path / "d"))
    assert "no readable training utterances (" in line and "files skipped; first: " in line
    assert "sample rate 8000 Hz, expected 16000" in line


# --------------------------------------------------------------------------- the command line itself


def test_version_completion_and_data_set_names_in_help():
    from seqvi import __version__

    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"seqvi {__version__}"
    result = run("--help")
    assert result.exit_code == 0 and "--install-completion" in result.output
    result = run("download", "--help")
    assert result.exit_code == 0
    for name in ("bach-chorales", "jsb-chorales", "timit", "kth", "lgssm"):
        assert name in result.output


# --------------------------------------------------------------------------- samples


def test_each_sample_call_leaves_exactly_its_own_files(tmp_path, recipe, umask_027):
    run_dir = tmp_path / "run"
    assert run("train", recipe, "--run-dir", run_dir, "--device", "cpu").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.mid").write_bytes(b"the user's own file")
    (out / "sample_07.mid").write_bytes(b"also the user's")     # named like seqvi's, but never written by it

    def files(folder):
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    assert run("sample", "--checkpoint", run_dir, "--num", 4, "--length", 6, "--out", out).exit_code == 0
    assert files(out) == ["mine.mid", "sample_01.mid", "sample_02.mid", "sample_03.mid", "sample_04.mid",
                          "sample_07.mid", "samples.png"]
    result = run("sample", "--checkpoint", run_dir, "--num", 2, "--length", 6, "--out", out)
    assert result.exit_code == 0, result.output
    assert "removed 2 files of the previous call: sample_03.mid, sample_04.mid" in result.output
    assert files(out) == ["mine.mid", "sample_01.mid", "sample_02.mid", "sample_07.mid", "samples.png"]
    assert (out / "mine.mid").read_bytes() == b"the user's own file"
    assert stat.S_IMODE((out / "sample_01.mid").stat().st_mode) == umask_027

    default = run_dir / "samples"        # a run's own folder from before the record: seqvi-named files were seqvi's
    default.mkdir()
    for name in ("sample_01.mid", "sample_02.mid", "sample_03.mid", "notes.txt"):
        (default / name).write_bytes(b"old")
    assert run("sample", "--checkpoint", run_dir, "--num", 1, "--length", 6).exit_code == 0
    assert files(default) == ["notes.txt", "sample_01.mid", "samples.png"]
    assert (default / "sample_01.mid").read_bytes() != b"old"


def test_a_missing_store_names_the_data_set_in_its_hint(tmp_path, manifests):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"dataset": "jsb-chorales", "root": str(tmp_path / "d")}}))
    line = one_error(run("train", recipe, "--run-dir", tmp_path / "run"))
    assert "jsb-chorales.h5: no processed store; run `seqvi download jsb-chorales` and `seqvi preprocess " \
           "jsb-chorales` first" in line and "NAME" not in line
    assert not (tmp_path / "run").exists()
