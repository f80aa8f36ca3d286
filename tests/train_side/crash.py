"""Training stopped at a chosen step, as a kill would stop it: for the tests of resuming."""

from contextlib import contextmanager

import pytest

from train_side.training.train import Run


@contextmanager
def crash_at_step(step: int):
    """Inside the block, a run about to take the optimizer step after ``step`` raises KeyboardInterrupt,
    which the block must end with; the real step is back afterwards."""
    original = Run.optimizer_step

    def crash(self):
        if self.step == step:
            raise KeyboardInterrupt
        return original(self)

    Run.optimizer_step = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Run.optimizer_step = original
