"""Everything seqvi shows a person: Rich tables and progress, PNG plots.

Only the CLI imports this module; models, objectives and the engine never
print. Plots use matplotlib's Agg backend, imported when a plot is drawn.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
if not console.is_terminal:  # logs and pipes: tables keep their numbers whole
    console.width = max(console.width, 160)


# --------------------------------------------------------------------------- progress


def progress_bar() -> "Bar":
    """Every progress bar of seqvi: Rich's live bar in a terminal, a plain line every ~10% elsewhere."""
    return Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
               console=console, transient=False, disable=not console.is_terminal)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Bar(Progress):
    """Rich's progress bar, which draws nothing when output is not a terminal (a log file, a pipe, a
    batch job); there, each task prints a plain line when it passes another tenth of its total
    (``LINES`` per task at most, however often it is updated), with the elapsed time and an ETA:

        test: free energy: 40% (28/70)  0:12 elapsed, about 0:18 left

    A task says nothing in its first ``QUIET`` seconds: a step that quick needs no progress (and a
    bad input's error stays the one line it is).

    The ETA is the rate since the task started (``since``: when its work began, if before ``add_task``;
    a task that starts part-way, a resumed training, counts from its starting point)."""

    LINES = 10
    QUIET = 2.0

    def __init__(self, *columns, **kwargs):
        super().__init__(*columns, **kwargs)
        self.plain = self.disable
        self._marks: dict = {}   # task id -> [tenths printed, completed at the start, start time]

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, since: float | None = None, **fields: Any):
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._marks[task_id] = [self._tenths(completed, total), completed,
                                time.monotonic() if since is None else since]
        return task_id

    def update(self, task_id, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._line(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._line(task_id)

    def _tenths(self, completed: float, total: float | None) -> int:
        return int(self.LINES * min(completed / total, 1.0)) if total else 0

    def _line(self, task_id) -> None:
        if not self.plain:
            return
        task = self._tasks[task_id]
        mark = self._marks[task_id]
        tenths = self._tenths(task.completed, task.total)
        elapsed = time.monotonic() - mark[2]
        if tenths <= mark[0] or elapsed < self.QUIET:
            return
        mark[0] = tenths
        done, total = task.completed, task.total
        if done >= total:
            when = f"done in {_clock(elapsed)}"
        else:
            rate = (done - mark[1]) / max(elapsed, 1e-9)
            left = f"about {_clock((total - done) / rate)} left" if rate > 0 else "ETA unknown"
            when = f"{_clock(elapsed)} elapsed, {left}"
        info = task.fields.get("info") or ""
        self.console.print(f"{task.description}: {int(100 * done / total)}% ({done:,.0f}/{total:,.0f})"
                           f"{'  ' + info if info else ''}  {when}", markup=False)


class FileProgress:
    """Adapter from the library's ``(name, done, total)`` callbacks to one Rich bar per name.

    A name's first callback comes after its first piece of work; the passes run one after another, so
    its work began at the previous callback (or when this adapter was made): the ETA counts from then."""

    def __init__(self, bar: Progress):
        self.bar, self.tasks, self.last = bar, {}, time.monotonic()

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if name not in self.tasks:
            self.tasks[name] = self.bar.add_task(name, total=total, info="", since=self.last)
        self.bar.update(self.tasks[name], completed=done, total=total)
        self.last = time.monotonic()


class TrainProgress:
    """Renders the engine's training events: a bar with the live loss, a line per epoch (``epoch_line``),
    in a terminal or not; in a log the bar becomes a line every ~10% of the steps (``Bar``)."""

    def __init__(self, bar: Progress):
        self.bar, self.task, self.epochs = bar, None, None

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "start":
            if info.get("replaced"):
                console.print(f"[yellow]replaced the previous run:[/] {'; '.join(info['replaced'][:5])}")
            if info.get("resumed_step") is not None:
                console.print(f"resuming {info['run_dir']} at step {info['resumed_step']}")
            console.print(f"{info['parameters']:,} parameters on {info['device']}")
            if info.get("tensorboard"):
                console.print(f"TensorBoard: tensorboard --logdir {info['tensorboard']}")
            self.epochs = info.get("epochs")
            self.task = self.bar.add_task("train", total=info["total_steps"], completed=info["step"], info="")
        elif kind == "step":
            self.bar.update(self.task, completed=info["step"],
                            info=f"epoch {info['epoch']}  loss {info['loss']:.3f}")
        elif kind == "epoch":
            self.bar.console.print(epoch_line(info, self.epochs))


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def epoch_line(record: dict, epochs: int | None = None) -> str:
    """One line per epoch from its metrics.jsonl record (nats per time step throughout):

        epoch  3/10  train 8.214 (recon 7.512, KL 0.702, β 1.00)  valid 8.105 (KL 0.712) best
          |grad| 3.21 mean, 9.84 max  lr 0.001  4.1 s + valid 0.3 s, 1,234 steps/s

    (one line; wrapped here). The train figures are the epoch's means over its real time steps,
    loss = recon + β KL (the objective trained, KL-annealed), or a particle bound's (no parts).
    "lr p .. q .." when q's rate differs; "posterior collapse: z unused" when the valid KL per step is
    below COLLAPSE_KL."""
    r = record
    width = len(str(epochs)) if epochs else 4
    where = f"epoch {r['epoch']:>{width}}" + (f"/{epochs}" if epochs else "")
    train = f"train {_num(r.get('train_loss'))}"
    if r.get("train_recon") is not None and r.get("train_kl") is not None:
        train += f" (recon {_num(r['train_recon'])}, KL {_num(r['train_kl'])}, β {_num(r.get('kl_weight'), 2)})"
    valid = f"valid {r['valid_nats_per_step']:.4f}"
    if r.get("valid_kl_per_step") is not None:
        valid += f" (KL {r['valid_kl_per_step']:.3f})"
    valid += " [green]best[/]" if r.get("best") else ""
    parts = [where, train, valid]
    if r.get("grad_norm_mean") is not None:
        parts.append(f"|grad| {r['grad_norm_mean']:.3g} mean, {r['grad_norm_max']:.3g} max")
    lr, lr_q = r.get("lr"), r.get("lr_q")
    if lr is not None:
        parts.append(f"lr {lr:.3g}" if lr_q is None or lr_q == lr else f"lr p {lr:.3g} q {lr_q:.3g}")
    if r.get("epoch_seconds") is not None:
        train_s = r["epoch_seconds"] - r.get("valid_seconds", 0.0)
        parts.append(f"{train_s:.1f} s + valid {r.get('valid_seconds', 0.0):.1f} s, "
                     f"{r.get('steps_per_second', 0.0):,.0f} steps/s")
    if r.get("nonfinite_batches"):
        parts.append(f"[yellow]{r['nonfinite_batches']} non-finite batches skipped[/]")
    note = collapse_note(r["valid_kl_per_step"]) if r.get("valid_kl_per_step") is not None else ""
    if note:
        parts.append(f"[bold yellow]{note}[/]")
    return "  ".join(parts)


def train_summary(result: Any, cfg: Any) -> str:
    """The line ``train`` ends with: how far the run got, why this call stopped, the validation."""
    best = f"best valid {result.best_valid:.4f} nats/step"
    where = f"epoch {result.epoch} (step {result.step})"
    if result.nothing_to_do:
        if result.stop == "patience":
            return (f"already stopped early at {where}: {result.since_best} epochs without a better valid "
                    f"(train.patience {cfg.patience}), nothing to do (raise train.patience to go on); {best}")
        return f"already trained to {where}, nothing to do (raise train.epochs to extend); {best}"
    rate = result.train_steps / max(result.seconds, 1e-9)
    done = (f"in {result.seconds:.1f} s, {rate:,.0f} time steps/s; valid {result.last_valid:.4f} nats/step, "
            f"best {result.best_valid:.4f}")
    if result.stop == "patience":
        return (f"stopped early at {where}: {result.since_best} epochs without a better valid "
                f"(train.patience {cfg.patience}); trained {done}")
    if result.stop == "budget":
        return (f"time budget of {cfg.max_minutes:g} min used at {where}: checkpoint written, rerun the same "
                f"command to continue; trained {done}")
    return f"trained to {where} {done}"


class SweepProgress:
    """Renders ``seqvi sweep``'s events: a line when a run starts and when it is done."""

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "point":
            state = "" if info["status"] == "new" else f" ({info['status']})"
            console.print(f"[bold][{info['index']}/{info['total']}][/] {info['run_dir']}{state}")
        elif kind == "done":
            extra = f"; eval {info['evaluated']}" if info["evaluated"] else ""
            note = f": {info['message']}" if info["message"] else ""
            console.print(f"  {info['action']} -> {info['status']}{extra}{note}")


def sweep_table(result: Any) -> Table:
    table = Table(title=f"sweep {result.folder}: {len(result.outcomes)} runs")
    for name in ("run", "action", "status", "eval", "note"):
        table.add_column(name, overflow="fold")
    for o in result.outcomes:
        table.add_row(o.point.name, o.action, f"[{STATUS_STYLE.get(o.status, '')}]{o.status}[/]", o.evaluated,
                      o.message)
    return table


# --------------------------------------------------------------------------- tables


def buckets(length: int) -> list[tuple[int, int]]:
    """Rows t=1, 2-4, 5-8, 9-16, ... (1-based, inclusive) covering ``length`` steps."""
    rows, lo, hi = [(1, 1)], 2, 4
    while lo <= length:
        rows.append((lo, min(hi, length)))
        lo, hi = hi + 1, hi * 2
    return [r for r in rows if r[0] <= length]


from seqvi.experiments.compare import COLLAPSE_KL  # noqa: E402  (no torch; nats per step: below it, z carries nothing)


def collapse_note(kl_per_step: float) -> str:
    """"posterior collapse: z unused" when the KL per step is below COLLAPSE_KL, else ""."""
    return f"posterior collapse: z unused (KL {kl_per_step:.4f} nats/step)" if kl_per_step < COLLAPSE_KL else ""


def eval_table(result: Any, per_step: bool = False, title: str | None = None) -> Table:
    """Free energy per time step: mean over the sequences active at those steps."""
    length = len(result.active)
    rows = [(t, t) for t in range(1, length + 1)] if per_step else buckets(length)
    extra = list(result.extra)
    steps = max(result.steps, 1)
    caption = f"{result.num_sequences} sequences, {result.steps} steps"
    note = collapse_note(float(result.kl.sum()) / steps)
    table = Table(title=title or f"free energy per time step — {result.split} (nats, lower is better)",
                  caption=caption + (f"; [bold yellow]{note}[/]" if note else ""))
    table.add_column("t", justify="right")
    for name in ("free energy", "reconstruction", "KL", *extra, "active seqs"):
        table.add_column(name, justify="right")
    for lo, hi in rows:
        sl = slice(lo - 1, hi)
        n = result.active[sl].sum()
        if n == 0:
            continue
        recon, kl = result.recon[sl].sum() / n, result.kl[sl].sum() / n
        label = str(lo) if lo == hi else f"{lo}–{hi}"
        cells = [f"{result.extra[c][sl].sum() / n:.4f}" for c in extra]
        table.add_row(label, f"{recon + kl:.4f}", f"{recon:.4f}", f"{kl:.4f}", *cells,
                      f"{int(result.active[lo - 1])}")
    table.add_section()
    table.add_row("per step", f"{result.nats_per_step:.4f}", f"{result.recon.sum() / steps:.4f}",
                  f"{result.kl.sum() / steps:.4f}", *[f"{result.column_totals(c)[0]:.4f}" for c in extra],
                  "", style="bold")
    seqs = max(result.num_sequences, 1)
    table.add_row("per sequence", f"{result.nats_per_sequence:.2f}", f"{result.recon.sum() / seqs:.2f}",
                  f"{result.kl.sum() / seqs:.2f}", *[f"{result.column_totals(c)[1]:.2f}" for c in extra],
                  "", style="bold")
    return table


STATUS_STYLE = {"finished": "green", "running": "cyan", "submitted": "cyan", "preempted": "yellow",
                "stopped": "yellow", "failed": "red", "empty": "dim"}


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def runs_table(statuses: list, now: float | None = None) -> Table:
    """``seqvi runs``: one row per run directory with its status (seqvi/experiments/listing.py has the rule)."""
    import time

    now = time.time() if now is None else now
    table = Table(title=f"{len(statuses)} runs")
    for name, justify in (("run", "left"), ("status", "left"), ("epoch", "right"), ("step", "right"),
                          ("best valid", "right"), ("modified", "left"), ("why", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for st in statuses:
        epoch = f"{st.epoch}/{st.epochs}" if st.epochs else str(st.epoch)
        if st.epochs and st.epoch > st.epochs:   # train.epochs lowered after these epochs were trained
            epoch = f"{st.epoch} (train.epochs now {st.epochs})"
        best = f"{st.best_valid:.4f} (ep {st.best_epoch})" if st.best_epoch else ""
        modified = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.modified)) if st.modified else ""
        table.add_row(str(st.run_dir), f"[{STATUS_STYLE.get(st.status, '')}]{st.status}[/]", epoch, str(st.step),
                      best, f"{modified} ({_age(now - st.modified)})" if modified else "", st.why)
    return table


MODEL_KINDS = {"models": ("models", "model.name"), "inference": ("inference procedures (q)", "inference.name"),
               "adapters": ("data adapters", "a manifest's adapter")}


def models_table(rows: list) -> list[Table]:
    """``seqvi models``: one table per registry (``seqvi.registry.Listing`` rows), options from the signature."""
    from rich.markup import escape

    tables = []
    for kind, (title, key) in MODEL_KINDS.items():
        table = Table(title=f"{title} ({key})", title_justify="left")
        for name in ("name", "from", "class", "options (default)"):
            table.add_column(name, overflow="fold")
        for row in (r for r in rows if r.kind == kind):
            options = ", ".join(name if default is None else f"{name}={default}" for name, default, _ in row.options)
            if row.problem:
                options = f"[red]cannot load: {escape(row.problem)}[/]"
            table.add_row(row.name, escape(row.origin), escape(row.target), escape(options) if not row.problem else options)
        tables.append(table)
    return tables


def _mean_sd(stats: tuple | None, n: int, digits: int = 3) -> str:
    if stats is None:
        return ""
    mean, sd, count = stats
    text = f"{mean:.{digits}f}" if math.isnan(sd) else f"{mean:.{digits}f} ± {sd:.{digits}f}"
    return text if count == n else f"{text} ({count}/{n})"


def _compare_cells(comparison: Any) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by the Rich table and the Markdown file."""
    show_differs = any(row.differs for row in comparison.rows)
    header = ["recipe", "model", "q"] + (["differs"] if show_differs else []) + ["seeds", "n", "epochs",
              "best valid"] + [f"{c} ({comparison.split})" if c in ("F", "KL") else c for c in comparison.columns]
    header += ["train min", "notes"]
    rows = []
    for row in comparison.rows:
        n = len(row.runs)
        cells = [row.recipe, row.model, row.q] + ([row.differs] if show_differs else [])
        cells += [",".join(str(s) for s in row.seeds), str(n), row.epochs, _mean_sd(row.stats("best valid"), n)]
        cells += [_mean_sd(row.stats(c), n) for c in comparison.columns]
        cells += [_mean_sd(row.stats("train min"), n, 2), "; ".join(row.notes)]
        rows.append(cells)
    return header, rows


def compare_table(comparison: Any) -> Table:
    """``seqvi compare``: one row per config, seeds pooled (mean ± sd); nats per step, lower is better."""
    header, rows = _compare_cells(comparison)
    table = Table(title=f"{len(comparison.runs)} runs, {len(comparison.rows)} rows — nats per step, lower is "
                        f"better; mean ± sd over seeds; eval columns from {comparison.source}")
    for name in header:
        table.add_column(name, justify="left" if name in ("recipe", "model", "q", "differs", "seeds", "notes")
                         else "right", overflow="fold")
    for cells in rows:
        if "posterior collapse" in cells[-1]:
            cells = cells[:-1] + [f"[bold red]{cells[-1]}[/]"]
        table.add_row(*cells)
    return table


def compare_flags(comparison: Any) -> list[str]:
    """One line per row with a posterior collapse, so the flag is read whatever the table's width."""
    lines = []
    for row in comparison.rows:
        for note in row.notes:
            if note.startswith("posterior collapse"):
                what = " ".join(x for x in (row.recipe, row.model, row.q, row.differs) if x)
                lines.append(f"[bold red]{note}[/] in {what}: KL per step below 0.01 nats, q is the prior")
            elif ": skipped " in note or note.startswith("skipped "):
                lines.append(f"[yellow]{escape(note)}[/]")
    return lines


def compare_markdown(comparison: Any) -> str:
    header, rows = _compare_cells(comparison)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def compare_csv(comparison: Any) -> str:
    """One line per row: labels, then mean, sd and count of every number (empty where absent)."""
    import csv
    import io

    numbers = ["best valid"] + list(comparison.columns) + ["train min"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["recipe", "model", "q", "differs", "seeds", "n", "epochs"]
                    + [f"{c} {k}" for c in numbers for k in ("mean", "sd", "n")] + ["notes", "runs"])
    for row in comparison.rows:
        cells = [row.recipe, row.model, row.q, row.differs, " ".join(str(s) for s in row.seeds), len(row.runs),
                 row.epochs]
        for column in numbers:
            stats = row.stats(column)
            cells += ["", "", 0] if stats is None else [repr(stats[0]), "" if math.isnan(stats[1]) else repr(stats[1]),
                                                        stats[2]]
        writer.writerow(cells + ["; ".join(row.notes), " ".join(str(r.run_dir) for r in row.runs)])
    return out.getvalue()


def plot_learning_curves(comparison: Any, path: Path) -> Path:
    """PNG: validation nats/step against epoch and against training wall time, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    from matplotlib.ticker import MaxNLocator

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    longest = max((t for run in comparison.runs for _, _, t in run.status.curve if t == t), default=0.0)
    unit, scale = ("min", 60.0) if longest >= 120 else ("s", 1.0)
    for g, row in enumerate(comparison.rows):
        for k, run in enumerate(row.runs):
            curve = run.status.curve
            if not curve:
                continue
            epochs, values, seconds = zip(*curve)
            style = dict(color=colors[g % len(colors)], ls=styles[k % len(styles)], lw=1.2, marker=".", ms=3)
            label = f"{run.run_dir.name}" if len(comparison.runs) <= 12 else (row.recipe if k == 0 else None)
            axes[0].plot(epochs, values, label=label, **style)
            axes[1].plot([s / scale for s in seconds], values, **style)
    axes[0].set_xlabel("epoch")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel(f"training wall time ({unit}; time between stop and resume left out)")
    for ax in axes:
        ax.set_ylabel("valid free energy (nats/step)")
        ax.grid(alpha=0.3)
    if any(run.status.curve for run in comparison.runs):
        axes[0].legend(fontsize=7)
    fig.suptitle("learning curves (one colour per row, one line style per seed)")
    return _save(plt, fig, path)


def iteration_table(curve: np.ndarray, split: str, trained: int | None = None, start: str = "prior",
                    samples: int | None = None) -> Table:
    """AVF's free energy per step after each inference iteration (0 = the prior); ``trained``: the
    iterations the network was trained with; ``samples``: the curve's noise draws per step. The caption
    says how the curve is computed (``seqvi.engine.iterations``), so that its row at the trained count
    is not mistaken for the F column."""
    lines = []
    if trained:
        lines.append(f"the network was trained with {trained} iteration{'s' if trained != 1 else ''} per step")
    if samples:
        lines.append(f"each row: F_t at that iterate, averaged over the same {samples} noise draws per step for every "
                     f"row; this curve's filter advances with a sample of its last iterate ({len(curve) - 1}), so its "
                     f"row {trained or 'K'} differs slightly from the F column (one draw per step, advancing with that "
                     f"iterate's own sample)")
    caption = "\n".join(lines) or None
    table = Table(title=f"AVF free energy by inference iteration — {split} (nats/step)", caption=caption)
    table.add_column("iteration", justify="right")
    table.add_column("free energy", justify="right")
    table.add_column("change", justify="right")
    for k, value in enumerate(curve):
        table.add_row(f"0 ({start})" if k == 0 else str(k), f"{value:.4f}",
                      "" if k == 0 else f"{value - curve[k - 1]:+.4f}")
    return table


def plot_iterations(curve: np.ndarray, path: Path) -> Path:
    """PNG of the free energy against the inference iteration (the AVF paper's curve)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(range(len(curve)), curve, marker="o")
    ax.set_xlabel("inference iteration (0 = prior)")
    ax.set_ylabel("free energy (nats/step)")
    ax.set_title("AVF: free energy by iteration")
    return _save(plt, fig, path)


def preprocess_table(report: Any) -> Table:
    table = Table(title=f"{report.dataset}: preprocessed in {report.seconds:.1f} s")
    table.add_column("split")
    table.add_column("sequences", justify="right")
    table.add_column("time steps", justify="right")
    for split in ("train", "valid", "test"):
        table.add_row(split, str(report.sequences.get(split, 0)), str(report.steps.get(split, 0)))
    return table


def generated_lines(result: Any) -> list[str]:
    """What ``seqvi download`` says after generating episodes in a simulator."""
    counts = ", ".join(f"{split} {n}" for split, n in result.episodes.items())
    steps = sum(result.steps.values())
    if result.already_done:
        return [f"already generated: {counts} episodes of {result.env} ({steps:,} stored steps; "
                f"delete {result.raw / 'EPISODES.json'} to redo)"]
    lines = [f"generated {counts} episodes of {result.env} ({steps:,} stored steps"
             f"{', with 64x64 frames' if result.pixels else ''}) in {result.seconds:.1f} s"]
    if result.render_ms_per_frame is not None:
        lines.append(f"rendering: {result.render_ms_per_frame:.1f} ms per frame")
    return lines


def skipped_lines(skipped: list, limit: int = 10) -> list[str]:
    lines = [f"  skipped {name}: {reason}" for name, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more (listed in the store's 'skipped' attribute)")
    return lines


# --------------------------------------------------------------------------- plots


def _save(plt, fig, path: Path) -> Path:
    """Lay out, write and close a figure; returns its path."""
    from seqvi.data.atomic import atomic_output

    fig.tight_layout()
    try:
        with atomic_output(path) as handle:   # atomic, through a symlink, never over a FIFO or device
            fig.savefig(handle, format=Path(path).suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_free_energy(result: Any, path: Path) -> Path:
    """PNG of the mean free energy, reconstruction and KL per active sequence against t."""
    return _save(_pyplot(), free_energy_figure(result), path)


def free_energy_figure(result: Any):
    """The figure of ``plot_free_energy`` (also TensorBoard's ``valid/free_energy_per_step``)."""
    plt = _pyplot()
    active = np.maximum(result.active, 1)
    t = np.arange(1, len(active) + 1)
    keep = result.active > 0
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(t[keep], ((result.recon + result.kl) / active)[keep], label="free energy", lw=1.5)
    ax.plot(t[keep], (result.recon / active)[keep], label="reconstruction", lw=1)
    ax.plot(t[keep], (result.kl / active)[keep], label="KL", lw=1)
    ax.set_xlabel("time step t")
    ax.set_ylabel("nats")
    ax.set_title(f"free energy per step — {result.split}: {result.nats_per_step:.3f} nats/step")
    ax.legend(loc="upper right")
    twin = ax.twinx()
    twin.fill_between(t, result.active, color="grey", alpha=0.12, step="mid")
    twin.set_ylabel("active sequences")
    fig.tight_layout()
    return fig


def plot_samples(adapter: str, x: np.ndarray, path: Path, primed: int = 0) -> Path:
    """A PNG of generated sequences, drawn the way their kind of data is looked at."""
    return SAMPLE_PLOTS.get(adapter, plot_series)(x, path, primed)   # a plugin's adapter: plain series


def plot_piano_rolls(rolls: np.ndarray, path: Path, primed: int = 0, low_pitch: int = 21) -> Path:
    """PNG with one piano roll per sample (time across, pitch up); primed steps shaded."""
    plt = _pyplot()
    n = len(rolls)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 * n + 0.4), dpi=100, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.imshow(rolls[i].T, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest",
                  extent=(0, rolls.shape[1], low_pitch, low_pitch + rolls.shape[2]))
        if primed:
            ax.axvspan(0, primed, color="tab:blue", alpha=0.12)
        ax.set_ylabel(f"#{i + 1} pitch")
    axes[-1, 0].set_xlabel("time step" + (f" (first {primed} primed from data)" if primed else ""))
    return _save(plt, fig, path)


def plot_waveforms(x: np.ndarray, path: Path, primed: int = 0) -> Path:
    """PNG with one waveform per sample (frames (N, T, F) flattened, normalized units); primed steps shaded."""
    plt = _pyplot()
    n, steps = len(x), x.shape[1]
    waves = x.reshape(n, -1)
    t = np.arange(waves.shape[1]) / x.shape[2]     # in time steps
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.5 * n + 0.4), dpi=100, squeeze=False, sharex=True)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(t, waves[i], lw=0.4, color="black")
        if primed:
            ax.axvspan(0, primed, color="tab:blue", alpha=0.12)
        ax.set_xlim(0, steps)
        ax.set_ylabel(f"#{i + 1}")
    axes[-1, 0].set_xlabel(f"time step ({x.shape[2]} samples each; amplitude in normalized units)"
                           + (f"; first {primed} primed from data" if primed else ""))
    return _save(plt, fig, path)


def plot_series(x: np.ndarray, path: Path, primed: int = 0) -> Path:
    """PNG of real-valued sequences (N, T, D): one panel per sample, one line per dimension."""
    plt = _pyplot()
    n = len(x)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.6 * n + 0.4), dpi=100, squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(x[i].reshape(x.shape[1], -1), lw=1)
        if primed:
            ax.axvspan(0, primed - 1, color="tab:blue", alpha=0.12)
        ax.set_ylabel(f"#{i + 1}")
    axes[-1, 0].set_xlabel("time step" + (f" (first {primed} primed from data)" if primed else ""))
    return _save(plt, fig, path)


SAMPLE_PLOTS = {"midi": plot_piano_rolls, "timit": plot_waveforms, "synthetic": plot_series}


# --------------------------------------------------------------------------- video (KTH)


def even_columns(steps: int, max_columns: int) -> np.ndarray:
    """At most ``max_columns`` evenly spaced frame indices in 0..steps-1, first and last included."""
    return np.unique(np.linspace(0, steps - 1, min(steps, max_columns)).round().astype(int))


def plot_frames(x: np.ndarray, path: Path, primed: int = 0, max_columns: int = 16) -> Path:
    """PNG strip of video samples (N, T, C, H, W) in [0, 1]: one row per sample, evenly spaced
    frames across (at most ``max_columns``), primed (real) frames underlined in blue."""
    plt = _pyplot()
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    n, steps, h, w = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    cols = even_columns(steps, max_columns)
    gap = 2
    mosaic = np.ones((n * (h + gap) - gap, len(cols) * (w + gap) - gap), dtype=np.float32)
    for i in range(n):
        for j, t in enumerate(cols):
            mosaic[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = x[i, t].mean(0)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(cols)), 0.75 * n + 0.8), dpi=100)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (w + gap) + w / 2 for j in range(len(cols))], [str(t + 1) for t in cols], fontsize=7)
    ax.set_yticks([i * (h + gap) + h / 2 for i in range(n)], [f"#{i + 1}" for i in range(n)], fontsize=7)
    for j, t in enumerate(cols):
        if t < primed:
            ax.plot([j * (w + gap), j * (w + gap) + w - 1], [mosaic.shape[0] + 1] * 2, color="tab:blue", lw=3,
                    clip_on=False)
    ax.set_xlabel("frame t" + (f" (first {primed} real, underlined)" if primed else ""))
    return _save(plt, fig, path)


