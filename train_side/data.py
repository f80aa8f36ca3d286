"""Training batches straight from a feature store: no backbone, sequential reads, read ahead.

A store is sorted by example length, so a run of consecutive examples pads little and reads as
one sequential block per array. Batches are fixed runs of training examples under a token
budget; each epoch visits them in a seeded random order ("block shuffling"), and a background
thread reads and decodes the next batches while the current one trains.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from featurestore import FeatureStore
from featurestore.layout import plan_batches


@dataclass
class Batch:
    """Right-padded examples: hidden states (B, T, d) per layer, input_ids and loss_mask (B, T)."""

    hidden: dict[int, torch.Tensor]
    input_ids: torch.Tensor  # int64, 0 on padding
    loss_mask: torch.Tensor  # bool, False on padding
    n_tokens: int  # real (unpadded) tokens

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device, non_blocking=True)
        return Batch({k: move(h) for k, h in self.hidden.items()}, move(self.input_ids), move(self.loss_mask),
                     self.n_tokens)


def split_examples(n_examples: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) example indices, each ascending; the validation set is a seeded random
    sample of ``val_fraction`` of the store (at least one example when the fraction is > 0)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    n_val = max(1, round(n_examples * val_fraction)) if val_fraction > 0 else 0
    if n_val >= n_examples:
        raise ValueError(f"a store of {n_examples} examples is too small to hold out {n_val} for validation")
    val = np.sort(np.random.default_rng(seed).permutation(n_examples)[:n_val])
    return np.setdiff1d(np.arange(n_examples), val), val


def plan(store: FeatureStore, indices: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Batches of consecutive ``indices`` whose padded size fits ``token_budget``."""
    return [indices[a:b] for a, b in plan_batches(store.lengths[indices], token_budget)]


def read_batch(store: FeatureStore, indices: np.ndarray, layers) -> Batch:
    """Reads and right-pads examples ``indices`` with the hidden states of ``layers``."""
    tokens = store.examples(indices, layers)
    lengths = np.diff(tokens.offsets)
    B, T = len(lengths), int(lengths.max())
    input_ids = np.zeros((B, T), dtype=np.int64)
    loss_mask = np.zeros((B, T), dtype=bool)
    hidden = {k: np.zeros((B, T, store.hidden_size), dtype=np.float32) for k in tokens.hidden}
    for i, (start, n) in enumerate(zip(tokens.offsets[:-1], lengths)):
        input_ids[i, :n] = tokens.input_ids[start : start + n]
        loss_mask[i, :n] = tokens.loss_mask[start : start + n]
        for k, rows in tokens.hidden.items():
            hidden[k][i, :n] = rows[start : start + n]
    as_tensor = torch.from_numpy
    return Batch({k: as_tensor(h) for k, h in hidden.items()}, as_tensor(input_ids), as_tensor(loss_mask),
                 int(lengths.sum()))


def epoch_order(n_batches: int, seed: int, epoch: int) -> np.ndarray:
    """The batch order of an epoch: a function of (seed, epoch) only, so a resumed run and
    every model of a sweep see exactly the same sequence."""
    return np.random.default_rng([seed, epoch]).permutation(n_batches)


def read_ahead(store: FeatureStore, batches: list[np.ndarray], layers, depth: int = 2) -> Iterator[Batch]:
    """Yields ``read_batch`` of each batch in order, reading up to ``depth`` batches ahead on a
    thread. Stops the thread if the consumer stops early."""
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
                if not offer(read_batch(store, indices, layers)):
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
