"""Batches straight from a feature store, for training and for evaluation's teacher-forced loss: no
backbone, sequential reads, read ahead.

A store is sorted by example length, so a run of consecutive examples pads little and reads as
one sequential block per array. Batches are fixed runs of training examples under a token
budget; each epoch visits them in a seeded random order ("block shuffling"), and a background
thread reads and decodes the next batches while the current one trains.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from featurestore import FeatureStore
from featurestore.errors import UserError
from featurestore.layout import plan_batches

from .config import DataConfig
from .network.batch import Batch
from .network.encoded import DECODERS, Encoded


def loader_settings(device: torch.device) -> dict:
    """``read_ahead``'s settings for training on ``device``: on a GPU, pinned batches two ahead (a
    step is short there, and a read's time varies with the page cache); on a CPU, one ahead."""
    cuda = device.type == "cuda"
    return {"depth": 2 if cuda else 1, "pin": cuda}


class SplitError(UserError, ValueError):
    """A validation split the store cannot give; the message says why."""


def split_examples(n_examples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) example indices, each ascending; the validation set is a seeded random
    sample of ``val_fraction`` of the store (at least one example when the fraction is > 0)."""
    if not 0 <= val_fraction < 1:
        raise SplitError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n_val = max(1, round(n_examples * val_fraction)) if val_fraction > 0 else 0
    if n_val >= n_examples:
        raise SplitError(f"a store of {n_examples} examples is too small to hold out {n_val} for validation")
    val = np.sort(np.random.default_rng(seed).permutation(n_examples)[:n_val])
    return np.setdiff1d(np.arange(n_examples), val), val


def plan(store: FeatureStore, indices: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Batches of consecutive ``indices`` whose padded size fits ``token_budget``."""
    return [indices[a:b] for a, b in plan_batches(store.lengths[indices], token_budget)]


def read_batch(store: FeatureStore, indices: np.ndarray, layers) -> Batch:
    """Reads examples ``indices``, right-padded, with the hidden states of ``layers``: left encoded
    when the codec has a torch decoder (the model decodes them where it uses them)."""
    codec = store.codec.name
    padded = store.padded(indices, layers, decode=codec not in DECODERS)
    as_tensor = torch.from_numpy
    if codec in DECODERS:
        hidden = {k: Encoded(codec, {name: as_tensor(p) for name, p in parts.items()}) for k, parts in padded.hidden.items()}
    else:
        hidden = {k: as_tensor(h) for k, h in padded.hidden.items()}
    return Batch(hidden, as_tensor(padded.input_ids), as_tensor(padded.loss_mask), int(padded.lengths.sum()))


def steps_of(batches: list[np.ndarray], grad_accum: int) -> list[list[np.ndarray]]:
    """The batches of each optimizer step: runs of ``grad_accum`` consecutive batches (the last may
    be shorter). Consecutive batches hold examples of similar length, so a step is the union of
    its batches, as one batch of ``grad_accum`` times the token budget would be; an epoch shuffles
    the steps, never their batches."""
    return [batches[i:i + grad_accum] for i in range(0, len(batches), grad_accum)]


def epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of an epoch: a function of (seed, epoch) only, so a resumed run and
    every model of a sweep see exactly the same sequence."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


def epochs_from(n_batches: int, data: DataConfig, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
    """(epoch, its batch indices in training order) of every epoch from step ``start`` on, the last
    epoch cut short where ``data.max_steps`` ends the job."""
    total = data.total_steps(n_batches)
    for epoch in range(start // n_batches, -(-total // n_batches)):
        first = epoch * n_batches  # the step this epoch starts at
        yield epoch, epoch_order(n_batches, data.seed, epoch)[max(0, start - first):total - first]


def read_ahead(store: FeatureStore, batches: list[np.ndarray], layers, depth: int = 1,
               pin: bool = False) -> Iterator[Batch]:
    """Yields ``read_batch`` of each batch in order, reading up to ``depth`` batches ahead on a
    thread. Stops the thread if the consumer stops early. One batch ahead hides the reads once a
    training step takes longer than a read; each further one only holds more memory. ``pin``
    (CUDA only) puts each batch in pinned memory on the thread, for asynchronous copies."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def offer(item) -> bool:
        """Puts ``item`` unless the consumer has gone; False once it has."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for indices in batches:
                batch = read_batch(store, indices, layers)
                if not offer(batch.pin_memory() if pin else batch):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            offer(error)
            return
        offer(None)

    thread = threading.Thread(target=produce, name="store-reader", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
