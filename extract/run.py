"""One frozen-backbone pass over a dataset into a feature store, as a plain function."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from featurestore import StoreError, StoreSpec, StoreWriter, catalog, finalize
from featurestore.layout import plan_batches

from .backbones import Backbone, resolve_backbone
from .backbones.blocks import stored_count
from .config import ExtractConfig
from .distributed import Ranks
from .errors import DistributedError, PlanError, RootError
from .estimate import Estimate, estimate
from .loop import checked_head, extract_batches
from .plan import Layout, parse_layers, tokenize
from .provenance import Provenance
from .tasks.datasets import load_examples
from .tasks.prompts import template_info


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
    estimate: Estimate | None = None  # what extract.estimate projected before it ran
    dry_run: bool = False  # only estimated: no weights were loaded and no store written
    converted: Path | None = None  # a packaged model's GGUF converted into the cache on the way (dry run or not)

    @property
    def tokens_per_second(self) -> float:
        return self.computed_tokens / self.seconds if self.seconds else 0.0


def usable_root(root: Path, create: bool) -> Path:
    """``root`` checked (a directory this process can write, or none yet) and, unless ``create`` is
    false (a dry run), created: a one-line error before anything loads, never a traceback after."""
    if root.exists() and not root.is_dir():
        raise RootError(f"--root {root} is a file, not a directory: give a directory for the stores")
    if create:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RootError(f"cannot create --root {root}: {e.strerror or e}; choose a directory you can write") \
                from None
        if not os.access(root, os.W_OK | os.X_OK):
            raise RootError(f"--root {root} is not writable: choose a directory you can write")
    return root


def extract(config: ExtractConfig | str | None = None, *, progress: bool = True, **settings) -> Extraction:
    """Runs a backbone once over a dataset and writes its hidden states to a store under the
    config's ``root``. ``config`` is an :class:`ExtractConfig`, or a model name; ``settings`` are
    ExtractConfig fields that override it (``extract("smollm2-135m", limit=100, codec="fp16")``).

    Everything that determines the store's content is resolved before any weights load, so
    extracting what ``root`` already holds (same fingerprint) returns at once. An interrupted
    extraction continues with ``resume=True`` after its last finished shard. A second run of the
    same fingerprint into the same root waits for the first, then finds its store (a cache hit).
    Launched by torchrun, every rank writes its own block of shards (see ``extract.distributed``).
    """
    if isinstance(config, ExtractConfig):
        config = replace(config, **settings)
    else:
        config = ExtractConfig(**({"model": config} if config else {}), **settings)
    ranks = Ranks.from_env()
    root = usable_root(Path(config.root), create=not config.dry_run)
    examples, dataset_info = load_examples(config.dataset, config.split, question_field=config.question_field,
                                           answer_field=config.answer_field, config=config.dataset_config,
                                           seed=config.seed, limit=config.limit)
    source = resolve_backbone(config.model, quantization=config.quantization, dtype=config.dtype,
                              device=ranks.device(config.device))
    context = source.info.get("max_position_embeddings")
    if context and config.max_length > context:  # positions beyond it would be states the backbone never learned
        raise PlanError(f"--max-length {config.max_length} is beyond the backbone's context of {context} tokens; "
                        f"give at most {context}")
    layout = tokenize(examples, source.tokenizer, config.template, config.max_length, config.skip_long)
    spec = store_spec(source, dataset_info, config)
    fingerprint = spec.fingerprint(layout.tokens)
    new_store = root / (config.name or store_name(config.model, dataset_info, fingerprint))
    projected = estimate(layout.tokens.n_tokens // ranks.world_size, source.info, spec.layers, spec.codec.name,
                         str(source.device), config.encode, stored_as=source.stored_as,
                         top_blocks=spec.source.get("top_blocks") or 0)
    result = dict(fingerprint=fingerprint, n_examples=layout.tokens.n_examples, n_tokens=layout.tokens.n_tokens,
                  n_truncated=layout.n_truncated, n_skipped=layout.n_skipped, estimate=projected,
                  converted=source.converted)
    if config.dry_run:
        found = catalog.find(root, fingerprint) if root.is_dir() else None
        complete = bool(found and found[1].get("complete"))
        return Extraction(store=found[0] if found else new_store, **result, cached=complete, computed_tokens=0,
                          seconds=0.0, dry_run=True)
    with ranks.joined(source.device), ExitStack() as held:
        # rank 0 picks the store for every rank, holding the fingerprint's lock till the end
        path, complete = ranks.from_leader(lambda: held.enter_context(claim(root, fingerprint, new_store)))
        if complete:
            return Extraction(store=path, **result, cached=True, computed_tokens=0, seconds=0.0)
        if progress and ranks.leader and projected.writer_bound:
            print(projected.lines()[-1], file=sys.stderr, flush=True)
        job = Job(source.load(), spec, layout, path, ranks, config, progress, projected)
        computed, seconds = job.run()
    return Extraction(store=path, **result, cached=False, computed_tokens=computed, seconds=seconds)


def store_spec(source, dataset_info: dict, config: ExtractConfig) -> StoreSpec:
    """What the store holds, and so its fingerprint: the backbone, tokenizer, dataset, template..."""
    provenance = Provenance(
        model=source.info,
        tokenizer={"class": type(source.tokenizer).__name__, "pad_token_id": source.tokenizer.pad_token_id},
        dataset=dataset_info,
        template=template_info(config.template, source.tokenizer),
        max_length=config.max_length,
        long_examples="skip" if config.skip_long else "truncate",
        token_budget=config.token_budget,
        top_blocks=stored_count(source.config, config.top_blocks) or None,
    )
    return StoreSpec(parse_layers(config.layers, source.info["n_layers"]), source.info["hidden_size"], config.codec,
                     source=provenance.source())


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


@dataclass
class Job:
    """One extraction's computing part, on one rank: every rank writes its shards of the store;
    rank 0 completes it once all of them succeeded."""

    backbone: Backbone
    spec: StoreSpec
    layout: Layout
    path: Path
    ranks: Ranks
    config: ExtractConfig
    progress: bool
    estimate: Estimate | None = None

    def run(self) -> tuple[int, float]:
        """The tokens computed by all ranks, and the seconds it took."""
        start = time.perf_counter()
        writer = self.ranks.leader_first(self.open_writer)
        batches = plan_batches(np.diff(self.layout.tokens.offsets), self.config.token_budget)
        try:
            computed = sum(self.ranks.gather(lambda: self.write_shards(batches, writer)))
        except DistributedError as e:
            raise DistributedError(f"{e}; the store stays incomplete: rerun with --resume to continue") from None
        seconds = time.perf_counter() - start
        stats = {"n_truncated": self.layout.n_truncated, "n_skipped": self.layout.n_skipped,
                 "extract_seconds": round(seconds, 3), "extract_tokens": computed,
                 "extract_ranks": self.ranks.world_size}
        self.ranks.from_leader(lambda: finalize(self.path, stats))
        return computed, seconds

    def open_writer(self) -> StoreWriter:
        """Rank 0 creates (or resumes) the store, with the frozen head once it passed the head check
        on the first examples, and the top blocks the provenance promises; the other ranks attach to it."""
        leader = self.ranks.leader
        head, head_config = checked_head(self.backbone, self.layout.tokens, self.spec.codec) if leader else (None, None)
        count = self.spec.source.get("top_blocks")
        blocks = self.backbone.top_blocks(count) if leader and count else None
        return StoreWriter(self.path, self.spec, self.layout.tokens, meta=self.layout.meta, head=head,
                           head_config=head_config, blocks=blocks, resume=self.config.resume, attach=not leader,
                           shards=self.ranks.shards, chunk_mb=self.config.chunk_mb,
                           extra_attrs=Provenance.version_attrs() if leader else None)

    def write_shards(self, batches: list[tuple[int, int]], writer: StoreWriter) -> int:
        """This rank's shards: every batch its writer still needs. Returns the tokens computed. The
        progress bar is rank 0's (its share of the work stands for everyone's)."""
        tokens, ranks = self.layout.tokens, self.ranks
        offsets = tokens.offsets
        todo = sum(int(offsets[b] - offsets[a]) for a, b in batches if writer.needs(int(offsets[a]), int(offsets[b])))
        desc = f"extract (rank 0 of {ranks.world_size})" if ranks.distributed else "extract"
        if self.estimate is not None:
            desc += f" (estimated {self.estimate.summary()})"
        show = self.progress and ranks.leader
        with tqdm(total=todo, unit="tok", unit_scale=True, desc=desc, disable=not show, file=sys.stderr) as bar:
            computed = extract_batches(self.backbone, tokens, self.spec.layers, batches, writer, bar.update,
                                       self.config.encode)
        if not writer.done:
            raise StoreError("the extraction loop ended before every shard of this rank was written")
        return computed


def store_name(model: str, dataset_info: dict, fingerprint: str) -> str:
    """A readable, unique store name: <model>-<dataset>-<split>-<fingerprint prefix>.zarr."""
    parts = [Path(model).name, Path(str(dataset_info["dataset"])).stem, dataset_info["split"], fingerprint[:12]]
    return "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts) + ".zarr"
