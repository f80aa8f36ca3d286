"""A search space for `train_side tune`: which settings an Optuna study tries, from a small YAML file.

Each key is a setting `sweep` accepts (any of its option's names); its value says what to try:

    lr: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range: float settings sample floats,
    n_heads: {low: 1, high: 8}                    # integer settings integers (step: 2 for every other)
    reduction: [4, 8]                             # a list: a choice among these values
    kind: xladder                                 # a single value: fixed for every trial

``Search`` holds how a study searches that space (sampler, pruner, batches); optuna is imported
only by tune.py, so that the commands load without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from featurestore.options import field_names, parse_setting

from ..config import OptimConfig
from ..network.model import SideConfig
from .sweep import GridError, normalise

# What a study searches: the side-network and optimiser settings, by any of their option names. The
# data settings are shared by every trial of a study (they train over one pass): options of tune.
SETTING_NAMES = field_names(SideConfig, OptimConfig)
RANGE_KEYS = {"low", "high", "log", "step"}
SAMPLERS, PRUNERS = ("tpe", "random", "grid"), ("halving", "hyperband", "none")


class SpaceError(GridError):
    """A search space that cannot be searched; the message says what to fix."""


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (both included): integers for an integer setting."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (a single value: fixed)."""

    values: tuple


@dataclass(frozen=True)
class Search:
    """How a study searches: its size, sampler, pruner, batches and heartbeat. Each field with a
    default is an option of `train_side tune`."""

    trials: int
    parallel: int = field(default=8, metadata={
        "help": "Trials asked at once and trained together over one pass of the data.", "min": 1})
    sampler: str = field(default="tpe", metadata={
        "choices": SAMPLERS, "help": "How trials' settings are chosen: Optuna's TPE, random, or every point of "
                                     "the space in turn (grid: lists and integer ranges only)."})
    sampler_seed: int | None = field(default=None, metadata={
        "help": "Seed of the sampler (one worker: a repeatable search; several: give each its own or none)."})
    pruner: str = field(default="halving", metadata={
        "choices": PRUNERS, "help": "Stop losing trials at each rung: successive halving (a batch judged together), "
                                    "Optuna's Hyperband, or none."})
    reduction_factor: int = field(default=3, metadata={
        "help": "The pruner keeps 1 trial in this many at each rung; rungs are this many times apart.", "min": 2})
    min_steps: int = field(default=0, metadata={
        "help": "Steps every trial trains before the first rung (0: total steps / reduction factor^3, and at least "
                "a step past the warmup).", "min": 0})
    rung_share: float = field(default=0.3, metadata={  # docs/benchmarks.md#searching-with-tune
        "help": "Share of the held-out examples a rung ranks the trials on (evenly spread, the same for every "
                "trial; 1: all). A finished trial's validation loss reads them all.", "min": 0, "min_open": True,
        "max": 1})
    heartbeat: int = field(default=60, metadata={
        "help": "Seconds between a worker's heartbeats; a trial silent for twice this is failed and retried.",
        "min": 1})


def load_space(path: str | Path) -> dict[str, Range | Choice]:
    """The search space of a YAML file (see the module's docstring), keyed by field name."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpaceError(f"cannot read search space {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path} must map settings to ranges or lists, e.g. 'lr: {{low: 1.0e-4, high: 1.0e-2, "
                         "log: true}' or 'reduction: [4, 8]'")
    return parse_space({str(k): v for k, v in raw.items()})


def parse_space(raw: dict[str, Any]) -> dict[str, Range | Choice]:
    """``{setting: {low, high[, log, step]} | [values] | value}`` checked and converted as the
    settings' options would be."""
    normalise({key: [] for key in raw})  # unknown settings, and one given twice, are refused there
    space: dict[str, Range | Choice] = {}
    for key, value in raw.items():
        if key.lstrip("-") not in SETTING_NAMES:
            raise SpaceError(f"{key} is a data setting, shared by every trial of a study: give it as an option of "
                             "tune (--epochs, --token-budget, ...)")
        name = SETTING_NAMES[key.lstrip("-")]
        if isinstance(value, dict):
            space[name] = _range(key, name, value)
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            raise SpaceError(f"{key}: an empty list; give at least one value")
        space[name] = Choice(tuple(_convert(key, name, v) for v in values))
    return space


def _convert(key: str, name: str, value):
    """``value`` converted and checked as the setting's option would be (``lr: abc`` is refused)."""
    try:
        return parse_setting((SideConfig, OptimConfig), name, value)
    except click.BadParameter as e:
        raise SpaceError(f"{key}: {e.format_message()}") from None


def _range(key: str, name: str, value: dict) -> Range:
    """A range's bounds converted as the setting's option would convert them, and checked."""
    if unknown := sorted(set(value) - RANGE_KEYS) or ({"low", "high"} - set(value)):
        raise SpaceError(f"{key}: a range is {{low: L, high: H[, log: true][, step: S]}}, not {value} "
                         f"({', '.join(sorted(unknown))}?)")
    low, high = _convert(key, name, value["low"]), _convert(key, name, value["high"])
    if type(low) not in (int, float) or type(high) not in (int, float):  # bool is an int but not a range
        raise SpaceError(f"{key} is not a number: give it a list of values to choose from, e.g. {key}: "
                         f"[{value['low']}, {value['high']}]")
    if isinstance(low, int) and (low, high) != (value["low"], value["high"]):  # click's int option truncates 1.5 to 1
        raise SpaceError(f"{key} takes integers, not {value['low']}..{value['high']}")
    log, step = bool(value.get("log", False)), value.get("step")
    if low > high:
        raise SpaceError(f"{key}: the range {low}..{high} is empty; give low <= high")
    if log and low <= 0:
        raise SpaceError(f"{key}: a log range needs positive bounds, not {low}..{high}")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or log):
        raise SpaceError(f"{key}: step must be a positive number, and not given with log: true")
    return Range(low, high, log, step)


def label(value) -> Any:
    """A value as Optuna can store a choice of it: lists (taps) become their text, ``10,20,30``."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def suggest(trial, space: dict[str, Range | Choice]) -> dict:
    """The settings of one trial, asked of Optuna's ``trial`` (its sampler decides them)."""
    params = {}
    for name, what in space.items():
        if isinstance(what, Choice):
            by_label = {label(v): v for v in what.values}
            params[name] = by_label[trial.suggest_categorical(name, list(by_label))]
        elif what.integer:
            params[name] = trial.suggest_int(name, what.low, what.high, step=int(what.step or 1), log=what.log)
        else:
            params[name] = trial.suggest_float(name, float(what.low), float(what.high), step=what.step, log=what.log)
    return params


def grid(space: dict[str, Range | Choice]) -> dict[str, list]:
    """The space as Optuna's GridSampler takes it: every choice and every integer of a range."""
    points = {}
    for name, what in space.items():
        if isinstance(what, Choice):
            points[name] = [label(v) for v in what.values]
        elif what.integer and not what.log:
            points[name] = list(range(what.low, what.high + 1, int(what.step or 1)))
        else:
            raise SpaceError(f"--sampler grid tries every value: give {name} as a list (or an integer range "
                             "without log), or use --sampler tpe or random")
    return points


def size(points: dict[str, list]) -> int:
    """How many configurations a grid holds."""
    return math.prod(len(values) for values in points.values())


def describe(space: dict[str, Range | Choice]) -> dict:
    """The space as plain data (what a study records, to refuse joining it with another space)."""
    return {name: {"choice": [label(v) for v in what.values]} if isinstance(what, Choice) else
            {"low": what.low, "high": what.high, "log": what.log, "step": what.step} for name, what in space.items()}
