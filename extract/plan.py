"""What an extraction computes, decided before the backbone runs: layers, token layout, batches.

Everything here is deterministic (no model weights involved), so the store's fingerprint, a cache
hit, a resume point or a rank's share of the work are all known before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from featurestore import TokenTable

from .errors import PlanError
from .tasks.examples import Example
from .tasks.prompts import encode_example, fit_length


def parse_layers(spec: str, n_layers: int) -> tuple[int, ...]:
    """Hidden-state indices 0..L from ``all``, ``0,4,8``, ``every:K`` (0, K, 2K, ... and L) or
    ``top:D`` (L-D .. L: what an xLadder(D) reads)."""
    L = n_layers
    kind, _, arg = spec.partition(":")
    try:
        if spec == "all":
            layers = range(L + 1)
        elif kind == "every":
            layers = {*range(0, L + 1, int(arg)), L}
        elif kind == "top":
            if not 1 <= int(arg) <= L:
                raise PlanError(f"top:D needs 1 <= D <= {L}, not {arg}")
            layers = range(L - int(arg), L + 1)
        else:
            layers = [int(k) for k in spec.split(",")]
    except ValueError as e:
        if isinstance(e, PlanError):
            raise
        raise PlanError(f"bad --layers {spec!r}: use all, a list like 0,4,8, every:K or top:D") from None
    layers = tuple(sorted(set(layers)))
    if not layers or layers[0] < 0 or layers[-1] > L:
        raise PlanError(f"layers must be within 0..{L} (0 = embeddings, {L} = final post-norm state), not {spec!r}")
    return layers


@dataclass(frozen=True)
class Layout:
    """The store's examples in store order: sorted by length (then dataset order), so a run of
    consecutive examples batches with little padding and trains from sequential reads."""

    tokens: TokenTable
    meta: list[dict]
    n_truncated: int
    n_skipped: int


def tokenize(examples: list[Example], tokenizer, template: str, max_length: int, skip_long: bool) -> Layout:
    """Token ids and loss masks of every example, cut to ``max_length`` (or skipped when
    ``skip_long``); examples whose prompt alone fills ``max_length`` have no target left and are
    skipped either way."""
    if max_length < 2:
        raise PlanError(f"--max-length must be at least 2, not {max_length}")
    kept, n_truncated, n_skipped = [], 0, 0
    for example in examples:
        ids, mask, truncated = fit_length(*encode_example(tokenizer, example, template), max_length)
        if truncated and skip_long or not any(mask[1:]):
            n_skipped += 1
            continue
        n_truncated += truncated
        kept.append((len(ids), len(kept), ids, mask, example.meta))
    if not kept:
        raise PlanError(f"every example is longer than --max-length {max_length}; raise it")
    kept.sort(key=lambda k: k[:2])
    tokens = TokenTable.from_examples([k[2] for k in kept], [k[3] for k in kept])
    return Layout(tokens, [k[4] for k in kept], n_truncated, n_skipped)
