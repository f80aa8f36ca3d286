"""Hyper-parameter search with Optuna over one pass of the data: `train_side tune`.

Trials are asked of an Optuna study in batches (ask/tell) and trained together exactly as a
sweep's runs are (``fit``: each batch is read once and fed to every trial). At each rung every
trial reports its loss on a share of the held-out set (--rung-share: the same examples for all, at a
share of a validation's cost), and the study's pruner stops the losers there (successive halving
judging a batch's trials at a rung together: halving.py; or Optuna's Hyperband): a pruned run is
saved, its memory freed, and the survivors keep reading the same batches. A finished trial's value
is its validation loss on the whole held-out set.

The study lives in an Optuna RDB storage (SQLite in --out by default, PostgreSQL or MySQL for a
team), so several `train_side tune` processes, on one machine or many, share one study: Optuna
hands each trial to one worker; a worker's trials carry heartbeats, and the trials of a worker
that died are failed and retried (from their last checkpoint, in the same run directory) by
whichever worker notices first. Every worker stops when the study holds its --trials.
"""

from __future__ import annotations

import csv
import json
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import Trial, TrialState

from featurestore import FeatureStore
from featurestore.errors import UserError

from ..checkpoint import Checkpoint
from ..config import DataConfig, OptimConfig
from ..data import plan, split_examples
from . import rundir
from .halving import BatchHalvingPruner
from .space import Choice, Range, Search, describe, grid, size, suggest
from .sweep import GridError, configs, format_table, run_name
from .train import Run, RunSpec, Watch, backbone_dims, fit, recipe, warmup_steps

MAX_RETRY = 3  # a trial that kills its worker every time is given up after this many tries
WORKER = f"{socket.gethostname()}:{os.getpid()}"


class TuneError(UserError, ValueError):
    """A search that cannot run as asked; the message says what to change."""


class TuneInterrupted(UserError, KeyboardInterrupt):
    """Ctrl-C during a search: the trials in training were saved and will be resumed."""


@dataclass
class Outcome:
    """What a search found: one row per trial (as summary.csv), the best, and the printed report."""

    rows: list[dict]
    best: dict | None
    report: str


