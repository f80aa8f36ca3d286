"""The extraction loop: the backbone runs over planned batches, a background thread stores them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from featurestore import BackgroundWriter, Codec, StoreWriter, TokenTable

from .backbones.check import CHECK_ROWS, CHECK_TOKENS, check_head
from .encode import to_host


def padded_batch(tokens: TokenTable, first: int, last: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples [first, last) right-padded: input_ids and attention_mask, both (B, T)."""
    offsets = tokens.offsets
    lengths = np.diff(offsets[first : last + 1])
    ids = np.full((len(lengths), lengths.max()), pad_id, dtype=np.int64)
    mask = np.arange(lengths.max()) < lengths[:, None]
    ids[mask] = tokens.input_ids[offsets[first] : offsets[last]]
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def checked_head(backbone, tokens: TokenTable, codec: Codec) -> tuple[dict[str, np.ndarray], dict]:
    """The frozen head, once the store's first examples (the start of its first batch) show that it
    computes the model's own logits from the final state as the codec stores it: a head that does
    not is refused (extract.backbones.check) before anything is written."""
    head = backbone.head()
    ids, mask = padded_batch(tokens, 0, min(CHECK_ROWS, tokens.n_examples), backbone.tokenizer.pad_token_id)
    check_head(backbone, *head, codec, ids[:, :CHECK_TOKENS], mask[:, :CHECK_TOKENS])
    return head


def extract_batches(
    backbone,
    tokens: TokenTable,
    layers: tuple[int, ...],
    batches: list[tuple[int, int]],
    writer: StoreWriter,
    progress: Callable[[int], None] = lambda n: None,
    encode: str = "auto",
) -> int:
    """Runs the backbone over every batch the writer still needs and writes its hidden states
    (padding stripped) through a background thread, so the model never waits on encoding or disk.
    Returns the number of tokens computed.

    ``encode``: where the codec runs. ``host``: rows come to the CPU as float32 and the writer
    encodes them (numpy); ``device``: ``extract.encode`` encodes them where the backbone computed
    them and only the codes travel (pinned buffers, asynchronous copies on CUDA); the bits are the
    same. ``auto``: on the device when it is a GPU."""
    pad_id = backbone.tokenizer.pad_token_id
    on_device = encode == "device" or encode == "auto" and backbone.device.type == "cuda"
    computed = 0
    with BackgroundWriter(writer, max_pending=2) as background:
        for first, last in batches:
            start, stop = int(tokens.offsets[first]), int(tokens.offsets[last])
            if not writer.needs(start, stop):
                continue
            ids, mask = padded_batch(tokens, first, last, pad_id)
            states = backbone.hidden_states(ids.to(backbone.device), mask.to(backbone.device))
            real = mask.to(backbone.device).bool()
            if on_device:
                host = to_host(writer.codec, {k: states[k][real] for k in layers})  # (tokens, d) in store order
                background.write_encoded(start, host.encoded, ready=host.wait)
            else:
                rows = {k: states[k][real].float().cpu().numpy() for k in layers}  # (tokens, d) in store order
                background.write(start, rows)
            computed += stop - start
            progress(stop - start)
    return computed
