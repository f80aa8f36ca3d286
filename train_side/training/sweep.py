"""Sweeps: a grid of settings, trained over one pass of the data per data setting.

A grid maps setting names to lists of values (a YAML/JSON file, or repeated ``--grid
key=v1,v2``); every combination is one run with its own output directory. Runs that share their
data settings (epochs, batches, validation split: DataConfig) are trained together, so one read
of each batch feeds them all; a grid over a data setting (``epochs=1,2``) trains one such pass
per value.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import click
import yaml

from featurestore.errors import UserError
from featurestore.options import destination, option_names, option_values, parse_setting

from ..checkpoint import Checkpoint
from ..config import DataConfig, OptimConfig
from ..network.model import LADDER_ONLY, SideConfig
from . import rundir
from .plots import compare_runs
from .train import RunDirectoryError, RunSpec, backbone_dims, fit, recipe

# The sweepable settings are exactly the options of `train_side train` for SideConfig, OptimConfig
# and DataConfig (every field with a default: not the backbone's sizes, which come from the store).
# A grid key may be any of an option's names: heads, n-heads and n_heads all mean n_heads; a grid
# keys each setting by its option's name (data_seed: DataConfig.seed).
OPTIONS = option_names(SideConfig, OptimConfig, DataConfig)
SWEEPABLE = sorted({destination(cls, name) for cls, name in OPTIONS.values()})
SETTINGS = "sweep_config.yaml"


class GridError(UserError, ValueError):
    """A grid that cannot be expanded; the message says what to fix."""


def load_grid(path: str | Path) -> dict[str, list]:
    """A grid from a YAML or JSON file: ``{setting: [values...]}`` (a scalar means one value)."""
    try:
        grid = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise GridError(f"cannot read grid file {path}: {str(e).splitlines()[0]}") from None
    return grid_of(grid, str(path))


def grid_of(grid, where: str) -> dict[str, list]:
    """A grid given as a mapping ``{setting: [values...]}`` (a scalar means one value), normalised."""
    if not isinstance(grid, dict):
        raise GridError(f"{where} must map settings to lists of values, e.g. 'lr: [0.001, 0.003]'")
    return normalise({str(k): v if isinstance(v, list) else [v] for k, v in grid.items()})


def parse_grid_options(options: list[str]) -> dict[str, list]:
    """``["lr=1e-3,3e-3", "heads=2,4"]`` -> ``{"lr": [0.001, 0.003], "n_heads": [2, 4]}``."""
    grid = {}
    for option in options:
        key, sep, values = option.partition("=")
        if not sep or not values:
            raise GridError(f"--grid {option!r} is not key=value[,value...]")
        grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
    return normalise(grid)


def normalise(grid: dict[str, list]) -> dict[str, list]:
    """The grid keyed by option names (``heads`` -> ``n_heads``), so that run names and configs
    see one spelling of each setting."""
    unknown = sorted(key for key in grid if key.lstrip("-") not in OPTIONS)
    if unknown:
        raise GridError(f"unknown settings {unknown}; sweepable: {', '.join(SWEEPABLE)}")
    normalised = {}
    for key, values in grid.items():
        cls, name = OPTIONS[key.lstrip("-")]
        option = destination(cls, name)
        if option in normalised:
            raise GridError(f"the grid gives {option} twice ({key!r} is another name of it); give it once")
        normalised[option] = [_parse(key, cls, name, v) for v in values]
    return normalised


def _parse(key: str, cls: type, name: str, value):
    """A grid value converted and checked as its option would be (``lr=abc`` is refused here)."""
    try:
        return parse_setting((cls,), name, value)
    except click.BadParameter as e:
        raise GridError(f"--grid {key}: {e.format_message()}") from None


def expand(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in a stable order."""
    grid = normalise(grid)
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(params: dict) -> str:
    """A run's directory name, which needs no quoting in a shell and is a valid Hub repository
    name: ``kind-ladder_lr-0.003`` (its full settings are in its train_config.yaml)."""
    name = "_".join(f"{k}-{_slug(v)}" for k, v in params.items()) or "run"
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name)).strip("-.")
    if len(name) > 96:  # the Hub's limit: keep the start readable, the end unique
        name = f"{name[:87].rstrip('-.')}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def _slug(value) -> str:
    """A grid value in a run name: a list joined with dots, a minus sign as ``m``."""
    if isinstance(value, list):
        return ".".join(map(_slug, value))
    text = str(value)
    return re.sub(r"[^A-Za-z0-9._-]", "-", "m" + text[1:] if text.startswith("-") else text)


def legacy_run_name(params: dict) -> str:
    """The directory name of a run of a sweep written before run_name (``kind=xladder,lr=0.003``),
    so that such a sweep still resumes."""
    return ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items()) or "run"


def run_dir(out: Path, params: dict) -> Path:
    """Where the run of ``params`` goes: its run_name, or the legacy name of an older sweep's run."""
    legacy = out / legacy_run_name(params)
    return legacy if rundir.has_run(legacy) and not (out / run_name(params)).exists() else out / run_name(params)


def _by_config(params: dict) -> dict[type, dict]:
    """A grid point's settings split by the config they belong to, by field name."""
    split = {cls: {} for cls in (SideConfig, OptimConfig, DataConfig)}
    for option, value in params.items():
        cls, name = OPTIONS[option]
        split[cls][name] = value
    return split


