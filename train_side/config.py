"""The optimiser and data settings of a training job: the one place their defaults live.

Plain dataclasses, JSON round-trippable, kept out of ``training`` (a neutral module, as
checkpoint.py is) because a checkpoint records them and inference reads them back. Each field's
metadata gives the help of its `train_side` option (see featurestore.options).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class OptimConfig:
    """How one side network is optimised (JSON round-trippable)."""

    lr: float = field(default=3e-3, metadata={"help": "Peak learning rate (AdamW).", "min": 0, "min_open": True})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the matrices."})
    warmup: float = field(default=0.05, metadata={
        "help": "Fraction of all steps spent warming up linearly (then cosine)."})
    min_lr: float = field(default=0.1, metadata={"help": "The cosine ends at min_lr * lr."})
    grad_clip: float = field(default=1.0, metadata={"help": "Maximum gradient norm."})
    seed: int = field(default=0, metadata={"help": "Initialisation seed."})
    recompute: bool = field(default=True, metadata={
        "help": "Recompute side-block activations in backward: much less memory for ~7% more time."})


@dataclass
class DataConfig:
    """What every run of a training job (or sweep) sees: the same batches in the same order."""

    epochs: int = field(default=2, metadata={"help": "Passes over the training examples.", "min": 1})
    token_budget: int = field(default=4096, metadata={"help": "Padded tokens per batch.", "min": 1})
    val_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of the store's examples held out for the validation loss.", "min": 0, "max": 1,
        "max_open": True})
    seed: int = field(default=0, metadata={  # its flag: OptimConfig.seed is --seed
        "flag": "data-seed", "help": "Seed of the validation split and batch order."})
    eval_every: int = field(default=0, metadata={
        "help": "Steps between validations (0: at the end of each epoch only).", "min": 0})
    save_every: int = field(default=0, metadata={
        "help": "Steps between checkpoints (0: at the end of each epoch only).", "min": 0})
