"""One frozen-backbone pass over a dataset into a feature store, as a plain function."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featurestore import StoreError, StoreSpec, StoreWriter, catalog, finalize
from featurestore.layout import plan_batches

from .backbone import resolve_backbone
from .data import load_examples
from .distributed import DistributedError, Ranks
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
    extraction continues with ``resume=True`` after its last finished shard. A second run of the
    same fingerprint into the same root waits for the first, then finds its store (a cache hit).
    Launched by torchrun, every rank writes its own block of shards (see ``extract.distributed``).
    """
    ranks = Ranks.from_env()
    examples, dataset_info = load_examples(dataset, split, question_field=question_field,
                                           answer_field=answer_field, config=dataset_config, seed=seed, limit=limit)
    source = resolve_backbone(model, quantization=quantization, dtype=dtype, device=ranks.device(device))
    layout = tokenize(examples, source.tokenizer, template, max_length, skip_long)
    spec = store_spec(source, dataset_info, layers=layers, codec=codec, template=template, max_length=max_length,
                      skip_long=skip_long)
    fingerprint = spec.fingerprint(layout.tokens)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    new_store = root / (name or store_name(model, dataset_info, fingerprint))
    result = dict(fingerprint=fingerprint, n_examples=layout.tokens.n_examples, n_tokens=layout.tokens.n_tokens,
                  n_truncated=layout.n_truncated, n_skipped=layout.n_skipped)
    with ranks.joined(source.device), ExitStack() as held:
        # rank 0 picks the store for every rank, holding the fingerprint's lock till the end
        path, complete = ranks.from_leader(lambda: held.enter_context(claim(root, fingerprint, new_store)))
        if complete:
            return Extraction(store=path, **result, cached=True, computed_tokens=0, seconds=0.0)
        computed, seconds = _compute(source.load(), spec, layout, path, ranks, resume=resume,
                                     token_budget=token_budget, chunk_mb=chunk_mb, progress=progress)
    return Extraction(store=path, **result, cached=False, computed_tokens=computed, seconds=seconds)


def store_spec(source, dataset_info: dict, *, layers: str, codec: str, template: str, max_length: int,
               skip_long: bool) -> StoreSpec:
    """What the store holds, and so its fingerprint: the backbone, tokenizer, dataset, template..."""
    return StoreSpec(
        parse_layers(layers, source.info["n_layers"]),
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


@contextmanager
def claim(root: Path, fingerprint: str, new_store: Path) -> Iterator[tuple[Path, bool]]:
    """(store, complete): the root's store with this fingerprint, else ``new_store``. Unless it is
    complete (a cache hit, taken without the lock, so a read-only root of shared stores works),
    the root's lock on the fingerprint is held for the block; a run that had to wait for it finds
    the other run's store complete."""
    found = catalog.find(root, fingerprint)
    if found and found[1].get("complete"):
        yield found[0], True
        return
    with catalog.lock(root, fingerprint, on_wait=_waiting):
        found = catalog.find(root, fingerprint)
        yield (found[0], bool(found[1].get("complete"))) if found else (new_store, False)


def _waiting(lock: Path) -> None:
    print(f"another run is extracting this fingerprint (lock {lock}); waiting for it to finish", file=sys.stderr,
          flush=True)


def _compute(backbone, spec: StoreSpec, layout, path: Path, ranks: Ranks, *, resume: bool, token_budget: int,
             chunk_mb: float, progress: bool) -> tuple[int, float]:
    """Every rank writes its shards of the store; rank 0 completes it once all of them succeeded.
    Returns the tokens computed by all ranks and the seconds it took."""
    start = time.perf_counter()
    writer = ranks.leader_first(lambda: _open_writer(backbone, spec, layout, path, ranks, resume, chunk_mb))
    batches = plan_batches(np.diff(layout.tokens.offsets), token_budget)
    try:
        computed = sum(ranks.gather(lambda: _write_shards(backbone, layout.tokens, spec.layers, batches, writer,
                                                          ranks, progress)))
    except DistributedError as e:
        raise DistributedError(f"{e}; the store stays incomplete: rerun with --resume to continue") from None
    seconds = time.perf_counter() - start
    stats = {"n_truncated": layout.n_truncated, "n_skipped": layout.n_skipped, "extract_seconds": round(seconds, 3),
             "extract_tokens": computed, "extract_ranks": ranks.world_size}
    ranks.from_leader(lambda: finalize(path, stats))
    return computed, seconds


def _open_writer(backbone, spec: StoreSpec, layout, path: Path, ranks: Ranks, resume: bool, chunk_mb: float):
    """Rank 0 creates (or resumes) the store, with the frozen head; the other ranks attach to it."""
    head, head_config = backbone.head() if ranks.leader else (None, None)
    return StoreWriter(path, spec, layout.tokens, meta=layout.meta, head=head, head_config=head_config,
                       resume=resume, attach=not ranks.leader, shards=ranks.shards, chunk_mb=chunk_mb)


def _write_shards(backbone, tokens, layers, batches, writer: StoreWriter, ranks: Ranks, progress: bool) -> int:
    """This rank's shards: every batch its writer still needs. Returns the tokens computed. The
    progress bar is rank 0's (its share of the work stands for everyone's)."""
    offsets = tokens.offsets
    todo = sum(int(offsets[b] - offsets[a]) for a, b in batches if writer.needs(int(offsets[a]), int(offsets[b])))
    desc = f"extract (rank 0 of {ranks.world_size})" if ranks.distributed else "extract"
    show = progress and ranks.leader
    with tqdm(total=todo, unit="tok", unit_scale=True, desc=desc, disable=not show, file=sys.stderr) as bar:
        computed = extract_batches(backbone, tokens, layers, batches, writer, bar.update)
    if not writer.done:
        raise StoreError("the extraction loop ended before every shard of this rank was written")
    return computed


def store_name(model: str, dataset_info: dict, fingerprint: str) -> str:
    """A readable, unique store name: <model>-<dataset>-<split>-<fingerprint prefix>.zarr."""
    parts = [Path(model).name, Path(str(dataset_info["dataset"])).stem, dataset_info["split"], fingerprint[:12]]
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts) + ".zarr"
