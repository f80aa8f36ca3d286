"""Tiny deterministic Hugging Face models of several architectures, saved as local directories."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PhiConfig,
    PhiForCausalLM,
    PreTrainedTokenizerFast,
)

V, D, FF, L, HEADS, KV_HEADS = 300, 64, 128, 3, 4, 2  # vocabulary, width, MLP width, blocks, heads
ARCHITECTURES = ("llama", "gemma3", "phi")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + <eos>), no pad token."""
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def tiny_config(architecture: str):
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512)
    if architecture == "llama":  # tied embeddings
        return LlamaForCausalLM, LlamaConfig(**common, tie_word_embeddings=True)
    if architecture == "gemma3":  # RMSNorm by (1 + weight), a logit softcap, sliding attention
        layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
        return Gemma3ForCausalLM, Gemma3TextConfig(**common, head_dim=16, sliding_window=4, layer_types=layer_types,
                                                   final_logit_softcapping=3.0)
    if architecture == "phi":  # LayerNorm with bias, lm_head with bias, untied
        return PhiForCausalLM, PhiConfig(**common, tie_word_embeddings=False)
    raise ValueError(architecture)


def save_tiny_model(directory: Path, architecture: str, seed: int = 0) -> Path:
    """A seeded random model with random norms and biases (so a head that forgot one fails), and the
    tiny tokenizer, saved as a Hugging Face directory."""
    model_class, config = tiny_config(architecture)
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory
