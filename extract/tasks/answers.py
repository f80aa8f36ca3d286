"""Reading answers: the final number of a worked solution, and whether a generation is right."""

from __future__ import annotations

import re

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


def is_correct(text: str, reference: str) -> bool:
    """Numeric exact match (``#### n``, else the last number) for numeric references; for labels,
    the first line of the generation equals the label (case-insensitive)."""
    try:
        expected = float(reference)
    except ValueError:
        lines = text.strip().splitlines()
        return bool(lines) and lines[0].strip().lower() == reference.strip().lower()
    predicted = final_answer(text) or last_number(text)
    try:
        return predicted is not None and abs(float(predicted) - expected) <= 1e-6 * max(1.0, abs(expected))
    except ValueError:
        return False
