"""Token classes of a worked answer: where a network's loss sits."""

from extract.tasks.token_classes import token_classes


def test_each_token_of_a_worked_answer_gets_its_class():
    pieces = ["Sofia", " starts", " with", " 3", " x", " 1", "1", " =", " ", "3", "3", " books", ".", " 3", "3", " +",
              " 1", "8", " =", " 5", "1", ".\n", "####", " 5", "1"]
    got = dict(enumerate(token_classes(pieces)))
    assert [got[i] for i in (0, 1, 4, 7, 8, 11, 12, 15, 18, 21)] == ["format"] * 10  # words, operators, spaces
    assert [got[i] for i in (3, 5, 6, 13, 14, 16, 17)] == ["copied"] * 7  # operands, from the question or a line before
    assert [got[i] for i in (9, 10, 19, 20)] == ["computed"] * 4  # the result of each step
    assert [got[i] for i in (22, 23, 24)] == ["answer"] * 3  # the final answer line


def test_a_token_takes_the_highest_class_of_its_characters():
    assert token_classes(["= 12", "#### 4"]) == ["computed", "answer"]
    assert token_classes([]) == []
