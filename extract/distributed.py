"""Extraction across processes: ``torchrun --nproc-per-node N -m extract ...``.

Why so little is exchanged: tokenisation and planning are deterministic, so every rank computes
the same layout and fingerprint on its own, and hidden states never travel between ranks: each
rank writes its own shards of the one store (on a shared filesystem across nodes). The ranks only
have to agree at three moments, each one small collective of Python objects:

1. which store to write, or that the root already holds it (rank 0 decides, holding the lock);
2. that the store exists (rank 0 creates or resumes it; the others attach after it);
3. that every rank finished its shards: only then does rank 0 complete the store, so a failed
   rank leaves it incomplete, for ``--resume``.

Without torchrun (WORLD_SIZE unset or 1) every helper is a plain call: one code path for both.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from featurestore import Geometry

from .errors import DistributedError

T = TypeVar("T")

# The collectives here wait on purpose: for rank 0 to take the fingerprint's lock (another run may
# be extracting the same store: hours) and for the slowest rank's last shard. torchrun stops every
# rank when one dies, so the long timeout never leaves a hung job behind.
TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the extraction's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Ranks:
        """torchrun's RANK, WORLD_SIZE and LOCAL_RANK; a single rank where they are not set."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, device: str) -> str:
        """Each rank its own GPU, cuda:LOCAL_RANK, for ``auto`` or ``cuda``; ``cpu`` as asked. One
        GPU named for every rank is refused: nccl cannot run two ranks on one device."""
        if not self.distributed:
            return device
        if device.startswith("cuda:"):
            raise DistributedError(f"--device {device} for {self.world_size} ranks: use auto or cuda "
                                   "(rank r takes cuda:LOCAL_RANK), or cpu")
        if device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def shards(self, geometry: Geometry) -> range:
        """This rank's block of consecutive shards, balanced by tokens (every shard but the last
        holds ``shard_tokens``). Consecutive, so each rank runs through its batches in store order
        like a single process, and only a batch that straddles two blocks is computed twice."""
        per_rank = geometry.n_tokens / self.world_size / geometry.shard_tokens
        bounds = [round(r * per_rank) for r in range(self.world_size)] + [geometry.n_shards]
        return range(bounds[self.rank], bounds[self.rank + 1])

    @contextmanager
    def joined(self, device: torch.device) -> Iterator[None]:
        """The process group for the block: nccl between GPUs, gloo on CPU. A group the caller
        already set up is used as it is (and left open)."""
        if not self.distributed or dist.is_initialized():
            yield
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)  # nccl's object collectives use the current device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
        try:
            yield
        finally:
            dist.destroy_process_group()

    def from_leader(self, fn: Callable[[], T], *, share: bool = True) -> T | None:
        """Runs ``fn`` on rank 0 only and returns its result on every rank (``share=False``: on
        rank 0, None elsewhere, for results that don't pickle). Every rank waits for it; an error
        on rank 0 is raised on every rank, so none waits forever."""
        if not self.distributed:
            return fn()
        result, error, message = None, None, [None]
        if self.leader:
            result, error = _attempt(fn)
            message = [(_describe(error), result if share else None)]
        dist.broadcast_object_list(message, src=0)
        if error is not None:
            raise error
        failure, payload = message[0]
        if failure:
            raise DistributedError(f"rank 0 failed: {failure}")
        return result if self.leader else payload

    def leader_first(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on rank 0, then on the other ranks once it succeeded: rank 0 creates what the
        others open."""
        result = self.from_leader(fn, share=False)
        return result if self.leader else fn()

    def gather(self, fn: Callable[[], T]) -> list[T]:
        """Runs ``fn`` on every rank; returns every rank's result once all succeeded. When one
        fails, every rank raises (that one its own error, the others a DistributedError naming it),
        so nothing that needs all their work runs. Only exceptions are gathered: Ctrl-C stops a
        rank at once, and torchrun then stops the others."""
        if not self.distributed:
            return [fn()]
        result, error = _attempt(fn)
        outcomes: list = [None] * self.world_size
        dist.all_gather_object(outcomes, (result, _describe(error)))
        if error is not None:
            raise error
        for rank, (_, failure) in enumerate(outcomes):
            if failure:
                raise DistributedError(f"rank {rank} failed: {failure}")
        return [result for result, _ in outcomes]


def _attempt(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
        return None, e


def _describe(error: Exception | None) -> str | None:
    return None if error is None else f"{type(error).__name__}: {error}"
