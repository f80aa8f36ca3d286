"""extract(): stores that equal a direct forward, quantised and packaged backbones, resume, cache hits."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract import run as extract_run
from extract.backbones import BackboneSource, load_backbone
from extract.cli import main
from extract.run import extract
from featurestore import FeatureStore, verify
from tests import helpers
from tests.featurestore.synth import arrays

REPO = Path(__file__).resolve().parents[2]


def direct(backbone, ids: np.ndarray) -> list[np.ndarray]:
    ids = torch.from_numpy(ids.astype(np.int64))[None]
    return [h[0].float().numpy() for h in backbone.hidden_states(ids, torch.ones_like(ids))]


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_store_equals_an_unpadded_forward_of_every_example(tmp_path, tiny_models, arch):
    """fp32 stores hold exactly what the batched forward computed; a batch with padding takes other
    kernel paths than one unpadded example, so the two agree to float rounding (a few ulp)."""
    result = extract(str(tiny_models[arch]), limit=12, root=tmp_path, codec="fp32", token_budget=700, progress=False)
    store = FeatureStore.open(result.store)
    backbone = load_backbone(str(tiny_models[arch]))
    assert store.layers == tuple(range(backbone.n_layers + 1)) and store.n_examples == 12
    for i in range(store.n_examples):
        example = store.example(i)
        expected = direct(backbone, example.input_ids)
        for k, h in example.hidden.items():
            np.testing.assert_allclose(h, expected[k], rtol=0, atol=1e-5 * np.abs(expected[k]).max())


def test_bf16_extraction_matches_within_bf16_rounding(tmp_path, tiny_models):
    result = extract(str(tiny_models["llama"]), limit=6, root=tmp_path, dtype="bfloat16", codec="bf16", progress=False)
    store = FeatureStore.open(result.store)
    backbone = load_backbone(str(tiny_models["llama"]), dtype="bfloat16")
    example = store.example(3)
    for k, h in example.hidden.items():
        expected = direct(backbone, example.input_ids)[k]
        np.testing.assert_allclose(h, expected, rtol=0, atol=2e-2 * np.abs(expected).max())


def test_nf4_extraction_runs_on_cpu(tmp_path, tiny_models):
    result = extract(str(tiny_models["llama"]), limit=4, root=tmp_path, quantization="nf4", layers="top:1",
                     progress=False)
    store = FeatureStore.open(result.store)
    assert store.attrs["model"]["quantization"] == "nf4" and store.layers == (2, 3)
    assert all(np.isfinite(h).all() for h in store.example(0).hidden.values())


@pytest.mark.slow
def test_packaged_smollm2_end_to_end(tmp_path):
    result = extract("smollm2-135m", limit=6, root=tmp_path, layers="0,15,30", progress=False)
    store = FeatureStore.open(result.store)
    assert store.attrs["model"]["architecture"] == "LlamaForCausalLM" and store.n_examples == 6
    weights, config = store.head()
    assert weights["lm_head.weight"].shape == (49152, 576) and config["norm"]["type"] == "rms"
    example = store.example(5)
    assert example.loss_mask[-1] == 1 and example.loss_mask[0] == 0  # answer tokens are the targets
    expected = direct(load_backbone("smollm2-135m"), example.input_ids)
    for k in (0, 15, 30):
        error = np.linalg.norm(example.hidden[k] - expected[k], axis=1) / np.linalg.norm(expected[k], axis=1)
        assert error.max() < 0.021  # the int8o codec's per-token bound
    assert store.meta[5]["final"].isdigit()


def test_same_extraction_is_a_cache_hit_without_loading_weights(tmp_path, tiny_models, monkeypatch):
    first = extract(str(tiny_models["llama"]), limit=4, root=tmp_path, progress=False)
    monkeypatch.setattr(BackboneSource, "load", lambda self: pytest.fail("a cache hit loaded the model"))
    again = extract(str(tiny_models["llama"]), limit=4, root=tmp_path, progress=False)
    assert again.cached and again.store == first.store and again.fingerprint == first.fingerprint
    other = extract_run.store_name(str(tiny_models["llama"]), {"dataset": "arith", "split": "train"}, first.fingerprint)
    assert first.store.name == other


OPTIONS = ["--limit", "120", "--codec", "fp32", "--chunk-mb", "0.04", "--token-budget", "600"]


def start(model: Path, root: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "extract", *OPTIONS, "--model", str(model), "--root", str(root), *extra]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it
    # ignored: restore the default so Ctrl-C reaches the child as it would from a terminal.
    return helpers.start(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_shards(root: Path, n: int, process: subprocess.Popen) -> None:
    def written():
        if len(list(root.glob("*.zarr/manifest/shard-*/zarr.json"))) >= n:
            return True
        assert process.poll() is None, "extraction finished before it could be interrupted"
        return False

    helpers.wait_until(written, 180, f"the extraction's shard {n}")


@pytest.mark.slow
def test_interrupted_extraction_resumes_to_the_uninterrupted_store(tmp_path, tiny_models):
    """Ctrl-C, then SIGKILL, then --resume: the same store as one uninterrupted run."""
    root = tmp_path / "interrupted"
    first = start(tiny_models["llama"], root)
    wait_for_shards(root, 2, first)
    first.send_signal(signal.SIGINT)
    _, err = helpers.finish(first, 60, "the extraction after Ctrl-C")
    assert first.returncode == 1 and "rerun with --resume" in err and "Traceback" not in err
    cli = lambda *extra: CliRunner().invoke(main, [*OPTIONS, "--model", str(tiny_models["llama"]), *extra])
    refused = cli("--root", str(root))
    assert refused.exit_code == 1 and "resume it (--resume)" in refused.output
    second = start(tiny_models["llama"], root, "--resume")
    wait_for_shards(root, 5, second)
    second.send_signal(signal.SIGKILL)
    helpers.finish(second, 30, "the killed extraction")
    finished = cli("--root", str(root), "--resume")
    counts = re.search(r"\(([\d,]+) computed now, ([\d,]+) kept from before\)", finished.output)
    assert finished.exit_code == 0 and counts, finished.output
    computed, kept = (int(x.replace(",", "")) for x in counts.groups())
    assert computed > 0 and kept > 0  # the summary counts only what this run computed as computed
    assert cli("--root", str(tmp_path / "clean")).exit_code == 0
    [resumed], [uninterrupted] = root.glob("*.zarr"), (tmp_path / "clean").glob("*.zarr")
    assert FeatureStore.open(resumed).geometry.n_shards > 8
    x, y = arrays(resumed), arrays(uninterrupted)
    assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert verify(resumed) == []
