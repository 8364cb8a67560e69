"""``seqvi sweep`` (local and through a fake ``sbatch`` program on PATH) and ``seqvi compare``.

One tiny sweep (2 values x 3 seeds, one epoch each) is trained once for the
module; compare's numbers are checked against the eval JSONs and
history.jsonl the runs wrote, not against numbers copied from a run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from seqvi.cli import app
from seqvi.engine.lifecycle import HISTORY, SUBMITTED
from seqvi.experiments.listing import run_status
from seqvi.experiments.sweep import split_values

from conftest import REPO, TINY_MANIFEST, make_corpus, tiny_recipe

runner = CliRunner()
POINTS = [f"model.z_size={z}-seed{s}" for z in (2, 3) for s in (0, 1, 2)]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A data root with the tiny corpus, a recipe, and SEQVI_MANIFESTS pointing at a folder holding 'tiny'."""
    base = tmp_path_factory.mktemp("sweep")
    manifests = base / "manifests"
    manifests.mkdir()
    for path in (REPO / "seqvi" / "data" / "manifests").glob("*.yaml"):
        shutil.copy(path, manifests)
    (manifests / "tiny.yaml").write_text(TINY_MANIFEST)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEQVI_MANIFESTS", str(manifests))
        mp.chdir(base)
        from seqvi.data.prepare import preprocess

        make_corpus(base / "data" / "raw" / "tiny")
        preprocess("tiny", str(base / "data"))
        (base / "tiny.yaml").write_text(yaml.safe_dump(tiny_recipe(base / "data", epochs=1)))
        yield base


