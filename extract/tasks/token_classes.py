"""Which part of a worked answer each of its tokens is: where a side network's loss sits.

A chain of thought in GSM8K form ("3 x 11 = 33 books. 33 + 18 = 51.\\n#### 51") mixes tokens of
very different difficulty: wording the model copies from its habits, operands it copies from the
question or an earlier line, digits it must compute, and the final answer line. Splitting the
validation loss along these classes tells whether a network misses the arithmetic or the format.
"""

from __future__ import annotations

import re

from .answers import NUMBER

CLASSES = ("format", "copied", "computed", "answer")  # in rising priority: a token takes its highest class
COMPUTED = re.compile(r"=\s*(" + NUMBER + ")")  # the result of a step: what the model must calculate


def char_classes(text: str) -> list[int]:
    """The class (an index into CLASSES) of every character of ``text``."""
    classes = [0] * len(text)
    mark = lambda start, end, c: classes.__setitem__(slice(start, end), [c] * (end - start))
    for match in re.finditer(NUMBER, text):
        mark(*match.span(), 1)
    for match in COMPUTED.finditer(text):
        mark(*match.span(1), 2)
    final = text.find("####")
    if final >= 0:
        mark(final, len(text), 3)
    return classes


def token_classes(pieces: list[str]) -> list[str]:
    """The class of each token of an answer given as its decoded pieces, in order: the highest class
    among the token's characters."""
    classes, found, start = char_classes("".join(pieces)), [], 0
    for piece in pieces:
        found.append(CLASSES[max(classes[start:start + len(piece)], default=0)])
        start += len(piece)
    return found