def tune(store, out: str | Path, space: dict[str, Range | Choice], search: Search, *, storage: str | None = None,
         study_name: str | None = None, side: dict | None = None, optim: dict | None = None,
         data: DataConfig | None = None, device: str = "auto", progress: bool = True,
         echo: Callable[[str], None] = lambda line: None) -> Outcome:
    """Runs this worker's share of the study until it holds ``search.trials`` trials, then writes
    summary.csv and the plots under ``out`` and returns the whole study's outcome. ``echo`` gets one
    line per trial finished here."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    data, out = data or DataConfig(), Path(out)
    if data.val_fraction <= 0:
        raise TuneError("tune ranks trials by validation loss: give --val-fraction above 0")
    out.mkdir(parents=True, exist_ok=True)
    total = data.total_steps(len(plan(store, split_examples(store.n_examples, data.val_fraction, data.seed)[0],
                                      data.token_budget)))
    min_steps = search.min_steps or first_rung(total, search.reduction_factor, OptimConfig(**(optim or {})))
    rungs = set(rung_steps(min_steps, search.reduction_factor, total))
    study = open_study(out, storage, study_name or out.resolve().name, space, search, total, min_steps, rungs)
    record_settings(study, {"space": describe(space), "side": side or {}, "optim": optim or {},
                            "data": {k: v for k, v in asdict(data).items() if k not in ("eval_every", "save_every")},
                            "store": store.fingerprint, "sampler": search.sampler, "pruner": search.pruner,
                            "reduction_factor": search.reduction_factor, "min_steps": min_steps,
                            "rung_share": search.rung_share})
    n_trials = min(search.trials, size(grid(space))) if search.sampler == "grid" else search.trials
    side = recipe(store, side or {}, swept=space)
    worker = Worker(study, store, out, space, side, optim or {}, data, device, progress, echo, n_trials, total, rungs,
                    search.rung_share)
    waited = False
    while True:
        reap(study)
        if trials := ask(study, n_trials, search.parallel):
            worker.train(trials)
        elif running := study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not waited:
                echo(f"waiting for {len(running)} trial(s) training in other workers "
                     f"({', '.join(sorted({t.user_attrs.get('worker', '?') for t in running}))})")
                waited = True
            time.sleep(min(search.heartbeat, 2))  # until they finish, or fail and come back as retries
        else:
            break
    return summarise(study, out, total)


def first_rung(total: int, reduction_factor: int, optim: OptimConfig) -> int:
    """The default first rung: total / rf^3 steps (27 trials -> 9 -> 3 -> 1 over the run), but only
    once the base settings' warmup is over and a step beyond it. Before that the ranking is
    of the warmup's first jumps: on the demo store (27 Ladder settings, 75 steps) the trials judged
    at step 2 kept one 30% worse than the best, and at step 4 (the default warmup's end) one within
    0.8% (docs/benchmarks.md#searching-with-tune)."""
    return max(1, total // reduction_factor ** 3, warmup_steps(total, optim) + 1)


def rung_steps(first: int, reduction_factor: int, total: int) -> list[int]:
    """The rungs: ``first`` x reduction_factor^k, before the last step (where every trial ends anyway)."""
    return [step for k in range(64) if (step := first * reduction_factor ** k) < total]


def open_study(out: Path, url: str | None, name: str, space: dict, search: Search, total: int,
               min_steps: int, rungs: set[int]) -> optuna.Study:
    """The study ``name`` in the storage at ``url`` (default: DIR/study.db), created if new."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")  # ask/tell's
    url = url or f"sqlite:///{(out / 'study.db').resolve()}"
    storage = open_storage(url, search.heartbeat)
    if search.sampler == "grid":
        sampler = OwnStopGrid(grid(space), seed=search.sampler_seed)
    elif search.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=search.sampler_seed)
    else:  # constant liar: the trials of one batch, asked before any result, spread out instead of piling up
        sampler = optuna.samplers.TPESampler(seed=search.sampler_seed, constant_liar=True)
    pruner = {"halving": lambda: BatchHalvingPruner(rungs, search.reduction_factor),  # a batch's rung judged at once
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_steps, total, search.reduction_factor),
              "none": optuna.pruners.NopPruner}[search.pruner]()
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                               direction="minimize", load_if_exists=True)


def open_storage(url: str, heartbeat: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, with heartbeats and retries of failed trials. Two workers
    creating one new SQLite file at once may collide on its tables: the second tries again."""
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}  # wait out the other writers
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                              heartbeat_stale_trial_callback=retry)
        except Exception as e:  # noqa: BLE001 - sqlalchemy's, a missing driver's, a bad URL's: all one line
            if attempt == 2 or "already exists" not in str(e):
                raise TuneError(f"cannot open the study storage {shown(url)}: {str(e).splitlines()[0]}; give a "
                                "SQLite path (sqlite:///DIR/study.db) or a reachable PostgreSQL/MySQL URL") from None
            time.sleep(0.5)


def shown(url: str) -> str:
    """``url`` without its password: ``postgresql://me:***@host/db``."""
    return re.sub(r"(://[^:/@]+):[^/]*@", r"\1:***@", url)


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's retry of a failed trial: a waiting copy of it (settings, intermediate values, rungs
    passed) that the next ask hands out, up to MAX_RETRY times."""
    optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY, inherit_intermediate_values=True)(study, trial)


class OwnStopGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler, without its stop at the last grid point (which ask/tell cannot take):
    the number of trials asked is capped at the grid's size instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def record_settings(study: optuna.Study, settings: dict) -> None:
    """Records what a study's trials share (space, base settings, data, store, pruner) when it is
    new, and refuses to join a study recorded with others: its trials would not be comparable."""
    settings = json.loads(json.dumps(settings))
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
    elif recorded != settings:
        changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
        raise TuneError(f"study {study.study_name!r} was started with other {', '.join(changed)}: join it with the "
                        "same command, or give another --study")


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the study's size: all but the failed ones, which come back as
    retries (unless their settings could not be trained, which nothing will change)."""
    return trial.state != TrialState.FAIL or "invalid" in trial.user_attrs


def ask(study: optuna.Study, n_trials: int, parallel: int) -> list[Trial]:
    """Up to ``parallel`` trials for this worker: retries waiting first (Optuna hands each to one
    worker), then new ones while the study holds fewer than ``n_trials``. A new trial that another
    worker's ask made one too many is failed as surplus, untrained."""
    trials = study.get_trials(deepcopy=False)
    waiting = {t.number for t in trials if t.state == TrialState.WAITING}
    asked = [study.ask() for _ in range(min(parallel, max(0, n_trials - sum(map(counts, trials))) + len(waiting)))]
    if not asked:
        return []
    counted = sorted(t.number for t in study.get_trials(deepcopy=False) if counts(t))
    for trial in asked:
        if trial.number not in waiting and counted.index(trial.number) >= n_trials:
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
    return [trial for trial in asked if "surplus" not in trial.user_attrs]