@pytest.fixture(scope="module")
def swept(env):
    result = run("sweep", "tiny.yaml", "--seeds", "0", "1", "2", "model.z_size=2,3", "--eval", "--bound elbo",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    return env / "runs" / "tiny", result.output


def test_split_values_keeps_lists_whole():
    assert split_values("1e-3,3e-3") == ["1e-3", "3e-3"]
    assert split_values("[8,8],[16]") == ["[8,8]", "[16]"]


def test_sweep_trains_and_evaluates_every_point_and_a_rerun_does_nothing_twice(swept):
    folder, output = swept
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == POINTS
    for name in POINTS:
        run_dir = folder / name
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["seed"] == int(name[-1]) and config["model"]["z_size"] == int(name.split("=")[1][0])
        report = json.loads((run_dir / "eval" / "test.json").read_text())
        assert "-ELBO" in report["columns"]
        assert run_status(run_dir).status == "finished"
    assert "compare them: seqvi compare runs/tiny" in output
    record = json.loads((folder / "sweep.json").read_text())
    assert set(record["runs"]) == set(POINTS) and record["runs"][POINTS[0]]["eval_args"] == "--bound elbo"

    before = {n: (folder / n / HISTORY).read_text() for n in POINTS}
    evals = {n: (folder / n / "eval" / "test.json").stat().st_mtime_ns for n in POINTS}
    again = run("sweep", "tiny.yaml", "--seeds", "0,1,2", "model.z_size=2,3", "--eval", "--bound elbo")
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped -> finished; eval up to date") == 6
    assert {n: (folder / n / HISTORY).read_text() for n in POINTS} == before          # nothing trained again
    assert {n: (folder / n / "eval" / "test.json").stat().st_mtime_ns for n in POINTS} == evals


def test_sweep_resumes_an_unfinished_run_and_reevaluates_when_the_options_change(env, swept):
    folder, _ = swept
    work = env / "runs_resume"
    shutil.copytree(folder, work / "tiny")
    stopped = work / "tiny" / POINTS[0]
    shutil.rmtree(stopped)
    result = run("train", "tiny.yaml", "model.z_size=2", "seed=0", "train.max_minutes=0.0001", "--run-dir", stopped,
                 "--device", "cpu")
    assert result.exit_code == 0 and run_status(stopped).status == "stopped", result.output
    steps = run_status(stopped).step
    result = run("sweep", "tiny.yaml", "--seeds", "0", "1", "2", "model.z_size=2,3", "--runs", work,
                 "--eval", "--bound iwae --particles 2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert f"resuming {stopped} at step {steps}" in result.output and run_status(stopped).step > steps
    assert run_status(stopped).status == "finished"
    assert result.output.count("eval evaluated") == 6      # new options: every run evaluated again
    assert "-IWAE(2)" in json.loads((stopped / "eval" / "test.json").read_text())["columns"]


@pytest.mark.parametrize("args, needle", [
    (["model.hiden_size=2,3"], "override 'model.hiden_size=2': unknown key 'model.hiden_size'; did you mean"),
    (["--eval", "--bogus 3"], "--eval '--bogus 3': No such option"),
    (["--eval", "--checkpoint x"], "leave out --checkpoint"),
    (["3"], "for seeds: --seeds 3"),
    (["--seeds", "0", "x=1,,2"], "an empty value"),
])
def test_sweep_refuses_bad_arguments_before_training_anything(env, tmp_path, args, needle):
    result = run("sweep", "tiny.yaml", "--runs", tmp_path / "runs", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "runs").exists()


def test_sweep_sbatch_submits_through_the_batch_script_once(env, tmp_path, monkeypatch):
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$*\" >> {shlex.quote(str(log))}\necho 'Submitted batch job 4242'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    script = REPO / "scripts" / "slurm" / "train.sbatch"
    runs = tmp_path / "runs"
    result = run("sweep", "tiny.yaml", "--seeds", "0", "1", "--runs", runs, "--sbatch", script)
    assert result.exit_code == 0, result.output
    calls = log.read_text().splitlines()
    assert calls == [f"--job-name=seqvi-tiny-seed{k} {script} tiny.yaml {runs / 'tiny' / f'seed{k}'} seed={k}"
                     for k in (0, 1)]
    seed0 = runs / "tiny" / "seed0"
    assert json.loads((seed0 / SUBMITTED).read_text())["job"] == "4242"
    assert run_status(seed0).status == "submitted" and "4242" in run_status(seed0).why

    again = run("sweep", "tiny.yaml", "--seeds", "0", "1", "--runs", runs, "--sbatch", script)
    assert again.exit_code == 0 and len(log.read_text().splitlines()) == 2      # queued jobs are not resubmitted

    # The job runs what train.sbatch runs: `seqvi train RECIPE key=value... --run-dir RUN_DIR`.
    argv = calls[0].split()
    job = run("train", argv[2], *argv[4:], "--run-dir", argv[3], "--device", "cpu")
    assert job.exit_code == 0, job.output
    assert not (seed0 / SUBMITTED).exists() and run_status(seed0).status == "finished"
    third = run("sweep", "tiny.yaml", "--seeds", "0", "1", "--runs", runs, "--sbatch", script)
    assert third.exit_code == 0, third.output
    assert (seed0 / "eval" / "test.json").exists()         # finished runs are evaluated here
    assert len(log.read_text().splitlines()) == 2

    script_text = script.read_text()
    assert 'RECIPE=${1:?' in script_text and 'RUN_DIR=${2:?' in script_text and '"$@"' in script_text


def test_sweep_sbatch_without_sbatch_on_path_is_one_line(env, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run("sweep", "tiny.yaml", "--runs", tmp_path / "runs", "--sbatch", REPO / "scripts/slurm/train.sbatch")
    assert result.exit_code == 2 and "no `sbatch` program on PATH" in result.output


# --------------------------------------------------------------------------- compare


def fmt(xs: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def test_compare_pools_seeds_into_mean_sd_rows(swept, tmp_path):
    folder, _ = swept
    md = tmp_path / "table.md"
    result = run("compare", folder, "--markdown", md)
    assert result.exit_code == 0, result.output
    lines = md.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 2
    for row in rows:
        cells = dict(zip(header, row))
        z = cells["differs"].removeprefix("model.z_size=")
        names = [f"model.z_size={z}-seed{s}" for s in (0, 1, 2)]
        reports = [json.loads((folder / n / "eval" / "test.json").read_text()) for n in names]
        assert cells["seeds"] == "0,1,2" and cells["n"] == "3" and cells["epochs"] == "1"
        assert cells["model"] == "vrnn" and cells["q"] == "direct" and cells["recipe"] == "tiny"
        assert cells["F (test)"] == fmt([r["nats_per_step"] for r in reports])
        assert cells["-ELBO"] == fmt([r["columns"]["-ELBO"]["nats_per_step"] for r in reports])
        assert cells["KL (test)"] == fmt([r["kl_per_step"] for r in reports])
        best = [min(json.loads(l)["valid_nats_per_step"] for l in (folder / n / "metrics.jsonl").read_text()
                    .splitlines() if "valid_nats_per_step" in l) for n in names]
        assert cells["best valid"] == fmt(best)
        minutes = []
        for n in names:
            events = [json.loads(l) for l in (folder / n / HISTORY).read_text().splitlines()]
            minutes.append((events[-1]["time"] - events[0]["time"]) / 60)
        assert cells["train min"] == fmt(minutes, 2)
    png = folder / "compare.png"
    assert png.stat().st_size > 5000 and f"learning curves: {png.relative_to(Path.cwd())}" in result.output


def test_compare_accepts_run_directories_and_folders_alike_and_writes_csv(swept, tmp_path):
    folder, _ = swept
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run("compare", folder, "--csv", a, "--plot", tmp_path / "a.png").exit_code == 0
    assert run("compare", *[folder / n for n in POINTS], "--csv", b, "--plot", tmp_path / "b.png").exit_code == 0
    assert a.read_text() == b.read_text()
    rows = list(csv.DictReader(io.StringIO(a.read_text())))
    assert len(rows) == 2
    for row in rows:
        names = row["runs"].split()
        values = [json.loads((Path(n) / "eval" / "test.json").read_text())["nats_per_step"] for n in names]
        assert float(row["F mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
        assert float(row["F sd"]) == pytest.approx(statistics.stdev(values), rel=1e-9)
        assert row["F n"] == "3"


def test_compare_flags_posterior_collapse_and_missing_evals(swept, tmp_path):
    folder, _ = swept
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    collapsed = copy / POINTS[0] / "eval" / "test.json"
    report = json.loads(collapsed.read_text())
    report["kl_per_step"] = 0.004
    collapsed.write_text(json.dumps(report))
    (copy / POINTS[4] / "eval" / "test.json").unlink()
    md = tmp_path / "t.md"
    result = run("compare", copy, "--markdown", md, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    text = md.read_text()
    for z in (2, 3):
        kls = [json.loads(p.read_text())["kl_per_step"] for s in (0, 1, 2)
               if (p := copy / f"model.z_size={z}-seed{s}" / "eval" / "test.json").exists()]
        collapsed = sum(kl < 0.01 for kl in kls)                   # 1 epoch: a real run may collapse too
        row = [line for line in text.splitlines() if f"model.z_size={z}" in line][0]
        if z == 2:
            assert collapsed >= 1
        flag = "posterior collapse: z unused" + (f" ({collapsed} of 3)" if collapsed < 3 else "")
        assert (flag in row) == bool(collapsed), row
    row3 = [line for line in text.splitlines() if "model.z_size=3" in line][0]
    assert "(2/3)" in row3
    assert "posterior collapse: z unused" in result.output


def test_compare_says_which_eval_file_and_checkpoints_it_read(swept, tmp_path):
    """eval writes eval/test-<checkpoint>.json and copies the latest to eval/test.json; compare reads the
    copy and its caption says so, with the checkpoints the copies come from."""
    folder, _ = swept
    copy = tmp_path / "sweep"
    shutil.copytree(folder, copy)
    evaluated = run("eval", "--checkpoint", copy / POINTS[0] / "checkpoints" / "last.pt", "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    said = " ".join(evaluated.output.split())
    assert "test-last.json (copied to" in said and "eval/test.json, the latest, which `seqvi compare` reads" in said
    result = run("compare", copy, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    caption = " ".join(result.output.split())
    assert "eval columns from eval/test.json, each run's latest `seqvi eval` (best.pt: 5 runs, last.pt: 1 run)" \
        in caption


def test_compare_of_nothing_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("compare", tmp_path / "empty")
    assert result.exit_code == 2 and "no run directories" in result.output
