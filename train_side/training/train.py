"""Training side networks from a feature store: one loop for one run or a whole sweep.

Every batch is read and decoded once, then fed to each run (a side network with its own
optimizer, schedule, metrics and checkpoints). No backbone is ever loaded.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from extract.provenance import Provenance
from featurestore import FeatureStore
from featurestore.errors import UserError

from .. import checkpoint
from ..backbone import reload_backbone
from ..checkpoint import Checkpoint, TrainedFrom
from ..config import DataConfig, OptimConfig
from ..data import epochs_from, loader_settings, plan, read_ahead, split_examples
from ..devices import resolve_device
from ..network.batch import Batch
from ..network.loss import batch_loss, mean_loss
from ..network.model import FrozenHead, SideConfig, SideNetwork
from ..network.prune import copy_top_blocks, top_settings
from . import rundir
from .plots import loss_curve


class TrainError(UserError, ValueError):
    """A training job the store or the runs' state cannot serve; the message says what to change."""


class RunDirectoryError(UserError, FileExistsError):
    """An output directory that already holds a training run, when a fresh one was asked for."""


class TrainingInterrupted(UserError, KeyboardInterrupt):
    """Ctrl-C during training: every run was saved at the step it had finished."""


class ResumeError(UserError, ValueError):
    """A resume asked with settings (or a store) other than those the run was trained with."""


# when to validate and save: the weights a run ends with do not depend on these, so a resume may change them
RESUMABLE_CHANGES = {"eval_every", "save_every"}


def changed_settings(saved: Checkpoint, side: SideConfig, optim: OptimConfig, data: DataConfig) -> list[str]:
    """Each setting whose value differs from the checkpoint's, as ``--flag saved -> asked``."""
    changes = []
    for old, new in ((saved.side, side), (saved.optim, optim), (saved.data, data)):
        for f in fields(new):
            before, after = getattr(old, f.name), getattr(new, f.name)
            if before != after and f.name not in RESUMABLE_CHANGES:
                changes.append(f"--{f.metadata.get('flag', f.name.replace('_', '-'))} {before} -> {after}")
    return changes


