"""Tiny deterministic Hugging Face models of several architectures, saved as local directories."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Cohere2Config,
    CohereConfig,
    FalconH1Config,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    GraniteConfig,
    GraniteMoeConfig,
    LlamaConfig,
    MistralConfig,
    OlmoConfig,
    OPTConfig,
    PhiConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

V, D, FF, L, HEADS, KV_HEADS = 300, 64, 128, 3, 4, 2  # vocabulary, width, MLP width, blocks, heads
ARCHITECTURES = ("llama", "gemma3", "phi")  # the families most tests use
# every family of extract.backbones.families, with what makes its tiny model a test of that family's quirks
FAMILIES = (*ARCHITECTURES, "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "gptj", "opt", "opt_project", "gpt_neox",
            "olmo", "cohere", "granite", "falcon_h1", "granitemoe", "cohere2")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + <eos>), no pad token."""
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")


def tiny_config(architecture: str):
    """The config of a tiny model of a family (its causal-LM class comes from the Auto mapping)."""
    common = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512)
    gpt = dict(vocab_size=V, n_embd=D, n_layer=L, n_head=HEADS, n_positions=512)  # GPT-2 style names
    eos = dict(bos_token_id=V - 44, eos_token_id=V - 44)  # the tiny tokenizer's <eos>, not the real models' ids
    sliding = ["sliding_attention", "full_attention", "sliding_attention"]
    configs = {
        "llama": lambda: LlamaConfig(**common, tie_word_embeddings=True),  # tied embeddings
        # RMSNorm by (1 + weight), a logit softcap, sliding attention
        "gemma3": lambda: Gemma3TextConfig(**common, head_dim=16, sliding_window=4, layer_types=sliding,
                                           final_logit_softcapping=3.0),
        "phi": lambda: PhiConfig(**common, tie_word_embeddings=False),  # LayerNorm with bias, lm_head with bias, untied
        "mistral": lambda: MistralConfig(**common, sliding_window=4),  # a window shorter than the prompts
        "qwen2": lambda: Qwen2Config(**common, tie_word_embeddings=False),  # qkv biases
        "qwen3": lambda: Qwen3Config(**common, head_dim=16),  # q/k norms
        "gemma2": lambda: Gemma2Config(**common, head_dim=16, sliding_window=4, layer_types=sliding,
                                       final_logit_softcapping=3.0, attn_logit_softcapping=20.0),
        "gpt2": lambda: GPT2Config(**gpt, **eos),  # n_inner None: MLP width 4 d; LayerNorm ln_f
        "gptj": lambda: GPTJConfig(**gpt, **eos, rotary_dim=8, n_inner=96, tie_word_embeddings=False),  # lm_head bias
        "opt": lambda: OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=FF, num_hidden_layers=L,
                                 num_attention_heads=HEADS, max_position_embeddings=512),  # final_layer_norm
        # OPT-350m style: post-norm blocks, no final norm, the final state projected down before the head
        "opt_project": lambda: OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=FF, num_hidden_layers=L,
                                         num_attention_heads=HEADS, max_position_embeddings=512,
                                         word_embed_proj_dim=32, do_layer_norm_before=False),
        "gpt_neox": lambda: GPTNeoXConfig(**{k: v for k, v in common.items() if k != "num_key_value_heads"},
                                          rotary_pct=0.5, tie_word_embeddings=False),  # final_layer_norm, untied
        "olmo": lambda: OlmoConfig(**common, **eos, pad_token_id=None),  # LayerNorm without weight or bias
        "cohere": lambda: CohereConfig(**common, **eos, logit_scale=0.25),  # LayerNorm without bias; logits x logit_scale
        "granite": lambda: GraniteConfig(**common, logits_scaling=4.0, embedding_multiplier=2.0,
                                         residual_multiplier=0.5, attention_multiplier=0.25),  # logits / scaling
        "granitemoe": lambda: GraniteMoeConfig(**common, logits_scaling=4.0, embedding_multiplier=2.0,
                                               residual_multiplier=0.5, attention_multiplier=0.25, num_local_experts=4,
                                               num_experts_per_tok=2),  # Granite's head over mixture-of-experts blocks
        "cohere2": lambda: Cohere2Config(**common, **eos, logit_scale=0.25, sliding_window=4,
                                         layer_types=sliding),  # Cohere's head; sliding and full attention
        # a hybrid attention + Mamba-2 model; logits x lm_head_multiplier
        "falcon_h1": lambda: FalconH1Config(**common, lm_head_multiplier=4.0, embedding_multiplier=2.0,
                                            mamba_d_ssm=64, mamba_n_heads=8, mamba_d_state=16, mamba_d_conv=4,
                                            mamba_chunk_size=16, head_dim=16),
    }
    if architecture not in configs:
        raise ValueError(architecture)
    config = configs[architecture]()
    return AutoModelForCausalLM._model_mapping[type(config)], config


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
