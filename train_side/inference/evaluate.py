"""Evaluation: chain-of-thought generation with the reloaded backbone, task metrics, and the
backbone-free teacher-forced loss of a checkpoint on a store."""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from extract.backbones import same_backbone
from extract.provenance import Provenance, Template
from extract.tasks.answers import answer_end, is_correct
from extract.tasks.examples import Example
from extract.tasks.labels import max_label_tokens, predicted_label
from extract.tasks.prompts import encode_prompt
from featurestore import FeatureStore, get_codec
from featurestore.errors import UserError

from ..backbone import reload_backbone
from ..checkpoint import Checkpoint, load_side
from ..config import GenerateConfig
from ..data import plan, read_ahead
from ..devices import resolve_device
from ..network.loss import mean_loss
from ..network.model import FrozenHead
from .generate import Pipeline, generate

__all__ = ["EvalError", "answer", "evaluate", "is_correct", "score", "teacher_forced_loss"]


class EvalError(UserError, ValueError):
    """A store that cannot score a checkpoint (another backbone or codec); the message says why."""


def evaluate(checkpoint: str | Path, *, backbone_only: bool = False, dataset: str | None = None,
             split: str = "test", limit: int | None = None, generation: GenerateConfig | None = None,
             out: str | Path | None = None, device: str = "auto", progress: bool = True, **settings) -> dict:
    """Generates answers for a dataset split with the checkpoint's side network (or, with
    ``backbone_only``, its backbone alone: the baseline) and scores them. The backbone is
    reloaded exactly as the checkpoint's store was extracted (weights, quantization, dtype);
    another one is refused. ``dataset`` (default: the store's) is read with the store's question
    and answer fields. ``generation`` (default: GenerateConfig's defaults) may be amended by field
    name in ``settings`` (``max_new_tokens=64``). Writes predictions.jsonl and metrics.json to
    ``out`` (default: a subdirectory of the checkpoint). Returns the metrics."""
    generation = GenerateConfig.resolve(generation, **settings)
    trained = Checkpoint.load(checkpoint)
    provenance = trained.store.provenance
    backbone = reload_backbone(provenance.model, device)
    head = FrozenHead(*backbone.head()).to(backbone.device)
    side = None if backbone_only else load_side(checkpoint, backbone.device)
    pipeline = Pipeline(backbone, head, side, get_codec(trained.store.codec))

    data = replace(provenance.dataset, dataset=dataset) if dataset else provenance.dataset
    examples = data.load(split, limit)
    predictions, seconds = answer(pipeline, backbone.tokenizer, examples, provenance.template, generation,
                                  labels=data.labels, progress=progress)
    metrics = {"model": "backbone" if backbone_only else trained.side.kind, "checkpoint": str(checkpoint),
               "dataset": data.dataset, "split": split, **({"labels": data.labels} if data.labels else {}),
               **score(predictions, seconds), "decoding": generation.decoding,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    out = Path(out) if out else Path(checkpoint) / ("eval-backbone" if backbone_only else "eval")
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def answer(pipeline, tokenizer, examples: list[Example], template: Template, generation: GenerateConfig | None = None,
           *, labels: list[str] | None = None, progress: bool = True, **settings) -> tuple[list[dict], float]:
    """Generates an answer to every example with ``pipeline`` (anything with ``start``, ``step``
    and ``device``, see :class:`.generate.Pipeline`), prompted with the store's ``template``,
    until EOS or a finished ``#### n`` line, ``generation.batch_size`` examples at a time
    (``generation`` amended by ``settings`` as in :func:`evaluate`). With ``labels`` (a
    classification task, as the store's dataset records it) an answer ends with its first line,
    within the tokens the longest label needs, and is scored on the label it gives. Returns one
    scored prediction per example, in order, and the seconds spent generating."""
    generation = GenerateConfig.resolve(generation, **settings)
    finished = answer_end(labels)
    if labels:
        generation = replace(generation, max_new_tokens=min(generation.max_new_tokens,
                                                            max_label_tokens(tokenizer, labels)))
    prompts = [encode_prompt(tokenizer, e.question, template.name) for e in examples]
    eos = template.eos_token_ids(tokenizer)
    stop = lambda tokens: tokens[-1] in eos or bool(finished.search(tokenizer.decode(tokens)))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # batch similar lengths together
    generated: dict[int, list[int]] = {}
    start = time.perf_counter()
    with tqdm(total=len(prompts), unit="example", desc="generate", disable=not progress, file=sys.stderr) as bar:
        for b in range(0, len(order), generation.batch_size):
            batch = order[b : b + generation.batch_size]
            outputs = generate(pipeline, [prompts[i] for i in batch], pad_id=tokenizer.pad_token_id, stop=stop,
                               config=generation, seed=generation.seed + b, eos_ids=eos)
            generated.update(zip(batch, outputs))
            bar.update(len(batch))
    seconds = time.perf_counter() - start
    predictions = []
    for i, example in enumerate(examples):
        text = tokenizer.decode(generated[i], skip_special_tokens=True)
        reference = example.meta["final"]
        predictions.append({"id": example.meta["id"], "question": example.question, "reference": reference,
                            "generation": text, **({"label": predicted_label(text, labels)} if labels else {}),
                            "correct": is_correct(text, reference, labels), "tokens": len(generated[i])})
    return predictions, seconds


def score(predictions: list[dict], seconds: float) -> dict:
    """Accuracy, mean generated (chain-of-thought) tokens and generation speed of predictions; for
    a classification task also the majority baseline: the accuracy of always giving the commonest
    reference label."""
    n, n_generated = len(predictions), sum(p["tokens"] for p in predictions)
    majority = {"majority_accuracy": max(Counter(p["reference"] for p in predictions).values()) / n} \
        if "label" in predictions[0] else {}
    return {"examples": n, "accuracy": sum(p["correct"] for p in predictions) / n, **majority,
            "mean_cot_tokens": n_generated / n, "tokens_per_second": n_generated / seconds,
            "seconds": round(seconds, 2)}


def teacher_forced_loss(checkpoint: str | Path, store: str | Path, token_budget: int = 4096,
                        device: str = "auto") -> float:
    """Mean loss per target token of a checkpoint on every example of a store; no backbone."""
    trained = Checkpoint.load(checkpoint).store
    store = FeatureStore.open(store)
    if store.codec.spec != trained.codec:
        raise EvalError("the store's codec differs from the checkpoint's training store; use a store extracted "
                        "the same way")
    differences = same_backbone(Provenance.load(store.attrs).model.to_json(), trained.provenance.model.to_json())
    if differences:
        raise EvalError(f"the store was extracted from another backbone ({', '.join(differences)})")
    torch_device = resolve_device(device)
    side = load_side(checkpoint, torch_device)
    head = FrozenHead(*store.head()).to(torch_device)
    batches = plan(store, np.arange(store.n_examples), token_budget)
    return mean_loss(side, head, (b.to(torch_device) for b in read_ahead(store, batches, side.config.inputs)))
