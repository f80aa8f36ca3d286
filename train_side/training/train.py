"""Training side networks from a feature store: one loop for one run or a whole sweep.

Every batch is read and decoded once, then fed to each run (a side network with its own
optimizer, schedule, metrics and checkpoints). No backbone is ever loaded.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from extract.provenance import Provenance
from featurestore import FeatureStore
from featurestore.errors import UserError
from featurestore.options import option_values

from .. import checkpoint
from ..backbone import reload_backbone
from ..checkpoint import Checkpoint, TrainedFrom
from ..config import LR, DataConfig, OptimConfig
from ..data import epochs_from, loader_settings, plan, read_ahead, split_examples, steps_of
from ..devices import resolve_device
from ..network.batch import Batch
from ..network.loss import batch_loss, mean_loss, target_count
from ..network.model import DELTA, LADDER_SHAPE, FrozenHead, SideConfig, SideNetwork
from ..network.prune import copy_top_blocks, top_settings
from . import rundir
from .plots import loss_curve
from .progress import Progress
from .trackers import NoTracker, Tracker, open_tracker


class TrainError(UserError, ValueError):
    """A training job the store or the runs' state cannot serve; the message says what to change."""


class RunDirectoryError(UserError, FileExistsError):
    """An output directory that already holds a training run, when a fresh one was asked for."""


class TrainingInterrupted(UserError, KeyboardInterrupt):
    """Ctrl-C during training: every run was saved at the step it had finished."""


class ResumeError(UserError, ValueError):
    """A resume asked with settings (or a store) other than those the run was trained with."""


# when to validate, save and stop: the weights of the steps a run has done do not depend on these, so a
# resume may change them
RESUMABLE_CHANGES = {"eval_every", "save_every", "early_stop"}


def changed_settings(saved: Checkpoint, side: SideConfig, optim: OptimConfig, data: DataConfig) -> list[str]:
    """Each setting whose value differs from the checkpoint's, as ``--flag saved -> asked``."""
    changes = []
    for old, new in ((saved.side, side), (saved.optim, optim), (saved.data, data)):
        for f in fields(new):
            before, after = getattr(old, f.name), getattr(new, f.name)
            if before != after and f.name not in RESUMABLE_CHANGES:
                changes.append(f"--{f.metadata.get('flag', f.name.replace('_', '-'))} {before} -> {after}")
    return changes


def warmup_steps(total_steps: int, optim: OptimConfig) -> int:
    """The steps of ``optim``'s linear warmup over a run of ``total_steps``."""
    return max(1, int(optim.warmup * total_steps))


