"""Prompt templates: how an example becomes token ids, and which of them the loss trains on.

``plain`` is ``"Question: {question}\\nAnswer:"`` then ``" {answer}"`` then EOS; ``chat`` is the
tokenizer's chat template with the question as the user turn and the answer as the assistant turn.
The prompt and the answer are tokenised separately and concatenated, so the prompt ids that
generation starts from at evaluation time are exactly the prefix that training saw.
"""

from __future__ import annotations

import hashlib
import json

from ..errors import TemplateError
from .examples import Example

TEMPLATES = ("plain", "chat")
PLAIN_PROMPT = "Question: {question}\nAnswer:"
PLAIN_ANSWER = " {answer}"


def template_info(name: str, tokenizer) -> dict:
    """A JSON-able description of template ``name`` for the store's fingerprint."""
    _check(name, tokenizer)
    if name == "plain":
        eos = _eos_id(tokenizer)
        return {"name": name, "prompt": PLAIN_PROMPT, "answer": PLAIN_ANSWER, "eos_token_id": eos}
    chat_template = json.dumps(tokenizer.chat_template, sort_keys=True)  # a str, or a dict of named ones
    return {"name": name, "chat_template_sha256": hashlib.sha256(chat_template.encode()).hexdigest()}


def format_prompt(tokenizer, question: str, template: str) -> str:
    """The prompt text of ``question`` in ``template``: what :func:`encode_prompt` tokenises."""
    _check(template, tokenizer)
    return _prompt_text(tokenizer, question, template)


def encode_prompt(tokenizer, question: str, template: str) -> list[int]:
    """The ids generation starts from: the prefix of :func:`encode_example`'s ids."""
    _check(template, tokenizer)
    return _with_special_prefix(tokenizer, _encode(tokenizer, _prompt_text(tokenizer, question, template)))


def encode_example(tokenizer, example: Example, template: str) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask): the mask is 1 exactly on the answer tokens, its closing EOS or
    end-of-turn token included so the model learns to stop, and 0 on the prompt."""
    prompt_ids = encode_prompt(tokenizer, example.question, template)
    if template == "plain":
        answer_ids = _encode(tokenizer, PLAIN_ANSWER.format(answer=example.answer)) + [_eos_id(tokenizer)]
    else:
        answer_ids = _encode(tokenizer, _chat_answer_text(tokenizer, example))
    return prompt_ids + answer_ids, [0] * len(prompt_ids) + [1] * len(answer_ids)


def fit_length(
    input_ids: list[int], loss_mask: list[int], max_length: int
) -> tuple[list[int], list[int], bool]:
    """Cut an example to at most ``max_length`` tokens from the right: (input_ids, loss_mask, truncated)."""
    if max_length < 1:
        raise ValueError(f"max_length must be positive, not {max_length}")
    if len(input_ids) != len(loss_mask):
        raise ValueError("input_ids and loss_mask must have the same length")
    truncated = len(input_ids) > max_length
    return list(input_ids[:max_length]), list(loss_mask[:max_length]), truncated


def _check(template: str, tokenizer) -> None:
    if template not in TEMPLATES:
        raise TemplateError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise TemplateError("this tokenizer has no chat template; use the plain template")


def _prompt_text(tokenizer, question: str, template: str) -> str:
    if template == "plain":
        return PLAIN_PROMPT.format(question=question)
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )


def _chat_answer_text(tokenizer, example: Example) -> str:
    """The assistant turn as the chat template renders it: the full conversation minus the prompt."""
    prompt = _prompt_text(tokenizer, example.question, "chat")
    conversation = [{"role": "user", "content": example.question},
                    {"role": "assistant", "content": example.answer}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt):
        raise TemplateError("the chat template renders the assistant turn differently from its generation "
                            "prompt, so the answer cannot be split off; use the plain template")
    # The turn ends with its end-of-turn token; whitespace after it is never generated, so not a target.
    return full[len(prompt):].rstrip()


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise TemplateError("this tokenizer has no EOS token to end plain answers with; use the chat template")
    return tokenizer.eos_token_id


def _with_special_prefix(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` starting with what the tokenizer puts before any text (usually BOS, often nothing),
    unless they already do: a chat template often writes BOS itself, and it must not come twice."""
    bare = _encode(tokenizer, "a")
    full = list(tokenizer.encode("a"))
    starts = [i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare]
    prefix = full[: starts[0]] if starts else []
    return ids if ids[: len(prefix)] == prefix else prefix + ids