def reap(study: optuna.Study) -> None:
    """Fails (and so retries) the trials of dead workers: those whose heartbeat went stale, and at
    once those of a worker on this machine whose process is gone (a rerun after a kill)."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
        if owner == host and pid.isdigit() and not alive(int(pid)):
            give_up(study, trial, retried=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def give_up(study: optuna.Study, trial, retried: bool) -> None:
    """Marks a running trial failed, with a retry waiting for the next ask when ``retried``."""
    try:
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
        return
    if retried:
        retry(study, study._storage.get_trial(trial._trial_id))


@contextmanager
def heartbeats(storage, trial_ids: set[int], interval: int) -> Iterator[None]:
    """Records a heartbeat of each trial in ``trial_ids`` (which the block may shrink) at once and
    then every ``interval`` seconds, on a thread, so that a long step still counts as alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in list(trial_ids):
                try:
                    storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a busy database: the next beat tries again
                    pass

    for trial_id in trial_ids:
        storage.record_heartbeat(trial_id)
    thread = threading.Thread(target=beat, name="tune-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass
class Worker:
    """Trains this process's batches of trials and tells the study what they reached."""

    study: optuna.Study
    store: FeatureStore
    out: Path
    space: dict
    side: dict
    optim: dict
    data: DataConfig
    device: str
    progress: bool
    echo: Callable[[str], None]
    n_trials: int
    total: int
    rungs: set[int]
    rung_share: float

    def train(self, trials: list[Trial]) -> None:
        """Trains a batch: trials at the same step (new ones at 0, retries from their checkpoints)
        over one pass of the data together."""
        trial_ids = {trial._trial_id for trial in trials}
        with heartbeats(self.study._storage, trial_ids, self.study._storage.get_heartbeat_interval()):
            groups: dict[tuple[bool, int], dict[Trial, RunSpec]] = {}
            for trial in trials:
                trial.set_user_attr("worker", WORKER)
                if spec := self.spec(trial):
                    retried = "failed_trial" in self.study._storage.get_trial_system_attrs(trial._trial_id)
                    step = Checkpoint.load(spec.out).step if rundir.has_checkpoint(spec.out) else 0
                    groups.setdefault((retried, step), {})[trial] = spec
                else:
                    trial_ids.discard(trial._trial_id)
            try:
                for (retried, _), group in sorted(groups.items(), key=lambda item: -item[0][1]):
                    self.fit(group, retried, trial_ids)
            except KeyboardInterrupt:  # Ctrl-C: the runs were saved (a second one: as far as their checkpoints)
                for trial in trials:
                    if trial._trial_id in trial_ids:
                        give_up(self.study, trial, retried=True)
                raise TuneInterrupted("interrupted: the trials in training were saved; run the same command again to "
                                      "continue the study") from None
            except BaseException:
                for trial in trials:  # an error training them: not retried, it would repeat
                    if trial._trial_id in trial_ids:
                        give_up(self.study, trial, retried=False)
                raise

    def spec(self, trial: Trial) -> RunSpec | None:
        """The run of a trial, in the directory of the trial it retries if any; None (and the trial
        failed, counted) where its settings do not make a side network."""
        params = suggest(trial, self.space)
        number = self.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial", trial.number)
        out = self.out / "trials" / f"{number:04d}"
        trial.set_user_attr("run_dir", str(out))
        try:
            side, optim = configs(params, self.side, self.optim, backbone_dims(self.store))
        except GridError as e:
            trial.set_user_attr("invalid", str(e))
            self.study.tell(trial, state=TrialState.FAIL)
            self.echo(f"trial {trial.number} not trained: {e}")
            return None
        return RunSpec(run_name(rounded(params)), out, side, optim)

    def fit(self, group: dict[Trial, RunSpec], resume: bool, trial_ids: set[int]) -> None:
        """One ``fit`` of the group's runs; the pruner is asked at every rung and validation."""
        trial_of: dict[str, Trial] = {str(spec.out): trial for trial, spec in group.items()}

        def stop(runs: list[Run], losses: list[float]) -> list[Run]:
            for run, loss in zip(runs, losses):
                self.told(trial_of[str(run.out)], run, trial_ids, lambda trial: trial.report(loss, run.step))
            stopped = [run for run in runs if trial_of[str(run.out)]._trial_id not in trial_ids]  # lost
            for run, loss in zip(runs, losses):
                if run not in stopped and trial_of[str(run.out)].should_prune():
                    self.finish(trial_of[str(run.out)], run, TrialState.PRUNED, trial_ids, loss)
                    stopped.append(run)
            return stopped

        runs = fit(self.store, list(group.values()), self.data, device=self.device, resume=resume,
                   progress=self.progress, watch=Watch(due=self.rungs.__contains__, share=self.rung_share, stop=stop))
        for run in runs:
            if trial_of[str(run.out)]._trial_id in trial_ids:
                self.finish(trial_of[str(run.out)], run, TrialState.COMPLETE, trial_ids, run.val_loss)

    def told(self, trial: Trial, run: Run, trial_ids: set[int], what: Callable[[Trial], object]) -> bool:
        """``what(trial)``, unless another worker has failed the trial meanwhile (its heartbeats were
        late: a stalled machine): then this worker drops it, for its retry has taken over."""
        try:
            what(trial)
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            trial_ids.discard(trial._trial_id)
            self.echo(f"trial {trial.number} was failed by another worker (its heartbeats came late); its retry "
                      f"continues it, so it stops here at step {run.step}")
            return False

    def finish(self, trial: Trial, run: Run, state: TrialState, trial_ids: set[int], loss: float) -> None:
        """Tells the study a trial's end and prints its line (``loss``: its validation loss, or the rung's
        where it was pruned)."""

        def tell(trial: Trial) -> None:
            trial.set_user_attr("steps", run.step)
            trial.set_user_attr("seconds", round(run.seconds, 1))
            self.study.tell(trial, run.val_loss if state == TrialState.COMPLETE else None, state=state)

        if not self.told(trial, run, trial_ids, tell):
            return
        trial_ids.discard(trial._trial_id)
        done = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        ended, judged = ("complete", "val_loss") if state == TrialState.COMPLETE else ("pruned", "rung_loss")
        self.echo(f"[{done}/{self.n_trials}] trial {trial.number} {ended} at step {run.step}/{self.total}: "
                  f"{judged} {loss:.4f}  {run.name}  ({run.seconds:.0f} s)")


def rounded(values: dict) -> dict:
    """Floats to 4 significant digits, for reading (a sampled lr has 17)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in values.items()}


def summarise(study: optuna.Study, out: Path, total: int) -> Outcome:
    """summary.csv (every trial), the plots, and the report: the best trials, then the study's
    counts, steps and time."""
    trials = [t for t in study.get_trials(deepcopy=False) if "surplus" not in t.user_attrs]
    rows = [{"trial": t.number, "state": t.state.name.lower(), **t.params,
             "val_loss": round(t.value, 4) if t.value is not None else
             (round(t.intermediate_values[t.last_step], 4) if t.last_step is not None else None),
             "steps": t.user_attrs.get("steps"), "seconds": t.user_attrs.get("seconds"),
             "worker": t.user_attrs.get("worker"), "run_dir": t.user_attrs.get("run_dir")} for t in trials]
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    plots = save_plots(study, out)
    finished = sorted((r for r in rows if r["state"] in ("complete", "pruned") and r["val_loss"] is not None),
                      key=lambda r: (r["state"] != "complete", r["val_loss"]))
    states = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    steps = sum(r["steps"] or 0 for r in rows)
    stamps = [t.datetime_start for t in trials if t.datetime_start] + [t.datetime_complete for t in trials
                                                                         if t.datetime_complete]
    wall = (max(stamps) - min(stamps)).total_seconds() if stamps else 0.0
    params = {name for t in trials for name in t.params}
    shown_rows = [{k: v for k, v in {**r, **rounded({k: r[k] for k in params if k in r})}.items()
                   if k not in ("worker", "run_dir")} for r in finished[:10]]
    lines = [format_table(shown_rows), ""] if shown_rows else []
    lines.append(f"study {study.study_name!r}: {len(rows)} trials, {states['complete']} complete, {states['pruned']} "
                 f"pruned, {states['fail']} failed; {steps:,} steps trained, {steps / max(1, len(rows) * total):.0%} "
                 f"of training every trial to step {total}; {wall:.0f} s from the first trial's start to the last's end")
    if states["pruned"]:
        share = study.user_attrs.get("settings", {}).get("rung_share", 1.0)
        lines.append(f"a pruned trial's val_loss is its last rung's, on {share:.0%} of the held-out set")
    best = next((r for r in finished if r["state"] == "complete"), None)
    if best is not None:
        settings = ", ".join(f"{k}={v}" for k, v in rounded({k: best[k] for k in study.best_trial.params}).items())
        lines.append(f"best: trial {best['trial']}, val_loss {best['val_loss']}, {settings} -> {best['run_dir']} "
                     f"(trained by {best['worker']}; a normal run: train_side eval/generate/push it)")
    lines.append(f"summary: {out / 'summary.csv'}" + "".join(f", {p}" for p in plots))
    return Outcome(rows, best, "\n".join(lines))


def save_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's optimisation history (tune.png), the losses every trial reported (at its rungs and
    validations) against the step (tune_curves.png) and the settings' importances
    (tune_importances.png, once two trials are complete), drawn with matplotlib into files."""
    from optuna.visualization import matplotlib as draw

    from .plots import plt  # the files-only backend

    saved = []
    for name, plot in (("tune.png", draw.plot_optimization_history), ("tune_curves.png", draw.plot_intermediate_values),
                       ("tune_importances.png", draw.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "too few trials to compute importances": drawn equal
                axes = plot(study)
        except (ValueError, RuntimeError):  # importances of no complete trial
            continue
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        saved.append(out / name)
    return saved