def lr_factor(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The learning rate of ``step`` as a fraction of ``optim.lr``: linear warmup, then cosine
    decay to ``optim.min_lr``."""
    warmup = warmup_steps(total_steps, optim)
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

    def __post_init__(self):  # a learning rate left unset is the kind's (train_side.config.LR)
        object.__setattr__(self, "optim", self.optim.with_default_lr(LR[self.side.kind]))

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
        trained = [p for p in self.model.parameters() if p.requires_grad]  # not a LoRA top network's blocks
        decay = [p for p in trained if p.ndim >= 2]
        no_decay = [p for p in trained if p.ndim < 2]  # gates, norms, mix
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.optim.lr, betas=(0.9, 0.95), fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        self.step = 0
        self.val_loss: float | None = None
        self.best_loss: float | None = None  # the lowest validation loss so far: RUN/best holds its weights
        self.evals_since_best = 0
        self.stopped_early = False
        self.finished = False  # its last step done, or stopped early: nothing left to train
        self.seconds = 0.0
        self.tracker: Tracker = NoTracker()
        self._accumulated = [0, 0.0, 0]  # the step being accumulated: (targets, loss x targets, first batch's targets)
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
        if rundir.has_run(self.out):
            raise RunDirectoryError(f"{self.out} already holds a training run; resume it (--resume) or choose "
                                    "another --out")
        (self.out / "metrics.jsonl").unlink(missing_ok=True)  # a run killed before its first checkpoint
        shutil.rmtree(self.out / rundir.BEST, ignore_errors=True)

    def lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.optim)

    def accumulate(self, batch: Batch) -> None:
        """Adds the gradient of ``batch``'s loss to the optimizer step being accumulated. Each
        batch's mean loss is weighted by its target tokens (relative to the step's first batch, so
        that a step of one batch is exactly its mean loss): see ``optimizer_step``."""
        start = time.perf_counter()
        self.model.train()
        targets, total, first = self._accumulated
        n = target_count(batch)
        if not first:
            self.optimizer.zero_grad(set_to_none=True)
            first = n
        loss = batch_loss(self.model, self.head, batch)
        (loss * (n / first)).backward()
        self._accumulated = [targets + n, total + loss.item() * n, first]
        self.seconds += time.perf_counter() - start

    def optimizer_step(self) -> float:
        """Takes the optimizer step of the batches accumulated since the last one, with the gradient
        of their mean loss per target token: the gradient of one batch holding them all, up to
        float error. Returns that loss."""
        start = time.perf_counter()
        targets, total, first = self._accumulated
        self._accumulated = [0, 0.0, 0]
        if targets != first:  # more than one batch: from the first batch's scale to the mean over all
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(first / targets)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.seconds += time.perf_counter() - start
        return total / targets

    def train_step(self, batches: Batch | Sequence[Batch]) -> float:
        """One optimizer step on a batch, or on several accumulated (``--grad-accum``); its loss."""
        for batch in [batches] if isinstance(batches, Batch) else batches:
            self.accumulate(batch)
        return self.optimizer_step()

    def validate(self, batches: list[Batch]) -> float:
        self.val_loss = mean_loss(self.model, self.head, batches)
        return self.val_loss

    def rung_loss(self, batches: list[Batch]) -> float:
        """The loss on a rung's share of the held-out batches (logged as rung_loss): a pruner's
        ranking, not a validation, so neither the validation loss nor the best weights change."""
        loss = mean_loss(self.model, self.head, batches)
        self.log({"rung_loss": loss})
        return loss

    def keep_best(self) -> None:
        """After a validation: a better loss than any before is saved as RUN/best (a run directory
        of its own); otherwise one more validation without improvement counts towards
        ``data.early_stop``, which stops the run once reached."""
        if self._count(self.val_loss):
            (self.out / rundir.BEST).mkdir(exist_ok=True)
            checkpoint.save(self.out / rundir.BEST, self.model, self.describe())

    def _count(self, val_loss: float) -> bool:
        """Counts a validation loss towards the best loss and the patience; whether it is a new best."""
        improved = self.best_loss is None or val_loss < self.best_loss
        self.best_loss, self.evals_since_best = (val_loss, 0) if improved else (self.best_loss, self.evals_since_best + 1)
        self.stopped_early = 0 < self.data.early_stop <= self.evals_since_best
        return improved

    def log(self, record: dict) -> None:
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps({"step": self.step, **record}) + "\n")
        self.tracker.log(self.step, {k: v for k, v in record.items() if k != "epoch"})

    def save(self) -> None:
        checkpoint.save(self.out, self.model, self.describe())
        checkpoint.save_resume_state(self.out, self.optimizer, self.scheduler, self.step)

    def finish(self, keep_resume: bool = False) -> None:
        """The run is done and saved: its resume state is deleted (unless ``keep_resume``), and its
        tracker closed."""
        self.finished = True
        if not keep_resume:
            (self.out / checkpoint.RESUME).unlink(missing_ok=True)
        self.close_tracker()

    def close_tracker(self) -> None:
        """Flushes and closes the run's tracker (once: a closed run logs to no tracker)."""
        self.tracker.close()
        self.tracker = NoTracker()

    def release(self) -> None:
        """Frees the weights and optimiser state of a run that stopped early (it was saved first), so
        that the runs still training get the memory; its parameter count stays readable."""
        self.optimizer = self.scheduler = None
        self.model.to("meta")

    def describe(self) -> Checkpoint:
        return Checkpoint(name=self.name, side=self.side, optim=self.optim, data=self.data, store=self.trained_from,
                          n_parameters=self.model.n_parameters(), step=self.step,
                          epochs=round(self.step / self.steps_per_epoch, 4), val_loss=self.val_loss,
                          train_seconds=round(self.seconds, 3), stopped_early=self.stopped_early)

    def resume(self) -> None:
        """Continues from this run's last checkpoint (weights, optimizer, schedule, step, best
        validation loss); a run killed before its first checkpoint starts over, and a finished one
        is only loaded."""
        if not rundir.has_run(self.out):
            return self.start_fresh()
        saved = Checkpoint.load(self.out)
        if saved.store.fingerprint != self.trained_from.fingerprint:
            raise ResumeError(f"{self.out} was trained from another store (fingerprint {saved.store.fingerprint}); "
                              "resume it from that store, or train into a new --out")
        if changes := changed_settings(saved, self.side, self.optim, self.data):
            raise ResumeError(f"{self.out} was trained with other settings ({'; '.join(changes)}): resume with the "
                              "run's own settings (its train_config.yaml), or train into a new --out")
        self.model.load_state_dict(checkpoint.load_weights(self.out, self.device))
        self.step, self.val_loss, self.seconds = saved.step, saved.val_loss, saved.train_seconds
        self.finished = saved.stopped_early or saved.step >= self.total_steps
        if not self.finished:
            if not rundir.has_checkpoint(self.out):
                raise ResumeError(f"{self.out} has no {checkpoint.RESUME} to continue from (it was deleted); train "
                                  "into a new --out")
            self.step = checkpoint.load_resume_state(self.out, self.optimizer, self.scheduler, self.device)
        kept = [line for line in (self.out / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["step"] <= self.step]  # drop what was logged after the checkpoint
        (self.out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
        for record in map(json.loads, kept):  # the best loss and the patience as they were at the checkpoint
            if "val_loss" in record:
                self._count(record["val_loss"])
        self.stopped_early = saved.stopped_early


def store_info(store: FeatureStore) -> TrainedFrom:
    """What a checkpoint records of its store: enough to find it again and to reload its backbone."""
    return TrainedFrom.of(store)


def backbone_dims(store: FeatureStore) -> dict:
    """The backbone sizes a SideConfig needs, from the store's provenance."""
    return Provenance.load(store.attrs).backbone_sizes


def recipe(store: FeatureStore, side: dict, swept=()) -> dict:
    """``side`` with its kind filled in where it names none: the backbone's own top blocks (up to
    8) where the store holds them and no Ladder setting is given or ``swept`` (docs/compare: the
    best network trained from the store at equal compute), else the Ladder."""
    if side.get("kind") is not None or "kind" in swept:
        return side
    stored = Provenance.load(store.attrs).top_blocks or 0
    if not stored or any(side.get(k) is not None or k in swept for k in LADDER_SHAPE):
        return {**side, "kind": "ladder"}
    return {**side, "kind": "top", "delta": side.get("delta") or min(DELTA["top"], stored)}


def train(store, out: str | Path, *, side: dict | None = None, optim: OptimConfig | None = None,
          data: DataConfig | None = None, device: str = "auto", resume: bool = False, progress: bool = True,
          log: str = "none", keep_resume: bool = False) -> Run:
    """Trains one side network (``side``: SideConfig settings beyond the backbone's sizes) from a
    feature store into ``out``: side.safetensors, side_config.json, train_config.yaml,
    metrics.jsonl, loss.png and best/ (see ``fit`` for ``log`` and ``keep_resume``)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    config = SideConfig(**backbone_dims(store), **recipe(store, side or {}))
    [run] = fit(store, [RunSpec.at(Path(out), config, optim)], data or DataConfig(), device=device, resume=resume,
                progress=progress, log=log, keep_resume=keep_resume)
    return run


@dataclass(frozen=True)
class Watch:
    """What a caller may add to the training loop (a tuner's pruning): ``due(step)`` asks for a rung
    at more steps than the data settings' validations: every run's loss on ``share`` of the held-out
    batches (``rung_batches``), which neither sets its validation loss nor counts towards its best
    weights. After every rung or validation ``stop(runs, losses)`` names the runs to stop there
    (``losses``: each run's rung loss at a rung, else its validation loss); each is saved and
    released, and the others go on."""

    due: Callable[[int], bool] = lambda step: False
    share: float = 1.0
    stop: Callable[[list[Run], list[float]], list[Run]] = lambda runs, losses: []


def rung_batches(validation: list, share: float) -> list:
    """``share`` of the held-out batches (at least one), evenly spread over them: the same for every
    run, so a rung compares all of them on one sample, at ``share`` of a validation's cost."""
    n = max(1, math.ceil(share * len(validation)))
    return validation if n >= len(validation) else [validation[i * len(validation) // n] for i in range(n)]


def fit(store: FeatureStore, specs: list[RunSpec], data: DataConfig, device: str = "auto", resume: bool = False,
        progress: bool = True, init: Callable[[SideNetwork], object] | None = None, log: str = "none",
        keep_resume: bool = False, watch: Watch = Watch()) -> list[Run]:
    """``_fit``, holding every run's output directory (one writer at a time: ``rundir``)."""
    with rundir.holding([spec.out for spec in specs]):
        return _fit(store, specs, data, device, resume, progress, init, log, keep_resume, watch)


def run_settings(run: Run, store: FeatureStore, device: str, log: str) -> dict:
    """The options of `train_side train` that train ``run`` again (its train_config.yaml)."""
    side = {k: v for k, v in option_values(run.side).items() if k not in backbone_dims(store)}
    return {"store": store.location, "out": str(run.out), **side, **option_values(run.optim),
            **option_values(run.data), "device": device, "log": log}


def top_blocks(store: FeatureStore, specs: list[RunSpec]) -> tuple[list[RunSpec], Callable | None]:
    """The specs with each ``top`` side network given its backbone's attention settings, and the start
    that copies the backbone's top blocks into a top network (None when there is none)."""
    deltas = [spec.side.delta for spec in specs if spec.side.kind == "top"]
    if not deltas:
        return specs, None
    weights, config = top_block_weights(store, max(deltas))
    settings = top_settings(config)
    specs = [replace(spec, side=replace(spec.side, **settings)) if spec.side.kind == "top" else spec for spec in specs]
    return specs, lambda model: copy_top_blocks(model, weights) if model.config.kind == "top" else None


def top_block_weights(store: FeatureStore, delta: int) -> tuple[dict, dict]:
    """The backbone's top ``delta`` blocks (extract.backbones.blocks): from the store when it holds
    them (no backbone loaded), else exported from the backbone reloaded once, exactly as extracted."""
    stored = store.top_blocks()
    if stored and stored[1]["first"] <= Provenance.load(store.attrs).model.n_layers - delta:
        return stored
    backbone = reload_backbone(Provenance.load(store.attrs).model, device="cpu")
    return backbone.top_blocks(delta)


def accumulate(runs: list[Run], batches: Iterator[Batch], device: torch.device) -> int:
    """Feeds each of ``batches`` (one optimizer step's) to every run as it is read, so that one
    batch is on the device at a time; returns their tokens."""
    tokens = 0
    for batch in batches:
        batch = batch.to(device)
        tokens += batch.n_tokens
        for run in runs:
            run.accumulate(batch)
    return tokens


@contextmanager
def closing_trackers(runs: list[Run]) -> Iterator[None]:
    """Closes every run's tracker when the block ends, however it ends (an interrupted run's
    events are flushed too)."""
    try:
        yield
    finally:
        for run in runs:
            run.close_tracker()


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
         progress: bool = True, init: Callable[[SideNetwork], object] | None = None, log: str = "none",
         keep_resume: bool = False, watch: Watch = Watch()) -> list[Run]:
    """Trains every run over one pass of the data per epoch: each batch is read and decoded once
    (the union of the runs' input layers) and fed to every run in turn; ``data.grad_accum``
    batches make one optimizer step. ``init`` (e.g. ``prune.init_from_backbone``) sets the
    weights of each run that starts fresh. Each run stops at the last step, or on its own after
    ``data.early_stop`` validations without improvement while the others go on; a finished run
    keeps its resume.pt only with ``keep_resume``. ``log``: see ``trackers``; ``watch`` may stop runs
    early too (see Watch)."""
    asked_device, device = device, resolve_device(device)
    train_idx, val_idx = split_examples(store.n_examples, data.val_fraction, data.seed)
    steps = steps_of(plan(store, train_idx, data.token_budget), data.grad_accum)
    val_batches = plan(store, val_idx, data.token_budget) if len(val_idx) else []
    layers = sorted({k for spec in specs for k in spec.side.inputs})
    missing = sorted(set(layers) - set(store.layers))
    if missing:
        raise TrainError(f"the side networks read hidden states {missing}, which the store does not hold "
                         f"(it has {list(store.layers)}); extract them or change the taps")
    head = FrozenHead(*store.head()).to(device)  # one copy for every run
    per_epoch = len(steps)
    total_steps = data.total_steps(per_epoch)
    specs, start_top = top_blocks(store, specs)
    runs = [Run.for_store(store, spec, data=data, total_steps=total_steps, device=device, head=head,
                          steps_per_epoch=per_epoch) for spec in specs]
    settings = {run.out: run_settings(run, store, asked_device, log) for run in runs}
    for run in runs:
        run.resume() if resume else run.start_fresh()
        rundir.write_settings(run.out, settings[run.out])
        for start in (start_top, init) if run.step == 0 else ():
            if start is not None:
                start(run.model)
    del start_top  # the backbone: no longer needed
    active = [run for run in runs if not run.finished]
    start_step = min((run.step for run in active), default=total_steps)
    if any(run.step != start_step for run in active):
        raise TrainError("the runs of this job stopped at different steps; resume them separately")
    for run in active:
        run.tracker = open_tracker(log, run.out, run.name, run.step, settings[run.out])
    loader = loader_settings(device)
    validation = [b.to(device) for b in read_ahead(store, val_batches, layers, **loader)] if active else []
    sample = rung_batches(validation, watch.share)
    with Progress([run.name for run in active], total_steps, start_step, progress) as bars, \
            interrupt_after_step() as interrupted, closing_trackers(runs):
        for epoch, order in epochs_from(per_epoch, data, start_step):
            with closing(read_ahead(store, [b for i in order for b in steps[i]], layers, **loader)) as batches:
                tick = time.perf_counter()
                for i in order:
                    tokens = accumulate(active, itertools.islice(batches, len(steps[i])), device)
                    losses = [run.optimizer_step() for run in active]
                    elapsed, tick = time.perf_counter() - tick, time.perf_counter()
                    for run, loss in zip(active, losses):
                        run.log({"epoch": epoch, "loss": loss, "lr": run.scheduler.get_last_lr()[0],
                                 "tokens": tokens, "tokens_per_s": tokens * len(active) / elapsed})
                        bars.step(run, loss, tokens * len(active) / elapsed)
                    step = active[0].step
                    end_of_epoch = step % per_epoch == 0 or step == total_steps
                    stopped = []
                    full, rung = end_of_epoch or data.eval_every and step % data.eval_every == 0, watch.due(step)
                    own_rung = rung and not (full and sample is validation)  # else the validation is the rung's loss
                    if validation and (full or rung):
                        losses = []
                        for run in active:
                            if full:
                                run.log({"epoch": epoch, "val_loss": run.validate(validation)})
                                run.keep_best()
                            losses.append(run.rung_loss(sample) if own_rung else run.val_loss)
                            bars.show(run)
                        stopped = watch.stop(active, losses)
                    for run in stopped:  # saved, then their memory goes to the runs still training
                        run.save()
                        run.close_tracker()
                        run.release()
                        bars.stopped(run)
                    active = [run for run in active if run not in stopped]
                    saving = end_of_epoch or data.save_every and step % data.save_every == 0 or interrupted.is_set()
                    for run in active:
                        if saving or run.stopped_early:
                            run.save()
                        if run.stopped_early:
                            bars.stopped(run)
                        if run.stopped_early or step == total_steps:
                            run.finish(keep_resume)
                    active = [run for run in active if not run.finished]
                    if interrupted.is_set():
                        raise TrainingInterrupted(f"interrupted: {len(active)} run(s) saved at step {step} of "
                                                  f"{total_steps}; run the same command with --resume to continue")
                    if not active:
                        break
            if not active:
                break
    for run in runs:
        loss_curve(run.out)
    return runs
