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
    assert every4.footprint.hidden == pytest.approx(100_000 * 9 * 4096 * BYTES_PER_VALUE["int8o"])
    assert every4.footprint.head == 0  # LLAMA_8B gives no vocab_size: no head counted
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
    assert [line.split()[0] for line in lines[:4]] == ["tokens", "store", "bytes/token", "time"]
    assert "hidden states" in lines[1] and "frozen head" in lines[1] and "of the whole store" in lines[2]
    assert "no weights were loaded and no store written" in lines[-1] and not root.exists()


def written_and_estimated(root, model: str, **settings):
    """(what the store written takes, what extract estimated), as Footprints."""
    from extract.run import extract
    from featurestore import FeatureStore
    from featurestore.inventory import Footprint

    result = extract(model, root=root, progress=False, **settings)
    store = FeatureStore.open(result.store)
    return Footprint.measure(store.group.store, store.attrs), result.estimate.footprint


@pytest.mark.parametrize("codec", ["int8o", "fp16"])
def test_the_estimate_counts_the_head_and_is_near_what_is_written(tmp_path, tiny_llama, codec):
    """The head is estimated within 10%, the top blocks within 15% (grouped key/value heads are
    counted as full ones). The hidden states' bytes per value were measured on SmolLM2's states,
    which a tiny random model's do not resemble: the whole store within 1.5x."""
    written, estimated = written_and_estimated(tmp_path, str(tiny_llama), limit=16, codec=codec)
    assert estimated.head == pytest.approx(written.head, rel=0.10)
    assert written.blocks and estimated.blocks == pytest.approx(written.blocks, rel=0.15)
    assert estimated.total == estimated.hidden + estimated.head + estimated.rest + estimated.blocks
    assert written.total / 1.5 < estimated.total < written.total * 1.5


@pytest.mark.slow
def test_the_estimate_of_a_smollm2_store_is_within_10_percent(tmp_path):
    written, estimated = written_and_estimated(tmp_path, "smollm2-135m", limit=40)
    assert estimated.head == pytest.approx(written.head, rel=0.05)
    assert estimated.total == pytest.approx(written.total, rel=0.10)


def test_extract_and_info_count_bytes_per_token_alike(tmp_path, tiny_llama):
    from featurestore.cli import main as featurestore

    extracted = CliRunner().invoke(main, ["--model", str(tiny_llama), "--limit", "8", "--root", str(tmp_path)])
    assert extracted.exit_code == 0, extracted.output
    store = next(tmp_path.glob("*.zarr"))
    info = CliRunner().invoke(featurestore, ["info", str(store)])
    assert info.exit_code == 0, info.output

    def line(output: str, key: str) -> str:
        return next(row.removeprefix(key).strip() for row in output.splitlines() if row.startswith(key))

    assert line(extracted.output, "bytes/token") == line(info.output, "bytes/token")
    counted = line(info.output, "bytes/token")
    assert "of hidden states" in counted and "of the whole store" in counted
    assert line(extracted.output, "size").startswith(line(info.output, "size on disk"))
