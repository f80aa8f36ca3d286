"""Autoregressive generation with the reloaded backbone: the only place it runs again.

Generated tokens have no stored hidden states, so each step runs the backbone (with its KV
cache), passes the tapped hidden states through the store's codec round-trip (the side network
sees exactly the kind of input it was trained on), steps the side network (its own KV cache)
and reads logits from the frozen head.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import torch
from torch import Tensor

from extract.backbones import Backbone
from featurestore import Codec

from ..config import GenerateConfig
from ..network.encoded import roundtrip
from ..network.model import FrozenHead, KVCache, SideNetwork


class Pipeline:
    """Backbone -> codec round-trip -> side network -> frozen head; ``side=None`` is the
    backbone alone (its own final state straight into the head: the baseline)."""

    def __init__(self, backbone: Backbone, head: FrozenHead, side: SideNetwork | None = None, codec: Codec | None = None):
        self.backbone, self.head, self.side, self.codec = backbone, head, side, codec

    @property
    def device(self) -> torch.device:
        """The backbone's: a SideModel moved with ``.to()`` moves it."""
        return self.backbone.device

    def start(self) -> dict:
        """Fresh caches for one batch of sequences."""
        return {"backbone": self.backbone.new_cache(), "side": KVCache()}

    @torch.inference_mode()
    def step(self, input_ids: Tensor, attention_mask: Tensor, caches: dict) -> Tensor:
        """Logits (B, T_new, V) for new tokens ``input_ids`` (B, T_new); ``attention_mask``
        (B, cached + T_new) is 1 on real tokens, 0 on left padding."""
        states = self.backbone.step(input_ids, attention_mask, caches["backbone"])
        if self.side is None:
            return self.head(states[-1].float())
        hidden = {k: self.roundtrip(states[k]) for k in self.side.config.inputs}
        y = self.side(hidden, cache=caches["side"], attention_mask=attention_mask)
        return self.head(y)

    def roundtrip(self, h: Tensor) -> Tensor:
        """What the store would have given for these hidden states, computed where they are: by
        the torch codec on a GPU, by numpy on the CPU (~5x faster there than torch's kernels)."""
        rows = h.float().reshape(-1, h.shape[-1])
        if rows.is_cuda:
            return roundtrip(self.codec, rows).reshape(h.shape)
        return torch.from_numpy(self.codec.roundtrip(rows.numpy())).reshape(h.shape).to(self.device)


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (B, T), prompts aligned to the right."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids, mask


def choose(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator, top_k: int = 0) -> Tensor:
    """Greedy when ``temperature`` is 0, else nucleus sampling (among the ``top_k`` most likely
    tokens first, when ``top_k`` > 0). logits (B, V) -> tokens (B,)."""
    if temperature == 0:
        return logits.argmax(-1)
    if 0 < top_k < logits.shape[-1]:
        logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[:, -1:], float("-inf"))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    keep = sorted_probs.cumsum(-1) - sorted_probs < top_p  # the smallest set reaching top_p
    sorted_probs = sorted_probs * keep
    picked = torch.multinomial(sorted_probs / sorted_probs.sum(-1, keepdim=True), 1, generator=generator)
    return order.gather(-1, picked).squeeze(-1)


def penalize_repetition(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """transformers' repetition penalty: the logits (B, V) of the tokens ``seen`` (B, V) in a row
    so far are divided by ``penalty`` where positive and multiplied by it where negative."""
    if penalty == 1:
        return logits
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def generate(pipeline: Pipeline, prompts: list[list[int]], *, pad_id: int, stop: Callable[[list[int]], bool],
             config: GenerateConfig | None = None, on_step: Callable[[Tensor], None] | None = None,
             eos_ids: Collection[int] = (), **settings) -> list[list[int]]:
    """Generates for a batch of prompts (all together: ``config.batch_size`` is the callers' to
    apply) until every sequence is stopped (``stop(tokens)``, e.g. EOS or a finished answer line)
    or ``max_new_tokens``; returns each sequence's new tokens. ``config`` (default: the defaults)
    may be amended by field name in ``settings`` (``max_new_tokens=64, temperature=0.7``).
    ``eos_ids`` are the tokens ``config.min_new_tokens`` keeps from being chosen before then.
    ``on_step(tokens)`` sees each step's chosen tokens (B,) as they come (streaming output)."""
    config = GenerateConfig.resolve(config, **settings)
    device = pipeline.device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))
    caches = pipeline.start()
    generator = torch.Generator(device=device).manual_seed(config.seed)
    logits = pipeline.step(ids, mask, caches)[:, -1]
    seen = None
    if config.repetition_penalty != 1:  # the prompt's tokens count as seen, its padding does not
        seen = torch.zeros(logits.shape, dtype=torch.long, device=device).scatter_add_(1, ids, mask) > 0
    suppressed = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
    outputs: list[list[int]] = [[] for _ in prompts]
    done = np.zeros(len(prompts), dtype=bool)
    for step in range(config.max_new_tokens):
        if seen is not None:
            logits = penalize_repetition(logits, seen, config.repetition_penalty)
        if step < config.min_new_tokens:
            logits = logits.index_fill(-1, suppressed, float("-inf"))
        tokens = choose(logits, config.temperature, config.top_p, generator, config.top_k)
        if seen is not None:
            seen[torch.arange(len(tokens), device=device), tokens] = True
        if on_step is not None:
            on_step(tokens)
        for i, token in enumerate(tokens.tolist()):
            if not done[i]:
                outputs[i].append(token)
                done[i] = stop(outputs[i])
        if done.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = pipeline.step(tokens[:, None], mask, caches)[:, -1]
    return outputs
