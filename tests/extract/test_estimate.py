"""extract's estimate before it runs, and --dry-run (no weights, nothing written)."""

import pytest
from click.testing import CliRunner

from extract.backbones import BackboneSource
from extract.cli import main
from extract.estimate import BYTES_PER_VALUE, estimate
from extract.plan import parse_layers

LLAMA_8B = {"n_layers": 32, "hidden_size": 4096, "intermediate_size": 14336}


def test_8b_on_an_h200_is_writer_bound_only_when_it_stores_every_layer_or_encodes_on_the_host():
    def on_h200(layers, encode):
        return estimate(100_000, LLAMA_8B, parse_layers(layers, 32), "int8o", "cuda:0", encode, gpu_name="NVIDIA H200",
                        cores=16)

    every4 = on_h200("every:4", "auto")
    assert 15_000 < every4.forward_tokens_per_s < 40_000  # 2 FLOPs/parameter at 40% of 989 TFLOPS
    assert every4.encode_on == "device" and not every4.writer_bound and every4.cores == 15
    assert every4.store_bytes == pytest.approx(100_000 * 9 * 4096 * BYTES_PER_VALUE["int8o"])
    every_layer = on_h200("all", "auto")
    assert every_layer.writer_bound and every_layer.seconds > every4.seconds
    assert "warning: the writer, not the forward" in every_layer.lines()[-1]
    assert "--encode auto" in on_h200("all", "host").lines()[-1]  # the advice names the cheaper path
    assert on_h200("all", "host").writer_cores > every_layer.writer_cores


def test_dry_run_prints_the_estimate_without_loading_or_writing(tmp_path, tiny_models, monkeypatch):
    monkeypatch.setattr(BackboneSource, "load", lambda self: pytest.fail("a dry run loaded the model"))
    root = tmp_path / "root"
    result = CliRunner().invoke(main, ["--model", str(tiny_models["llama"]), "--limit", "8", "--root", str(root),
                                       "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("tokens") and lines[1].startswith("store") and lines[2].startswith("time")
    assert "nothing was loaded or written" in lines[-1] and not root.exists()