def lr_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The learning rate of ``step`` as a fraction of ``optim.lr``: linear warmup, then cosine
    decay to ``optim.min_lr``."""
    warmup = max(1, int(optim.warmup * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return optim.min_lr + (1 - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class RunSpec:
    """One side network for :func:`fit` to train: its name (recorded in its checkpoint), output
    directory and configs. ``tag`` is the caller's own label (a comparison's method, say), carried
    through untouched so that nothing has to be parsed back out of the name."""

    name: str
    out: Path
    side: SideConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    tag: str = ""

    @classmethod
    def at(cls, out: Path, side: SideConfig, optim: OptimConfig | None = None, tag: str = "") -> RunSpec:
        """A run named after its output directory."""
        return cls(Path(out).name, Path(out), side, optim or OptimConfig(), tag)


class Run:
    """One side network in training."""

    def __init__(self, spec: RunSpec, *, head: FrozenHead, total_steps: int, trained_from: TrainedFrom,
                 data: DataConfig, device: torch.device, steps_per_epoch: int = 0):
        self.spec, self.name, self.out, self.side, self.optim = spec, spec.name, Path(spec.out), spec.side, spec.optim
        self.head, self.total_steps, self.trained_from, self.data = head, total_steps, trained_from, data
        self.steps_per_epoch = steps_per_epoch or total_steps / data.epochs  # for the epochs a checkpoint records
        self.device = device
        torch.manual_seed(self.optim.seed)  # each run's initialisation depends on its own seed only
        self.model = SideNetwork(self.side).to(device)
        self.model.recompute = self.optim.recompute
        decay = [p for p in self.model.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.ndim < 2]  # gates, norms, mix
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.optim.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.val_loss: float | None = None
        self.seconds = 0.0
        self.out.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_store(cls, store: FeatureStore, spec: RunSpec, *, data: DataConfig, total_steps: int,
                  device: torch.device | str = "cpu", head: FrozenHead | None = None, steps_per_epoch: int = 0) -> Run:
        """A run of ``spec`` on ``store``'s data, on ``device``; ``head`` (the store's, already on the
        device) lets the runs of one job share one copy, else it is read from the store."""
        device = torch.device(device)
        head = head if head is not None else FrozenHead(*store.head()).to(device)
        return cls(spec, head=head, total_steps=total_steps, trained_from=store_info(store), data=data, device=device,
                   steps_per_epoch=steps_per_epoch)

    def start_fresh(self) -> None:
        if rundir.has_checkpoint(self.out):
            raise RunDirectoryError(f"{self.out} already holds a training run; resume it (--resume) or choose "
                                    "another --out")
        (self.out / "metrics.jsonl").unlink(missing_ok=True)  # a run killed before its first checkpoint

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.optim)

    def train_step(self, batch: Batch) -> float:
        start = time.perf_counter()
        self.model.train()
        loss = batch_loss(self.model, self.head, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.seconds += time.perf_counter() - start
        return loss.item()

    def validate(self, batches: list[Batch]) -> float:
        self.val_loss = mean_loss(self.model, self.head, batches)
        return self.val_loss

    def log(self, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.step, **record}) + "\n")

    def save(self) -> None:
        checkpoint.save(self.out, self.model, self.describe())
        checkpoint.save_resume_state(self.out, self.optimizer, self.scheduler, self.step)

    def release(self) -> None:
        """Frees the weights and optimiser state of a run that stopped early (it was saved first), so
        that the runs still training get the memory; its parameter count stays readable."""
        self.optimizer = self.scheduler = None
        self.model.to("meta")

    def describe(self) -> Checkpoint:
        return Checkpoint(name=self.name, side=self.side, optim=self.optim, data=self.data, store=self.trained_from,
                          n_parameters=self.model.n_parameters(), step=self.step,
                          epochs=round(self.step / self.steps_per_epoch, 4), val_loss=self.val_loss,
                          train_seconds=round(self.seconds, 3))

    def resume(self) -> None:
        """Continues from this run's last checkpoint (weights, optimizer, schedule, step); a run
        killed before its first checkpoint starts over."""
        if not rundir.has_checkpoint(self.out):
            return self.start_fresh()
        saved = Checkpoint.load(self.out)
        if saved.store.fingerprint != self.trained_from.fingerprint:
            raise ResumeError(f"{self.out} was trained from another store (fingerprint {saved.store.fingerprint}); "
                              "resume it from that store, or train into a new --out")
        if changes := changed_settings(saved, self.side, self.optim, self.data):
            raise ResumeError(f"{self.out} was trained with other settings ({'; '.join(changes)}): resume with the "
                              "run's own settings (its side_config.json), or train into a new --out")
        self.model.load_state_dict(checkpoint.load_weights(self.out, self.device))
        self.step = checkpoint.load_resume_state(self.out, self.optimizer, self.scheduler, self.device)
        self.val_loss = saved.val_loss
        kept = [line for line in (self.out / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["step"] <= self.step]  # drop what was logged after the checkpoint
        (self.out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))


def store_info(store: FeatureStore) -> TrainedFrom:
    """What a checkpoint records of its store: enough to find it again and to reload its backbone."""
    return TrainedFrom.of(store)


def backbone_dims(store: FeatureStore) -> dict:
    """The backbone sizes a SideConfig needs, from the store's provenance."""
    return Provenance.load(store.attrs).backbone_sizes


def train(store, out: str | Path, *, side: dict | None = None, optim: OptimConfig | None = None,
          data: DataConfig | None = None, device: str = "auto", resume: bool = False, progress: bool = True) -> Run:
    """Trains one side network (``side``: SideConfig settings beyond the backbone's sizes) from a
    feature store into ``out``: side.safetensors, side_config.json, metrics.jsonl, loss.png."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    config = SideConfig(**backbone_dims(store), **(side or {}))
    [run] = fit(store, [RunSpec.at(Path(out), config, optim)], data or DataConfig(), device=device, resume=resume,
                progress=progress)
    return run


@dataclass(frozen=True)
class Watch:
    """What a caller may add to the training loop (a tuner's pruning): ``due(step)`` asks for a
    validation at more steps than the data settings', and after every validation ``stop(runs)``
    names the runs to stop there; each is saved and released, and the others go on."""

    due: Callable[[int], bool] = lambda step: False
    stop: Callable[[list[Run]], list[Run]] = lambda runs: []


def fit(store: FeatureStore, specs: list[RunSpec], data: DataConfig, device: str = "auto", resume: bool = False,
        progress: bool = True, init: Callable[[SideNetwork], object] | None = None,
        watch: Watch = Watch()) -> list[Run]:
    """``_fit``, holding every run's output directory (one writer at a time: ``rundir``)."""
    with rundir.holding([spec.out for spec in specs]):
        return _fit(store, specs, data, device, resume, progress, init, watch)


def top_blocks(store: FeatureStore, specs: list[RunSpec]) -> tuple[list[RunSpec], Callable | None]:
    """The specs with each ``top`` side network given its backbone's attention settings, and the start
    that copies the backbone's top blocks into a top network (None when there is none: then no
    backbone is loaded). The backbone is reloaded exactly as the store was extracted, once."""
    if not any(spec.side.kind == "top" for spec in specs):
        return specs, None
    backbone = reload_backbone(Provenance.load(store.attrs).model, device="cpu").model
    settings = top_settings(backbone)
    specs = [replace(spec, side=replace(spec.side, **settings)) if spec.side.kind == "top" else spec for spec in specs]
    return specs, lambda model: copy_top_blocks(model, backbone) if model.config.kind == "top" else None


@contextmanager
def interrupt_after_step() -> Iterator[threading.Event]:
    """Ctrl-C sets the event the training loop checks after each step, so that every run stops at
    the same finished step and is saved there; a second Ctrl-C stops at once, as usual."""
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread may take signals
        yield asked
        return
    previous = signal.getsignal(signal.SIGINT)

    def ask(signum, frame):
        asked.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, ask)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)


