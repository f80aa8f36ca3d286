"""An example: a question, the answer the loss trains on, and what evaluation scores against."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .answers import final_answer


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # the full target text (worked solution + final line): what the loss trains on
    meta: dict  # JSON-able; at least {"id": position in the split, "final": the final answer string}


def make_example(question: str, answer: str, index: int) -> Example:
    """Example ``index`` of a split; ``final`` is the ``####`` number, or else the stripped answer (a label)."""
    final = final_answer(answer)
    return Example(question, answer, {"id": index, "final": answer.strip() if final is None else final})


def examples_sha256(examples: list[Example]) -> str:
    """A content fingerprint: sha256 over every question and answer, in order."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.question, example.answer]).encode())
    return digest.hexdigest()
