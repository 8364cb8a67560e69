"""``seqvi compare``: runs side by side, seeds pooled into mean ± sd.

For each run directory (given, or found below a folder such as a sweep's):
its recipe, model, q, seed, epochs trained and best validation free energy
(``metrics.jsonl``), training wall time (``history.jsonl``'s start..stop
segments, so time between a preemption and the requeue does not count), and,
where ``seqvi eval`` wrote ``eval/<split>.json`` (the copy of its latest
``eval/<split>-<checkpoint>.json``; the table's caption says of which checkpoints), the free energy F, every
bound column there (-ELBO, -IWAE(K), -FIVO(K), gap, ...) and the KL per step.

Runs whose resolved configs differ only in ``seed`` (and in
``train.max_minutes``, which decides when a call stops, not what it computes)
form one row: each number is the mean over the runs that have it, ± the
sample standard deviation when there are two or more, with n. The keys in
which rows differ are listed in ``differs``. A run whose KL per step is below
``COLLAPSE_KL`` nats is flagged "posterior collapse: z unused": its
posterior is the prior, and F is the decoder's marginal likelihood alone.

Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from seqvi.engine.runs import comparable
from seqvi.experiments.listing import RunStatus, find_runs, run_status

COLLAPSE_KL = 0.01           # nats per step
IGNORED_KEYS = (("seed",), ("train", "max_minutes"))


@dataclass
class RunSummary:
    status: RunStatus
    split: str
    values: dict = field(default_factory=dict)     # column -> float (F, bounds, KL, best valid, minutes)
    eval_problem: str = ""
    eval_checkpoint: str = ""                      # whose numbers eval/<split>.json holds: "best", "last", ...

    @property
    def run_dir(self) -> Path:
        return self.status.run_dir

    @property
    def collapsed(self) -> bool:
        kl = self.values.get("KL")
        return kl is not None and kl < COLLAPSE_KL


@dataclass
class CompareRow:
    recipe: str
    model: str
    q: str
    runs: list                                      # RunSummary, by seed
    differs: str = ""

    @property
    def seeds(self) -> list:
        return [r.status.config.get("seed") for r in self.runs]

    def values(self, column: str) -> list[float]:
        return [r.values[column] for r in self.runs if isinstance(r.values.get(column), (int, float))
                and math.isfinite(r.values[column])]

    def stats(self, column: str) -> tuple[float, float, int] | None:
        """(mean, sample sd or nan, count) of a column over the row's runs that have it."""
        xs = self.values(column)
        if not xs:
            return None
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else math.nan
        return mean, sd, len(xs)

    @property
    def epochs(self) -> str:
        done = sorted({r.status.epoch for r in self.runs})
        return str(done[0]) if len(done) == 1 else f"{done[0]}–{done[-1]}"

    @property
    def notes(self) -> list[str]:
        notes = []
        collapsed = sum(r.collapsed for r in self.runs)
        if collapsed:
            notes.append("posterior collapse: z unused" + (f" ({collapsed} of {len(self.runs)})"
                                                           if collapsed < len(self.runs) else ""))
        unfinished = [r.status.status for r in self.runs if r.status.status != "finished"]
        for status in sorted(set(unfinished)):
            notes.append(f"{unfinished.count(status)} {status}")
        problems = [r.eval_problem for r in self.runs if r.eval_problem]
        if problems:
            notes.append(problems[0])
        return notes


@dataclass
class Comparison:
    split: str
    rows: list
    columns: list                                   # test columns in display order, "KL" last
    runs: list                                      # every RunSummary, in row order

    @property
    def source(self) -> str:
        """Which file the eval columns come from, and of which checkpoints: ``eval/test.json (best.pt: 3 runs)``.

        ``seqvi eval`` writes ``eval/<split>-<checkpoint>.json`` and copies the latest to
        ``eval/<split>.json``; compare reads the copy."""
        counts: dict = {}
        for run in self.runs:
            if run.eval_checkpoint:
                counts[run.eval_checkpoint] = counts.get(run.eval_checkpoint, 0) + 1
        which = ", ".join(f"{name}.pt: {n} run{'s' if n > 1 else ''}" for name, n in sorted(counts.items()))
        return f"eval/{self.split}.json, each run's latest `seqvi eval`" + (f" ({which})" if which else " (none yet)")

    @property
    def default_plot(self) -> Path:
        """``compare.png`` in the folder that holds all the runs (a sweep's folder)."""
        parents = [r.run_dir.resolve().parent for r in self.runs]
        common = Path(os.path.commonpath(parents)) if parents else Path.cwd()
        relative = os.path.relpath(common)
        return (common if relative.startswith("..") else Path(relative)) / "compare.png"


