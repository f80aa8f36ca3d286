"""What every cached generation must satisfy, written once for the tests that check it."""

import torch

from train_side.inference.generate import generate


def assert_cached_generation_equals_recomputation(pipeline, prompts: list[list[int]], max_new_tokens: int) -> None:
    """Generating ``prompts`` together (left-padded, with KV caches) picks, at every step, the token
    that running the whole sequence again without any cache picks."""
    cached = generate(pipeline, prompts, max_new_tokens=max_new_tokens, pad_id=0, stop=lambda tokens: False)
    for prompt, new in zip(prompts, cached):
        sequence = list(prompt)
        for token in new:  # no cache: the whole sequence again at every step
            ids = torch.tensor([sequence])
            logits = pipeline.step(ids, torch.ones_like(ids), pipeline.start())[0, -1]
            assert int(logits.argmax()) == token
            sequence.append(token)
