"""A training run's output directory: one writer at a time, and always startable again.

Two runs into one ``--out`` would interleave ``metrics.jsonl`` and overwrite each other's weights,
so a run holds ``<out>/.lock`` (an advisory file lock, released by the OS when its holder dies)
for as long as it writes; a second run is refused and told who holds it. A run killed before its
first checkpoint leaves only metrics of steps that no checkpoint keeps: a fresh run or a resume
simply starts over there, with nothing to delete by hand.

Beside its checkpoint a run keeps ``best/`` (the checkpoint of its best validation loss so far, a
run directory of its own) and ``train_config.yaml`` (its settings as the options of `train_side
train`: ``--config`` reads it back to train the same run again).
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from featurestore.errors import UserError

from ..checkpoint import CONFIG, RESUME, WEIGHTS

LOCK, OWNER = ".lock", ".lock.owner"
BEST, SETTINGS = "best", "train_config.yaml"


class RunDirectoryBusy(UserError, RuntimeError):
    """Another training run is writing the same output directory."""


def claim(out: Path) -> FileLock:
    """Creates ``out`` and takes its lock (held until released, or the process ends); refuses a
    directory another run holds, naming that run."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        owner = (out / OWNER).read_text().strip() if (out / OWNER).is_file() else "another process"
        raise RunDirectoryBusy(f"{out} is being written by another training run ({owner}); wait for it to "
                               "finish or choose another --out") from None
    since = datetime.datetime.now().isoformat(timespec="seconds")
    (out / OWNER).write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
    return lock


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint a run can resume from (weights and optimiser state)."""
    return (out / WEIGHTS).is_file() and (out / RESUME).is_file()


def has_run(out: Path) -> bool:
    """Whether ``out`` holds a saved run, finished (its resume state deleted) or not."""
    return (out / WEIGHTS).is_file() and (out / CONFIG).is_file()


def write_settings(out: Path, settings: dict) -> None:
    """``train_config.yaml``: ``settings`` in the order given, one option a line."""
    (Path(out) / SETTINGS).write_text(yaml.safe_dump(settings, sort_keys=False))


@contextmanager
def holding(outs: list[Path]) -> Iterator[None]:
    """Holds the lock of every directory in ``outs`` for the block (see ``claim``)."""
    with ExitStack() as held:
        for out in outs:
            held.callback(claim(Path(out)).release)
        yield