SAMPLE_PLOTS["kth"] = plot_frames


def plot_observations(x: np.ndarray, path: Path, primed: int = 0) -> Path:
    """Interaction data: frames (N, T, C, H, W) as a strip, state vectors (N, T, D) as lines."""
    return (plot_frames if np.ndim(x) == 5 else plot_series)(x, path, primed)


SAMPLE_PLOTS["control"] = plot_observations


def predict_table(result: Any) -> Table:
    """Per predicted frame: best-of-N PSNR and SSIM for each horizon, and the mean sample's."""
    table = Table(title=f"video prediction — {result.split}: context {result.context} frames, best of "
                        f"{result.samples} samples, {result.num_sequences} sequences (higher is better)")
    table.add_column("t", justify="right")
    for h in result.horizons:
        table.add_column(f"PSNR best@{h}", justify="right")
        table.add_column(f"SSIM best@{h}", justify="right")
    table.add_column("PSNR mean", justify="right")
    table.add_column("SSIM mean", justify="right")
    for t in range(len(result.mean_psnr)):
        cells = []
        for h in result.horizons:
            cells += ([f"{result.best_psnr[h][t]:.2f}", f"{result.best_ssim[h][t]:.4f}"] if t < h else ["", ""])
        table.add_row(str(t + 1), *cells, f"{result.mean_psnr[t]:.2f}", f"{result.mean_ssim[t]:.4f}")
    table.add_section()
    cells = []
    for h in result.horizons:
        cells += [f"{result.best_psnr[h].mean():.2f}", f"{result.best_ssim[h].mean():.4f}"]
    table.add_row("mean", *cells, f"{result.mean_psnr.mean():.2f}", f"{result.mean_ssim.mean():.4f}", style="bold")
    return table


