"""One frozen-backbone pass over a dataset into a feature store, as a plain function."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featurestore import StoreSpec, StoreWriter, catalog
from featurestore.layout import plan_batches

from .backbone import resolve_backbone
from .data import load_examples
from .loop import extract_batches
from .plan import parse_layers, tokenize
from .prompts import template_info


@dataclass(frozen=True)
class Extraction:
    store: Path
    fingerprint: str
    cached: bool  # a complete store with this fingerprint was already in the root: nothing computed
    n_examples: int
    n_tokens: int
    n_truncated: int
    n_skipped: int
    computed_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.computed_tokens / self.seconds if self.seconds else 0.0


def extract(
    model: str = "smollm2-135m",
    dataset: str = "arith",
    split: str = "train",
    root: str | Path = "stores",
    *,
    quantization: str = "none",
    dtype: str = "auto",
    device: str = "auto",
    question_field: str = "question",
    answer_field: str = "answer",
    dataset_config: str | None = None,
    template: str = "plain",
    max_length: int = 512,
    skip_long: bool = False,
    layers: str = "all",
    codec: str = "int8o",
    token_budget: int = 4096,
    chunk_mb: float = 4.0,
    limit: int | None = None,
    seed: int = 0,
    resume: bool = False,
    name: str | None = None,
    progress: bool = True,
) -> Extraction:
    """Runs ``model`` once over ``dataset`` and writes its hidden states to a store under ``root``.

    Everything that determines the store's content is resolved before any weights load, so
    extracting what ``root`` already holds (same fingerprint) returns at once. An interrupted
    extraction continues with ``resume=True`` after its last finished shard.
    """
    examples, dataset_info = load_examples(dataset, split, question_field=question_field,
                                           answer_field=answer_field, config=dataset_config, seed=seed, limit=limit)
    source = resolve_backbone(model, quantization=quantization, dtype=dtype, device=device)
    layout = tokenize(examples, source.tokenizer, template, max_length, skip_long)
    n_layers = source.info["n_layers"]
    spec = StoreSpec(
        parse_layers(layers, n_layers),
        source.info["hidden_size"],
        codec,
        source={
            "model": source.info,
            "tokenizer": {"class": type(source.tokenizer).__name__, "pad_token_id": source.tokenizer.pad_token_id},
            "dataset": dataset_info,
            "template": template_info(template, source.tokenizer),
            "max_length": max_length,
            "long_examples": "skip" if skip_long else "truncate",
        },
    )
    fingerprint = spec.fingerprint(layout.tokens)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    found = catalog.find(root, fingerprint)
    path = found[0] if found else root / (name or store_name(model, dataset_info, fingerprint))
    result = dict(store=path, fingerprint=fingerprint, n_examples=layout.tokens.n_examples,
                  n_tokens=layout.tokens.n_tokens, n_truncated=layout.n_truncated, n_skipped=layout.n_skipped)
    if found and found[1].get("complete"):
        return Extraction(**result, cached=True, computed_tokens=0, seconds=0.0)

    backbone = source.load()
    head, head_config = backbone.head()
    start = time.perf_counter()
    writer = StoreWriter(path, spec, layout.tokens, meta=layout.meta, head=head, head_config=head_config, resume=resume,
                         chunk_mb=chunk_mb)
    batches = plan_batches(np.diff(layout.tokens.offsets), token_budget)
    todo = sum(int(layout.tokens.offsets[b] - layout.tokens.offsets[a]) for a, b in batches
               if writer.needs(int(layout.tokens.offsets[a]), int(layout.tokens.offsets[b])))
    with tqdm(total=todo, unit="tok", unit_scale=True, desc="extract", disable=not progress, file=sys.stderr) as bar:
        computed = extract_batches(backbone, layout.tokens, spec.layers, batches, writer, bar.update)
    seconds = time.perf_counter() - start
    writer.close(extra_stats={"n_truncated": layout.n_truncated, "n_skipped": layout.n_skipped,
                              "extract_seconds": round(seconds, 3), "extract_tokens": computed})
    return Extraction(**result, cached=False, computed_tokens=computed, seconds=seconds)


def store_name(model: str, dataset_info: dict, fingerprint: str) -> str:
    """A readable, unique store name: <model>-<dataset>-<split>-<fingerprint prefix>.zarr."""
    parts = [Path(model).name, Path(str(dataset_info["dataset"])).stem, dataset_info["split"], fingerprint[:12]]
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts) + ".zarr"
