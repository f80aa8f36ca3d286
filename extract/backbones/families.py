"""Model families: what each one puts between its final hidden state and its logits, and what it
calls its sizes. One row per family, read from the config alone (no weights), so a family that
cannot work is refused before anything loads.

A family not in either table is tried with the common conventions (a final norm under one of the
usual names, logits = lm_head(h_L)); the head check on the first batch (:mod:`.check`) keeps its
store only when the stored head reproduces the model's own logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import BackboneError

NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_norm", "final_layer_norm")  # where untested families keep it


def _intermediate_size(config) -> int | None:
    return getattr(config, "intermediate_size", None)


def _n_inner(config) -> int:
    """GPT-2 and GPT-J: n_inner, None meaning 4 d."""
    return config.n_inner or 4 * config.hidden_size


def _any_mlp_width(config) -> int | None:
    """An untested family's MLP width, under whichever of the usual names its config uses."""
    for name in ("intermediate_size", "ffn_dim", "n_inner"):
        if getattr(config, name, None):
            return getattr(config, name)
    return 4 * config.hidden_size if hasattr(config, "n_inner") else None


@dataclass(frozen=True)
class Family:
    name: str  # as the README's table names it
    final_norm: str | tuple[str, ...] = "norm"  # the decoder attribute(s) that may hold the final norm (or None)
    projection: str | None = None  # a decoder attribute that may hold a projection of h_L before the head
    mlp_width: Callable[[object], int | None] = _intermediate_size  # what the side network's MLP is sized from
    logit_scale: Callable[[object], float] = lambda config: 1.0  # logits = logit_scale * lm_head(h_L)
    tested: bool = True  # a tiny model of it runs through the whole pipeline in the test suite

    def norm_of(self, decoder: nn.Module) -> nn.Module | None:
        """The final norm module, or None when the model has none (OPT-350m)."""
        names = (self.final_norm,) if isinstance(self.final_norm, str) else self.final_norm
        return next((getattr(decoder, n) for n in names if isinstance(getattr(decoder, n, None), nn.Module)), None)

    def projection_of(self, decoder: nn.Module) -> nn.Module | None:
        """The module projecting h_L before the head (OPT's project_out), or None."""
        return getattr(decoder, self.projection, None) if self.projection else None


# model_type (of the text config) -> its family
FAMILIES = {
    "llama": Family("Llama"),
    "mistral": Family("Mistral"),
    "qwen2": Family("Qwen2"),
    "qwen3": Family("Qwen3"),
    "gemma2": Family("Gemma 2"),  # RMSNorm by (1 + weight), logit softcap
    "gemma3_text": Family("Gemma 3"),
    "phi": Family("Phi", final_norm="final_layernorm"),
    "gpt2": Family("GPT-2", final_norm="ln_f", mlp_width=_n_inner),
    "gptj": Family("GPT-J", final_norm="ln_f", mlp_width=_n_inner),
    # OPT-350m: no final norm, and project_out (d -> word_embed_proj_dim) before the head
    "opt": Family("OPT", final_norm="final_layer_norm", projection="project_out", mlp_width=lambda c: c.ffn_dim),
    "gpt_neox": Family("GPT-NeoX", final_norm="final_layer_norm"),
    "olmo": Family("OLMo"),  # a LayerNorm without weight or bias
    "cohere": Family("Cohere", logit_scale=lambda c: c.logit_scale),
    "granite": Family("Granite", logit_scale=lambda c: 1.0 / c.logits_scaling),
    "granitemoe": Family("GraniteMoE", logit_scale=lambda c: 1.0 / c.logits_scaling),  # Granite's head, MoE blocks
    "cohere2": Family("Cohere 2", logit_scale=lambda c: c.logit_scale),  # Cohere's head, sliding-window blocks
    "falcon_h1": Family("Falcon-H1", final_norm="final_layernorm", logit_scale=lambda c: c.lm_head_multiplier),
}

# model_type -> why no side network can be trained and served on it
REFUSED = {
    "gemma3n": "its hidden states are AltUp stacks of several streams, not one residual stream a side network reads",
    "gemma3n_text": "its hidden states are AltUp stacks of several streams, not one residual stream a side network "
                    "reads",
    "rwkv": "it ignores the attention mask and keeps its state outside the KV cache, so batched cached generation "
            "cannot run it",
    "recurrent_gemma": "its recurrent state is not a KV cache that generation can step",
    "mamba": "its state-space blocks keep their state outside the KV cache, so cached generation cannot step it",
    "falcon_mamba": "its state-space blocks keep their state outside the KV cache, so cached generation cannot step "
                    "it",
    "mamba2": "its state-space blocks keep their state outside the KV cache, so cached generation cannot step it, "
              "and it has no MLP to size a side network from",
    "dory": "it runs its middle blocks in loops (recurrent depth), so its hidden states are not one per block, and "
            "it L2-normalises its final state, which the stored head cannot reproduce",
}


def family_of(config) -> Family:
    """The family of a (text) config; refuses the families that cannot work, by name."""
    model_type = config.get_text_config().model_type
    for refused in (config.model_type, model_type):
        if refused in REFUSED:
            raise BackboneError(f"{refused} is not supported: {REFUSED[refused]}")
    return FAMILIES.get(model_type) or Family(model_type, final_norm=NORM_NAMES, mlp_width=_any_mlp_width,
                                              tested=False)