def plot_predict(result: Any, path: Path) -> Path:
    """PNG of PSNR and SSIM against the predicted frame t: best of N per horizon, and the mean sample."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, label, best, mean in ((axes[0], "PSNR (dB)", result.best_psnr, result.mean_psnr),
                                  (axes[1], "SSIM", result.best_ssim, result.mean_ssim)):
        for h in result.horizons:
            ax.plot(np.arange(1, h + 1), best[h], marker=".", lw=1.2, label=f"best of {result.samples} over {h}")
        ax.plot(np.arange(1, len(mean) + 1), mean, ls="--", lw=1, color="grey", label="mean sample")
        ax.set_xlabel(f"predicted frame t (after {result.context} context frames)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(f"video prediction — {result.split} ({result.num_sequences} sequences)")
    return _save(plt, fig, path)


# --------------------------------------------------------------------------- world models: plan, collect, loop


def plan_table(summary: Any, title: str = "planned episodes") -> Table:
    """Per episode: the environment's return, the planner's imagined elite return and the time per step;
    the last row the mean ± sd over episodes."""
    c = summary.config
    table = Table(title=f"{title} — {summary.env}: CEM horizon {c['horizon']}, {c['candidates']} candidates, "
                        f"top {c['top_k']}, {c['iterations']} iterations, action repeat {c['action_repeat']}, "
                        f"noise {c['noise']} (return: higher is better)")
    for name in ("episode", "seed", "return", "imagined (H steps)", "ms / plan step"):
        table.add_column(name, justify="right")
    for e, (ret, pred, sec, seed) in enumerate(zip(summary.returns, summary.predicted, summary.step_seconds,
                                                   summary.seeds), 1):
        table.add_row(str(e), str(seed), f"{ret:.1f}", f"{pred:.1f}", f"{1e3 * sec:.1f}")
    table.add_section()
    table.add_row("mean", "", f"{summary.mean:.1f} ± {summary.sd:.1f}", "", f"{1e3 * summary.seconds_per_step:.1f}",
                  style="bold")
    return table


def loop_table(result: Any) -> Table:
    """Per round of the model-based loop: training episodes, test return mean ± sd, time."""
    table = Table(title="model-based loop: test returns per round (no exploration noise; higher is better)")
    for name in ("round", "training episodes", "test return", "collected (noise)", "ms / plan step", "train s",
                 "round s"):
        table.add_column(name, justify="right")
    for r in result.rounds:
        collected = r.get("collected_returns")
        table.add_row(str(r["round"]), str(r["episodes"]), f"{r['mean']:.1f} ± {r['sd']:.1f}",
                      f"{np.mean(collected):.1f}" if collected else "", f"{1e3 * r['seconds_per_step']:.1f}",
                      f"{r['train_seconds']:.0f}", f"{r['seconds']:.0f}")
    table.add_section()
    table.add_row("total", "", "", "", "", "", f"{result.seconds:.0f}", style="bold")
    table.caption = f"{result.seconds / 60:.1f} min wall, {result.cpu_seconds / 60:.1f} min of this process's CPU time"
    return table


def plot_loop_returns(result: Any, path: Path) -> Path:
    """PNG of the test returns per round (each episode a dot, the mean ± sd a line)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    rounds = [r["round"] for r in result.rounds]
    for r in result.rounds:
        ax.scatter([r["round"]] * len(r["returns"]), r["returns"], s=10, color="grey", alpha=0.6)
    means, sds = np.array([r["mean"] for r in result.rounds]), np.array([r["sd"] for r in result.rounds])
    ax.errorbar(rounds, means, yerr=sds, marker="o", capsize=3, label="mean ± sd")
    ax.set_xticks(rounds)
    ax.set_xlabel("round (train, then plan)")
    ax.set_ylabel("episode return")
    ax.legend(fontsize=8)
    ax.set_title("model-based loop")
    return _save(plt, fig, path)


