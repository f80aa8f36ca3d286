"""Reading answers: the final number of a worked solution, and whether a generation is right."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .labels import FINISHED_LABEL, normalise, predicted_label

# A number as written in answers: optional minus (not a hyphen between digits), thousands commas, decimals.
NUMBER = r"(?<![\d.])-?\d+(?:,\d{3}(?!\d))*(?:\.\d+)?"
FINAL = re.compile(r"####\s*\$?\s*(" + NUMBER + ")")
FINISHED_ANSWER = re.compile(r"####\s*\$?\s*-?[\d,]*\.?\d+\s*\n")  # a GSM8K final line, ended: generation stops


def final_answer(text: str) -> str | None:
    """The number after the first ``####`` (GSM8K format), commas removed; None if there is none."""
    match = FINAL.search(text)
    return match.group(1).replace(",", "") if match else None


def last_number(text: str) -> str | None:
    """The last number in ``text``, commas removed; None if there is none (evaluation's fallback)."""
    numbers = re.findall(NUMBER, text)
    return numbers[-1].replace(",", "") if numbers else None


def answer_end(labels: Sequence[str] | None = None) -> re.Pattern:
    """Where a generated answer is complete: a classification task's label line (``labels``, as its
    store records them), else a finished ``#### n`` line. Evaluation and ``generate`` stop there."""
    return FINISHED_LABEL if labels else FINISHED_ANSWER


def is_correct(text: str, reference: str, labels: Sequence[str] | None = None) -> bool:
    """Whether a generation gives the reference answer. With ``labels`` (a classification task),
    the label it gives (:func:`.labels.predicted_label`) is the reference; otherwise numeric
    exact match (``#### n``, else the last number) for a numeric reference, and for any other
    the first line beginning with it."""
    expected = None if labels else _number(reference)
    if expected is None:
        given = predicted_label(text, labels or [reference])
        return given is not None and normalise(given) == normalise(reference)
    predicted = _number(final_answer(text) or last_number(text) or "")
    return predicted is not None and abs(predicted - expected) <= 1e-6 * max(1.0, abs(expected))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
