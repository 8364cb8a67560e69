"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd, as root, under a temporary folder.

``slurm`` (session-scoped) starts it once and stops it at the end: a fresh munge key and ``munged`` on a
private socket, a ``slurm.conf`` describing this machine (its hostname, CPUs and memory from ``slurmd -C``)
with free ports, ``SlurmUser=root``, ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, state,
spool and logs in the folder, and a 5 s requeue delay (``AuthInfo=cred_expire``, the credential lifetime that
also holds a requeued job back). Nothing under /etc or /run is touched; client commands find the cluster
through ``SLURM_CONF`` (``Cluster.env``).

Accounting: ``sacct`` needs ``slurmdbd`` (a database) in SLURM 22.05; without it it answers only "accounting
storage is disabled". So the cluster keeps ``AccountingStorageType=accounting_storage/none`` and the job
completion log (``JobCompType=jobcomp/filetxt``, ``Cluster.completed``); live and recently finished jobs
come from ``squeue`` / ``scontrol show job`` (finished jobs stay there for ``MinJobAge``).

If a daemon cannot start (no packages, not root, no hostname), the tests that use it skip and say why;
with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROGRAMS = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "srun")
REQUEUE_DELAY = 5   # seconds (cred_expire); SLURM's default is 120
STARTUP = {}        # what the fixture measured: {"startup_s": ...} (docs/runs.md, Tested on a real scheduler)


class Unavailable(Exception):
    """SLURM cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """``NodeName=... CPUs=... RealMemory=...`` of this machine, as slurmd itself measures it."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = out.stdout.splitlines()[0] if out.stdout else ""
    if out.returncode != 0 or not line.startswith("NodeName="):
        raise Unavailable(f"`slurmd -C` failed: {(out.stderr or out.stdout).strip()[:200]}")
    return line


@dataclass
class Cluster:
    root: Path
    node: str
    env: dict
    cpus: int
    procs: list = field(default_factory=list)

    @property
    def jobcomp(self) -> Path:
        return self.root / "jobcomp.log"

    def run(self, *args, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run([str(a) for a in args], env=kw.pop("env", self.env), capture_output=True,
                              text=True, timeout=timeout, **kw)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))}: exit {done.returncode}: {done.stderr}{done.stdout}")
        return done

    def sbatch(self, *args, **kw) -> str:
        out = self.run("sbatch", "--parsable", *args, **kw).stdout.strip()
        return out.split(";")[0]

    def job(self, job: str) -> dict:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} once SLURM forgot it."""
        done = self.run("scontrol", "show", "job", "--oneliner", job, check=False)
        if done.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", done.stdout))

    def state(self, job: str) -> str:
        return self.job(job).get("JobState", "")

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, name, state) of every job squeue shows (pending, running, recently finished)."""
        out = self.run("squeue", "--states=all", "--noheader", "--format=%i|%j|%T").stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]

    def completed(self, job: str) -> list[dict]:
        """The job completion log's records of ``job`` (one per run of the job: a requeue adds one)."""
        if not self.jobcomp.exists():
            return []
        rows = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in self.jobcomp.read_text().splitlines()]
        return [r for r in rows if r.get("JobId") == str(job)]

    def wait(self, what, timeout: float = 240, every: float = 0.2, why: str = ""):
        """Poll ``what()`` until it returns something true (events, not wall-time assertions; the
        timeout only keeps a broken cluster from hanging the suite)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(every)
        raise AssertionError(f"gave up waiting for {why or what}; slurmctld log tail:\n{self.log_tail()}")

    def wait_state(self, job: str, *states: str, timeout: float = 240) -> str:
        return self.wait(lambda: self.state(job) in states and self.state(job), timeout,
                         why=f"job {job} in {states} (now {self.state(job)!r})")

    def log_tail(self, lines: int = 15) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                out += [f"[{name}] {t}" for t in path.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _daemon(cluster: Cluster, args: list[str], name: str) -> subprocess.Popen:
    log = open(cluster.root / "log" / f"{name}.out", "wb")
    proc = subprocess.Popen(args, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.procs.append(proc)
    return proc


def start(root: Path) -> Cluster:
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise Unavailable("not root (the test cluster runs slurmd and munged as root)")
    node_line = _node_line()
    node = re.search(r"NodeName=(\S+)", node_line).group(1)
    cpus = int(re.search(r"CPUs=(\d+)", node_line).group(1))
    try:
        address = socket.gethostbyname(node)
    except OSError as err:
        raise Unavailable(f"hostname {node!r} does not resolve: {err}") from None
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "munge" / "socket"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(root / "slurm.conf")
    cluster = Cluster(root, node, env, cpus)
    try:
        _bring_up(cluster, key, sock, address, node_line)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _bring_up(cluster: Cluster, key: Path, sock: Path, address: str, node_line: str) -> None:
    root, node = cluster.root, cluster.node
    munged = subprocess.run(["munged", "--force", f"--socket={sock}", f"--key-file={key}",
                             f"--pid-file={root / 'munge' / 'pid'}", f"--log-file={root / 'log' / 'munged.log'}",
                             f"--seed-file={root / 'munge' / 'seed'}"], capture_output=True, text=True, timeout=30)
    if munged.returncode != 0:
        raise Unavailable(f"munged did not start: {munged.stderr.strip()[:200]}")
    lines = node_line.split()
    node_spec = " ".join(w for w in lines if not w.startswith("UpTime="))
    conf = f"""\
