"""TensorBoard event files of a run (``train.tensorboard: true``), under ``RUN/tensorboard/``.

The board receives exactly the records of ``metrics.jsonl``, on the same
global-step axis: a step line's numbers as ``train/<key>`` (every
``train.log_every`` steps), an epoch line's as ``epoch/<key>`` and its
validation figures as ``valid/<key without valid_>``, at the epoch's last
step; wall time is the record's ``time``. At each validation it adds the
per-step free-energy plot (``valid/free_energy_per_step``) when the caller
gave a ``picture`` function (the CLI passes ``seqvi.report``'s; the engine
draws nothing itself).

Resuming from a checkpoint at step S opens a new event file with
``purge_step=S + 1``: TensorBoard hides whatever an interrupted call logged
after S, as ``metrics.jsonl`` drops those lines, so the stream continues
without duplicated steps. Only rank 0 writes (the caller decides).

``tensorboard`` is an optional dependency (the ``tensorboard`` extra),
imported only when a board is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from seqvi.errors import SeqviError

SKIP = frozenset({"step", "time"})
FIGURE_TAG = "valid/free_energy_per_step"


def require() -> None:
    """Fail in one line, before training starts, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise SeqviError("train.tensorboard: true needs the tensorboard package: pip install 'seqvi[tensorboard]' "
                         "(or set train.tensorboard=false)") from None


def tag(kind: str, key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key in a step line (``kind="train"``) or an epoch line."""
    if kind == "epoch" and key.startswith("valid_"):
        return f"valid/{key[len('valid_'):]}"
    return f"{kind}/{key}"


def scalars(kind: str, record: dict) -> dict[str, float]:
    """The tags and values a record becomes: its numbers (not flags, not None), less step and time."""
    return {tag(kind, k): float(v) for k, v in record.items()
            if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)
            and not (kind == "train" and k == "epoch")}


class Board:
    """A SummaryWriter when ``enabled``, else nothing; a context manager that always closes."""

    def __init__(self, folder: Path, *, enabled: bool, resumed_step: int | None = None,
                 picture: Callable[[Any], Any] | None = None):
        self.folder, self.enabled, self.picture, self.writer = Path(folder), enabled, picture, None
        self.purge_step = None if resumed_step is None else resumed_step + 1

    def __enter__(self) -> "Board":
        if self.enabled:
            require()
            from torch.utils.tensorboard import SummaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(self.folder), purge_step=self.purge_step)
        return self

    def log(self, kind: str, record: dict) -> None:
        """One metrics.jsonl record: ``kind`` is "train" (a step line) or "epoch"."""
        if self.writer is None:
            return
        for name, value in scalars(kind, record).items():
            self.writer.add_scalar(name, value, record["step"], walltime=record.get("time"))

    def validation(self, result: Any, step: int, walltime: float | None = None) -> None:
        """The per-step free-energy plot of a validation, and the epoch's events flushed to disk."""
        if self.writer is None:
            return
        if self.picture is not None:
            self.writer.add_figure(FIGURE_TAG, self.picture(result), step, walltime=walltime)
        self.writer.flush()

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
