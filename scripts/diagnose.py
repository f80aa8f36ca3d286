"""Where each method's validation loss sits: the mean loss of every token class of the worked
answers (format, operands copied, digits computed, the final answer line), for side networks
trained from the store and for LoRA/QLoRA adapters, on the same validation examples.

    python scripts/diagnose.py STORE --out docs/compare --side ladder=runs/ladder top=runs/top \\
        --qlora qlora=runs/compare/qlora/lr=0.001/adapter

The validation split is the one training held out (--val-fraction, --data-seed as trained).
Writes OUT/diagnosis.json and prints a Markdown table: per class, its share of the target tokens
and each method's mean loss and share of the total loss.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchlib import batches, lora_model, token_batch
from extract.backbones import resolve_backbone
from extract.provenance import Provenance
from extract.tasks.token_classes import CLASSES, token_classes
from featurestore import FeatureStore
from train_side.checkpoint import load_side
from train_side.config import DataConfig
from train_side.data import read_batch
from train_side.network.loss import token_losses
from train_side.network.model import FrozenHead


def side_losses(store: FeatureStore, val: list[np.ndarray], run: Path) -> Iterator[torch.Tensor]:
    """Per-target-token losses of a side network, batch by batch."""
    model, head = load_side(run), FrozenHead(*store.head())
    for indices in val:
        batch = read_batch(store, indices, model.config.inputs)
        yield token_losses(model(batch.hidden).float(), batch.input_ids, batch.loss_mask, head)


def lora_losses(store: FeatureStore, val: list[np.ndarray], model: str, adapter: Path,
                qlora: bool) -> Iterator[torch.Tensor]:
    """Per-target-token losses of LoRA adapters on the backbone (nf4 for QLoRA)."""
    lm, _ = lora_model(model, qlora=qlora, rank=0, device="cpu", adapter=adapter)
    for indices in val:
        batch, attention = token_batch(store, indices)
        logits = lm(input_ids=batch.input_ids, attention_mask=attention).logits.float()
        predicts = batch.loss_mask[:, 1:].bool()
        yield F.cross_entropy(logits[:, :-1][predicts], batch.input_ids[:, 1:][predicts].long(), reduction="none")


def classes(store: FeatureStore, val: list[np.ndarray], tokenizer) -> np.ndarray:
    """The class of every target token, in token_losses' order (row-major over each batch)."""
    found = []
    for indices in val:
        batch = read_batch(store, indices, [])
        for ids, mask in zip(batch.input_ids[:, 1:], batch.loss_mask[:, 1:].bool()):
            found += token_classes([tokenizer.decode([int(t)]) for t in ids[mask]])
    return np.array(found)


def split(losses: np.ndarray, kinds: np.ndarray) -> dict:
    rows = {"all": {"loss": float(losses.mean()), "tokens": len(losses), "share": 1.0}}
    for c in CLASSES:
        picked = losses[kinds == c]
        rows[c] = {"loss": float(picked.mean()) if len(picked) else None, "tokens": len(picked),
                   "share": float(picked.sum() / losses.sum())}
    return rows


def table(results: dict) -> str:
    names = list(results)
    first = results[names[0]]
    lines = ["| token class | tokens | " + " | ".join(f"{n} loss (share)" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for c in ("all", *CLASSES):
        cells = [f"{r[c]['loss']:.3f} ({r[c]['share']:.0%})" if r[c]["loss"] is not None else "-"
                 for r in results.values()]
        lines.append(f"| {c} | {first[c]['tokens']} ({first[c]['tokens'] / first['all']['tokens']:.0%}) | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def pairs(values: list[str]) -> dict[str, Path]:
    return {name: Path(path) for name, path in (v.split("=", 1) for v in values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="The training store the methods were trained on.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--side", nargs="*", default=[], metavar="NAME=RUN", help="Side networks (run directories).")
    parser.add_argument("--lora", nargs="*", default=[], metavar="NAME=ADAPTER", help="LoRA adapters (peft directories).")
    parser.add_argument("--qlora", nargs="*", default=[], metavar="NAME=ADAPTER", help="QLoRA adapters (nf4 backbone).")
    parser.add_argument("--val-fraction", type=float, default=DataConfig.val_fraction)
    parser.add_argument("--data-seed", type=int, default=DataConfig.seed)
    parser.add_argument("--token-budget", type=int, default=1024)
    args = parser.parse_args()
    store = FeatureStore.open(args.store)
    val = batches(store, DataConfig(token_budget=args.token_budget, val_fraction=args.val_fraction,
                                    seed=args.data_seed))[1]
    model_id = Provenance.load(store.attrs).model.id
    kinds = classes(store, val, resolve_backbone(model_id, device="cpu").tokenizer)
    sources = {name: side_losses(store, val, run) for name, run in pairs(args.side).items()}
    for flag, qlora in ((args.lora, False), (args.qlora, True)):
        sources |= {name: lora_losses(store, val, model_id, adapter, qlora) for name, adapter in pairs(flag).items()}
    results = {}
    with torch.no_grad():
        for name, losses in sources.items():
            results[name] = split(torch.cat(list(losses)).numpy(), kinds)
            print(name, json.dumps(results[name]["all"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diagnosis.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
