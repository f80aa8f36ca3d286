"""`train_side check`: extraction's head check, repeated on an existing store with the reloaded
backbone: do the logits that the store's head computes from its stored final states equal the
model's own? (A store written before the check existed, or by another tool, may not.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from extract.backbones.check import CHECK_ROWS, CHECK_TOKENS, HeadCheck, check_head
from extract.provenance import Provenance
from featurestore import FeatureStore

from ..backbone import reload_backbone


def check_store(store: str | Path, device: str = "auto") -> HeadCheck:
    """Checks the head of ``store`` on the first tokens of its first examples, against the backbone
    it was extracted from (reloaded exactly; another one is refused). Uses the stored final states
    when the store holds layer L, else the live ones through the store's codec. Raises a
    HeadMismatchError when the head is wrong."""
    store = FeatureStore.open(store)
    model = Provenance.load(store.attrs).model
    backbone = reload_backbone(model, device)
    final = [model.n_layers] if model.n_layers in store.layers else []
    examples = [store.example(i, layers=final) for i in range(min(CHECK_ROWS, store.n_examples))]
    T = max(min(len(e.input_ids), CHECK_TOKENS) for e in examples)
    ids = torch.full((len(examples), T), backbone.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for row, example in enumerate(examples):
        n = min(len(example.input_ids), T)
        ids[row, :n] = torch.from_numpy(example.input_ids[:n].astype(np.int64))
        mask[row, :n] = 1
    stored = np.concatenate([e.hidden[final[0]][:T] for e in examples]) if final else None  # real tokens, row by row
    return check_head(backbone, *store.head(), store.codec, ids, mask, stored)