def compare(paths: list[Path], split: str = "test") -> Comparison:
    """Read every run under ``paths`` and pool seeds into rows."""
    found = find_runs(paths)
    if not found:
        from seqvi.errors import SeqviError

        raise SeqviError(f"no run directories (folders with a config.yaml) under {', '.join(map(str, paths))}")
    summaries = [summarize(run_dir, split) for run_dir in found]
    groups: dict[str, list[RunSummary]] = {}
    for summary in summaries:
        groups.setdefault(_group_key(summary.status.config), []).append(summary)
    rows = []
    for members in groups.values():
        members.sort(key=lambda r: (str(r.status.config.get("seed")), str(r.run_dir)))
        config = members[0].status.config
        rows.append(CompareRow(_recipe_name(members[0]), str((config.get("model") or {}).get("name", "?")),
                               q_label(config.get("inference") or {}), members))
    _fill_differs(rows)
    columns = _columns(summaries)
    return Comparison(split, rows, columns, [r for row in rows for r in row.runs])


def summarize(run_dir: Path, split: str) -> RunSummary:
    status = run_status(run_dir)
    summary = RunSummary(status, split)
    if status.best_epoch:
        summary.values["best valid"] = status.best_valid
    if status.seconds > 0:
        summary.values["train min"] = status.seconds / 60
    path = Path(run_dir) / "eval" / f"{split}.json"
    if path.exists():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            summary.eval_checkpoint = str(report.get("checkpoint_name") or Path(report.get("checkpoint", "?")).stem)
            summary.values["F"] = float(report["nats_per_step"])
            summary.values["KL"] = float(report["kl_per_step"])
            for name, column in (report.get("columns") or {}).items():
                if name != "recon (binned)":
                    summary.values[name] = float(column["nats_per_step"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            summary.eval_problem = f"{path.name} unreadable ({type(err).__name__})"
    return summary


def q_label(inference: dict) -> str:
    """The inference name, with its iteration count when it has one (``avf(5)``)."""
    name = str(inference.get("name", "?"))
    return f"{name}({inference['iterations']})" if isinstance(inference.get("iterations"), int) else name


def _group_key(config: dict) -> str:
    out = comparable(config)
    for path in IGNORED_KEYS:
        node = out
        for part in path[:-1]:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return json.dumps(out, sort_keys=True, default=str)


def _recipe_name(summary: RunSummary) -> str:
    if summary.status.recipe and not summary.status.recipe.startswith("<"):
        return Path(summary.status.recipe).stem
    return summary.run_dir.parent.name if summary.run_dir.parent.name else summary.run_dir.name


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


SHOWN = ("model.name", "inference.name", "inference.iterations")   # already in the model and q columns


def _fill_differs(rows: list[CompareRow]) -> None:
    """Name, per row, the config keys (seed aside) whose values differ between rows of the same model and
    q, and that the row sets (a key another model or q does not have is not news)."""
    flats = [_flat(json.loads(_group_key(row.runs[0].status.config))) for row in rows]
    for row, flat in zip(rows, flats):
        peers = [f for other, f in zip(rows, flats) if (other.model, other.q.split("(")[0]) ==
                 (row.model, row.q.split("(")[0])] if len(rows) > 1 else [flat]
        varying = [k for k in sorted(flat) if k not in SHOWN and flat[k] is not None
                   and len({json.dumps(f.get(k), default=str) for f in peers}) > 1]
        row.differs = ", ".join(f"{k}={_short(flat[k])}" for k in varying)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


ORDER = ("F", "-ELBO", "-IWAE", "-FIVO", "-log p (exact)", "F (binned)", "gap", "KL")


def _columns(summaries: list[RunSummary]) -> list[str]:
    names = []
    for summary in summaries:
        for name in summary.values:
            if name not in names and name not in ("best valid", "train min"):
                names.append(name)

    def rank(name: str) -> tuple[int, str]:
        for i, prefix in enumerate(ORDER):
            if name == prefix or name.startswith(prefix + "("):
                return i, name
        return len(ORDER) - 1, name   # unknown columns just before KL

    return sorted(names, key=rank)
