"""scripts/diagnose.py: the loss of each token class, and its share of the whole."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from diagnose import split, table  # noqa: E402


def test_split_gives_each_class_its_mean_loss_and_share_of_the_total():
    losses = np.array([0.1, 0.1, 2.0, 1.0, 0.0])
    kinds = np.array(["format", "format", "computed", "copied", "answer"])
    rows = split(losses, kinds)
    assert rows["all"] == {"loss": losses.mean(), "tokens": 5, "share": 1.0}
    assert rows["computed"] == {"loss": 2.0, "tokens": 1, "share": 2.0 / 3.2}
    assert abs(sum(rows[c]["share"] for c in ("format", "copied", "computed", "answer")) - 1) < 1e-9
    lines = table({"ladder": rows, "qlora": split(losses / 2, kinds)}).splitlines()
    assert lines[0] == "| token class | tokens | ladder loss (share) | qlora loss (share) |"
    assert lines[5] == "| computed | 1 (20%) | 2.000 (62%) | 1.000 (62%) |"