def open_loop_table(result: Any) -> Table:
    """Per predicted step: observation RMSE (predictive mean, one sample, last context step) and reward RMSE."""
    table = Table(title=f"open-loop prediction — {result.split}: {result.context} context steps filtered, then the "
                        f"prior with the recorded actions; mean of {result.samples} samples, {result.num_sequences} "
                        f"sequences (lower is better)")
    for name in ("k", "obs RMSE", "obs RMSE (1 sample)", "obs RMSE (last context step)", "reward RMSE"):
        table.add_column(name, justify="right")
    for k in range(result.horizon):
        table.add_row(str(k + 1), f"{result.obs_rmse[k]:.4f}", f"{result.sample_rmse[k]:.4f}",
                      f"{result.last_rmse[k]:.4f}", f"{result.reward_rmse[k]:.4f}")
    table.add_section()
    table.add_row("mean", f"{result.obs_rmse.mean():.4f}", f"{result.sample_rmse.mean():.4f}",
                  f"{result.last_rmse.mean():.4f}", f"{result.reward_rmse.mean():.4f}", style="bold")
    table.caption = (f"return over the {result.horizon} steps: mean |predicted - real| {result.return_error:.2f} "
                     f"(real mean {result.mean_return:.2f})")
    return table


def plot_open_loop(result: Any, path: Path) -> Path:
    """PNG of the observation and reward RMSE against the predicted step k."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    k = np.arange(1, result.horizon + 1)
    axes[0].plot(k, result.obs_rmse, marker=".", label=f"mean of {result.samples} samples")
    axes[0].plot(k, result.sample_rmse, ls=":", label="one sample")
    axes[0].plot(k, result.last_rmse, ls="--", color="grey", label="last context step (reference)")
    axes[0].set_ylabel("observation RMSE")
    axes[1].plot(k, result.reward_rmse, marker=".")
    axes[1].set_ylabel("reward RMSE")
    for ax in axes:
        ax.set_xlabel(f"predicted step k (after {result.context} context steps)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"open-loop prediction — {result.split} ({result.num_sequences} sequences)")
    return _save(plt, fig, path)


def plot_imagined_frames(result: Any, path: Path, max_columns: int = 12) -> Path:
    """PNG of ``result.frames`` (2, H, C, H', W'): real frames over the imagined ones (open loop, one sample),
    then |real - imagined| (the channels' mean; white = no error), at evenly spaced predicted steps k."""
    plt = _pyplot()
    real, imagined = np.asarray(result.frames, dtype=np.float32)        # clamped to [0, 1] by the open loop
    steps, channels = real.shape[0], real.shape[1]
    cols = even_columns(steps, max_columns)
    rows = [("real", real), ("imagined", imagined),
            ("|error|", np.repeat(1 - np.abs(real - imagined).mean(1, keepdims=True), channels, 1))]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(0.9 * len(cols) + 0.8, 0.95 * len(rows) + 0.6),
                             dpi=100, squeeze=False)
    for i, (label, frames) in enumerate(rows):
        for j, t in enumerate(cols):
            ax, image = axes[i, j], frames[t].transpose(1, 2, 0)
            ax.imshow(image[..., 0] if channels == 1 else image, cmap="gray" if channels == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == len(rows) - 1:
                ax.set_xlabel(f"k={t + 1}", fontsize=7)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(f"open loop after {result.context} real frames — {result.split}, sequence 1", fontsize=9)
    return _save(plt, fig, path)


PREDICT_VIEWS = {"video": (predict_table, plot_predict), "control": (open_loop_table, plot_open_loop)}
