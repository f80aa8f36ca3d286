"""The optimiser and data settings of a training job, and the generation settings of a trained
network: the one place their defaults live.

Plain dataclasses, JSON round-trippable, kept out of ``training`` and ``inference`` (a neutral
module, as checkpoint.py is): a checkpoint records the training settings and inference reads them
back; the commands (``train_side.cli``) derive their options from all of them without loading
inference's torch and transformers. Each field's metadata gives the help of its `train_side`
option (see featurestore.options).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


# Each kind's peak learning rate: its best of docs/compare's lr grid (the top blocks' 5e-4 at every budget).
LR = {"ladder": 3e-3, "xladder": 1e-3, "top": 5e-4}
PROBE_LR = 1e-3  # the linear probes' (`train_side probe`)


@dataclass
class OptimConfig:
    """How one side network is optimised (JSON round-trippable)."""

    lr: float | None = field(default=None, metadata={
        "help": "Peak learning rate (AdamW). Default: the network kind's, " + ", ".join(f"{k} {v:g}" for k, v in LR.items())
                + ".", "min": 0, "min_open": True})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay of the matrices."})
    warmup: float = field(default=0.05, metadata={
        "help": "Fraction of all steps spent warming up linearly (then cosine)."})
    min_lr: float = field(default=0.1, metadata={"help": "The cosine ends at min_lr * lr."})
    grad_clip: float = field(default=1.0, metadata={"help": "Maximum gradient norm."})
    seed: int = field(default=0, metadata={"help": "Initialisation seed."})
    recompute: bool = field(default=True, metadata={
        "help": "Recompute side-block activations in backward: much less memory for ~7% more time."})

    def with_default_lr(self, lr: float) -> OptimConfig:
        """These settings with ``lr`` where none was given (a side network: its kind's, ``LR[kind]``)."""
        return self if self.lr is not None else replace(self, lr=lr)


@dataclass
class DataConfig:
    """What every run of a training job (or sweep) sees: the same batches in the same order."""

    epochs: int = field(default=2, metadata={"help": "Passes over the training examples.", "min": 1})
    max_steps: int = field(default=0, metadata={
        "help": "Optimizer steps to train (0: `epochs` passes). Overrides --epochs: the data is passed over as "
                "often as the steps need, the last pass cut short.", "min": 0})
    token_budget: int = field(default=1024, metadata={  # docs/compare: more, smaller steps learn more per second
        "help": "Padded tokens per batch.", "min": 1})
    val_fraction: float = field(default=0.05, metadata={
        "help": "Fraction of the store's examples held out for the validation loss.", "min": 0, "max": 1,
        "max_open": True})
    seed: int = field(default=0, metadata={  # its flag: OptimConfig.seed is --seed
        "flag": "data-seed", "help": "Seed of the validation split and batch order."})
    eval_every: int = field(default=0, metadata={
        "help": "Steps between validations (0: at the end of each epoch only).", "min": 0})
    save_every: int = field(default=0, metadata={
        "help": "Steps between checkpoints (0: at the end of each epoch only).", "min": 0})
    grad_accum: int = field(default=1, metadata={
        "help": "Batches per optimizer step (gradient accumulation): a step sees the union of N batches. Steps, "
                "--max-steps, the schedule and --eval-every/--save-every count optimizer steps.", "min": 1})
    early_stop: int = field(default=0, metadata={
        "help": "Stop a run after this many validations without a better validation loss (0: never); its best "
                "weights are in RUN/best either way.", "min": 0})

    def total_steps(self, steps_per_epoch: int) -> int:
        """The optimizer steps of a job whose epochs have ``steps_per_epoch`` steps."""
        return self.max_steps or self.epochs * steps_per_epoch


@dataclass
class GenerateConfig:
    """How text is generated after a prompt, by `train_side eval` and `generate`, ``evaluate()``,
    ``generate()`` and ``SideModel.generate`` alike: greedy by default, sampling when
    ``temperature`` is above 0."""

    max_new_tokens: int = field(default=128, metadata={  # eval's and SideModel's all along (generate had 256)
        "help": "Most tokens generated after a prompt (it stops earlier at EOS; eval also at a finished "
                "'#### n' line, or a classification task's label line).", "min": 1})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy; above 0: sampling.", "min": 0})
    top_p: float = field(default=1.0, metadata={
        "help": "Nucleus sampling mass: sample among the most likely tokens holding this probability.",
        "min": 0, "min_open": True, "max": 1})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0: all).", "min": 0})
    min_new_tokens: int = field(default=0, metadata={
        "help": "EOS cannot end an answer before this many new tokens (its logits are -inf until then).", "min": 0})
    repetition_penalty: float = field(default=1.0, metadata={
        "help": "Penalise tokens already in the prompt or the answer: their positive logits are divided by it, "
                "their negative ones multiplied (1: off; as transformers' repetition_penalty).",
        "min": 0, "min_open": True})
    seed: int = field(default=0, metadata={"help": "Sampling seed (the same seed repeats the same text)."})
    batch_size: int = field(default=16, metadata={
        "help": "Prompts generated together (left-padded).", "min": 1})

    @classmethod
    def resolve(cls, config: GenerateConfig | None = None, **settings) -> GenerateConfig:
        """``config`` (default: the defaults) with the fields named in ``settings`` replaced, e.g.
        ``GenerateConfig.resolve(max_new_tokens=64)``; an unknown name is a TypeError."""
        return replace(config or cls(), **settings)

    @property
    def decoding(self) -> str:
        """How tokens are chosen, in words: ``greedy`` or ``T=0.7, top_p=0.9[, top_k=20]``, then
        the EOS and repetition settings that are not off."""
        words = "greedy" if self.temperature == 0 else \
            f"T={self.temperature}, top_p={self.top_p}" + (f", top_k={self.top_k}" if self.top_k else "")
        if self.min_new_tokens:
            words += f", min_new_tokens={self.min_new_tokens}"
        if self.repetition_penalty != 1:
            words += f", repetition_penalty={self.repetition_penalty}"
        return words
