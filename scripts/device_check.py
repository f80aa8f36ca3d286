"""The GPU check: every CUDA-only branch, and the speeds that matter, in one command and one table.

    python scripts/device_check.py [--sizes 1b,8b] [--out DIR] [--budget-s 450]
    python scripts/device_check.py --sizes tiny --device cpu    # the script's own test (minutes)

Needs one CUDA GPU and the project's dependencies; downloads nothing. Backbones are Llama configs
of ~1B (Llama-3.2-1B's shape) and ~8B (Llama-3.1-8B's) with random bf16 weights: speed and memory
do not depend on the weight values. Data: synthetic 2,048-token examples (2k context).

Per size, rows of the table:
  encode == numpy      the torch encoders on CUDA give the numpy codecs' bits (every codec), and
                       the torch decoders on CUDA the numpy decoders' (device decode)
  bare forward         backbone.hidden_states over the batches, tokens/s
  extract (GPU enc.)   extract_batches with --encode device (the CUDA default): tokens/s, % of
                       bare, writer cores busy (process CPU time less the main thread's, / wall)
  extract (CPU enc.)   the same with --encode host (float32 rows to the host, numpy codecs)
  train ladder/xladder steps/s from the store (pinned read-ahead, non-blocking copies, device
                       decode, bf16 autocast with the NormLinear autograd function), peak GPU
                       memory, loader overhead vs the same steps from batches already on the GPU
  lora / qlora step    peft LoRA on the bf16 model (and QLoRA on nf4, 1B only) at the same
                       batches: steps/s, peak memory (only where peft / bitsandbytes are installed)
  generate             tokens/s of 16 sequences x 64 new tokens: backbone alone, + Ladder, + xLadder
For the 1B size also, through the real command: `torchrun --nproc-per-node 1 -m extract` (nccl) and
`extract --quantization nf4` on CUDA (bitsandbytes), from the model saved to a temporary directory.

The table is printed as rows complete (a run cut short still shows what it measured) and written
to DIR/device_check.json with --out. --budget-s skips what would start after that many seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.backbones import Backbone  # noqa: E402
from extract.encode import encode_rows  # noqa: E402
from extract.loop import extract_batches, padded_batch  # noqa: E402
from extract.provenance import Provenance  # noqa: E402
from featurestore import FeatureStore, StoreSpec, StoreWriter, TokenTable, get_codec  # noqa: E402
from featurestore.layout import plan_batches  # noqa: E402
from train_side.config import DataConfig  # noqa: E402
from train_side.data import loader_settings, plan, read_ahead, read_batch  # noqa: E402
from train_side.inference.generate import Pipeline, generate  # noqa: E402
from train_side.network.encoded import DECODERS  # noqa: E402
from train_side.network.model import FrozenHead, SideConfig, SideNetwork  # noqa: E402
from train_side.training.train import Run, RunSpec  # noqa: E402

from benchlib import causal_lm, with_lora  # noqa: E402


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped backbone (random bf16 weights) and the synthetic data run through it:
    ``examples`` sequences of ``context`` tokens."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    examples: int
    context: int = 2048
    vocab_size: int = 128256  # Llama 3's

    @property
    def token_budget(self) -> int:
        """Extraction: 4 examples per forward."""
        return 4 * self.context

    @property
    def train_budget(self) -> int:
        """Training: 2 examples per step."""
        return 2 * self.context

    def llama_config(self):
        from transformers import LlamaConfig

        config = LlamaConfig(vocab_size=self.vocab_size, max_position_embeddings=8192, rope_theta=500000.0,
                             hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                             num_hidden_layers=self.num_hidden_layers, num_attention_heads=self.num_attention_heads,
                             num_key_value_heads=self.num_key_value_heads, tie_word_embeddings=self.tie_word_embeddings)
        config._attn_implementation = "sdpa"
        return config


SHAPES = {shape.name: shape for shape in (
    Shape("1b", 2048, 8192, 16, 32, 8, tie_word_embeddings=True, examples=48),  # Llama-3.2-1B's
    Shape("8b", 4096, 14336, 32, 32, 8, tie_word_embeddings=False, examples=24),  # Llama-3.1-8B's
    # --device cpu: the script's own test (a byte-sized vocabulary: CPU bf16 logits over 128k are slow)
    Shape("tiny", 128, 256, 4, 4, 2, tie_word_embeddings=True, examples=4, context=256, vocab_size=512),
)}


class Table:
    def __init__(self, out: Path | None, budget_s: float):
        self.rows: list[dict] = []
        self.out, self.start, self.budget_s = out, time.perf_counter(), budget_s

    def add(self, size: str, what: str, value: str, note: str = "") -> None:
        row = {"model": size, "measurement": what, "value": value, "note": note}
        self.rows.append(row)
        print(f"{size:<6} {what:<28} {value:>22}  {note}", flush=True)
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "device_check.json").write_text(json.dumps(self.rows, indent=1))

    def time_left(self, what: str, size: str) -> bool:
        if time.perf_counter() - self.start < self.budget_s:
            return True
        self.add(size, what, "skipped", f"past --budget-s {self.budget_s:.0f}")
        return False

    def print(self) -> None:
        print(f"\n{'model':<6} {'measurement':<28} {'value':>22}  note")
        for r in self.rows:
            print(f"{r['model']:<6} {r['measurement']:<28} {r['value']:>22}  {r['note']}")


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens, <eos> as padding): random weights need no vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={**{c: i for i, c in enumerate(alphabet)}, "<eos>": 256}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")


def build(shape: Shape, device: torch.device) -> Backbone:
    """The shape's Llama with random bf16 weights, on ``device``."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:
            model = LlamaForCausalLM(shape.llama_config())
    finally:
        torch.set_default_dtype(default)
    return Backbone.from_model(model, byte_tokenizer(), model_id=f"random-llama-{shape.name}", weights_hash="random",
                               device=device)


def synthetic_tokens(shape: Shape) -> TokenTable:
    """``shape.examples`` random sequences of ``shape.context`` tokens, the loss on their second half."""
    rng = np.random.default_rng(0)
    n = shape.context
    ids = [rng.integers(3, 250, n).astype(np.int32) for _ in range(shape.examples)]
    masks = [np.r_[np.zeros(n // 2, np.uint8), np.ones(n // 2, np.uint8)] for _ in range(shape.examples)]
    return TokenTable.from_examples(ids, masks)


def stored_layers(n_layers: int) -> tuple[int, ...]:
    """every:4, plus the top 3 blocks (an xLadder(2) reads L-2..L)."""
    return tuple(sorted({*range(0, n_layers + 1, 4), *range(n_layers - 3, n_layers + 1)}))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else 0


def empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bare_forward(backbone: Backbone, tokens: TokenTable, batches) -> float:
    sync(backbone.device)
    start = time.perf_counter()
    for first, last in batches:
        backbone.hidden_states(*padded_batch(tokens, first, last, backbone.tokenizer.pad_token_id))
    sync(backbone.device)
    return tokens.n_tokens / (time.perf_counter() - start)


def extraction(backbone: Backbone, shape: Shape, tokens: TokenTable, batches, layers, path: Path,
               encode: str) -> tuple[float, float]:
    """(tokens/s, writer cores busy) of extract_batches into a new store at ``path``."""
    provenance = Provenance(model=backbone.info, tokenizer={"class": "tiny", "pad_token_id": 0},
                            dataset={"dataset": "synthetic", "split": "train", "n_examples": tokens.n_examples},
                            template={"name": "none"}, max_length=shape.context, long_examples="truncate",
                            token_budget=shape.token_budget)
    spec = StoreSpec(layers, backbone.hidden_size, "int8o", provenance.source())
    head, head_config = backbone.head()
    writer = StoreWriter(path, spec, tokens, head=head, head_config=head_config,
                         extra_attrs=Provenance.version_attrs())
    sync(backbone.device)
    cpu0, main0, start = _process_cpu(), time.thread_time(), time.perf_counter()
    extract_batches(backbone, tokens, layers, batches, writer, encode=encode)
    writer.close()
    sync(backbone.device)
    wall = time.perf_counter() - start
    writer_cpu = (_process_cpu() - cpu0) - (time.thread_time() - main0)
    return tokens.n_tokens / wall, writer_cpu / wall


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def codecs_match(backbone: Backbone, tokens: TokenTable) -> tuple[bool, str]:
    """The CUDA encoders and decoders against numpy, on real hidden states of this backbone."""
    ids, mask = padded_batch(tokens, 0, 2, backbone.tokenizer.pad_token_id)
    states = backbone.hidden_states(ids[:, :512], mask[:, :512])
    bad = []
    for k in (0, len(states) // 2, len(states) - 1):
        x = states[k].reshape(-1, states[k].shape[-1]).float()
        host = x.cpu().numpy()
        for name in ("fp32", "fp16", "bf16", "int8", "int8o"):
            codec = get_codec(name)
            want, want_absmax, want_energy = codec.encode_rows(host.copy())
            parts, absmax, energy = encode_rows(codec, x.clone())
            for part, value in parts.items():
                got = value.cpu().numpy().view(want[part].dtype) if value.dtype == torch.int16 else value.cpu().numpy()
                if got.tobytes() != want[part].tobytes():
                    bad.append(f"{name}.{part}@{k}")
            if absmax.cpu().numpy().tobytes() != want_absmax.tobytes() or energy.cpu().numpy().tobytes() != want_energy.tobytes():
                bad.append(f"{name}.stats@{k}")
            if name in DECODERS:
                decoded = DECODERS[name]({p: v.to(backbone.device) for p, v in _torch_parts(want).items()}).cpu().numpy()
                if decoded.tobytes() != codec.decode(want).tobytes():
                    bad.append(f"{name}.decode@{k}")
    return not bad, ", ".join(bad[:6])


def _torch_parts(parts: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.view(np.int16) if v.dtype == np.uint16 and k != "values" else v.copy())
            for k, v in parts.items()}


def training(store: FeatureStore, kind: str, out: Path, shape: Shape, device: torch.device) -> dict:
    """steps/s from the store (the training path) and from batches already on the GPU, peak memory."""
    dims = Provenance.load(store.attrs).backbone_sizes
    side = SideConfig(**dims, kind=kind, every=4) if kind == "ladder" else SideConfig(**dims, kind=kind, delta=2)
    data = DataConfig(token_budget=shape.train_budget, val_fraction=0.0, epochs=1)
    batches = plan(store, np.arange(store.n_examples), data.token_budget)
    run = Run.for_store(store, RunSpec.at(out / kind, side), data=data, total_steps=3 * len(batches), device=device)
    layers = side.inputs
    warm = read_batch(store, batches[0], layers).to(device)
    run.train_step(warm)  # kernels chosen, allocator warmed
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for batch in read_ahead(store, batches, layers, **loader_settings(device)):
        run.train_step(batch.to(device))
    sync(device)
    from_store = len(batches) / (time.perf_counter() - start)
    peak = peak_memory(device)
    resident = [read_batch(store, b, layers).to(device) for b in batches]
    sync(device)
    start = time.perf_counter()
    for batch in resident:
        run.train_step(batch)
    sync(device)
    in_gpu = len(batches) / (time.perf_counter() - start)
    return {"steps_s": from_store, "steps_s_resident": in_gpu, "peak": peak, "params": run.model.n_parameters(),
            "tokens_per_step": store.n_tokens / len(batches)}


def peft_step(model, tokens: TokenTable, shape: Shape, device: torch.device, quantized: bool = False) -> dict:
    """steps/s and peak memory of a LoRA (r=16 on every linear) training step of ``model``; with
    ``quantized`` (an nf4 model) prepared as QLoRA first."""
    model = with_lora(model, rank=16, kbit=quantized)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids, mask = padded_batch(tokens, 0, shape.train_budget // shape.context, 0)
    ids, mask = ids.to(device), mask.to(device)
    labels = ids.masked_fill(mask == 0, -100)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    sync(device)
    reset_peak(device)
    start = time.perf_counter()
    for _ in range(5):
        step()
    sync(device)
    result = {"steps_s": 5 / (time.perf_counter() - start), "peak": peak_memory(device)}
    if not quantized:
        model.unload().eval().requires_grad_(False)  # the bf16 backbone goes on without adapters
    del model, optimizer
    empty_cache(device)
    return result


def generation(backbone: Backbone, store: FeatureStore) -> dict[str, float]:
    head = FrozenHead(*store.head()).to(backbone.device)
    dims = Provenance.load(store.attrs).backbone_sizes
    codec = store.codec
    torch.manual_seed(0)
    pipelines = {"backbone alone": Pipeline(backbone, head)}
    for kind, extra in (("ladder", {"every": 4}), ("xladder", {"delta": 2})):
        side = SideNetwork(SideConfig(**dims, kind=kind, **extra)).to(backbone.device).eval()
        pipelines[kind] = Pipeline(backbone, head, side, codec)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 250, 128).tolist() for _ in range(16)]
    speeds = {}
    for name, pipeline in pipelines.items():
        generate(pipeline, prompts, max_new_tokens=4, pad_id=0, stop=lambda t: False)  # warm-up
        sync(backbone.device)
        start = time.perf_counter()
        outputs = generate(pipeline, prompts, max_new_tokens=64, pad_id=0, stop=lambda t: False)
        sync(backbone.device)
        speeds[name] = sum(map(len, outputs)) / (time.perf_counter() - start)
    return speeds


def command_rows(table: Table, size: str, model_dir: Path, work: Path, device: torch.device) -> None:
    """torchrun (nccl) and nf4 extraction through the real command, from the model saved to disk."""
    common = ["--model", str(model_dir), "--limit", "400", "--layers", "every:4", "--max-length", "512"]
    backend = "nccl" if device.type == "cuda" else "gloo"
    runs = {f"torchrun extract ({backend})": ["torchrun", "--nproc-per-node", "1", "-m", "extract", *common,
                                              "--root", str(work / "nccl")]}
    if importlib.util.find_spec("bitsandbytes") is not None:
        runs["extract nf4 (bnb)"] = [sys.executable, "-m", "extract", *common, "--quantization", "nf4",
                                     "--root", str(work / "nf4")]
    else:
        table.add(size, "extract nf4 (bnb)", "not run", "bitsandbytes is not installed")
    for name, command in runs.items():
        if not table.time_left(name, size):
            continue
        done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=240,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        found = re.search(r"\(([\d,]+) tokens/s computed\)", done.stdout)
        if done.returncode == 0 and found:
            table.add(size, name, f"{found.group(1)} tok/s", "store written and completed, arith 400 examples")
        else:
            lines = (done.stderr or done.stdout or "no output").strip().splitlines() or ["no output"]
            table.add(size, name, f"FAILED ({done.returncode})", lines[-1][:120])


def check_size(shape: Shape, device: torch.device, table: Table, work: Path, with_commands: bool) -> None:
    size = shape.name
    if not table.time_left("(whole size)", size):
        return
    backbone = build(shape, device)
    tokens = synthetic_tokens(shape)
    batches = plan_batches(np.diff(tokens.offsets), shape.token_budget)
    layers = stored_layers(backbone.n_layers)

    same, where = codecs_match(backbone, tokens)
    table.add(size, "encode/decode == numpy", "yes" if same else "NO",
              where or f"every codec's bits, 3 layers, torch on {device.type} vs numpy")

    bare_forward(backbone, tokens, batches[:1])  # warm-up
    bare = bare_forward(backbone, tokens, batches)
    table.add(size, "bare forward (bf16)", f"{bare:,.0f} tok/s",
              f"{tokens.n_tokens:,} tokens, {shape.token_budget} per batch")
    store_path = work / f"{size}-device.zarr"
    for encode in ("device", "host"):
        bare = max(bare, bare_forward(backbone, tokens, batches))  # the best bare pass: a conservative ratio
        path = work / f"{size}-{encode}.zarr"
        speed, busy = extraction(backbone, shape, tokens, batches, layers, path, encode)
        table.add(size, f"extract int8o, {'GPU' if encode == 'device' else 'CPU'} encoding", f"{speed:,.0f} tok/s",
                  f"{speed / bare:.0%} of bare; writer {busy:.1f} of {os.cpu_count()} cores busy; "
                  f"{len(layers)} layers (every:4 + top:3)")
        if encode == "host":
            shutil.rmtree(path, ignore_errors=True)
    store = FeatureStore.open(store_path)

    for kind in ("ladder", "xladder"):
        if not table.time_left(f"train {kind}", size):
            break
        r = training(store, kind, work / f"runs-{size}", shape, device)
        overhead = r["steps_s_resident"] / r["steps_s"] - 1
        table.add(size, f"train {kind} ({shape.context} ctx)", f"{r['steps_s']:.2f} steps/s",
                  f"{r['tokens_per_step']:,.0f} tok/step, peak {r['peak'] / 2**30:.2f} GiB, {r['params'] / 1e6:.1f} M "
                  f"params; loader overhead {overhead:+.0%} (vs batches resident on the GPU)")

    if table.time_left("generate", size):
        for name, speed in generation(backbone, store).items():
            table.add(size, f"generate: {name}", f"{speed:,.1f} tok/s", "16 sequences x 64 new tokens, greedy")

    if importlib.util.find_spec("peft") is None:
        table.add(size, "peft LoRA / QLoRA step", "not run", "peft is not installed")
    elif table.time_left("peft LoRA step", size):
        r = peft_step(backbone.model, tokens, shape, device)
        table.add(size, "peft LoRA step (bf16)", f"{r['steps_s']:.2f} steps/s",
                  f"{shape.train_budget} tok/step, peak {r['peak'] / 2**30:.2f} GiB, r=16 on every linear")

    if with_commands and table.time_left("extract commands", size):
        model_dir = work / f"model-{size}"
        backbone.model.save_pretrained(model_dir)
        backbone.tokenizer.save_pretrained(model_dir)
        command_rows(table, size, model_dir, work, device)
        if (importlib.util.find_spec("peft") and importlib.util.find_spec("bitsandbytes")
                and table.time_left("peft QLoRA step", size)):
            del backbone
            empty_cache(device)
            nf4 = causal_lm(model_dir, dtype=torch.bfloat16, device=device, nf4=True)
            r = peft_step(nf4, tokens, shape, device, quantized=True)
            table.add(size, "peft QLoRA step (nf4)", f"{r['steps_s']:.2f} steps/s",
                      f"{shape.train_budget} tok/step, peak {r['peak'] / 2**30:.2f} GiB")
        shutil.rmtree(model_dir, ignore_errors=True)
    empty_cache(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1b,8b", help="Comma-separated, of: " + ", ".join(SHAPES))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--device", default="cuda", help="cpu with --sizes tiny: the script's own smoke test")
    args = parser.parse_args()
    unknown = sorted(set(args.sizes.split(",")) - set(SHAPES))
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {', '.join(SHAPES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("device_check needs a CUDA GPU (torch.cuda.is_available() is False)")
    name = torch.cuda.get_device_properties(0).name if device.type == "cuda" else "CPU"
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if device.type == "cuda" else 0
    print(f"{name}, {memory:.0f} GiB; torch {torch.__version__}; {os.cpu_count()} CPU cores; "
          f"peft {'yes' if importlib.util.find_spec('peft') else 'no'}, "
          f"bitsandbytes {'yes' if importlib.util.find_spec('bitsandbytes') else 'no'}\n", flush=True)
    table = Table(args.out, args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="device-check-"))
    try:
        for size in args.sizes.split(","):
            check_size(SHAPES[size], device, table, work, with_commands=size in ("1b", "tiny"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        table.print()


if __name__ == "__main__":
    main()
