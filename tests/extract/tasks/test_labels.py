"""Classification tasks: which answers are labels, and which label a generation gives."""

import pytest

from extract.tasks.answers import is_correct
from extract.tasks.labels import FINISHED_LABEL, LABEL_TOKENS_SLACK, label_set, max_label_tokens, predicted_label
from tests.models import tiny_tokenizer


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["yes", " no", "no\n", "yes", "no"], ["no", "yes"]),  # stripped, sorted
        (["entailment", "not_entailment"] * 3, ["entailment", "not_entailment"]),
        (["1", "0", "0", "1"], ["0", "1"]),  # numeric labels are labels too
        (["Paris", "Rome", "Oslo", "Paris"], None),  # answers that rarely repeat: question answering
        (["3 + 2 = 5.\n#### 5", "#### 5"] * 3, None),  # worked answers
        (["#### 5", "#### 7"] * 3, None),
        (["yes", "", "no", "no"], None),  # an empty answer is no label
        ([f"label {i % 21}" for i in range(100)], None),  # more than MAX_LABELS
        ([], None),
    ],
)
def test_label_set(answers, expected):
    assert label_set(answers) == expected


@pytest.mark.parametrize(
    "text, label",
    [
        (" yes", "yes"),
        ("Yes.", "yes"),
        ("\n  NO, because the sentence says so", "no"),  # the first non-blank line, case and punctuation aside
        ("no\nyes", "no"),
        ("yesterday", None),  # whole words only
        ("not_entailment", "not_entailment"),  # the longest label it begins with, not "not"
        ("not entailment at all", "not entailment"),
        ("maybe", None),
        ("", None),
    ],
)
def test_predicted_label(text, label):
    assert predicted_label(text, ["yes", "no", "not", "not_entailment", "not entailment"]) == label


def test_is_correct_scores_the_label_given():
    labels = ["entailment", "not_entailment"]
    assert is_correct(" not_entailment\n", "not_entailment", labels)
    assert not is_correct(" not_entailment", "entailment", labels)
    assert not is_correct("The answer is entailment", "entailment", labels)  # the label must come first
    assert is_correct("1", "1", ["0", "1"]) and not is_correct("0 or 1", "1", ["0", "1"])  # labels, not numbers
    assert not is_correct("10", "1", ["0", "1"])
    assert is_correct("Positive.\nbecause...", "positive")  # no label set: the first line begins with the reference


def test_finished_label_is_a_written_first_line():
    assert not FINISHED_LABEL.search(" yes") and not FINISHED_LABEL.search("\n \n")
    assert FINISHED_LABEL.search("\n yes\n") and FINISHED_LABEL.search("no.\nmore")


def test_max_label_tokens():
    tokenizer = tiny_tokenizer()  # one token per byte
    assert max_label_tokens(tokenizer, ["no", "yes"]) == len(" yes") + LABEL_TOKENS_SLACK


def test_an_answer_ends_at_its_tasks_answer_line():
    from extract.tasks.answers import answer_end

    assert answer_end(["no", "yes"]).search(" yes\nbecause") and not answer_end(["no", "yes"]).search(" yes")
    assert answer_end(None).search("3 + 4 = 7\n#### 7\n") and not answer_end(None).search(" yes\n")
