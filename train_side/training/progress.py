"""What a training job shows while it runs: one progress line per run.

A single run gets one bar (loss, tokens/s, its last validation loss); a sweep gets one line per
run, named after it, so that each run's loss and validation loss can be read and compared as the
job goes, and a run stopped early says so while the others continue.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    """tqdm bars on standard error, one per run of ``names``, over ``total`` steps from
    ``initial``; a run shown is an object with ``name``, ``val_loss`` and ``best_loss``."""

    def __init__(self, names: list[str], total: int, initial: int, enabled: bool = True):
        width = max(map(len, names), default=0)
        self.bars = {name: tqdm(total=total, initial=initial, unit="step", position=i, leave=True,
                                desc="train" if len(names) == 1 else name.ljust(width), disable=not enabled,
                                file=sys.stderr)
                     for i, name in enumerate(names)}
        self.shown = {name: {} for name in names}  # each line's last values, kept until replaced

    def step(self, run, loss: float, tokens_per_s: float) -> None:
        """``run`` took a step with training loss ``loss``."""
        bar = self.bars[run.name]
        bar.update()
        self.show(run, loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")

    def show(self, run, **postfix) -> None:
        """The line of ``run``: ``postfix`` (added to what it showed) and its validation losses."""
        shown = self.shown[run.name]
        shown |= postfix
        if run.val_loss is not None:
            shown |= {"val": f"{run.val_loss:.4f}", "best": f"{run.best_loss:.4f}"}
        self.bars[run.name].set_postfix(shown)

    def stopped(self, run) -> None:
        """``run`` stopped early; the others go on."""
        self.show(run, stopped="early")

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
