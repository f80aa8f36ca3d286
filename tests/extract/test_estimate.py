"""extract's estimate before it runs, and --dry-run (no weights, nothing written)."""

import pytest
from click.testing import CliRunner

from extract.backbones import BackboneSource
from extract.cli import main
from extract.estimate import BYTES_PER_VALUE, estimate
from extract.plan import parse_layers

LLAMA_8B = {"n_layers": 32, "hidden_size": 4096, "intermediate_size": 14336}
LLAMA_1B = {"n_layers": 16, "hidden_size": 2048, "intermediate_size": 8192}


def test_on_an_h200_the_writer_keeps_up_with_8b_but_not_with_every_layer_of_1b():
    def on_h200(model, layers, encode):
        return estimate(100_000, model, parse_layers(layers, model["n_layers"]), "int8o", "cuda:0", encode,
                        gpu_name="NVIDIA H200", cores=16)

    every4 = on_h200(LLAMA_8B, "every:4", "auto")
    assert 15_000 < every4.forward_tokens_per_s < 40_000  # 2 FLOPs/parameter at 40% of 989 TFLOPS
    assert every4.encode_on == "device" and not every4.writer_bound and every4.cores == 15
    assert every4.store_bytes == pytest.approx(100_000 * 9 * 4096 * BYTES_PER_VALUE["int8o"])
    small_every_layer = on_h200(LLAMA_1B, "all", "auto")  # ~7x the 8B's tokens/s
    assert small_every_layer.writer_bound and "warning: the writer, not the forward" in small_every_layer.lines()[-1]
    assert "--encode auto" in on_h200(LLAMA_1B, "all", "host").lines()[-1]  # the advice names the cheaper path
    assert on_h200(LLAMA_8B, "all", "host").writer_cores > on_h200(LLAMA_8B, "all", "auto").writer_cores


def test_dry_run_prints_the_estimate_without_loading_or_writing(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setattr(BackboneSource, "load", lambda self: pytest.fail("a dry run loaded the model"))
    root = tmp_path / "root"
    result = CliRunner().invoke(main, ["--model", str(tiny_models["llama"]), "--limit", "8", "--root", str(root),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("tokens") and lines[1].startswith("store") and lines[2].startswith("time")
    assert "nothing was loaded or written" in lines[-1] and not root.exists()
