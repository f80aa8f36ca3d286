"""Evaluation with the reloaded backbone: train/serve parity, cached generation, metrics."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.backbones import load_backbone
from extract.run import extract
from featurestore import FeatureStore
from train_side import checkpoint
from train_side.backbone import BackboneError
from train_side.cli import main
from extract.tasks.labels import max_label_tokens
from train_side.inference.evaluate import EvalError, answer, evaluate, is_correct, score, teacher_forced_loss
from tests.train_side.generation import assert_cached_generation_equals_recomputation
from train_side.config import DataConfig
from train_side.inference.generate import Pipeline, left_pad
from train_side.network.model import FrozenHead, SideConfig, SideNetwork
from train_side.training.train import train


@pytest.fixture(scope="module")
def stores(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {codec: extract(str(tiny_llama), limit=8, root=root / codec, codec=codec, progress=False).store
            for codec in ("fp32", "int8o")}


def side_network(store: FeatureStore, kind: str) -> SideNetwork:
    """A side network whose every weight matters (up is no longer zero, as after training)."""
    model = store.attrs["model"]
    torch.manual_seed(0)
    side = SideNetwork(SideConfig(model["n_layers"], store.hidden_size, model["intermediate_size"], kind=kind,
                                  delta=1, side_width=16, n_heads=2))
    with torch.no_grad():
        side.up.weight.normal_(0, 0.2)
        side.alpha.normal_(0, 0.1)
    return side.eval()


@pytest.mark.parametrize("codec", ["fp32", "int8o"])
@pytest.mark.parametrize("kind", ["ladder", "xladder"])
def test_live_logits_equal_the_logits_from_the_store(stores, tiny_llama, codec, kind):
    """Train/serve parity: the live path (backbone, codec round-trip, side network) gives the
    logits that training computed from the store."""
    store = FeatureStore.open(stores[codec])
    backbone = load_backbone(str(tiny_llama))
    head = FrozenHead(*store.head())
    side = side_network(store, kind)
    pipeline = Pipeline(backbone, head, side, store.codec)
    for i in (0, store.n_examples - 1):
        example = store.example(i, layers=side.config.inputs)
        with torch.no_grad():
            stored = head(side({k: torch.from_numpy(h)[None] for k, h in example.hidden.items()}))
        ids = torch.from_numpy(example.input_ids.astype(np.int64))[None]
        live = pipeline.step(ids, torch.ones_like(ids), pipeline.start())
        tolerance = 1e-4 if codec == "fp32" else 2e-2  # int8o: a few ulps of drift can move a code by one step
        assert (live - stored).abs().max() <= tolerance * stored.abs().max()


@pytest.mark.parametrize("kind", ["ladder", "xladder", None])
def test_cached_generation_equals_recomputing_everything(stores, tiny_llama, kind):
    store = FeatureStore.open(stores["int8o"])
    backbone = load_backbone(str(tiny_llama))
    side = side_network(store, kind) if kind else None
    pipeline = Pipeline(backbone, FrozenHead(*store.head()), side, store.codec)
    prompts = [store.example(0).input_ids[:20].tolist(), store.example(1).input_ids[:13].tolist()]  # left padding
    assert_cached_generation_equals_recomputation(pipeline, prompts, max_new_tokens=8)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_is_correct():
    assert is_correct("12 + 5 = 17.\n#### 1,234", "1234")
    assert is_correct("so the answer is 17", "17") and not is_correct("#### 18", "17")
    assert is_correct("#### 3.50", "3.5") and not is_correct("no numbers", "3")
    assert is_correct("Positive\nbecause...", "positive") and not is_correct("negative", "positive")


@pytest.fixture(scope="module")
def trained(stores, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ladder"
    train(stores["int8o"], out, side={"side_width": 16, "n_heads": 2}, data=DataConfig(epochs=1, val_fraction=0.2),
          progress=False)
    return out


def test_evaluate_writes_predictions_and_metrics(trained, tmp_path):
    metrics = evaluate(trained, split="test", limit=3, max_new_tokens=6, batch_size=2, out=tmp_path, progress=False)
    assert metrics["examples"] == 3 and 0 <= metrics["accuracy"] <= 1 and metrics["model"] == "ladder"
    assert 1 <= metrics["mean_cot_tokens"] <= 6 and metrics["tokens_per_second"] > 0
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [set(p) for p in predictions][0] == {"id", "question", "reference", "generation", "correct", "tokens"}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    baseline = evaluate(trained, backbone_only=True, limit=2, max_new_tokens=4, progress=False)
    assert baseline["model"] == "backbone" and (trained / "eval-backbone" / "metrics.json").is_file()


def test_another_backbone_is_refused(trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    config = checkpoint.load_config(copy)
    config["store"]["model"]["weights_hash"] = "0" * 64
    (copy / "side_config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match="differs from the one the store was extracted from"):
        evaluate(copy, limit=1, progress=False)
    result = CliRunner().invoke(main, ["eval", str(copy), "--limit", "1"])
    assert result.exit_code == 1 and "Error: the backbone found at" in result.output


def test_teacher_forced_loss_needs_no_backbone(trained, stores, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", lambda *a, **k: pytest.fail("backbone built"))
    loss = teacher_forced_loss(trained, stores["int8o"])
    assert 0 < loss < 20
    result = CliRunner().invoke(main, ["loss", str(trained), str(stores["int8o"])])
    assert result.exit_code == 0 and f"{loss:.4f}" in result.output
    with pytest.raises(EvalError, match="codec differs"):
        teacher_forced_loss(trained, stores["fp32"])


class Scripted:
    """A pipeline that writes ``script`` (token ids) whatever the prompt: one token per step."""

    device = torch.device("cpu")

    def __init__(self, script: list[int], vocab: int):
        self.script, self.vocab = script, vocab

    def start(self) -> dict:
        return {"step": 0}

    def step(self, input_ids, attention_mask, caches):
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.vocab)
        logits[:, -1, self.script[min(caches["step"], len(self.script) - 1)]] = 1.0
        caches["step"] += 1
        return logits


@pytest.mark.parametrize("written, generation, label", [
    (" yes\nbecause it says so", " yes\n", "yes"),  # stops once the first line is written
    (" no.\n", " no.\n", "no"),
    (" yesterday it was", " yesterd", None),  # stops within the longest label's tokens (and slack): 8
])
def test_a_classification_answer_ends_with_its_label_line(written, generation, label):
    from extract.provenance import Template
    from extract.tasks.examples import make_example
    from tokenizers import decoders

    from tests.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # one token per byte
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    tokenizer.pad_token = tokenizer.eos_token
    pipeline = Scripted(tokenizer.encode(written), len(tokenizer))
    examples = [make_example("Is the sky blue?", "yes", 0), make_example("Is grass red?", "no", 1)]
    labels = ["no", "yes"]
    predictions, _ = answer(pipeline, tokenizer, examples, Template(), labels=labels, progress=False)
    assert max_label_tokens(tokenizer, labels) == len(" yes") + 4
    assert [p["generation"] for p in predictions] == [generation] * 2 and predictions[0]["label"] == label
    assert [p["correct"] for p in predictions] == [label == "yes", label == "no"]
    assert score(predictions, 1.0)["majority_accuracy"] == 0.5


def test_a_classification_file_is_extracted_trained_and_scored_on_its_labels(tiny_llama, tmp_path):
    rows = [{"question": f"Is {i} even? Choose one: yes, no", "answer": "no" if i % 2 else "yes"} for i in range(14)]
    data = tmp_path / "even.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    store = extract(str(tiny_llama), dataset=str(data), split="train[:10]", root=tmp_path / "stores", progress=False)
    assert store.n_examples == 10
    assert FeatureStore.open(store.store).attrs["dataset"]["labels"] == ["no", "yes"]
    run = tmp_path / "ladder"
    train(store.store, run, side={"side_width": 16, "n_heads": 2}, data=DataConfig(epochs=1, val_fraction=0.2),
          progress=False)
    metrics = evaluate(run, split="train[10:]", batch_size=2, out=tmp_path / "eval", progress=False)
    assert metrics["labels"] == ["no", "yes"] and metrics["examples"] == 4 and metrics["majority_accuracy"] == 0.5
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    tokenizer = load_backbone(str(tiny_llama)).tokenizer
    assert all(1 <= p["tokens"] <= max_label_tokens(tokenizer, ["no", "yes"]) for p in predictions)
    assert all(p["label"] in ("no", "yes", None) and p["correct"] == (p["label"] == p["reference"]) for p in predictions)
    assert metrics["accuracy"] == sum(p["correct"] for p in predictions) / 4
