"""Where a run's metrics go besides metrics.jsonl: ``--log tensorboard|trackio|none``.

A tracker gets every numeric value a run logs, at its optimizer step. TensorBoard's event files
go in the run directory beside metrics.jsonl, so ``tensorboard --logdir runs/sweep`` shows every
run of a sweep by its directory's name; trackio logs to its own local store (``trackio show``),
in a project named after the directory that holds the runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from featurestore.errors import UserError

TRACKERS = ("none", "tensorboard", "trackio")


class TrackerError(UserError, ImportError):
    """A tracker whose package is not installed; the message says what to install."""


class Tracker(Protocol):
    def log(self, step: int, values: dict) -> None: ...

    def close(self) -> None: ...


class NoTracker:
    """``--log none``: metrics.jsonl only."""

    def log(self, step: int, values: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard:
    """Scalars in TensorBoard event files in the run directory; a run resumed at ``step`` drops
    the events logged after it (``purge_step``), as metrics.jsonl does."""

    def __init__(self, out: Path, step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise TrackerError("--log tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(out), purge_step=step + 1 if step else None)  # from step + 1 on

    def log(self, step: int, values: dict) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


class Trackio:
    """A trackio run named after the run, in a project named after the directory holding it."""

    def __init__(self, out: Path, name: str, config: dict):
        try:
            import trackio
        except ImportError:
            raise TrackerError("--log trackio needs the trackio package: pip install trackio") from None
        self.run = trackio.init(project=Path(out).resolve().parent.name, name=name, config=config, resume="allow")

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, out: Path, name: str, step: int, config: dict) -> Tracker:
    """The tracker ``kind`` (one of TRACKERS) of the run in ``out`` starting at ``step``."""
    if kind == "tensorboard":
        return TensorBoard(out, step)
    if kind == "trackio":
        return Trackio(out, name, config)
    if kind == "none":
        return NoTracker()
    raise TrackerError(f"--log {kind!r}: choose one of {', '.join(TRACKERS)}")
