import os
import re
import sys

import pytest

from extract.tasks import arith
from extract.tasks.answers import final_answer
from extract.tasks.examples import examples_sha256
from extract.tasks.prompts import encode_example
from tests import helpers

EQUATION = re.compile(r"(\d+) ([-+x]) (\d+) = (\d+)")
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "x": lambda a, b: a * b}


@pytest.fixture(scope="module")
def arith_train():
    return arith.generate(arith.SIZES["train"], seed=0, split="train")


@pytest.fixture(scope="module")
def arith_test():
    return arith.generate(arith.SIZES["test"], seed=0, split="test")


def check_worked_answer(example, steps=(2, 3), max_operand=20):
    """Recompute every equation of the worked answer; return the parsed equations."""
    body, final_line = example.answer.split("\n")
    equations = [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(body)]
    assert len(equations) in steps
    opening = re.match(r"\w+ starts with (\d+) (x \d+ = \d+ )?", body)
    grouped = opening.group(2) is not None
    value = None if grouped else int(opening.group(1))
    for i, (a, op, b, c) in enumerate(equations):
        if i == 0 and grouped:  # k groups of b
            assert op == "x" and 2 <= a <= 5 and 2 <= b <= max_operand
            assert re.search(rf"\b{a}\b", example.question)
        else:
            assert a == value, "each step continues from the previous result"
            assert b in arith.MULTIPLIERS if op == "x" else 2 <= b <= max_operand
        if op != "x" or grouped and i == 0:
            assert re.search(rf"\b{b}\b", example.question), "the operand is stated in the question"
        assert APPLY[op](a, b) == c
        assert 0 < c < 1000
        value = c
    assert final_line == f"#### {value}"
    assert final_answer(example.answer) == example.meta["final"] == str(value)
    return equations


def test_answers_are_correct_and_in_range(arith_train, arith_test):
    for example in arith_train + arith_test:
        check_worked_answer(example)


def test_deterministic_across_processes():
    code = "from extract.tasks import arith, examples; print(examples.examples_sha256(arith.generate(300, seed=7)))"
    child = helpers.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={**os.environ, "PYTHONHASHSEED": "123"}, timeout=120)
    assert child.stdout.strip() == examples_sha256(arith.generate(300, seed=7))
    assert arith.generate(300, seed=7) == arith.generate(300, seed=7)
    assert arith.generate(300, seed=8) != arith.generate(300, seed=7)


def test_smaller_n_is_a_prefix():
    assert arith.generate(40, seed=1) == arith.generate(100, seed=1)[:40]


def test_splits_are_disjoint_and_questions_unique(arith_train, arith_test):
    train_questions = {example.question for example in arith_train}
    test_questions = {example.question for example in arith_test}
    assert len(train_questions) == len(arith_train) and len(test_questions) == len(arith_test)
    assert not train_questions & test_questions
    assert not {e.question for e in arith.generate(2000, seed=1)} & test_questions, "for any train seed"
    assert all(arith.split_of(q) == "test" for q in test_questions)
    assert [e.meta["id"] for e in arith_test] == list(range(len(arith_test)))


def test_problems_vary(arith_train):
    equations = [check_worked_answer(example) for example in arith_train]
    assert {op for eqs in equations for _, op, _, _ in eqs} == {"+", "-", "x"}
    assert {len(eqs) for eqs in equations} == {2, 3}
    assert sum(" x " in e.answer.split(".")[0] for e in arith_train) > 100, "some start with k groups of n"
    assert all(any(name in e.question for e in arith_train) for name, _, _ in arith.PEOPLE)
    assert all(any(obj in e.question for e in arith_train) for obj in arith.OBJECTS)
    assert len({e.question.split()[1] for e in arith_train}) >= 4, "openings: has, starts, keeps, buys, ..."
    assert len({e.question.split()[-1] for e in arith_train}) >= 3, "questions: now?, end?, with?"
    equation_formats = {re.sub(r"\d+", "N", e.answer.split(". ", 1)[1]) for e in arith_train}
    assert len(equation_formats) < 50, "a rigid answer format"


def test_parameters():
    examples = arith.generate(200, seed=0, steps=(3,), max_operand=9)
    for example in examples:
        check_worked_answer(example, steps=(3,), max_operand=9)
    assert arith.generate(0) == []
    with pytest.raises(ValueError, match="splits"):
        arith.generate(5, split="validation")
    with pytest.raises(ValueError, match="max_operand"):
        arith.generate(5, max_operand=1)


@pytest.mark.slow
def test_token_lengths_with_smollm2(smollm2_tokenizer, arith_train, arith_test):
    lengths = [len(encode_example(smollm2_tokenizer, e, "plain")[0]) for e in arith_train + arith_test]
    assert 50 <= min(lengths) and max(lengths) <= 120
    assert 70 <= sum(lengths) / len(lengths) <= 95
