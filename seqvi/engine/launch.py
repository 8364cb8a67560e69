"""torchrun for ``seqvi train`` under a batch scheduler, reporting seqvi's own exit status.

    python -m seqvi.engine.launch [--requeue] [torchrun options] -m seqvi train RECIPE ... --run-dir RUN

This is torchrun (``torch.distributed.run``, same options) with three differences:

* Exit status: the workers', not torchrun's. 0 when all finished; 75 (``REQUEUE_EXIT``) when every
  failed worker exited 75 (a clean preemption: ``last.pt`` written); otherwise the first failure's code
  (128 + N for a worker killed by signal N). One line per failed worker replaces torchrun's traceback and
  its "Root Cause (first observed failure)" block.
* Signals: SIGUSR1 and SIGTERM sent to this process are passed on to its workers, which checkpoint and
  exit 75 (torchrun itself dies of SIGUSR1 and turns SIGTERM into a traceback). So a batch shell, or srun
  for every node's agent, signals this process and each worker hears it once. A signal that arrives
  before the workers exist ends the launch with 75 (nothing to save; a rerun resumes).
* ``--requeue``: under SLURM (``SLURM_JOB_ID`` set), an exit 75 runs ``scontrol requeue`` for the job
  (from the first task only) and the launch exits 0 (every task: srun's ``--kill-on-bad-exit`` stays
  quiet); SLURM starts the job again after its requeue delay
  and the rerun resumes the run.

The last line always says what seqvi did, e.g. ``seqvi: preempted (exit 75); requeueing SLURM job 12``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from seqvi.engine.lifecycle import REQUEUE_EXIT

FORWARDED = (signal.SIGTERM, signal.SIGUSR1)


def _children() -> list[int]:
    """Pids of this process's children (the workers torchrun started; Linux /proc)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == me:
                found.append(int(entry.name))
    return found


def _forward(signum, frame) -> None:
    workers = _children()
    if not workers:
        print(f"seqvi: {signal.Signals(signum).name} before training started; nothing to save",
              file=sys.stderr, flush=True)
        raise SystemExit(REQUEUE_EXIT)
    for pid in workers:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _failures(err) -> int:
    """One line per failed worker; the launch's exit status."""
    failures = sorted(err.failures.items())
    codes = [_status(f.exitcode) for _, f in failures]
    if codes and all(c == REQUEUE_EXIT for c in codes):
        ranks = ",".join(str(r) for r, _ in failures)
        print(f"seqvi: worker rank {ranks} stopped for a requeue (exit {REQUEUE_EXIT}, checkpoint written)",
              file=sys.stderr, flush=True)
        return REQUEUE_EXIT
    for rank, failure in failures:
        how = (f"killed by {signal.Signals(-failure.exitcode).name}" if failure.exitcode < 0
               else f"exit {failure.exitcode}")
        print(f"seqvi: worker rank {rank} (pid {failure.pid}) {how}", file=sys.stderr, flush=True)
    return _status(err.get_first_failure()[1].exitcode)


def launch(argv: list[str]) -> int:
    """Run torchrun with ``argv`` (its options, then the command); the workers' exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # torchrun handles these itself (forwarding them as its own death); SIGTERM and SIGUSR1 are ours.
    args = parse_args(argv)
    args.signals_to_handle = os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGINT,SIGHUP,SIGQUIT"
    for sig in FORWARDED:
        signal.signal(sig, _forward)
    try:
        run(args)
    except ChildFailedError as err:
        return _failures(err)
    return 0


def _requeue(status: int) -> int:
    job = os.environ.get("SLURM_JOB_ID")
    if status != REQUEUE_EXIT or not job:
        return status
    if os.environ.get("SLURM_PROCID", "0") != "0":
        return 0         # the first task requeues the whole job; exit 0 so that srun kills no one
    print(f"seqvi: preempted (exit {status}); requeueing SLURM job {job} to resume", file=sys.stderr, flush=True)
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"seqvi: scontrol requeue {job} failed: {(done.stderr or done.stdout).strip()}", file=sys.stderr)
        return status
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    requeue = "--requeue" in argv[:1]
    if requeue:
        argv = argv[1:]
    status = launch(argv)
    for sig in FORWARDED:             # the job is ending (or being requeued): no more forwarding
        signal.signal(sig, signal.SIG_IGN)
    what = {0: "finished", REQUEUE_EXIT: "preempted"}.get(status, "failed")
    if not (requeue and status == REQUEUE_EXIT and os.environ.get("SLURM_JOB_ID")):
        print(f"seqvi: {what} (exit {status})", file=sys.stderr, flush=True)
    return _requeue(status) if requeue else status


if __name__ == "__main__":
    sys.exit(main())
