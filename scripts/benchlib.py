"""What the benchmark scripts share: the batches every method sees, side networks trained from the
store or with the backbone in the loop (live LST), the fresh-process memory probe, and the peft
LoRA / QLoRA baselines.

scripts/ is no package: a script in this folder imports this module as ``benchlib`` (Python puts a
script's own folder first on ``sys.path``, also for the fresh processes of ``in_fresh_process``).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from featurestore import FeatureStore
from train_side.config import DataConfig, OptimConfig
from train_side.data import epochs_from, plan, read_ahead, read_batch, split_examples
from train_side.network.batch import Batch
from train_side.training.train import Run, lr_factor

if TYPE_CHECKING:  # transformers comes with extract.backbones: imported only by the jobs that load a backbone
    from extract.backbones import Backbone

# --- the batches every method sees -------------------------------------------------------------


def batches(store: FeatureStore, data: DataConfig) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training batches, validation batches) of example indices, as ``fit`` plans them."""
    train, val = split_examples(store.n_examples, data.val_fraction, data.seed)
    return plan(store, train, data.token_budget), plan(store, val, data.token_budget)


def schedule(store: FeatureStore, data: DataConfig) -> list[np.ndarray]:
    """Every optimizer step's batch, in order: epochs of the training batches, each shuffled as
    ``fit`` shuffles them, cut at ``data.max_steps`` when it is set."""
    train, _ = batches(store, data)
    return [train[i] for _, order in epochs_from(len(train), data) for i in order]


# --- side networks: from the store, or with the backbone live ----------------------------------


def token_batch(store: FeatureStore, indices: np.ndarray) -> tuple[Batch, torch.Tensor]:
    """Examples ``indices`` right-padded, without hidden states, and their attention mask (B, T)."""
    batch = read_batch(store, indices, layers=[])
    lengths = torch.from_numpy(store.lengths[indices])
    return batch, (torch.arange(batch.input_ids.shape[1]) < lengths[:, None]).long()


def live_batch(backbone: Backbone, store: FeatureStore, indices: np.ndarray, layers) -> Batch:
    """The batch the store would give (float32 hidden states of ``layers``), from a live backbone
    forward instead, on the backbone's device."""
    batch, attention = token_batch(store, indices)
    states = backbone.hidden_states(batch.input_ids, attention)
    batch.hidden = {k: states[k].float().clone() for k in layers}  # inference tensors: clone before autograd
    return batch.to(backbone.device)


def train_live(backbone: Backbone, store: FeatureStore, steps: list[np.ndarray], runs: list[Run]) -> list[float]:
    """Trains ``runs`` on ``steps`` with the backbone in the loop, as the LST paper trains (no
    gradient through it): each step's forward is shared by the runs. Returns the seconds of each
    step's batch (the forward, with its tokens' read)."""
    layers = sorted({k for run in runs for k in run.side.inputs})
    forwards = []
    for indices in steps:
        start = time.perf_counter()
        batch = live_batch(backbone, store, indices, layers)
        forwards.append(time.perf_counter() - start)
        for run in runs:
            run.train_step(batch)
    return forwards


def train_cached(store: FeatureStore, steps: list[np.ndarray], run: Run) -> None:
    """Trains ``run`` on ``steps`` from the store, reading one batch ahead."""
    for batch in read_ahead(store, steps, run.side.inputs):
        run.train_step(batch.to(run.device))


# --- peak memory, each measurement in a fresh process ------------------------------------------


