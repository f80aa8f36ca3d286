"""Ladder / xLadder from the store against what users pick instead: QLoRA, LoRA and live LST.

    python scripts/compare.py                      # SmolLM2-135M on arith: 1,000 training / 200 test problems
    python scripts/compare.py --quick              # every method on a small budget (minutes)
    python scripts/compare.py --dataset my.jsonl --train-split 'train[:90%]' --test-split 'train[90%:]'
    python scripts/compare.py --dataset docs/data/qnli.jsonl --train-split 'train[:1000]' --test-split 'train[1000:]'
    python scripts/compare.py --model ./my-llama --device cuda
    pip install -e .[baselines]                    # peft, for the qlora and lora rows

Every method trains on the same examples, in the same batches and order, for the same number of
optimizer steps (AdamW, linear warmup then cosine, clipping at 1.0), with the loss on answer
tokens only; each gets the best learning rate of its grid by validation loss, then all are
evaluated with the same greedy chain-of-thought generation on the same test problems (on a
classification dataset, such as docs/data/qnli.jsonl, the label generated is scored):

    qlora     peft LoRA (r=16, alpha=32, every linear projection) on the bitsandbytes nf4 backbone,
              prepare_model_for_kbit_training, gradient checkpointing
    lora      the same on the unquantised backbone (gradient checkpointing too)
    live-lst  the Ladder with the backbone running every step, as the LST paper trains it
    ladder    the Ladder from the store (the one-off extraction counted once)
    xladder   the xLadder from the store, as wide as makes its trainable parameters match the Ladder's

Peak memory is the RSS growth of a fresh process (torch.cuda.max_memory_allocated on CUDA) over
the three largest batches. A method's sweep time is what its whole lr grid costs: one pass over
the data for all side networks from the store (plus the extraction), and one run per learning
rate for the others. Results go to OUT/compare.json (written as they come: a rerun skips what is
done), OUT/compare.md and OUT/compare.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from extract.provenance import Provenance
from featurestore import FeatureStore, get_codec
from train_side.config import DataConfig, OptimConfig
from train_side.network.model import FrozenHead, SideConfig, SideNetwork
from train_side.network.prune import init_from_backbone, pruned_settings, top_settings
from train_side.training.train import Run, RunSpec, backbone_dims, fit, top_blocks

import benchlib
import flops
from benchlib import (
    CausalLMPipeline,
    batches,
    live_batch,
    lora_model,
    lora_val_loss,
    peak_mb,
    rss_mb,
    schedule,
    serve_job,
    train_cached,
    train_live,
    train_lora,
)


# The jobs that train from the store never load a backbone: they start without transformers (~4 s a
# process), so what loads one imports it where it does.
def load_backbone(*args, **kwargs):
    from extract.backbones import load_backbone as load

    return load(*args, **kwargs)


def extract(*args, **kwargs):
    from extract.run import extract as run

    return run(*args, **kwargs)


PEFT_METHODS = ("qlora", "lora")
SIDE_METHODS = ("ladder", "xladder")
METHODS = (*PEFT_METHODS, "live-lst", *SIDE_METHODS)
LADDER = {"kind": "ladder", "every": 3, "reduction": 4}  # the demo's Ladder: every 3rd block, width d/4
XLADDER_DELTA = 2
PROBE_BATCHES = 3  # peak memory: a fresh process trains on the largest batches
LEVERS = {  # known ways to close a gap to QLoRA: each changes one thing of the Ladder trained from the store
    "wider (d/2)": {"reduction": 2},
    "every block tapped": {"every": 1},
    "LST init (pruned backbone)": {"init": "pruned"},
    "3x the steps": {"epochs": 3},
    "10x the steps": {"epochs": 10},
    "xLadder, 10x the steps": {"method": "xladder", "epochs": 10},  # claim (c) once both have learned
    "the backbone's top 4 blocks": {"method": "top", "delta": 4, "lr": 5e-4},  # QLoRA's adaptation of the top, from the store
    "the backbone's top 8 blocks": {"method": "top", "lr": 5e-4},
}
TOP_DELTA = 8  # the top side network: the backbone's own top 8 blocks, read from h_{L-8} (docs/compare/diagnosis.md)
SCALING = {"qlora": None, "ladder": None, "top": 5e-4}  # --budgets: each method's lr (None: the comparison's choice)
SHARED_OVER = 10  # the extraction shared over a sweep of this many side networks, in the scaling plot
TIMED_STEPS = 8  # --budgets' seconds axis: each method timed over this many steps (after one untimed), one by one
TIMED_EXAMPLES = 200  # and the extraction over this many training examples


@dataclass
class Setup:
    """One comparison: the backbone, the data and the budget every method gets."""

    model: str = field(default="smollm2-135m", metadata={
        "help": "The backbone: a packaged alias, a directory or a hub id."})
    dataset: str = field(default="arith", metadata={"help": "arith, a local .json/.jsonl/.parquet/.csv or a hub id."})
    train_split: str = field(default="train", metadata={"help": "The split every method trains on."})
    test_split: str = field(default="test", metadata={"help": "The split every method is evaluated on."})
    train_examples: int = field(default=1000, metadata={"help": "First N examples of the training split."})
    test_examples: int = field(default=200, metadata={"help": "First N examples of the test split."})
    epochs: int = field(default=1, metadata={"help": "Passes over the training examples, for every method."})
    token_budget: int = field(default=1024, metadata={"help": "Padded tokens per batch, for every method."})
    val_fraction: float = field(default=0.05, metadata={"help": "Held out for the validation loss (picks the lr)."})
    max_new_tokens: int = field(default=96, metadata={"help": "Most tokens generated per test answer."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda[:N], for every method."})
    quantization: str = field(default="none", metadata={  # qlora's backbone is always nf4
        "help": "Of the backbone the store and live LST use: none, nf4, fp4 or int8."})
    peft_lrs: list[float] = field(default_factory=lambda: [2e-4, 1e-3], metadata={
        "help": "The lr grid of qlora and lora, comma-separated."})
    side_lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2], metadata={
        "help": "The lr grid of the side networks and the top blocks, comma-separated."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank of qlora and lora."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisations and the batch order."})

    @property
    def data(self) -> DataConfig:
        return DataConfig(epochs=self.epochs, token_budget=self.token_budget, val_fraction=self.val_fraction,
                          seed=self.seed)


QUICK = dict(train_examples=48, test_examples=8, token_budget=512, max_new_tokens=40)


# --- the data every method shares --------------------------------------------------------------


def prepare_store(setup: Setup, out: Path) -> tuple[Path, float]:
    """The training store (extracted once; a rerun is a cache hit) and its extraction seconds."""
    result = extract(setup.model, dataset=setup.dataset, split=setup.train_split, limit=setup.train_examples,
                     root=out / "stores", device=setup.device, quantization=setup.quantization, progress=True)
    stats = FeatureStore.open(result.store).attrs.get("stats", {})
    return result.store, float(stats.get("extract_seconds", result.seconds))


def largest(store: FeatureStore, setup: Setup) -> list[np.ndarray]:
    """The batches with the most padded tokens: where every method's memory peaks."""
    train, _ = batches(store, setup.data)
    padded = [len(b) * int(store.lengths[b].max()) for b in train]
    return [train[i] for i in np.argsort(padded)[::-1][:PROBE_BATCHES]]


