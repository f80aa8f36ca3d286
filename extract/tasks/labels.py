"""Classification: a dataset whose answers are a few label words, scored on the label generated.

A dataset is a classification task when its answers look like labels: single lines, no worked
``####`` answer, at most ``MAX_LABELS`` distinct values, each used twice on average (a question
answering set, whose answers rarely repeat, is not one). ``extract`` records the label set in the
store's dataset provenance, so evaluation knows the task without looking at the test split: it
stops generating once a first line is written, and a generation is right when that line begins
with the reference label (case, spacing and surrounding punctuation aside).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MAX_LABELS = 20
FINISHED_LABEL = re.compile(r"\S[^\n]*\n")  # a first non-blank line, ended: a label answer is complete
LABEL_TOKENS_SLACK = 4  # tokens generated beyond the longest label's (a leading space, punctuation, EOS)


def label_set(answers: Iterable[str]) -> list[str] | None:
    """The sorted distinct answers (stripped) when they are labels, else None (a generation task)."""
    answers = [a.strip() for a in answers]
    if any(not a or "\n" in a or "####" in a for a in answers):
        return None
    labels = sorted(set(answers))
    return labels if 0 < len(labels) <= min(MAX_LABELS, len(answers) // 2) else None


def normalise(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation or quotes: how labels are compared."""
    return " ".join(text.lower().split()).strip(" .,;:!?\"'()[]")


def predicted_label(text: str, labels: Iterable[str]) -> str | None:
    """The label a generation gives: the longest label its first non-blank line begins with, as
    whole words ("No, because..." gives "no"; "nothing" gives none); None if it gives none."""
    lines = text.strip().splitlines()
    line = normalise(lines[0]) if lines else ""
    given = [label for label in labels if re.match(re.escape(normalise(label)) + r"(?!\w)", line)]
    return max(given, key=len, default=None)


def max_label_tokens(tokenizer, labels: Iterable[str]) -> int:
    """How many tokens a label answer needs at most: the longest label's, and some slack."""
    return max(len(tokenizer.encode(" " + label, add_special_tokens=False)) for label in labels) + LABEL_TOKENS_SLACK
