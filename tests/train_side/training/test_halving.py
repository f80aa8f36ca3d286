"""The pruner of `train_side tune`: successive halving that judges a batch's trials at a rung together."""

import math
import random

import optuna
import pytest

from train_side.training.halving import BatchHalvingPruner


def batch_at_rung(values, order, rungs=(2, 6), step=2):
    """A study whose trials report ``values`` at ``step`` before any is judged, judged in ``order``."""
    study = optuna.create_study(pruner=BatchHalvingPruner(rungs, reduction_factor=3))
    trials = [study.ask() for _ in values]
    for trial, value in zip(trials, values):
        trial.report(value, step)
    return {i: trials[i].should_prune() for i in order}


@pytest.mark.parametrize("seed", range(4))
def test_the_best_third_of_a_batch_goes_on_whatever_order_it_is_judged_in(seed):
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    order = random.Random(seed).sample(range(9), 9)
    pruned = batch_at_rung(values, order)
    assert sorted(i for i, p in pruned.items() if not p) == [1, 3, 5]  # 0.1, 0.3, 0.2: exactly 9 // 3


def test_one_goes_on_however_few_and_nan_never_does():
    assert batch_at_rung([0.4, 0.2], order=[0, 1]) == {0: True, 1: False}
    assert batch_at_rung([math.nan, 0.2, 0.3], order=[0, 1, 2]) == {0: True, 1: False, 2: True}


def test_steps_between_rungs_are_never_pruned():
    assert batch_at_rung([0.1, 0.9, 0.8], order=[1, 2], step=3) == {1: False, 2: False}


def test_a_later_batch_is_judged_against_the_values_earlier_ones_reported_at_that_rung():
    study = optuna.create_study(pruner=BatchHalvingPruner({2}, reduction_factor=3))
    for value in (0.1, 0.2, 0.3, 0.4, 0.5):
        earlier = study.ask()
        earlier.report(value, 2)
        study.tell(earlier, state=optuna.trial.TrialState.PRUNED)
    late = study.ask()
    late.report(0.25, 2)  # the 3rd best of 6: 6 // 3 = 2 go on
    assert late.should_prune()