def _fit(store: FeatureStore, specs: list[RunSpec], data: DataConfig, device: str = "auto", resume: bool = False,
         progress: bool = True, init: Callable[[SideNetwork], object] | None = None,
         watch: Watch = Watch()) -> list[Run]:
    """Trains every run over one pass of the data per epoch: each batch is read and decoded once
    (the union of the runs' input layers) and fed to every run in turn. ``init`` (e.g.
    ``prune.init_from_backbone``) sets the weights of each run that starts fresh; ``watch`` may
    stop runs early (see Watch)."""
    device = resolve_device(device)
    train_idx, val_idx = split_examples(store.n_examples, data.val_fraction, data.seed)
    train_batches = plan(store, train_idx, data.token_budget)
    val_batches = plan(store, val_idx, data.token_budget) if len(val_idx) else []
    layers = sorted({k for spec in specs for k in spec.side.inputs})
    missing = sorted(set(layers) - set(store.layers))
    if missing:
        raise TrainError(f"the side networks read hidden states {missing}, which the store does not hold "
                         f"(it has {list(store.layers)}); extract them or change the taps")
    head = FrozenHead(*store.head()).to(device)  # one copy for every run
    per_epoch = len(train_batches)
    total_steps = data.total_steps(per_epoch)
    specs, start_top = top_blocks(store, specs)
    runs = [Run.for_store(store, spec, data=data, total_steps=total_steps, device=device, head=head,
                          steps_per_epoch=per_epoch) for spec in specs]
    for run in runs:
        run.resume() if resume else run.start_fresh()
        for start in (start_top, init) if run.step == 0 else ():
            if start is not None:
                start(run.model)
    del start_top  # the backbone: no longer needed
    loader = loader_settings(device)
    validation = [b.to(device) for b in read_ahead(store, val_batches, layers, **loader)]
    everyone = list(runs)  # those stopped early by the watch included
    start_step = min(run.step for run in runs)
    if any(run.step != start_step for run in runs):
        raise TrainError("the runs of this job stopped at different steps; resume them separately")
    with tqdm(total=total_steps, initial=start_step, unit="step", desc="train", disable=not progress,
              file=sys.stderr) as bar, interrupt_after_step() as interrupted:
        for epoch, order in epochs_from(per_epoch, data, start_step):
            batches = [train_batches[i] for i in order]
            tick = time.perf_counter()
            for batch in read_ahead(store, batches, layers, **loader):
                batch = batch.to(device)
                losses = [run.train_step(batch) for run in runs]
                elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                for run, loss in zip(runs, losses):
                    run.log({"epoch": epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
                             "tokens": batch.n_tokens, "tokens_per_s": batch.n_tokens * len(runs) / elapsed})
                bar.update()
                bar.set_postfix(loss=f"{losses[0]:.3f}", tok_s=f"{batch.n_tokens * len(runs) / elapsed:,.0f}")
                step = runs[0].step
                end_of_epoch = step % per_epoch == 0 or step == total_steps
                if validation and (end_of_epoch or data.eval_every and step % data.eval_every == 0 or watch.due(step)):
                    for run in runs:
                        run.log({"epoch": epoch, "val_loss": run.validate(validation)})
                    if stopped := watch.stop(runs):
                        for run in stopped:
                            run.save()
                            run.release()
                        runs = [run for run in runs if run not in stopped]
                        if not runs:
                            break
                if end_of_epoch or data.save_every and step % data.save_every == 0 or interrupted.is_set():
                    for run in runs:
                        run.save()
                if interrupted.is_set():
                    raise TrainingInterrupted(f"interrupted: {len(runs)} run(s) saved at step {step} of {total_steps}; "
                                              "run the same command with --resume to continue")
            if not runs:
                break
    for run in everyone:
        loss_curve(run.out)
    return everyone
