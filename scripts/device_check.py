"""The GPU check: every CUDA-only branch, and the speeds that matter, in one command and one table.

    python scripts/device_check.py [--sizes 1b,8b] [--out DIR] [--budget-s 450]

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
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from extract.backbones.loading import Backbone, _describe  # noqa: E402
from extract.encode import encode_rows  # noqa: E402
from extract.loop import extract_batches, padded_batch  # noqa: E402
from extract.provenance import Provenance  # noqa: E402
from featurestore import FeatureStore, StoreSpec, StoreWriter, TokenTable, get_codec  # noqa: E402
from featurestore.layout import plan_batches  # noqa: E402
from train_side.config import DataConfig  # noqa: E402
from train_side.data import loader_settings, plan, read_ahead, read_batch  # noqa: E402
from train_side.inference.generate import Pipeline, generate  # noqa: E402
from train_side.network.encoded import DECODERS  # noqa: E402
from train_side.network.model import FrozenHead, SideConfig  # noqa: E402
from train_side.training.train import Run, RunSpec  # noqa: E402

SIZES = {  # Llama-3.2-1B and Llama-3.1-8B shapes
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True, examples=48),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False, examples=24),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True, examples=4),  # --device cpu: the script's own test
}
DEVICE = torch.device("cuda")
CONTEXT = 2048
TOKEN_BUDGET = 8192  # extraction: 4 examples of 2k per forward
TRAIN_BUDGET = 4096  # training: 2 examples of 2k per step


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


def tokenizer():
    from tests.models import tiny_tokenizer

    t = tiny_tokenizer()
    t.pad_token = t.eos_token
    return t


def build(size: str) -> Backbone:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {k: v for k, v in SIZES[size].items() if k != "examples"}
    config = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with DEVICE:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.eval().requires_grad_(False)
    info = _describe(config, f"random-llama-{size}", "random", torch.bfloat16, "none")
    return Backbone(model, tokenizer(), info, DEVICE)


def synthetic_tokens(n_examples: int) -> TokenTable:
    rng = np.random.default_rng(0)
    ids = [rng.integers(3, 250, CONTEXT).astype(np.int32) for _ in range(n_examples)]
    masks = [np.r_[np.zeros(CONTEXT // 2, np.uint8), np.ones(CONTEXT // 2, np.uint8)] for _ in range(n_examples)]
    return TokenTable.from_examples(ids, masks)


def stored_layers(n_layers: int) -> tuple[int, ...]:
    """every:4, plus the top 3 blocks (an xLadder(2) reads L-2..L)."""
    return tuple(sorted({*range(0, n_layers + 1, 4), *range(n_layers - 3, n_layers + 1)}))


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE.type == "cuda" else 0


def bare_forward(backbone: Backbone, tokens: TokenTable, batches) -> float:
    sync()
    start = time.perf_counter()
    for first, last in batches:
        backbone.hidden_states(*padded_batch(tokens, first, last, backbone.tokenizer.pad_token_id))
    sync()
    return tokens.n_tokens / (time.perf_counter() - start)


def extraction(backbone: Backbone, tokens: TokenTable, batches, layers, path: Path, encode: str) -> tuple[float, float]:
    """(tokens/s, writer cores busy) of extract_batches into a new store at ``path``."""
    provenance = Provenance(model=backbone.info, tokenizer={"class": "tiny", "pad_token_id": 0},
                            dataset={"dataset": "synthetic", "split": "train", "n_examples": tokens.n_examples},
                            template={"name": "none"}, max_length=CONTEXT, long_examples="truncate",
                            token_budget=TOKEN_BUDGET)
    spec = StoreSpec(layers, backbone.hidden_size, "int8o", provenance.source())
    head, head_config = backbone.head()
    writer = StoreWriter(path, spec, tokens, head=head, head_config=head_config,
                         extra_attrs=Provenance.version_attrs())
    sync()
    cpu0, main0, start = _process_cpu(), time.thread_time(), time.perf_counter()
    extract_batches(backbone, tokens, layers, batches, writer, encode=encode)
    writer.close()
    sync()
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
                decoded = DECODERS[name]({p: v.to(DEVICE) for p, v in _torch_parts(want).items()}).cpu().numpy()
                if decoded.tobytes() != codec.decode(want).tobytes():
                    bad.append(f"{name}.decode@{k}")
    return not bad, ", ".join(bad[:6])


def _torch_parts(parts: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.view(np.int16) if v.dtype == np.uint16 and k != "values" else v.copy())
            for k, v in parts.items()}


def training(store: FeatureStore, kind: str, out: Path) -> dict:
    """steps/s from the store (the training path) and from batches already on the GPU, peak memory."""
    device = DEVICE
    dims = Provenance.load(store.attrs).backbone_sizes
    side = SideConfig(**dims, kind=kind, every=4) if kind == "ladder" else SideConfig(**dims, kind=kind, delta=2)
    data = DataConfig(token_budget=TRAIN_BUDGET, val_fraction=0.0, epochs=1)
    batches = plan(store, np.arange(store.n_examples), data.token_budget)
    run = Run.for_store(store, RunSpec.at(out / kind, side), data=data, total_steps=3 * len(batches), device=device)
    layers = side.inputs
    warm = read_batch(store, batches[0], layers).to(device)
    run.train_step(warm)  # kernels chosen, allocator warmed
    sync()
    reset_peak()
    start = time.perf_counter()
    for batch in read_ahead(store, batches, layers, **loader_settings(device)):
        run.train_step(batch.to(device))
    sync()
    from_store = len(batches) / (time.perf_counter() - start)
    peak = peak_memory()
    resident = [read_batch(store, b, layers).to(device) for b in batches]
    sync()
    start = time.perf_counter()
    for batch in resident:
        run.train_step(batch)
    sync()
    in_gpu = len(batches) / (time.perf_counter() - start)
    return {"steps_s": from_store, "steps_s_resident": in_gpu, "peak": peak, "params": run.model.n_parameters(),
            "tokens_per_step": store.n_tokens / len(batches)}


def peft_step(backbone: Backbone, tokens: TokenTable, quantized_dir: Path | None = None) -> dict | None:
    """steps/s and peak memory of a LoRA (or, from ``quantized_dir``, QLoRA on nf4) training step."""
    if importlib.util.find_spec("peft") is None:
        return None
    from peft import LoraConfig, get_peft_model

    model = backbone.model if quantized_dir is None else None
    if quantized_dir is not None:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        from peft import prepare_model_for_kbit_training

        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(quantized_dir, quantization_config=q, dtype=torch.bfloat16,
                                                     device_map={"": DEVICE})
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids, mask = padded_batch(tokens, 0, TRAIN_BUDGET // CONTEXT, 0)
    ids, mask = ids.to(DEVICE), mask.to(DEVICE)
    labels = ids.masked_fill(mask == 0, -100)

    def step():
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    sync()
    reset_peak()
    start = time.perf_counter()
    for _ in range(5):
        step()
    sync()
    result = {"steps_s": 5 / (time.perf_counter() - start), "peak": peak_memory()}
    if quantized_dir is None:
        model.unload()  # the bf16 backbone goes on without adapters
        backbone.model.eval().requires_grad_(False)
    del model, optimizer
    empty_cache()
    return result


def empty_cache() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()


def generation(backbone: Backbone, store: FeatureStore) -> dict[str, float]:
    head = FrozenHead(*store.head()).to(backbone.device)
    dims = Provenance.load(store.attrs).backbone_sizes
    codec = store.codec
    torch.manual_seed(0)
    pipelines = {"backbone alone": Pipeline(backbone, head)}
    for kind, extra in (("ladder", {"every": 4}), ("xladder", {"delta": 2})):
        from train_side.network.model import SideNetwork

        side = SideNetwork(SideConfig(**dims, kind=kind, **extra)).to(backbone.device).eval()
        pipelines[kind] = Pipeline(backbone, head, side, codec)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 250, 128).tolist() for _ in range(16)]
    speeds = {}
    for name, pipeline in pipelines.items():
        generate(pipeline, prompts, max_new_tokens=4, pad_id=0, stop=lambda t: False)  # warm-up
        sync()
        start = time.perf_counter()
        outputs = generate(pipeline, prompts, max_new_tokens=64, pad_id=0, stop=lambda t: False)
        sync()
        speeds[name] = sum(map(len, outputs)) / (time.perf_counter() - start)
    return speeds


def command_rows(table: Table, size: str, model_dir: Path, work: Path) -> None:
    """torchrun (nccl) and nf4 extraction through the real command, from the model saved to disk."""
    common = ["--model", str(model_dir), "--limit", "400", "--layers", "every:4", "--max-length", "512"]
    runs = {f"torchrun extract ({'nccl' if DEVICE.type == 'cuda' else 'gloo'})": ["torchrun", "--nproc-per-node", "1", "-m", "extract", *common,
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


def check_size(size: str, table: Table, work: Path, with_commands: bool) -> None:
    if not table.time_left("(whole size)", size):
        return
    global CONTEXT, TOKEN_BUDGET, TRAIN_BUDGET
    CONTEXT = 256 if size == "tiny" else 2048
    TOKEN_BUDGET, TRAIN_BUDGET = 4 * CONTEXT, 2 * CONTEXT
    backbone = build(size)
    L = backbone.n_layers
    tokens = synthetic_tokens(SIZES[size]["examples"])
    batches = plan_batches(np.diff(tokens.offsets), TOKEN_BUDGET)
    layers = stored_layers(L)

    same, where = codecs_match(backbone, tokens)
    table.add(size, "encode/decode == numpy", "yes" if same else "NO",
              where or f"every codec's bits, 3 layers, torch on {DEVICE.type} vs numpy")

    bare_forward(backbone, tokens, batches[:1])  # warm-up
    bare = bare_forward(backbone, tokens, batches)
    table.add(size, "bare forward (bf16)", f"{bare:,.0f} tok/s", f"{tokens.n_tokens:,} tokens, {TOKEN_BUDGET} per batch")
    store_path = work / f"{size}-device.zarr"
    for encode in ("device", "host"):
        bare = max(bare, bare_forward(backbone, tokens, batches))  # the best bare pass: a conservative ratio
        path = work / f"{size}-{encode}.zarr"
        speed, busy = extraction(backbone, tokens, batches, layers, path, encode)
        table.add(size, f"extract int8o, {'GPU' if encode == 'device' else 'CPU'} encoding", f"{speed:,.0f} tok/s",
                  f"{speed / bare:.0%} of bare; writer {busy:.1f} of {os.cpu_count()} cores busy; "
                  f"{len(layers)} layers (every:4 + top:3)")
        if encode == "host":
            shutil.rmtree(path, ignore_errors=True)
    store = FeatureStore.open(store_path)

    for kind in ("ladder", "xladder"):
        if not table.time_left(f"train {kind}", size):
            break
        r = training(store, kind, work / f"runs-{size}")
        overhead = r["steps_s_resident"] / r["steps_s"] - 1
        table.add(size, f"train {kind} ({CONTEXT} ctx)", f"{r['steps_s']:.2f} steps/s",
                  f"{r['tokens_per_step']:,.0f} tok/step, peak {r['peak'] / 2**30:.2f} GiB, {r['params'] / 1e6:.1f} M "
                  f"params; loader overhead {overhead:+.0%} (vs batches resident on the GPU)")

    if table.time_left("generate", size):
        for name, speed in generation(backbone, store).items():
            table.add(size, f"generate: {name}", f"{speed:,.1f} tok/s", "16 sequences x 64 new tokens, greedy")

    if importlib.util.find_spec("peft") is None:
        table.add(size, "peft LoRA / QLoRA step", "not run", "peft is not installed")
    elif table.time_left("peft LoRA step", size):
        r = peft_step(backbone, tokens)
        table.add(size, "peft LoRA step (bf16)", f"{r['steps_s']:.2f} steps/s",
                  f"{TRAIN_BUDGET} tok/step, peak {r['peak'] / 2**30:.2f} GiB, r=16 on every linear")

    if with_commands and table.time_left("extract commands", size):
        model_dir = work / f"model-{size}"
        backbone.model.save_pretrained(model_dir)
        backbone.tokenizer.save_pretrained(model_dir)
        command_rows(table, size, model_dir, work)
        if (importlib.util.find_spec("peft") and importlib.util.find_spec("bitsandbytes")
                and table.time_left("peft QLoRA step", size)):
            del backbone
            empty_cache()
            r = peft_step(None, tokens, quantized_dir=model_dir)  # type: ignore[arg-type]
            table.add(size, "peft QLoRA step (nf4)", f"{r['steps_s']:.2f} steps/s",
                      f"{TRAIN_BUDGET} tok/step, peak {r['peak'] / 2**30:.2f} GiB")
        shutil.rmtree(model_dir, ignore_errors=True)
    empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1b,8b")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=450.0)
    parser.add_argument("--device", default="cuda", help="cpu with --sizes tiny: the script's own smoke test")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("device_check needs a CUDA GPU (torch.cuda.is_available() is False)")
    name = torch.cuda.get_device_properties(0).name if DEVICE.type == "cuda" else "CPU"
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if DEVICE.type == "cuda" else 0
    print(f"{name}, {memory:.0f} GiB; torch {torch.__version__}; {os.cpu_count()} CPU cores; "
          f"peft {'yes' if importlib.util.find_spec('peft') else 'no'}, "
          f"bitsandbytes {'yes' if importlib.util.find_spec('bitsandbytes') else 'no'}\n", flush=True)
    table = Table(args.out, args.budget_s)
    work = Path(tempfile.mkdtemp(prefix="device-check-"))
    try:
        for i, size in enumerate(args.sizes.split(",")):
            check_size(size, table, work, with_commands=size in ("1b", "tiny"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        table.print()


if __name__ == "__main__":
    main()
