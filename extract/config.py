"""What one extraction is asked to do: every setting of `extract`, with its default, in one place.
The command's options are derived from these fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from featurestore import CODECS

from .backbones.loading import QUANTIZATIONS
from .tasks.prompts import TEMPLATES


def _help(text: str, **more) -> dict:
    return {"help": text, **more}


@dataclass(frozen=True)
class ExtractConfig:
    model: str = field(default="smollm2-135m", metadata=_help(
        "Packaged alias (smollm2-135m, gemma3-270m), local HF directory, or hub id."))
    dataset: str = field(default="arith", metadata=_help(
        "arith (built-in), a local .json/.jsonl/.parquet/.csv file, or a hub id[:config]."))
    split: str = field(default="train", metadata=_help("Dataset split; slices like 'train[:90%]' work for files."))
    root: str = field(default="stores", metadata=_help(
        "Directory of stores; a store with the same fingerprint there is a cache hit."))
    quantization: str = field(default="none", metadata=_help("bitsandbytes quantization.", choices=QUANTIZATIONS))
    dtype: str = field(default="auto", metadata=_help(
        "auto: bfloat16 on CUDA, float32 on CPU.", choices=("auto", "float32", "bfloat16", "float16")))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda or cuda:N."))
    question_field: str = field(default="question", metadata=_help("Column holding the question."))
    answer_field: str = field(default="answer", metadata=_help("Column holding the answer (the training target)."))
    dataset_config: str | None = field(default=None, metadata=_help(
        "Config of a hub dataset (or give it as id:config)."))
    template: str = field(default="plain", metadata=_help(
        "plain: 'Question: ...\\nAnswer: ...'; chat: the tokenizer's chat template.", choices=TEMPLATES))
    max_length: int = field(default=512, metadata=_help(
        "Longer examples are truncated (counted) or, with --skip-long, dropped.", min=1))
    skip_long: bool = field(default=False, metadata=_help(
        "Drop examples longer than --max-length instead of truncating."))
    layers: str = field(default="all", metadata=_help(
        "Hidden states to store: all, a list like 0,4,8, every:K or top:D."))
    top_blocks: int = field(default=8, metadata=_help(
        "Also store the backbone's top N blocks (Llama-style backbones; others store none), so that a side network "
        "of --kind top starts from the store with no backbone loaded. 0: none.", min=0))
    codec: str = field(default="int8o", metadata=_help(
        f"{', '.join(CODECS)} (int8o: ~3x smaller than fp16, <=2% error per token)."))
    token_budget: int = field(default=4096, metadata=_help("Padded tokens per forward batch (part of the fingerprint: "
                                                           "batch composition changes float results).", min=1))
    encode: str = field(default="auto", metadata=_help(
        "Where hidden states are encoded: auto (on the GPU when the backbone runs on one, else the CPU), "
        "host or device. The stored bytes are the same.", choices=("auto", "host", "device")))
    chunk_mb: float = field(default=4.0, metadata=_help(
        "Target chunk size of the stored arrays (a shard holds 2 chunks).", min=0, min_open=True))
    limit: int | None = field(default=None, metadata=_help("Keep the first N examples (arith: generate N)."))
    seed: int = field(default=0, metadata=_help("Seed of the arith generator."))
    resume: bool = field(default=False, metadata=_help(
        "Continue an interrupted extraction after its last finished shard."))
    dry_run: bool = field(default=False, metadata=_help(
        "Print the estimate (tokens, store size, time, writer bottleneck) and stop: no weights load, nothing is "
        "written."))
    name: str | None = field(default=None, metadata=_help(
        "Store directory name (default: <model>-<dataset>-<split>-<fingerprint>)."))
