"""scripts/device_check.py on the CPU with its tiny shape: every row that it measures on a GPU runs
through the same code, and the table says that it worked (the codecs agree, no command failed)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers

REPO = Path(__file__).resolve().parents[2]
ALWAYS = ["encode/decode == numpy", "bare forward (bf16)", "extract int8o, GPU encoding", "extract int8o, CPU encoding",
          "train ladder (256 ctx)", "train xladder (256 ctx)", "generate: backbone alone", "generate: ladder",
          "generate: xladder", "torchrun extract (gloo)"]
INSTALLED = {name: importlib.util.find_spec(name) is not None for name in ("peft", "bitsandbytes")}
WITH = {"peft": ["peft LoRA step (bf16)"], "bitsandbytes": ["extract nf4 (bnb)"]}


@pytest.mark.slow  # a tiny random Llama through every row, two extract commands among them: minutes on a CPU
def test_device_check_runs_every_row_on_the_cpu(tmp_path):
    # No --budget-s cut: a slow machine skips nothing (the rows to check do not depend on its speed).
    command = [sys.executable, "scripts/device_check.py", "--sizes", "tiny", "--device", "cpu", "--budget-s", "1e9",
               "--out", str(tmp_path)]
    process = helpers.start(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    rows = json.loads((tmp_path / "device_check.json").read_text())
    values = {row["measurement"]: row["value"] for row in rows}
    assert all(row["model"] == "tiny" for row in rows)
    assert values["encode/decode == numpy"] == "yes", rows
    expected = ALWAYS + [what for name, whats in WITH.items() if INSTALLED[name] for what in whats]
    expected += ["peft QLoRA step (nf4)"] if all(INSTALLED.values()) else []
    assert set(expected) <= set(values), sorted(set(expected) - set(values))
    for row in rows:  # a speed, or a row that says why it did not run; never FAILED, NO or skipped
        ok = row["value"] == "yes" or row["value"].endswith(("tok/s", "steps/s")) or (
            row["value"] == "not run" and "is not installed" in row["note"])
        assert ok, row
    table = out[out.index("\nmodel  measurement"):]  # the whole table, printed again at the end
    assert all(f"tiny   {row['measurement']}" in table for row in rows)

