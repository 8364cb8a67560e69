"""The batch scripts on a real SLURM scheduler (the one-node cluster of ``slurm_cluster``).

Preemption and requeue with bitwise resume, ``seqvi sweep --sbatch`` against the real queue, and the
multi-node script's two torchrun agents under srun. Every wait is on an event (a job state, a file, a
line); the timeouts only keep a broken cluster from hanging the suite.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import yaml

from seqvi.engine import checkpoint
from seqvi.engine.lifecycle import SUBMITTED
from seqvi.experiments.listing import run_status

from conftest import REPO, tiny_recipe
from slurm_cluster import STARTUP, slurm  # noqa: F401  (the session fixture)

SCRIPTS = REPO / "scripts" / "slurm"
TIMES = {}   # test name -> seconds (printed at the end; docs/runs.md, Tested on a real scheduler)


@pytest.fixture(autouse=True)
def _timed(request):
    began = time.monotonic()
    yield
    TIMES[request.node.name] = round(time.monotonic() - began, 1)
    if os.environ.get("SEQVI_SLURM_TIMES"):
        with open(os.environ["SEQVI_SLURM_TIMES"], "w") as out:
            json.dump({**STARTUP, **TIMES}, out, indent=1)


def job_env(cluster, **extra) -> dict:
    """This process's environment (the tiny manifests, PYTHONPATH) plus the cluster's SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_CONF=cluster.env["SLURM_CONF"], PYTHONPATH=str(REPO), SEQVI_THREADS="1", OMP_NUM_THREADS="1",
               SEQVI_PYTHON=sys.executable, **extra)
    return env


def write_recipe(path, root, **train):
    path.write_text(yaml.safe_dump(tiny_recipe(root, **train)))
    return path


def params(run_dir, name="last.pt"):
    state = checkpoint.load(run_dir / "checkpoints" / name)
    return {**state["model"], **{f"q.{k}": v for k, v in state["inference"].items()}}


def history(run_dir) -> list[dict]:
    path = run_dir / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def logged_step(run_dir) -> int:
    """The newest step line of metrics.jsonl (0 before the first)."""
    path = run_dir / "metrics.jsonl"
    steps = [0]
    for line in (path.read_text().splitlines() if path.exists() else []):
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, AttributeError):
            pass
    return max(steps)


def starts(run_dir) -> int:
    return sum(r.get("event") == "start" for r in history(run_dir))


def stops(run_dir) -> list[dict]:
    return [r for r in history(run_dir) if r.get("event") == "stop"]


