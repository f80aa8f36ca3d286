"""Sweeps: a grid of side-network and optimiser settings, trained over one pass of the data.

A grid maps setting names to lists of values (a YAML/JSON file, or repeated ``--grid
key=v1,v2``); every combination is one run with its own output directory. All runs share the
data settings (epochs, batches, validation split), so one read of each batch feeds them all.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import click
import yaml

from featurestore.errors import UserError
from featurestore.options import field_names, parse_setting

from ..checkpoint import Checkpoint
from ..config import DataConfig, OptimConfig
from ..network.model import LADDER_ONLY, SideConfig
from .plots import compare_runs
from .train import RunSpec, backbone_dims, fit

# The sweepable settings are exactly the options of `train_side train` for SideConfig and
# OptimConfig (every field with a default: not the backbone's sizes, which come from the store).
# A grid key may be any of an option's names: heads, n-heads and n_heads all mean n_heads.
SETTING_NAMES = field_names(SideConfig, OptimConfig)
SIDE_KEYS = set(field_names(SideConfig).values())
OPTIM_KEYS = set(field_names(OptimConfig).values())


class GridError(UserError, ValueError):
    """A grid that cannot be expanded; the message says what to fix."""


def load_grid(path: str | Path) -> dict[str, list]:
    """A grid from a YAML or JSON file: ``{setting: [values...]}`` (a scalar means one value)."""
    try:
        grid = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise GridError(f"cannot read grid file {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(grid, dict):
        raise GridError(f"{path} must map settings to lists of values, e.g. 'lr: [0.001, 0.003]'")
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
    """The grid keyed by field names (``heads`` -> ``n_heads``), so that run names and configs
    see one spelling of each setting."""
    unknown = sorted(key for key in grid if key.lstrip("-") not in SETTING_NAMES)
    if unknown:
        raise GridError(f"unknown settings {unknown}; sweepable: {', '.join(sorted(SIDE_KEYS | OPTIM_KEYS))}")
    normalised = {}
    for key, values in grid.items():
        name = SETTING_NAMES[key.lstrip("-")]
        if name in normalised:
            raise GridError(f"the grid gives {name} twice ({key!r} is another name of it); give it once")
        normalised[name] = [_parse(key, name, v) for v in values]
    return normalised


def _parse(key: str, name: str, value):
    """A grid value converted and checked as its option would be (``lr=abc`` is refused here)."""
    try:
        return parse_setting((SideConfig, OptimConfig), name, value)
    except click.BadParameter as e:
        raise GridError(f"--grid {key}: {e.format_message()}") from None


def expand(grid: dict[str, list]) -> list[dict]:
    """Every combination of the grid's values, in a stable order."""
    grid = normalise(grid)
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_name(params: dict) -> str:
    """A readable directory name: ``kind=xladder,lr=0.003``."""
    text = ",".join(f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in params.items())
    return text or "run"


def configs(params: dict, base_side: dict, base_optim: dict, backbone: dict) -> tuple[SideConfig, OptimConfig]:
    """The side and optimiser configs of one grid point on top of the base settings."""
    side = {**base_side, **{k: v for k, v in params.items() if k in SIDE_KEYS}}
    if side.get("kind") == "xladder":  # Ladder-only settings of the base would be refused
        side = {k: v for k, v in side.items() if k not in LADDER_ONLY or k in params}
    optim = {**base_optim, **{k: v for k, v in params.items() if k in OPTIM_KEYS}}
    try:
        return SideConfig(**backbone, **side), OptimConfig(**optim)
    except (TypeError, ValueError) as e:
        raise GridError(f"{run_name(params)}: {e}") from None


def write_summary(out: Path, run_dirs: dict[str, tuple[dict, Path]]) -> list[dict]:
    """summary.csv and val_loss.png comparing the runs; returns the table's rows."""
    rows = []
    for name, (params, run_dir) in run_dirs.items():
        run = Checkpoint.load(run_dir)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps_per_epoch = max(1, round(run.step / max(run.epochs, 1e-9)))
        train = [m["loss"] for m in metrics if "loss" in m][-steps_per_epoch:]
        rows.append({"run": name, **params, "parameters": run.n_parameters,
                     "train_loss": round(sum(train) / len(train), 4),
                     "val_loss": None if run.val_loss is None else round(run.val_loss, 4),
                     "train_seconds": round(run.train_seconds, 1)})
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    compare_runs([run_dir for _, run_dir in run_dirs.values()], out / "val_loss.png")
    return rows


def format_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def sweep(store, out: str | Path, grid: dict[str, list], *, side: dict | None = None, optim: dict | None = None,
          data: DataConfig | None = None, device: str = "auto", resume: bool = False, jobs: int = 1,
          progress: bool = True) -> list[dict]:
    """Trains every combination of ``grid`` (on top of the base ``side`` and ``optim`` settings)
    from one store, over one pass of the data per epoch; with ``jobs`` > 1 the runs are split
    across that many processes (each its own pass). Writes a directory per run, summary.csv and
    val_loss.png under ``out``; returns the summary rows."""
    from featurestore import FeatureStore

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    data, out = data or DataConfig(), Path(out)
    points = expand(grid)
    specs = []
    for params in points:
        side_config, optim_config = configs(params, side or {}, optim or {}, backbone_dims(store))
        specs.append(RunSpec(run_name(params), out / run_name(params), side_config, optim_config))
    groups = [specs[i::jobs] for i in range(min(jobs, len(specs)))]
    if len(groups) == 1:
        fit(store, specs, data, device=device, resume=resume, progress=progress)
    else:
        _fit_in_processes(store.location, groups, data, device, resume)
    return write_summary(out, {spec.name: (params, spec.out) for params, spec in zip(points, specs)})


def _fit_in_processes(location: str, groups: list[list[RunSpec]], data: DataConfig, device: str, resume: bool) -> None:
    """One process per group, sharing the machine's cores evenly."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // len(groups))
    with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(_fit_group, location, group, data, device, resume, threads) for group in groups]:
            done.result()


def _fit_group(location: str, group: list[RunSpec], data: DataConfig, device: str, resume: bool, threads: int) -> None:
    import torch

    from featurestore import FeatureStore

    torch.set_num_threads(threads)
    fit(FeatureStore.open(location), group, data, device=device, resume=resume, progress=False)