def rss_mb() -> float:
    """This process's resident memory now (MB): take it after the imports, as the baseline."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def peak_mb(baseline: float, device: str | torch.device = "cpu") -> float:
    """Peak memory of this process beyond ``baseline`` (MB): VmHWM on a CPU (ru_maxrss would report
    a forking parent's), the CUDA allocator's peak on a GPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024 - baseline


def in_fresh_process(script: str | Path, job: dict, out: Path) -> dict:
    """Runs ``script --worker OUT/job.json`` in a new Python process (the script hands the job to
    :func:`serve_job`), so that the job's memory is its own; returns its result."""
    shutil.rmtree(out, ignore_errors=True)  # what an interrupted attempt left
    out.mkdir(parents=True)
    job_file = out / "job.json"
    job_file.write_text(json.dumps(job))
    subprocess.run([sys.executable, str(script), "--worker", str(job_file)], check=True)
    return json.loads((out / "result.json").read_text())


def serve_job(job_file: str | Path, worker: Callable[[dict], dict]) -> None:
    """The fresh process's side of :func:`in_fresh_process`: ``worker(job)`` into result.json."""
    job_file = Path(job_file)
    job_file.with_name("result.json").write_text(json.dumps(worker(json.loads(job_file.read_text()))))


# --- peft baselines: LoRA and QLoRA ------------------------------------------------------------


def causal_lm(source: str | Path, *, dtype: torch.dtype, device: str | torch.device, nf4: bool = False):
    """A Hugging Face causal LM from ``source`` on ``device``; with ``nf4``, bitsandbytes-quantised
    to nf4 (computing in ``dtype``) as QLoRA loads it."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = None
    if nf4:  # No double quantisation: on this CPU it doubled QLoRA's step time to save ~0.4 bits per weight.
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, quantization_config=quantization,
                                                device_map={"": torch.device(device)})


def with_lora(model, *, rank: int = 16, dropout: float = 0.0, kbit: bool = False, checkpointing: bool = False):
    """``model`` with fresh LoRA adapters (r = ``rank``, alpha = 2r) on every linear projection; with
    ``kbit`` prepared as QLoRA prepares a quantised model, with ``checkpointing`` recomputing the
    activations in the backward."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if kbit:  # norms to float32, inputs requiring grad; checkpointing below, by its current name
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=dropout, target_modules="all-linear",
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft (0.21) reads transformers' deprecated name: not the user's to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def lora_model(model: str, *, qlora: bool, rank: int, device: str, adapter: Path | None = None):
    """(the backbone ``model`` with LoRA adapters, its tokenizer), as a careful user sets it up:
    nf4 + prepare_model_for_kbit_training for QLoRA, gradient checkpointing for both; with
    ``adapter``, those trained adapters loaded for inference."""
    from extract.backbones import resolve_backbone

    source = resolve_backbone(model, dtype="auto", device=device)
    lm = causal_lm(source.source, dtype=source.dtype, device=source.device, nf4=qlora)
    if adapter is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(lm, adapter).eval(), source.tokenizer
    return with_lora(lm, rank=rank, dropout=0.05, kbit=qlora, checkpointing=True), source.tokenizer


def causal_lm_loss(model, store: FeatureStore, indices: np.ndarray) -> tuple[torch.Tensor, int]:
    """(mean next-token loss on the answer tokens, number of them), as next_token_loss computes it
    for side networks."""
    device = next(model.parameters()).device
    batch, attention = token_batch(store, indices)
    ids = batch.input_ids.to(device)
    labels = ids.masked_fill(~batch.loss_mask.to(device), -100)  # transformers shifts the labels itself
    loss = model(input_ids=ids, attention_mask=attention.to(device), labels=labels).loss
    return loss, int(batch.loss_mask[:, 1:].sum())


def train_lora(model, store: FeatureStore, steps: list[np.ndarray], lr: float) -> float:
    """Trains ``model``'s adapters on ``steps`` with the side networks' optimizer and schedule
    (AdamW, warmup then cosine, clipping), without weight decay; returns the seconds it took."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = OptimConfig(lr=lr, weight_decay=0.0)
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, len(steps), optim))
    start = time.perf_counter()
    model.train()
    for indices in steps:
        loss, _ = causal_lm_loss(model, store, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, optim.grad_clip)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


@torch.no_grad()
def lora_val_loss(model, store: FeatureStore, val: list[np.ndarray]) -> float:
    """The mean loss per answer token over the validation batches ``val``."""
    model.eval()
    total = targets = 0.0
    for indices in val:
        loss, n = causal_lm_loss(model, store, indices)
        total += loss.item() * n
        targets += n
    return total / targets


class CausalLMPipeline:
    """A Hugging Face causal LM (here with LoRA adapters) stepped like the side network's
    Pipeline, so that every method generates through the same loop."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model, self.device, self.new_cache = model, next(model.parameters()).device, DynamicCache

    def start(self) -> dict:
        return {"cache": self.new_cache(config=self.model.get_base_model().config)}

    @torch.inference_mode()
    def step(self, input_ids, attention_mask, caches: dict) -> torch.Tensor:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                            cache=caches["cache"], use_cache=True)
        return output.logits.float()