def configs(params: dict, base_side: dict, base_optim: dict, backbone: dict) -> tuple[SideConfig, OptimConfig]:
    """The side and optimiser configs of one grid point on top of the base settings (its data
    settings: ``data_config``)."""
    split = _by_config(params)
    side = {**base_side, **split[SideConfig]}
    if side.get("kind", "ladder") != "ladder":  # Ladder-only settings of the base would be refused
        side = {k: v for k, v in side.items() if k not in LADDER_ONLY or k in split[SideConfig]}
    try:
        return SideConfig(**backbone, **side), OptimConfig(**{**base_optim, **split[OptimConfig]})
    except (TypeError, ValueError) as e:
        raise GridError(f"{run_name(params)}: {e}") from None


def data_config(params: dict, base: DataConfig) -> DataConfig:
    """The data settings of one grid point on top of the base ones."""
    return replace(base, **_by_config(params)[DataConfig])


def write_summary(out: Path, run_dirs: dict[str, tuple[dict, Path]]) -> list[dict]:
    """summary.csv and val_loss.png comparing the runs; returns the table's rows, best first (by
    each run's best validation loss), the best marked ``*``."""
    rows = []
    for name, (params, run_dir) in run_dirs.items():
        run = Checkpoint.load(run_dir)
        best = Checkpoint.load(run_dir / rundir.BEST) if rundir.has_run(run_dir / rundir.BEST) else None
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps_per_epoch = max(1, round(run.step / max(run.epochs, 1e-9)))
        train = [m["loss"] for m in metrics if "loss" in m][-steps_per_epoch:]
        rows.append({"best": "", "run": name, **params, "parameters": run.n_parameters,
                     "train_loss": round(sum(train) / len(train), 4),
                     "val_loss": None if run.val_loss is None else round(run.val_loss, 4),
                     "best_val_loss": None if best is None else round(best.val_loss, 4),
                     "best_step": None if best is None else best.step, "steps": run.step,
                     "stopped": "early" if run.stopped_early else "", "train_seconds": round(run.train_seconds, 1)})
    rows.sort(key=lambda row: (row["best_val_loss"] is None, row["best_val_loss"] or 0.0))
    if rows and rows[0]["best_val_loss"] is not None:
        rows[0]["best"] = "*"
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    compare_runs([run_dir for _, run_dir in run_dirs.values()], out / "val_loss.png")
    return rows


def format_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [["" if row.get(k) is None else str(row[k]) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(line.rstrip() for line in lines)


def sweep(store, out: str | Path, grid: dict[str, list], *, side: dict | None = None, optim: dict | None = None,
          data: DataConfig | None = None, device: str = "auto", resume: bool = False, jobs: int = 1,
          progress: bool = True, log: str = "none", keep_resume: bool = False) -> list[dict]:
    """Trains every combination of ``grid`` (on top of the base ``side``, ``optim`` and ``data``
    settings) from one store, over one pass of the data per epoch for each combination of the
    grid's data settings; with ``jobs`` > 1 the runs of a pass are split across that many
    processes (each its own pass). Writes a directory per run, sweep_config.yaml, summary.csv and
    val_loss.png under ``out``; returns the summary rows, best first."""
    from featurestore import FeatureStore

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    data, out = data or DataConfig(), Path(out)
    grid = normalise(grid)
    if not resume and (out / SETTINGS).is_file():
        raise RunDirectoryError(f"{out} already holds a sweep; resume it (--resume) or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(yaml.safe_dump(
        {"store": store.location, "out": str(out), **(side or {}), **(optim or {}), **option_values(data),
         "grid": grid, "jobs": jobs, "device": device, "log": log}, sort_keys=False))
    planned = []  # (params, data config, spec) of every run, in the grid's order
    side = recipe(store, side or {}, swept=grid)
    for params in expand(grid):
        side_config, optim_config = configs(params, side, optim or {}, backbone_dims(store))
        where = run_dir(out, params)
        planned.append((params, data_config(params, data), RunSpec(where.name, where, side_config, optim_config)))
    passes: dict[str, tuple[DataConfig, list[RunSpec]]] = {}  # the runs of each data setting, trained together
    for _, point_data, spec in planned:
        passes.setdefault(json.dumps(asdict(point_data)), (point_data, []))[1].append(spec)
    for pass_data, specs in passes.values():
        groups = [specs[i::jobs] for i in range(min(jobs, len(specs)))]
        if len(groups) == 1:
            fit(store, specs, pass_data, device=device, resume=resume, progress=progress, log=log,
                keep_resume=keep_resume)
        else:
            _fit_in_processes(store.location, groups, pass_data, device, resume, log, keep_resume)
    return write_summary(out, {spec.name: (params, spec.out) for params, _, spec in planned})


def _fit_in_processes(location: str, groups: list[list[RunSpec]], data: DataConfig, device: str, resume: bool,
                      log: str, keep_resume: bool) -> None:
    """One process per group, sharing the machine's cores evenly."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // len(groups))
    with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_fit_group, location, group, data, device, resume, threads, log, keep_resume)
                     for group in groups]:
            done.result()


def _fit_group(location: str, group: list[RunSpec], data: DataConfig, device: str, resume: bool, threads: int,
               log: str, keep_resume: bool) -> None:
    import torch

    from featurestore import FeatureStore

    torch.set_num_threads(threads)
    fit(FeatureStore.open(location), group, data, device=device, resume=resume, progress=False, log=log,
        keep_resume=keep_resume)