ClusterName=seqvi-test
SlurmctldHost={node}({address})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={REQUEUE_DELAY}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root / 'jobcomp.log'}
ReturnToService=2
KillWait=10
MinJobAge=600
MessageTimeout=30
SlurmdTimeout=300
InactiveLimit=0
{node_spec} NodeAddr={address} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""
    (root / "slurm.conf").write_text(conf)
    # munged forks itself; its pid file lets stop() end it
    pid = int((root / "munge" / "pid").read_text().split()[0])
    cluster.procs.append(_Pid(pid))
    ctld = _daemon(cluster, ["slurmctld", "-D", "-i", "-f", str(root / "slurm.conf")], "slurmctld")
    slurmd = _daemon(cluster, ["slurmd", "-D", "-N", node, "-f", str(root / "slurm.conf")], "slurmd")

    def ready():
        for proc, name in ((ctld, "slurmctld"), (slurmd, "slurmd")):
            if proc.poll() is not None:
                text = (root / "log" / f"{name}.out").read_text(errors="replace")
                text += (root / "log" / f"{name}.log").read_text(errors="replace") if (root / "log" / f"{name}.log").exists() else ""
                raise Unavailable(f"{name} exited {proc.returncode}: " + " | ".join(text.strip().splitlines()[-3:]))
        done = cluster.run("sinfo", "--noheader", "--format=%T", check=False, timeout=20)
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mixed", "allocated")

    deadline = time.monotonic() + 90
    while not ready():
        if time.monotonic() > deadline:
            raise Unavailable(f"the node never became idle: {cluster.run('sinfo', check=False).stdout.strip()}")
        time.sleep(0.3)


class _Pid:
    """A process this fixture started that forked away (munged): enough of Popen for ``Cluster.stop``."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self):
        try:
            os.kill(self.pid, 0)
            return None
        except ProcessLookupError:
            return 0

    def send_signal(self, sig):
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout or 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(0.05)
        return 0


@pytest.fixture(scope="session")
def slurm():
    """The running one-node cluster (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="seqvi-slurm-"))
    began = time.monotonic()
    cluster = None
    try:
        try:
            cluster = start(root)
        except (Unavailable, OSError, subprocess.SubprocessError) as err:
            message = f"SLURM cannot start here: {err}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message + " (CI=true: these tests must run)", pytrace=False)
            pytest.skip(message)
        STARTUP["startup_s"] = round(time.monotonic() - began, 2)
        yield cluster
    finally:
        if cluster is not None:
            for job, _, state in cluster.queue():
                if state in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "SUSPENDED"):
                    cluster.run("scancel", job, check=False)
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

