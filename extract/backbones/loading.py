"""The frozen LLM: loaded once, identically at extraction and at evaluation, and described by a
JSON-able ``info`` that says exactly which weights computed a store.

A model is a packaged alias (see :mod:`.packaged`), a local Hugging Face directory, or a hub id.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..errors import BackboneError
from .blocks import export_top_blocks
from .families import Family, family_of
from .head import export_head
from .packaged import PACKAGED_MODELS, locate_packaged
from .weights import weights_hash

QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IDENTITY_FIELDS = ("weights_hash", "quantization", "dtype", "architecture")  # what makes two backbones the same
FLOAT16_UNSAFE = ("gemma3",)  # model types whose hidden states exceed float16's range (65504)


@dataclass
class Backbone:
    """A frozen causal LM in eval mode, its tokenizer (pad token set; callers choose the padding
    side), a JSON-able description and the device it runs on."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    info: dict
    device: torch.device

    @property
    def n_layers(self) -> int:
        """L, the number of blocks; hidden states are indexed 0..L."""
        return self.model.config.get_text_config().num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.get_text_config().hidden_size

    @property
    def family(self) -> Family:
        return family_of(self.model.config)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """All L+1 hidden states (B, T, d) on ``self.device``: 0 = embeddings, k = output of block k,
        L = after the final norm (as HF's output_hidden_states; before OPT-350m's projection, which
        the head applies). Runs the decoder only, so no logits over the vocabulary are computed.
        Inference tensors: ``clone()`` them before autograd."""
        with torch.inference_mode():
            return self._run(self.model.get_decoder(), input_ids=input_ids.to(self.device),
                             attention_mask=attention_mask.to(self.device), use_cache=False)[0]

    @torch.inference_mode()
    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The whole causal LM, as the model computes it: (logits (B, T, V), h_L (B, T, d))."""
        states, output = self._run(self.model, input_ids=input_ids.to(self.device),
                                   attention_mask=attention_mask.to(self.device), use_cache=False)
        return output.logits, states[-1]

    def _run(self, module, **inputs) -> tuple[tuple[Tensor, ...], object]:
        """Runs the decoder (or the causal LM) with hidden states; (states, output), where the last
        state is what the head reads: the input of the family's projection, when the model has one."""
        projection = self.family.projection_of(self.model.get_decoder())
        if projection is None:
            output = module(**inputs, output_hidden_states=True)
            return tuple(output.hidden_states), output
        captured = []
        handle = projection.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            output = module(**inputs, output_hidden_states=True)
        finally:
            handle.remove()
        return (*output.hidden_states[:-1], captured[-1]), output

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for :meth:`step` (one per batch of sequences generated together)."""
        return DynamicCache(config=self.model.get_decoder().config)

    @torch.inference_mode()
    def step(self, input_ids: Tensor, attention_mask: Tensor, cache: DynamicCache) -> tuple[Tensor, ...]:
        """The L+1 hidden states (B, T_new, d) of new tokens ``input_ids`` (B, T_new), appending their
        keys and values to ``cache``. ``attention_mask`` (B, cached + T_new) is 1 on real tokens and 0
        on left padding; positions count real tokens only, so left padding shifts nothing."""
        T = input_ids.shape[1]
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -T:]
        return self._run(self.model.get_decoder(), input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=positions, cache=cache, use_cache=True)[0]

    def head(self) -> tuple[dict[str, np.ndarray], dict]:
        """The frozen head: everything between h_L and the logits (see :func:`.head.export_head`)."""
        return export_head(self.model, self.family)

    def top_blocks(self, count: int) -> tuple[dict[str, np.ndarray], dict]:
        """Its top ``count`` blocks and final norm (see :func:`.blocks.export_top_blocks`)."""
        return export_top_blocks(self.model, count)

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, model_id: str,
                   weights_hash: str, device: torch.device) -> Backbone:
        """A backbone around a causal LM built in memory (a benchmark's random weights, say), frozen
        in eval mode; ``weights_hash`` stands for the hash of weights no file holds."""
        model.eval().requires_grad_(False)
        return cls(model, tokenizer, _describe(model.config, model_id, weights_hash, model.dtype, "none"), device)


@dataclass(frozen=True)
class BackboneSource:
    """A backbone resolved but not yet loaded: its files, its tokenizer and its ``info``. Enough to
    fingerprint a store (and so to find a cached one) without loading any weights."""

    source: str  # what from_pretrained takes
    info: dict
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    device: torch.device
    quantization_config: BitsAndBytesConfig | None
    stored_as: str = "float32"  # the weights' dtype in their files ("gguf": a packaged model): how the head compresses
    converted: Path | None = None  # a packaged model's directory, converted from its GGUF while resolving

    def load(self) -> Backbone:
        """The model itself: eval mode, no gradients, on ``device``."""
        causal_lm = AutoModelForCausalLM.from_pretrained(
            self.source, dtype=self.dtype, quantization_config=self.quantization_config,
            device_map={"": self.device},
        )
        causal_lm.eval().requires_grad_(False)
        if self.info["quantization"] == "int8":
            _silence_int8_cast_warning()
        return Backbone(causal_lm, self.tokenizer, self.info, self.device)


def quiet_libraries() -> None:
    """Our own progress bars tell the story; the libraries' loading bars would bury them."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def resolve_backbone(model: str, *, quantization: str = "none", dtype: str = "auto", device: str = "auto") -> BackboneSource:
    """Locates a frozen causal LM and describes it without loading its weights: a packaged alias
    (smollm2-135m, gemma3-270m), a local Hugging Face directory, or a hub id; optionally
    bitsandbytes-quantised (nf4, fp4, int8). dtype "auto" is bfloat16 on CUDA and float32 on CPU;
    device "auto" is CUDA when available."""
    torch_device = _parse_device(device)
    torch_dtype = _parse_dtype(dtype, torch_device)
    quantization_config = _quantization_config(quantization, torch_dtype)
    located = _locate(model)
    config = AutoConfig.from_pretrained(located.source)
    family_of(config)  # refuses, by name, a family that cannot work: before any weights are hashed or loaded
    if torch_dtype == torch.float16 and config.get_text_config().model_type.startswith(FLOAT16_UNSAFE):
        raise BackboneError(f"{config.model_type} hidden states exceed float16's range; use dtype bfloat16 or float32")
    weights = located.weights_hash or weights_hash(_local_weights(located))
    info = _describe(config, located.id, weights, torch_dtype, quantization)
    stored_as = "gguf" if model in PACKAGED_MODELS else str(getattr(config, "dtype", None) or "float32")
    return BackboneSource(located.source, info, config, _load_tokenizer(located.source), torch_dtype, torch_device,
                          quantization_config, stored_as.removeprefix("torch."), located.converted)


def load_backbone(model: str, *, quantization: str = "none", dtype: str = "auto", device: str = "auto") -> Backbone:
    """Resolves then loads a backbone (see :func:`resolve_backbone`)."""
    return resolve_backbone(model, quantization=quantization, dtype=dtype, device=device).load()


def same_backbone(info_a: dict, info_b: dict) -> list[str]:
    """The identity fields (weights, quantization, dtype, architecture) on which two backbone infos
    differ; empty when both computed the same hidden states, whatever they were called."""
    return [field for field in IDENTITY_FIELDS if info_a.get(field) != info_b.get(field)]


class _Located(NamedTuple):
    id: str  # the alias, the absolute local path, or the hub id
    source: str  # what from_pretrained takes
    directory: Path  # where the files are (or will be, for a hub id): its snapshot in the HF cache
    weights_hash: str | None  # when known without hashing the directory's files
    converted: Path | None = None  # written just now: a packaged model's GGUF converted into the cache


def _locate(model: str) -> _Located:
    if model in PACKAGED_MODELS:
        directory, sha, converted = locate_packaged(model)
        return _Located(model, str(directory), directory, sha, directory if converted else None)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BackboneError(f"{path} is not a model directory: it has no config.json")
        path = path.resolve()
        return _Located(str(path), str(path), path, None)
    if path.exists():
        raise BackboneError(f"{model} is a file; pass the model's directory (config.json + safetensors)")
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model:
        raise BackboneError(f"no such directory: {model}")
    return _Located(model, model, _hub_snapshot(model), None)


def _local_weights(located: _Located) -> Path:
    """The directory holding the weight files; a hub model's weights are downloaded (or found in
    the HF cache) first, since they are what the hash covers."""
    if located.id == located.source and not Path(located.source).is_dir():
        from huggingface_hub import snapshot_download

        snapshot_download(located.id, allow_patterns=["*.json", "*.safetensors", "*.bin"])
    return located.directory


def _hub_snapshot(model_id: str) -> Path:
    """The snapshot directory of a hub model (its config fetched, or found in the HF cache offline)."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers.utils import cached_file

    try:
        return Path(cached_file(model_id, "config.json")).parent
    except (OSError, ValueError) as error:
        unreachable = isinstance(error.__cause__, LocalEntryNotFoundError)
        reason = "the hub is unreachable" if unreachable else f"the hub says: {str(error).splitlines()[0]}"
        aliases = ", ".join(PACKAGED_MODELS)
        raise BackboneError(
            f"model {model_id} not found: not a local directory, not a packaged alias ({aliases}), and {reason}"
        ) from None


def _load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise BackboneError(f"{source} has no usable tokenizer ({reason}); save one beside the model") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"the tokenizer of {source} has neither a pad nor an eos token; add a pad token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _describe(config, model_id: str, weights: str, dtype: torch.dtype, quantization: str) -> dict:
    """The JSON-able info: stable across runs and machines for the same weights and settings."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    text_config = config.get_text_config()
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise BackboneError(f"{config.model_type} is not a causal language model architecture transformers knows")
    family = family_of(config)
    info = {
        "id": model_id,
        "architecture": MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__,
        "model_type": config.model_type,
        "weights_hash": weights,
        "dtype": str(dtype).removeprefix("torch."),
        "quantization": quantization,
        "n_layers": text_config.num_hidden_layers,
        "hidden_size": text_config.hidden_size,
    }
    sizes = {"intermediate_size": family.mlp_width(text_config)}  # whatever the config calls it (n_inner, ffn_dim)
    for field in ("vocab_size", "num_attention_heads", "max_position_embeddings"):
        sizes[field] = getattr(text_config, field, None)
    return info | {field: value for field, value in sizes.items() if value is not None}


def _parse_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", device)
    if match is None:
        raise BackboneError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackboneError(f"device {device} asked for but CUDA is not available; use device cpu or auto")
        if int(match.group(1) or 0) >= torch.cuda.device_count():
            raise BackboneError(f"no device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device(device)


def _parse_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bfloat16 matmuls are several times slower than float32 on CPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _quantization_config(quantization: str, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    if quantization not in QUANTIZATIONS:
        raise BackboneError(f"unknown quantization {quantization!r}; use one of {', '.join(QUANTIZATIONS)}")
    if quantization == "none":
        return None
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=dtype)


class _DropInt8CastWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("MatMul8bitLt: inputs will be cast")


def _silence_int8_cast_warning() -> None:
    """bitsandbytes logs a warning on every int8 matmul whose input is not float16; once per layer
    per batch would drown the extraction's output."""
    bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _DropInt8CastWarning) for f in bnb_logger.filters):
        bnb_logger.addFilter(_DropInt8CastWarning())
