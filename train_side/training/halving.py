"""Successive halving that judges the trials at a rung together: the pruner of `train_side tune`.

Optuna's SuccessiveHalvingPruner is asynchronous: a trial passes a rung when it is among the best
1/rf of the trials judged there *before it*. Trials that reach the rungs one by one, as in
``study.optimize``, suit it; a batch trained in lockstep does not: every trial of the batch reaches
the rung at the same step, and the first ones judged pass against almost nobody (the first always
does). On the demo store that let 397 of 2,025 steps through where exact thirds train 183.

Here each trial of a batch reports its value first, and then each is judged against every trial
that has a value at that step (this batch's, and earlier batches' or other workers'): the best
``max(1, n // rf)`` of those ``n`` go on, whatever order they are asked in. The judgement reads the
study's intermediate values only, so it keeps no state of its own and serves many workers alike.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import optuna
from optuna.trial import FrozenTrial, TrialState

JUDGED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)  # not failed ones: their retries hold their values


def kept(n: int, reduction_factor: int) -> int:
    """How many of ``n`` trials at a rung go on."""
    return max(1, n // reduction_factor)


class BatchHalvingPruner(optuna.pruners.BasePruner):
    """Keeps the best ``kept(n, reduction_factor)`` of the ``n`` trials with a value at each
    step of ``rungs``; never prunes elsewhere."""

    def __init__(self, rungs: Collection[int], reduction_factor: int):
        self.rungs, self.reduction_factor = frozenset(rungs), reduction_factor

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step not in self.rungs:
            return False
        value = trial.intermediate_values[step]
        if math.isnan(value):
            return True
        at_rung = sorted(v for t in study.get_trials(deepcopy=False, states=JUDGED)
                         if not math.isnan(v := t.intermediate_values.get(step, math.nan)))
        return value > at_rung[kept(len(at_rung), self.reduction_factor) - 1]
