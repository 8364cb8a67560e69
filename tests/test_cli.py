"""One CLI run per command on a tiny generated corpus, and the error contract (exit 2, one line)."""

import functools
import http.server
import json
import threading
import zipfile

import pytest
from typer.testing import CliRunner

from seqvi.cli import app

from conftest import make_corpus

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def server(tmp_path):
    """A static file server on 127.0.0.1 serving ``tmp_path/www``."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a, **k: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_help_of_every_command():
    for command in ([], ["download"], ["preprocess"], ["train"], ["eval"], ["sample"]):
        result = run(*command, "--help")
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_download_preprocess_train_eval_sample(tmp_path, manifests, server):
    www, url = server
    corpus = make_corpus(tmp_path / "src" / "Tiny")
    (corpus / "train" / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    with zipfile.ZipFile(www / "Tiny.zip", "w") as archive:
        for path in sorted(corpus.rglob("*.mid")):
            archive.write(path, path.relative_to(corpus.parent).as_posix())
    (manifests / "tinyzip.yaml").write_text(
        "name: tinyzip\ntitle: t\nadapter: midi\ndownload: http\nsteps_per_beat: 1\n"
        f"files:\n  - name: Tiny.zip\n    sha256: null\n    urls: ['{url}/missing.zip', '{url}/Tiny.zip']\n")
    root = tmp_path / "data"

    result = run("download", "tinyzip", "--root", root)
    assert result.exit_code == 0, result.output
    sums = (root / "raw" / "tinyzip" / "SHA256SUMS").read_text()
    assert "Tiny.zip" in sums

    result = run("preprocess", "tinyzip", "--root", root)
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable files" in result.output and "broken.mid" in result.output
    assert (root / "processed" / "tinyzip.h5").exists()

    result = run("preprocess", "tinyzip", "--root", root, "--strict")
    assert result.exit_code == 2 and "broken.mid" in result.output

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"data: {{dataset: tinyzip, root: '{root}', batch_size: 3, crop_length: 6}}\n"
        "model: {name: vrnn, hidden_size: 8, z_size: 2, feature_size: 8}\n"
        "inference: {name: direct, hidden_sizes: [8]}\ntrain: {epochs: 2}\n")
    run_dir = tmp_path / "runs" / "r"
    result = run("train", recipe, "train.lr=0.01", "--run-dir", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (run_dir / "checkpoints" / "best.pt").exists() and (run_dir / "config.yaml").exists()
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text()

    out_json = tmp_path / "eval.json"
    result = run("eval", "--checkpoint", run_dir, "--split", "test", "--per-step", "--json", out_json)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report == json.loads((run_dir / "eval" / "test.json").read_text())
    per_step = report["per_step"]
    total = sum(per_step["recon"]) + sum(per_step["kl"])
    assert report["nats_per_step"] == pytest.approx(total / sum(per_step["active"]))
    assert report["nats_per_sequence"] == pytest.approx(total / 3)
    assert "per sequence" in result.output and (run_dir / "eval" / "test-best.png").stat().st_size > 1000

    result = run("sample", "--checkpoint", run_dir, "--num", "2", "--length", "12", "--prime", "4")
    assert result.exit_code == 0, result.output
    from seqvi.data.midi import midi_to_roll
    from seqvi.data.store import Store
    with Store(root / "processed" / "tinyzip.h5") as store:
        test = store.split("test")
        first = test.read(0, 0, 4)
    roll, _ = midi_to_roll(run_dir / "samples" / "sample_01.mid", 1)
    assert (roll[:4] == first[:len(roll[:4])]).all()  # primed steps are the data's
    assert (run_dir / "samples" / "samples.png").exists()


def test_download_music21_chorales(tmp_path):
    pytest.importorskip("music21")
    result = run("download", "bach-chorales", "--root", tmp_path, "--limit", "4")
    assert result.exit_code == 0, result.output
    files = list((tmp_path / "raw" / "bach-chorales").rglob("*.mid"))
    assert 1 <= len(files) <= 4
    from seqvi.data.chorales import split_of
    assert all(f.parent.name == split_of(f.stem) for f in files)


@pytest.mark.parametrize("args, needle", [
    (["train", "nope.yaml"], "nope.yaml: no such file"),
    (["eval", "--checkpoint", "no/such/run"], "no/such/run: no such run directory"),
    (["sample", "--checkpoint", "no/such/run"], "no/such/run"),
    (["preprocess", "nosuchset"], "unknown data set 'nosuchset'"),
    (["download", "nosuchset"], "unknown data set 'nosuchset'"),
])
def test_errors_are_one_line_exit_2(args, needle):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_recipe_key_and_corrupt_checkpoint(tmp_path, tiny_store):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 1, lerning_rate: 3}\n")
    result = run("train", recipe)
    assert result.exit_code == 2 and "'train.lerning_rate'" in result.output
    recipe.write_text(f"data: {{dataset: tiny, root: '{tiny_store}'}}\nmodel: {{name: vrnn, hidden: 3}}\n")
    result = run("train", recipe)
    assert result.exit_code == 2 and "'model.hidden'" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04not a checkpoint")
    result = run("eval", "--checkpoint", bad)
    assert result.exit_code == 2 and "bad.pt: not a loadable seqvi checkpoint" in result.output
    assert "Traceback" not in result.output
    result = run("--debug", "eval", "--checkpoint", bad)
    assert result.exit_code != 2 and result.exception is not None  # --debug lets the traceback through


def test_train_again_on_a_finished_run_says_so(tmp_path, tiny_store):
    """Re-running a finished run trains nothing and says how to extend it (no 'valid inf')."""
    import yaml

    from conftest import tiny_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_store, epochs=1)))
    first = run("train", recipe, "--run-dir", tmp_path / "run")
    assert first.exit_code == 0 and "trained to epoch 1" in first.output
    again = run("train", recipe, "--run-dir", tmp_path / "run")
    assert again.exit_code == 0, again.output
    assert "already trained to epoch 1" in again.output and "inf" not in again.output