def side_configs(store: FeatureStore) -> dict[str, SideConfig]:
    """The Ladder, an xLadder as wide as makes its trainable parameters match (within 5%), and the
    backbone's own top blocks (their attention settings are the backbone's: fit() sets them)."""
    dims = backbone_dims(store)
    ladder = SideConfig(**dims, **LADDER)
    target = n_parameters(ladder)
    xladder = lambda w: SideConfig(**dims, kind="xladder", delta=XLADDER_DELTA, side_width=w, n_heads=heads(w))
    widths = range(8, 4 * dims["hidden_size"] + 1, 8)
    width = min(widths, key=lambda w: abs(n_parameters(xladder(w)) - target))
    return {"ladder": ladder, "xladder": xladder(width), "top": SideConfig(**dims, kind="top", delta=min(TOP_DELTA, dims["n_layers"]))}


def n_parameters(config: SideConfig) -> int:
    """Counted on the meta device: the width search must not allocate (its widest candidates hold
    ~1 GB of weights, which would be counted in the peak memory of every side network)."""
    with torch.device("meta"):
        return SideNetwork(config).n_parameters()


def heads(width: int) -> int:
    """The head count nearest to 32-wide heads that splits ``width`` into heads of even size (RoPE)."""
    fits = [h for h in range(1, width // 2 + 1) if width % h == 0 and (width // h) % 2 == 0]
    return min(fits, key=lambda h: abs(math.log(width / h / 32)))


# --- training each method, in a worker ----------------------------------------------------------


def train_peft(setup: Setup, method: str, lr: float, store: FeatureStore, steps: list[np.ndarray], out: Path) -> dict:
    """LoRA (or QLoRA) at learning rate ``lr``: the adapters saved under ``out``."""
    model, _ = lora_model(setup.model, qlora=method == "qlora", rank=setup.lora_rank, device=setup.device)
    seconds = train_lora(model, store, steps, lr)
    model.save_pretrained(out / "adapter")
    return {"train_seconds": seconds, "val_loss": lora_val_loss(model, store, batches(store, setup.data)[1]),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def train_live_lst(setup: Setup, store: FeatureStore, steps: list[np.ndarray], out: Path) -> dict:
    """Every learning rate of the grid trained with the backbone in the loop. The runs share each
    forward to save this benchmark's time; a lone run's time is the forwards plus its own steps."""
    backbone = load_backbone(setup.model, quantization=setup.quantization, device=setup.device)
    side = side_configs(store)["ladder"]
    runs = [make_run(store, out / f"lr={lr}", side, lr, setup, len(steps)) for lr in setup.side_lrs]
    forward = sum(train_live(backbone, store, steps, runs))
    val = [live_batch(backbone, store, b, side.inputs) for b in batches(store, setup.data)[1]]
    results = {}
    for lr, run in zip(setup.side_lrs, runs):
        run.validate(val)
        run.save()
        results[str(lr)] = {"train_seconds": forward + run.seconds, "val_loss": run.val_loss,
                       "trainable": run.model.n_parameters()}
    return results


def make_run(store: FeatureStore, out: Path, side: SideConfig, lr: float, setup: Setup, total_steps: int) -> Run:
    return Run.for_store(store, RunSpec.at(out, side, OptimConfig(lr=lr)), data=setup.data, total_steps=total_steps,
                         device=setup.device)


def train_from_store(setup: Setup, store: FeatureStore, methods: list[str], out: Path) -> dict:
    """Side networks (the Ladder, the xLadder) at every learning rate: one sweep, one pass over the store."""
    configs = {method: config for method, config in side_configs(store).items() if method in methods}
    specs = [RunSpec(f"{method}-lr={lr}", out / method / f"lr={lr}", config, OptimConfig(lr=lr), tag=method)
             for method, config in configs.items() for lr in setup.side_lrs]
    start = time.perf_counter()
    runs = fit(store, specs, setup.data, device=setup.device, progress=True)
    seconds = time.perf_counter() - start
    results = {method: {} for method in configs}
    for run, spec in zip(runs, specs):
        results[spec.tag][str(spec.optim.lr)] = {"train_seconds": run.seconds, "val_loss": run.val_loss,
                                                 "trainable": run.model.n_parameters(), "checkpoint": str(spec.out)}
    return {"sweep_seconds": seconds, "runs": results, "configs": {m: asdict(c) for m, c in configs.items()}}


def train_levers(setup: Setup, store: FeatureStore, lrs: dict[str, float], out: Path) -> dict:
    """The Ladder (or xLadder) with each lever of LEVERS, at its chosen learning rate, from the store."""
    results = {}
    for name, change in LEVERS.items():
        epochs, method = change.get("epochs", setup.epochs), change.get("method", "ladder")
        lr = change.get("lr", lrs.get(method))
        settings = {k: v for k, v in change.items() if k not in ("epochs", "init", "method", "lr")}
        if "delta" in settings:  # a backbone with fewer blocks gives all of them
            settings["delta"] = min(settings["delta"], store.attrs["model"]["n_layers"])
        side = replace(side_configs(store)[method], **settings)
        init = None
        if change.get("init") == "pruned":  # LST: the side blocks cut from the backbone's own (its heads, its RoPE)
            backbone = load_backbone(setup.model, device=setup.device).model
            side = replace(side, **pruned_settings(backbone))
            init = lambda model: init_from_backbone(model, backbone)
        [run] = fit(store, [RunSpec(name, out / name, side, OptimConfig(lr=lr))],
                    replace(setup.data, epochs=epochs), device=setup.device, progress=True, init=init)
        results[name] = {"lr": lr, "train_seconds": run.seconds, "val_loss": run.val_loss,
                         "trainable": run.model.n_parameters(), "steps": run.step}
    return results


def train_budget(setup: Setup, method: str, lr: float, max_steps: int, store: FeatureStore, out: Path) -> dict:
    """``method`` trained for ``max_steps`` steps (the batches cycling through epochs); a side
    network's seconds are the whole job's (its validations and, for the top blocks, the backbone's
    reload included)."""
    data = replace(setup.data, max_steps=max_steps)
    if method in PEFT_METHODS:
        return train_peft(setup, method, lr, store, schedule(store, data), out)
    start = time.perf_counter()
    [run] = fit(store, [RunSpec(method, out, side_configs(store)[method], OptimConfig(lr=lr))], data,
                device=setup.device, progress=True)
    return {"train_seconds": time.perf_counter() - start, "val_loss": run.val_loss,
            "trainable": run.model.n_parameters()}


def time_method(setup: Setup, method: str, lr: float, store: FeatureStore, out: Path) -> dict:
    """Seconds per training token of ``method`` on this machine: TIMED_STEPS steps of the schedule,
    after one untimed step, loading and validation left out (as from the store, reading included)."""
    steps = schedule(store, replace(setup.data, max_steps=TIMED_STEPS + 1))
    tokens = sum(int(store.lengths[b].sum()) for b in steps[1:])
    if method in PEFT_METHODS:
        model, _ = lora_model(setup.model, qlora=method == "qlora", rank=setup.lora_rank, device=setup.device)
        train_lora(model, store, steps[:1], lr)
        return {"seconds_per_token": train_lora(model, store, steps[1:], lr) / tokens}
    specs, _ = top_blocks(store, [RunSpec.at(out, side_configs(store)[method], OptimConfig(lr=lr))])
    run = Run.for_store(store, specs[0], data=setup.data, total_steps=len(steps), device=setup.device)
    train_cached(store, steps[:1], run)
    start = time.perf_counter()
    train_cached(store, steps[1:], run)
    return {"seconds_per_token": (time.perf_counter() - start) / tokens}


def time_extraction(setup: Setup, out: Path) -> dict:
    """Seconds per stored token of the extraction on this machine, over TIMED_EXAMPLES examples."""
    result = extract(setup.model, dataset=setup.dataset, split=setup.train_split, limit=TIMED_EXAMPLES,
                     root=out / "stores", device=setup.device, quantization=setup.quantization, progress=True)
    stats = FeatureStore.open(result.store).attrs["stats"]
    return {"seconds_per_token": stats["extract_seconds"] / stats["extract_tokens"]}


def shape(setup: Setup, store: FeatureStore) -> dict:
    """What the FLOP count needs: the backbone's sizes, the answer tokens' share, every method's
    trainable weights (the top blocks' take their attention settings from the loaded backbone)."""
    loaded = load_backbone(setup.model, device=setup.device)
    backbone = loaded.model
    loss_mask = store.tokens(0, store.n_tokens, layers=[]).loss_mask
    configs = side_configs(store)
    configs["top"] = replace(configs["top"], **top_settings(loaded.top_blocks(1)[1]))
    trainable = {m: n_parameters(c) for m, c in configs.items()}
    trainable |= {m: flops.lora_weights(backbone, setup.lora_rank) for m in PEFT_METHODS}
    return {"shape": asdict(flops.Shape.of(backbone, loss_mask)), "trainable": trainable}


# --- workers: each in a fresh process ----------------------------------------------------------


def worker(job: dict) -> dict:
    """One piece of the comparison, run by a fresh process (``--worker``): memory is its own. (The
    evaluations, which measure no memory, run in the comparison's own process: one import of the
    backbone's libraries for all of them.)"""
    setup, kind, out = Setup(**job["setup"]), job["kind"], Path(job["out"])
    torch.manual_seed(setup.seed)
    baseline = rss_mb()
    store = FeatureStore.open(job["store"])
    if kind == "probe":
        probe(setup, job["method"], store, out)
        return {"peak_mb": peak_mb(baseline, setup.device)}
    if kind == "train" and job["method"] in PEFT_METHODS:
        return train_peft(setup, job["method"], job["lr"], store, schedule(store, setup.data), out)
    if kind == "train" and job["method"] == "live-lst":
        return train_live_lst(setup, store, schedule(store, setup.data), out)
    if kind == "train" and job["method"] == "levers":
        return train_levers(setup, store, job["lrs"], out)
    if kind == "budget":
        return train_budget(setup, job["method"], job["lr"], job["max_steps"], store, out)
    if kind == "shape":
        return shape(setup, store)
    if kind == "timing":
        return time_method(setup, job["method"], job["lr"], store, out)
    if kind == "timing-extract":
        return time_extraction(setup, out)
    return train_from_store(setup, store, job["methods"], out)


def probe(setup: Setup, method: str, store: FeatureStore, out: Path) -> None:
    """Trains ``method`` on the largest batches, as a lone run would."""
    steps = largest(store, setup)
    if method in PEFT_METHODS:
        train_peft(setup, method, setup.peft_lrs[0], store, steps, out)
        return
    side = side_configs(store)["ladder" if method == "live-lst" else method]
    run = make_run(store, out, side, setup.side_lrs[0], setup, len(steps))
    if method == "top":  # as fit() starts it: its blocks read from the store (or copied from the backbone reloaded)
        [spec], start = top_blocks(store, [RunSpec.at(out, side, OptimConfig(lr=setup.side_lrs[0]))])
        run = make_run(store, out, spec.side, setup.side_lrs[0], setup, len(steps))
        start(run.model)
        del start
    if method == "live-lst":
        backbone = load_backbone(setup.model, quantization=setup.quantization, device=setup.device)
        train_live(backbone, store, steps, [run])
    else:
        train_cached(store, steps, run)


def evaluate_method(setup: Setup, method: str, store: FeatureStore, checkpoint: Path | None, out: Path) -> dict:
    """Greedy CoT on the test problems, through the same generation loop for every method."""
    from train_side.inference.evaluate import answer, score
    from train_side.inference.generate import Pipeline

    provenance = Provenance.load(store.attrs)
    examples = replace(provenance.dataset, dataset=setup.dataset).load(setup.test_split, setup.test_examples)
    if method in PEFT_METHODS:
        model, tokenizer = lora_model(setup.model, qlora=method == "qlora", rank=setup.lora_rank, device=setup.device,
                                      adapter=checkpoint / "adapter")
        pipeline = CausalLMPipeline(model)
    else:
        backbone = load_backbone(setup.model, quantization=setup.quantization, device=setup.device)
        head = FrozenHead(*backbone.head()).to(backbone.device)
        side = None
        if method != "backbone":
            from train_side.checkpoint import load_side

            side = load_side(checkpoint, backbone.device)
        codec = get_codec("fp32" if method == "live-lst" else store.codec.spec)  # live LST saw raw states
        pipeline, tokenizer = Pipeline(backbone, head, side, codec), backbone.tokenizer
    predictions, seconds = answer(pipeline, tokenizer, examples, provenance.template, labels=provenance.dataset.labels,
                                  max_new_tokens=setup.max_new_tokens, progress=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    return score(predictions, seconds)


def in_fresh_process(job: dict, out: Path) -> dict:
    """Runs ``worker(job)`` in a new Python process; returns its result."""
    return benchlib.in_fresh_process(__file__, job, out)


# --- the comparison --------------------------------------------------------------------------


class Results:
    """compare.json, written after every piece, so that a rerun continues where one stopped."""

    def __init__(self, path: Path, setup: Setup):
        self.path = path
        self.data = json.loads(path.read_text()) if path.is_file() else {}
        if self.data.get("setup", asdict(setup)) != asdict(setup):
            raise SystemExit(f"{path} holds a comparison with other settings; choose another --out")
        self.data["setup"] = asdict(setup)

    def get(self, *keys):
        node = self.data
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node

    def put(self, value, *keys) -> None:
        node = self.data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self.data, indent=1) + "\n")
        partial.replace(self.path)  # a reader, or a run cut off here, never sees half a file

    def once(self, compute, *keys):
        """The stored value of ``keys``, computed (and stored) only the first time."""
        if self.get(*keys) is None:
            self.put(compute(), *keys)
        return self.get(*keys)


def compare(setup: Setup, out: Path, methods: tuple[str, ...]) -> dict:
    results = Results(out / "compare.json", setup)
    store_path, extract_seconds = prepare_store(setup, out)
    results.once(lambda: extract_seconds, "extract_seconds")  # the comparison's own extraction, not a later rerun's
    store = FeatureStore.open(store_path)
    job = lambda **kw: {"setup": asdict(setup), "store": str(store_path), **kw}
    results.put(len(schedule(store, setup.data)), "steps")

    def trained(method: str) -> dict:
        """{lr: {train_seconds, val_loss, trainable}} of every learning rate of ``method``."""
        if method in PEFT_METHODS:
            return {str(lr): results.once(lambda: in_fresh_process(
                job(kind="train", method=method, lr=lr, out=str(out / method / f"lr={lr}")), out / method / f"lr={lr}"),
                "runs", method, str(lr)) for lr in setup.peft_lrs}
        if method == "live-lst":
            return results.once(lambda: in_fresh_process(job(kind="train", method=method, out=str(out / method)),
                                                         out / method), "runs", method)
        return side_sweep(method)

    def side_sweep(method: str) -> dict:
        """The side networks of this comparison trained in one pass; a network whose config changed
        since (or that was left out) is trained in a further pass, whose time adds to the sweep's."""
        sweep = results.get("side_sweep") or {"sweep_seconds": 0.0, "runs": {}, "configs": {}}
        wanted = {m: asdict(c) for m, c in side_configs(store).items() if m in methods}
        recorded = {m: asdict(SideConfig(**c)) for m, c in sweep["configs"].items()}  # with fields added since
        stale = [m for m in wanted if recorded.get(m) != wanted[m]]
        if stale:
            name = "+".join(stale)
            new = in_fresh_process(job(kind="train", method="side", methods=stale, out=str(out / "side" / name)),
                                   out / "side" / name)
            sweep = {"sweep_seconds": sweep["sweep_seconds"] + new["sweep_seconds"], "runs": sweep["runs"] | new["runs"],
                     "configs": sweep["configs"] | new["configs"]}
            results.put(sweep, "side_sweep")
        return sweep["runs"][method]

    for method in methods:  # first, as it takes minutes: the peak memory of every method
        results.once(lambda: in_fresh_process(job(kind="probe", method=method, out=str(out / "probe" / method)),
                                              out / "probe" / method)["peak_mb"], "peak_mb", method)
    results.once(lambda: evaluate_method(setup, "backbone", store, None, out / "eval" / "backbone"), "eval", "backbone")
    for method in methods:
        runs = trained(method)
        lr = min(runs, key=lambda k: runs[k]["val_loss"])
        checkpoint = runs[lr].get("checkpoint") or out / method / f"lr={lr}"
        row = {"lr": float(lr), "lrs": {k: r["val_loss"] for k, r in runs.items()}, **runs[lr],
               "sweep_seconds": sweep_seconds(method, runs, results, setup), "peak_mb": results.get("peak_mb", method)}
        row |= results.once(lambda: evaluate_method(setup, method, store, Path(checkpoint), out / "eval" / method),
                            "eval", method)
        results.put(row, "methods", method)
    return results.data


def levers(setup: Setup, out: Path) -> dict:
    """Trains and evaluates the Ladder with each lever (after :func:`compare`, whose Ladder it changes)."""
    results = Results(out / "compare.json", setup)
    store_path = prepare_store(setup, out)[0]
    store = FeatureStore.open(store_path)
    lrs = {method: results.get("methods", method, "lr") for method in SIDE_METHODS}
    if None in lrs.values():
        raise SystemExit("--levers changes the Ladder and xLadder of a finished comparison: run it with both first")
    job = lambda **kw: {"setup": asdict(setup), "store": str(store_path), **kw}
    trained = results.once(lambda: in_fresh_process(job(kind="train", method="levers", lrs=lrs,
                                                        out=str(out / "levers")), out / "levers"), "lever_runs")
    for name, run in trained.items():
        evaluation = results.once(lambda: evaluate_method(setup, "ladder", store, out / "levers" / name,
                                                          out / "eval" / name), "eval", name)
        results.put({**run, **evaluation}, "levers", name)
    return results.data


def scaling(setup: Setup, out: Path, budgets: list[float], methods: tuple[str, ...] = tuple(SCALING)) -> dict:
    """Each of ``methods`` (of SCALING) at each compute budget, a multiple of the comparison's QLoRA run in
    training FLOPs (scripts/flops.py): trained, validated and evaluated, after :func:`compare`
    (whose learning rates it uses). Budgets run smallest first and, within one, the side networks
    first (theirs are the quicker runs), so a cut-short run has the most points.
    QLoRA's 1x is the comparison's own run, reused. Then every method is timed, one after another
    (the seconds axis: see :func:`scaling_points`)."""
    results = Results(out / "compare.json", setup)
    store_path = prepare_store(setup, out)[0]
    store = FeatureStore.open(store_path)
    lrs = {method: lr or results.get("methods", method, "lr") for method, lr in SCALING.items()}
    if None in lrs.values():
        raise SystemExit("--budgets trains at the learning rates a finished comparison chose: run it with "
                         f"{', '.join(m for m, lr in lrs.items() if lr is None)} first")
    job = lambda **kw: {"setup": asdict(setup), "store": str(store_path), **kw}
    counted = results.once(lambda: in_fresh_process(job(kind="shape", out=str(out / "shape")), out / "shape"), "flops")
    shape = flops.Shape(**counted["shape"])
    results.put(store.n_tokens, "store_tokens")
    results.put(shape.forward * store.n_tokens, "extract_flops")
    per_token = {m: flops.per_token(shape, counted["trainable"][m], m in PEFT_METHODS) for m in SCALING}
    steps = results.get("steps")
    for budget in budgets:
        # the side networks first (their runs are the quicker), the one of fewest steps first
        for method in sorted(methods, key=lambda m: (m in PEFT_METHODS, -per_token[m])):
            n = max(1, round(budget * steps * per_token["qlora"] / per_token[method]))
            where, key = out / "scaling" / f"{method}-{budget:g}x", (method, f"{budget:g}")
            data = replace(setup.data, max_steps=n)
            tokens = sum(int(store.lengths[b].sum()) for b in schedule(store, data))
            results.put({"steps": n, "epochs": n / steps, "tokens": tokens, "train_flops": per_token[method] * tokens},
                        "scaling", *key, "budget")
            if method in PEFT_METHODS and n == steps and lrs[method] == results.get("methods", method, "lr"):
                results.put({**results.get("runs", method, str(lrs[method])), "reused": True}, "scaling", *key, "run")
                results.once(lambda: results.get("eval", method), "scaling", *key, "eval")  # the comparison's own run
                continue
            results.once(lambda: in_fresh_process(job(kind="budget", method=method, lr=lrs[method], max_steps=n,
                                                      out=str(where)), where), "scaling", *key, "run")
            results.once(lambda: evaluate_method(setup, method, store, where, where / "eval"), "scaling", *key, "eval")
    # the seconds axis: every method timed one after another, so that the times compare (the long runs'
    # own seconds, kept in their records, may have shared the machine with other work)
    for method in SCALING:
        where = out / "timing" / method
        results.once(lambda: in_fresh_process(job(kind="timing", method=method, lr=lrs[method], out=str(where)),
                                              where), "timing", method)
    results.once(lambda: in_fresh_process(job(kind="timing-extract", out=str(out / "timing" / "extract")),
                                          out / "timing" / "extract"), "timing", "extract")
    results.once(lambda: in_fresh_process(job(kind="probe", method="top", out=str(out / "probe" / "top")),
                                          out / "probe" / "top")["peak_mb"], "peak_mb", "top")
    return results.data


def sweep_seconds(method: str, runs: dict, results: Results, setup: Setup) -> float:
    """What the whole lr grid costs: one run per lr, or for the side networks from the store, the
    extraction plus one shared pass (which trains the Ladder's and the xLadder's grids together)."""
    if method in SIDE_METHODS:
        return results.get("extract_seconds") + results.get("side_sweep", "sweep_seconds")
    return sum(r["train_seconds"] for r in runs.values())


# --- the report ------------------------------------------------------------------------------


def claims(data: dict) -> list[tuple[str, str, str]]:
    """The paper's claims and this project's targets: (claim, verdict, numbers)."""
    m = data["methods"]
    verdict = lambda ok: "holds" if ok else "does not hold"
    rows = []
    backbone = data.get("eval", {}).get("backbone", {}).get("accuracy", 0.0)
    if {"ladder", "qlora"} <= m.keys():
        lad, qlora = m["ladder"], m["qlora"]
        gap = (qlora["accuracy"] - lad["accuracy"]) * 100
        # on a task where neither learns, equal accuracy says nothing: the losses still differ
        learned = max(qlora["accuracy"], lad["accuracy"]) >= backbone + 0.03
        rows.append(("(a) Ladder accuracy within 3 points of QLoRA's",
                     verdict(gap <= 3) if learned else f"not judged: neither beats the backbone alone ({backbone:.1%}) "
                                                       "by 3 points",
                     f"ladder {lad['accuracy']:.1%} vs qlora {qlora['accuracy']:.1%} ({-gap:+.1f} points); validation "
                     f"loss {lad['val_loss']:.3f} vs {qlora['val_loss']:.3f} ({lad['val_loss'] / qlora['val_loss']:.1f}x)"))
    if {"live-lst", "ladder", "qlora"} <= m.keys():
        live, cached, qlora = m["live-lst"]["peak_mb"], m["ladder"]["peak_mb"], m["qlora"]["peak_mb"]
        rows.append(("(b) live LST peak memory <= 50% of QLoRA's, from the store lower still",
                     verdict(live <= 0.5 * qlora and cached < live),
                     f"live LST {live:.0f} MB = {live / qlora:.0%} of QLoRA's {qlora:.0f} MB; "
                     f"from the store {cached:.0f} MB = {cached / qlora:.0%}"))
        rows.append(("target: Ladder from the store peak memory <= 25% of QLoRA's", verdict(cached <= 0.25 * qlora),
                     f"{cached / qlora:.0%}"))
    levers = data.get("levers", {})
    pairs = [("", m.get("ladder"), m.get("xladder")),
             (" (10x the steps)", levers.get("10x the steps"), levers.get("xLadder, 10x the steps"))]
    for when, lad, xl in pairs:
        if lad is None or xl is None:
            continue
        same_size = abs(xl["trainable"] - lad["trainable"]) <= 0.05 * lad["trainable"]
        comparable = abs(xl["accuracy"] - lad["accuracy"]) <= 0.03
        # a CoT length says something only of networks that learned the task: above the backbone's own
        learned = max(xl["accuracy"], lad["accuracy"]) >= backbone + 0.03
        shorter = same_size and comparable and xl["mean_cot_tokens"] < lad["mean_cot_tokens"]
        rows.append((f"(c) xLadder's CoT shorter than the Ladder's at the same size and comparable accuracy{when}",
                     verdict(shorter) if learned else f"not judged: neither beats the backbone alone ({backbone:.1%}) "
                                                      "by 3 points",
                     f"CoT {xl['mean_cot_tokens']:.1f} vs {lad['mean_cot_tokens']:.1f} tokens; parameters "
                     f"{xl['trainable'] / 1e6:.2f} M vs {lad['trainable'] / 1e6:.2f} M; accuracy "
                     f"{xl['accuracy']:.1%} vs {lad['accuracy']:.1%}"))
    if {"ladder", "qlora"} <= m.keys():
        n = len(data["setup"]["side_lrs"]) * len(SIDE_METHODS)
        per_run = m["qlora"]["train_seconds"]
        cached = data["extract_seconds"] + data["side_sweep"]["sweep_seconds"]
        rows.append((f"target: a sweep of {n} side networks from the store (extraction included) >= 4x faster "
                     f"than {n} QLoRA runs", verdict(n * per_run >= 4 * cached),
                     f"{cached:.0f} s vs {n} x {per_run:.0f} s = {n * per_run:.0f} s ({n * per_run / cached:.1f}x)"))
    return rows


def report(data: dict, out: Path) -> str:
    setup, m = data["setup"], data["methods"]
    lines = [f"{setup['model']} on {setup['dataset']}: {setup['train_examples']} training examples, "
             f"{data['steps']} steps of <= {setup['token_budget']} tokens, {setup['test_examples']} test problems, "
             f"greedy CoT (device {setup['device']})", "",
             "| method | lr (grid) | accuracy | mean CoT | trainable | train time | peak memory | lr-grid sweep |",
             "|---|---|---|---|---|---|---|---|"]
    base = data.get("eval", {}).get("backbone")
    if base:
        lines.append(f"| backbone alone | - | {base['accuracy']:.1%} | {base['mean_cot_tokens']:.1f} | - | - | - | - |")
        if "majority_accuracy" in base:  # a classification task: the floor of always giving the commonest label
            lines.append(f"| majority label | - | {base['majority_accuracy']:.1%} | - | - | - | - | - |")
    for method, r in m.items():
        grid = ", ".join(f"{float(k):g}" for k in r["lrs"])
        lines.append(f"| {method} | {r['lr']:g} ({grid}) | {r['accuracy']:.1%} | {r['mean_cot_tokens']:.1f} | "
                     f"{r['trainable'] / 1e6:.2f} M | {r['train_seconds']:.0f} s | {r['peak_mb']:.0f} MB | "
                     f"{r['sweep_seconds']:.0f} s |")
    if data.get("levers"):
        lines += ["", f"Levers on the Ladder from the store (each at its method's chosen lr; the Ladder above: "
                      f"{m['ladder']['accuracy']:.1%}, validation loss {m['ladder']['val_loss']:.4f}):", "",
                  "| lever | lr | accuracy | mean CoT | trainable | steps | train time | validation loss |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {r['lr']:g} | {r['accuracy']:.1%} | {r['mean_cot_tokens']:.1f} | {r['trainable'] / 1e6:.2f} M | "
                  f"{r['steps']} | {r['train_seconds']:.0f} s | {r['val_loss']:.4f} |" for name, r in data["levers"].items()]
    if data.get("scaling"):
        lines += ["", *scaling_table(data)]
    lines += ["", "| claim | verdict | measured |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {n} |" for c, v, n in claims(data) + scaling_claims(data)]
    text = "\n".join(lines) + "\n"
    (out / "compare.md").write_text(text)
    plot(data, out / "compare.png")
    if data.get("scaling"):
        plot_scaling(data, out / "scaling.png")
    return text


def scaling_points(data: dict) -> dict[str, list[dict]]:
    """{method: [point per finished budget, smallest first]}: each the budget's steps, epochs and
    FLOPs, its run and evaluation, and its compute with the extraction counted whole
    (``flops``, ``seconds``) and shared over a sweep of SHARED_OVER networks (``shared_flops``).
    Seconds are the budget's tokens at the method's timed seconds per token (None until timed)."""
    timing = data.get("timing", {})
    extract_seconds = timing["extract"]["seconds_per_token"] * data["store_tokens"] if "extract" in timing else None
    points = {}
    for method, budgets in data["scaling"].items():
        share = 0 if method in PEFT_METHODS else 1
        rows = [{"budget": float(b), **p["budget"], **p["run"], **p["eval"]} for b, p in budgets.items()
                if "eval" in p]
        for row in rows:
            row["flops"] = row["train_flops"] + share * data["extract_flops"]
            row["shared_flops"] = row["train_flops"] + share * data["extract_flops"] / SHARED_OVER
            row["seconds"] = None
            if method in timing and extract_seconds is not None:
                row["seconds"] = row["tokens"] * timing[method]["seconds_per_token"] + share * extract_seconds
        points[method] = sorted(rows, key=lambda row: row["budget"])
    return points


def scaling_table(data: dict) -> list[str]:
    timing = data.get("timing", {})
    extraction = (f", {timing['extract']['seconds_per_token'] * data['store_tokens']:.0f} s" if "extract" in timing
                  else "")
    lines = [f"At equal training compute (budgets in multiples of the QLoRA run above, counted in FLOPs as "
             f"scripts/flops.py says; a side network's compute includes the whole extraction, "
             f"{data['extract_flops'] / 1e12:.1f} TFLOP{extraction}). Seconds: each budget's tokens at its method's "
             f"seconds per token, timed one method after another on this machine:", "",
             "| budget | method | lr | steps | epochs | TFLOP | seconds | validation loss | accuracy | mean CoT |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lrs = {m: lr or data["methods"][m]["lr"] for m, lr in SCALING.items()}
    points = scaling_points(data)
    for budget in sorted({p["budget"] for rows in points.values() for p in rows}):
        for method, rows in points.items():
            for p in (p for p in rows if p["budget"] == budget):
                lines.append(f"| {budget:g}x | {method} | {lrs[method]:g} | {p['steps']} | {p['epochs']:.2f} | "
                             f"{p['flops'] / 1e12:.1f} | {seconds(p)} | {p['val_loss']:.4f} | "
                             f"{p['accuracy']:.1%} | {p['mean_cot_tokens']:.1f} |")
    return lines


def seconds(point: dict) -> str:
    return "-" if point["seconds"] is None else f"{point['seconds']:.0f}"


def slope(points: list[dict]) -> float:
    """d log(validation loss) / d log(compute): how fast the loss falls as compute doubles."""
    return float(np.polyfit(np.log([p["flops"] for p in points]), np.log([p["val_loss"] for p in points]), 1)[0])


def at_compute(points: list[dict], flops: float, key: str) -> float | None:
    """``key`` of ``points`` interpolated at ``flops`` (linear in log compute); None outside their range."""
    x = np.log([p["flops"] for p in points])
    if not x[0] <= np.log(flops) <= x[-1]:
        return None
    return float(np.interp(np.log(flops), x, [p[key] for p in points]))


def scaling_claims(data: dict) -> list[tuple[str, str, str]]:
    """The paper's compute-scaling claim and the targets at equal compute, for the budgets done."""
    points = scaling_points(data) if data.get("scaling") else {}
    qlora = points.get("qlora", [])
    if len(qlora) < 2:
        return []
    verdict = lambda ok: "holds" if ok else "does not hold"
    rows = []
    for method in (m for m in SIDE_METHODS + ("top",) if len(points.get(m, [])) >= 2):
        ours, theirs = slope(points[method]), slope(qlora)
        rows.append((f"{method}'s loss falls with compute at least 3/4 as fast as QLoRA's (the paper: matches its slope)",
                     verdict(ours <= 0.75 * theirs),
                     f"d log loss / d log FLOPs: {method} {ours:.2f}, qlora {theirs:.2f}"))
        gaps = []
        for p in points[method]:
            acc = at_compute(qlora, p["flops"], "accuracy")
            if acc is not None:
                gaps.append((p["budget"], 100 * (p["accuracy"] - acc)))
        if gaps:  # judged at the largest budget both reach: where each has learned the most
            rows.append((f"{method} accuracy within 3 points of QLoRA's at equal compute (extraction counted whole)",
                         verdict(gaps[-1][1] >= -3), "; ".join(f"{b:g}x: {g:+.1f} points" for b, g in gaps) +
                         " (QLoRA interpolated in log compute)"))
    peak = data.get("peak_mb", {})
    if {"top", "qlora"} <= peak.keys():
        rows.append(("target: the top blocks' peak memory <= 25% of QLoRA's", verdict(peak["top"] <= 0.25 * peak["qlora"]),
                     f"{peak['top']:.0f} MB = {peak['top'] / peak['qlora']:.0%} of {peak['qlora']:.0f} MB (the "
                     "backbone reloaded once to copy its blocks included)"))
    if points.get("ladder") and qlora:
        lad, top = points["ladder"][-1], qlora[-1]
        rows.append(("target: Ladder validation loss <= 1.5x QLoRA's at the largest budget",
                     verdict(lad["val_loss"] <= 1.5 * top["val_loss"]),
                     f"{lad['val_loss']:.4f} vs {top['val_loss']:.4f} ({lad['val_loss'] / top['val_loss']:.1f}x) "
                     f"at {lad['budget']:g}x"))
    return rows


def plot_scaling(data: dict, path: Path) -> None:
    """Validation loss and accuracy against training compute, in FLOPs and in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex="col")
    for i, (method, points) in enumerate(scaling_points(data).items()):
        color = f"C{i}"
        for col, x in enumerate(("flops", "seconds")):
            timed = [p for p in points if p[x] is not None]
            xs = [p[x] / (1e12 if x == "flops" else 1) for p in timed]
            axes[0, col].plot(xs, [p["val_loss"] for p in timed], "o-", color=color, label=method)
            axes[1, col].plot(xs, [100 * p["accuracy"] for p in timed], "o-", color=color, label=method)
            if x == "flops" and method not in PEFT_METHODS:
                shared = [p["shared_flops"] / 1e12 for p in points]
                axes[0, 0].plot(shared, [p["val_loss"] for p in points], ":", color=color,
                                label=f"{method}, extraction shared over {SHARED_OVER}")
                axes[1, 0].plot(shared, [100 * p["accuracy"] for p in points], ":", color=color)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.set_ylabel("validation loss (nats per answer token)")
    for ax in axes[1]:
        ax.set_ylabel("test accuracy (%)")
    axes[1, 0].set_xlabel("training compute (TFLOP, analytic; extraction counted whole)")
    axes[1, 1].set_xlabel("training time (s, measured; extraction counted whole)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{data['setup']['model']} on {data['setup']['dataset']}: loss and accuracy at equal compute",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    methods = data["methods"]
    biggest = max(r["sweep_seconds"] for r in methods.values())
    for method, r in methods.items():
        ax.scatter(r["peak_mb"], 100 * r["accuracy"], s=40 + 1200 * r["sweep_seconds"] / biggest, alpha=0.6)
        ax.annotate(f"{method}\n{r['sweep_seconds'] / 60:.0f} min sweep", (r["peak_mb"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(8, 6), fontsize=8)
    ax.set_xlabel("peak training memory (MB)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs memory (point area: time of the lr-grid sweep)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def arguments() -> argparse.ArgumentParser:
    """The command line: its own options, then one per field of Setup (with the field's help)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="runs/compare", help="Directory of the results (a rerun continues).")
    parser.add_argument("--quick", action="store_true", help="Every method on a small budget.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ", ".join(METHODS))
    parser.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")],
                        help="Then train " + ", ".join(SCALING) + " at each compute budget, in multiples of the "
                             "QLoRA run's training FLOPs (e.g. 0.25,0.5,1,2): docs/compare/scaling.png's curves.")
    parser.add_argument("--budget-methods", default=",".join(SCALING),
                        help="The methods --budgets trains (default: all of " + ", ".join(SCALING) + ").")
    parser.add_argument("--levers", action="store_true",
                        help="Then train and evaluate the Ladder with each lever: " + "; ".join(LEVERS))
    for f in Setup.__dataclass_fields__.values():
        kind = (lambda s: [float(x) for x in s.split(",")]) if f.name in ("peft_lrs", "side_lrs") else \
            type(getattr(Setup(), f.name))
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind,
                            help=f"{f.metadata['help']} (default: {getattr(Setup(), f.name)})")
    return parser


def main() -> None:
    args = arguments().parse_args()
    if args.worker:
        serve_job(args.worker, worker)
        return
    setup = replace(Setup(), **(QUICK if args.quick else {}))
    setup = replace(setup, **{k: v for k, v in vars(args).items() if k in Setup.__dataclass_fields__ and v is not None})
    methods = tuple(args.methods.split(","))
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if set(methods) & set(PEFT_METHODS):
        try:
            import peft  # noqa: F401
        except ImportError:
            raise SystemExit("the qlora and lora rows need peft: pip install -e .[baselines]") from None
    out = Path(args.out)
    start = time.perf_counter()
    data = compare(setup, out, methods)
    if args.levers:
        data = levers(setup, out)
    if args.budgets:
        chosen = tuple(args.budget_methods.split(","))
        if set(chosen) - set(SCALING):
            raise SystemExit(f"unknown --budget-methods {sorted(set(chosen) - set(SCALING))}; choose from "
                             f"{', '.join(SCALING)}")
        data = scaling(setup, out, args.budgets, chosen)
    print(report(data, out))
    print(f"whole comparison: {(time.perf_counter() - start) / 60:.1f} min this run; results in {out}/compare.json, "
          f"compare.md, compare.png")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