def test_preempted_job_is_requeued_and_resumes_bitwise(slurm, tiny_store, tmp_path):
    """USR1 (the time-limit warning) and then SIGTERM (preemption) to the batch step: each time seqvi
    checkpoints and exits 75, the launcher requeues, SLURM starts the job again and it resumes; the run
    ends with the parameters of an uninterrupted one, tensor for tensor."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_store, epochs=80)
    env = job_env(slurm)
    reference = subprocess.Popen([sys.executable, "-m", "seqvi", "train", str(recipe), "--run-dir",
                                  str(tmp_path / "ref"), "--device", "cpu"], env=env, cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    job = slurm.sbatch("--job-name=preempt", SCRIPTS / "train_cpu.sbatch", recipe, run, env=env, cwd=tmp_path)
    log = tmp_path / f"slurm-preempt-{job}.out"

    for signal_name, nth in (("USR1", 1), ("TERM", 2)):
        slurm.wait(lambda: starts(run) == nth and logged_step(run) >= 20 + (stops(run)[-1]["step"] if nth > 1 else 0),
                   why=f"run {nth} of job {job} training")
        slurm.run("scancel", f"--signal={signal_name}", "--batch", job, env=env)
        slurm.wait(lambda: len(stops(run)) == nth, why=f"the stop after SIG{signal_name}")
        assert stops(run)[-1]["reason"] == "signal" and f"SIG{signal_name}" in stops(run)[-1]["message"]
        slurm.wait(lambda: int(slurm.job(job).get("Restarts", 0)) == nth, why=f"requeue {nth}")

    slurm.wait_state(job, "COMPLETED", "FAILED", "CANCELLED")
    assert slurm.state(job) == "COMPLETED", slurm.job(job)
    assert slurm.job(job)["ExitCode"] == "0:0" and int(slurm.job(job)["Restarts"]) == 2
    assert [r["reason"] for r in stops(run)] == ["signal", "signal", "finished"]
    assert starts(run) == 3 and len(slurm.completed(job)) == 3      # three runs of one job
    # each start resumed where the stop before it checkpointed
    begins = [r["step"] for r in history(run) if r["event"] == "start"]
    assert begins[1:] == [s["checkpoint_step"] for s in stops(run)[:2]] and 0 < begins[1] < begins[2]

    text = log.read_text()
    assert text.count("requeueing SLURM job") == 2 and text.strip().endswith("seqvi: finished (exit 0)")
    assert "Root Cause" not in text and "Traceback" not in text and "exit 1)" not in text

    assert reference.wait(timeout=600) == 0, reference.stderr.read()
    a, b = params(tmp_path / "ref"), params(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _gated_script(tmp_path, gate):
    """train_cpu.sbatch with one line added before its launch: wait while ``gate`` exists. The job is
    RUNNING in SLURM, and seqvi has not started, for as long as the test wants."""
    text = (SCRIPTS / "train_cpu.sbatch").read_text()
    head, launch = text.split("\nexec ", 1)
    script = tmp_path / "gated.sbatch"
    script.write_text(f"{head}\nwhile [ -e {gate} ]; do sleep 0.2; done\nexec {launch}")
    return script


def test_sweep_sbatch_sees_the_real_queue_and_evaluates_the_finished_grid(slurm, tiny_store, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_recipe(work / "tiny.yaml", tiny_store, epochs=2)
    gate = tmp_path / "gate"
    gate.touch()
    script = _gated_script(tmp_path, gate)
    env = job_env(slurm)
    runs = work / "runs"

    def sweep(*extra):
        done = subprocess.run([sys.executable, "-m", "seqvi", "sweep", "tiny.yaml", "--seeds", "0", "1", "2",
                               "--runs", str(runs), "--sbatch", str(script), *extra], env=env, cwd=work,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def jobs():
        return {run: json.loads((runs / "tiny" / run / SUBMITTED).read_text())["job"]
                for run in ("seed0", "seed1", "seed2") if (runs / "tiny" / run / SUBMITTED).exists()}

    def states():
        return {name: state for _, name, state in slurm.queue() if name.startswith("seqvi-tiny-")}

    first = sweep()
    assert first.count("submitted -> submitted") == 3
    submitted = jobs()
    assert len(set(submitted.values())) == 3
    # two CPUs, one per job: two jobs run (held at the gate, seqvi not started) and one waits
    slurm.wait(lambda: sorted(states().values()) == ["PENDING", "RUNNING", "RUNNING"], why="2 running, 1 pending")
    pending = next(run for run, job in submitted.items() if slurm.state(job) == "PENDING")

    second = sweep()     # every job is alive in the queue: nothing is submitted again
    assert jobs() == submitted and second.count("skipped -> submitted") == 3
    assert second.count("RUNNING") >= 2 and f"SLURM job {submitted[pending]} PENDING" in second

    slurm.run("scancel", submitted[pending], env=env)          # a job that leaves the queue unstarted
    slurm.wait_state(submitted[pending], "CANCELLED")
    third = sweep()
    assert f"job {submitted[pending]} left the queue before training started" in third
    resubmitted = jobs()
    assert resubmitted[pending] != submitted[pending]
    assert {r: j for r, j in resubmitted.items() if r != pending} == {r: j for r, j in submitted.items() if r != pending}

    gate.unlink()
    for job in resubmitted.values():
        slurm.wait_state(job, "COMPLETED", "FAILED", "CANCELLED")
        assert slurm.state(job) == "COMPLETED", slurm.job(job)
    assert all(run_status(runs / "tiny" / r).status == "finished" for r in resubmitted)

    fourth = sweep("--eval", "--bound elbo")
    assert fourth.count("eval evaluated") == 3 and "submitted ->" not in fourth
    assert all((runs / "tiny" / r / "eval" / "test.json").exists() for r in resubmitted)
    assert len([n for n in states() if n.startswith("seqvi-tiny-")]) == 3   # no job was added


def test_multinode_script_runs_two_torchrun_agents_as_one_job(slurm, tiny_store, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_store, epochs=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = job_env(slurm, SEQVI_RDZV_PORT=str(port))
    reference = subprocess.run([sys.executable, "-m", "seqvi", "train", str(recipe), "--run-dir", str(tmp_path / "one"),
                                "--device", "cpu"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "run"
    job = slurm.sbatch("--job-name=mn", "--nodes=1", "--ntasks-per-node=2", SCRIPTS / "train_multinode_cpu.sbatch",
                       recipe, run, env=env, cwd=tmp_path)
    slurm.wait_state(job, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
    text = (tmp_path / f"slurm-mn-{job}.out").read_text()
    assert slurm.state(job) == "COMPLETED", text
    assert slurm.job(job)["NumTasks"] == "2"
    assert text.count("seqvi: finished (exit 0)") == 2          # one line per agent
    state = checkpoint.load(run / "checkpoints" / "last.pt")
    assert state["world_size"] == 2                              # one process group over both agents
    assert starts(run) == 1 and [r["reason"] for r in stops(run)] == ["finished"]
    # the same global batches and noise as one process: equal up to float summation order (test_distributed)
    a, b = params(tmp_path / "one"), params(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_launcher_reports_a_failed_worker_in_one_line_with_its_own_exit_status(tmp_path):
    """No scheduler needed: a worker that fails with exit 2 (seqvi's bad-input code) makes the launch exit 2
    with one line naming the rank, instead of torchrun's exit 1 and its traceback."""
    worker = tmp_path / "worker.py"
    worker.write_text("import sys; print('bad recipe', file=sys.stderr); sys.exit(2)\n")
    done = subprocess.run([sys.executable, "-m", "seqvi.engine.launch", "--standalone", "--nproc-per-node=1",
                           str(worker)], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "seqvi: worker rank 0 (pid " in done.stderr and ") exit 2" in done.stderr
    assert done.stderr.strip().endswith("seqvi: failed (exit 2)")
    assert "Root Cause" not in done.stderr and "Traceback" not in done.stderr
